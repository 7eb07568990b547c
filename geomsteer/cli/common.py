"""What every command shares: the parser class, argument helpers, defaults read from the API, summary lines."""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ConfigError

__all__ = ["EXIT_USAGE", "EXIT_INTERRUPT", "Parser", "positive_int", "default", "option", "output_args", "null_line",
           "stat_line", "run_and_save", "concepts_list", "runtime_args"]

EXIT_USAGE = 2
EXIT_INTERRUPT = 130


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own usage errors: usage, one line, exit 2
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def default(fn: Callable, name: str) -> Any:
    """The default of parameter ``name`` of an API function: the one place each default is set."""
    return inspect.signature(fn).parameters[name].default


def _shown(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return " ".join(_shown(x) for x in v)
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def option(sp: argparse.ArgumentParser, flag: str, fn: Callable, param: str, help: str, **kw: Any) -> None:
    """An option whose default is ``fn``'s default for ``param``, stated at the end of its help."""
    d = default(fn, param)
    if isinstance(d, tuple):
        d = list(d)
    sp.add_argument(flag, default=d, help=f"{help} (default: {_shown(d)})".replace("%", "%%"), **kw)


def output_args(sp: argparse.ArgumentParser, seed_help: str = "seed for the random parts (default: 0)") -> None:
    """--seed, --out and --force, the same on every command that writes a report."""
    from ..pipelines.common import DEFAULT_SEED

    sp.add_argument("--seed", type=int, default=DEFAULT_SEED, help=seed_help)
    sp.add_argument("--out", type=Path, required=True, help="output directory (must not exist unless --force)")
    sp.add_argument("--force", action="store_true", help="replace --out if it exists")


def runtime_args(sp: argparse.ArgumentParser, fn: Callable, backend: bool = False) -> None:
    """--device and --dtype (and with ``backend``, --backend and --address), with ``fn``'s defaults."""
    g = sp.add_argument_group("where it runs")
    option(g, "--device", fn, "device", "torch device the model runs on: cpu, cuda, cuda:1, mps")
    option(g, "--dtype", fn, "dtype", "dtype the model weights load and run in; statistics are accumulated in "
           "float64 whatever it is", choices=["float32", "bfloat16", "float16"])
    if backend:
        option(g, "--backend", fn, "backend", "local: this process; ray: Ray tasks and actors (pip install "
               "'geomsteer[ray]'), on a local Ray instance or the cluster at --address", choices=["local", "ray"])
        g.add_argument("--address", default=None,
                       help="a running Ray cluster to join (auto, or ray://host:10001); default: start one here")


def run_and_save(args: argparse.Namespace, argv: Sequence[str], compute: Callable[[], Any]) -> Any:
    """Check --out before any heavy step, run the API call, write its report as the API's .save does."""
    from ..reports.common import check_output_dir

    check_output_dir(args.out, args.force)
    result = compute()
    result.save(args.out, force=args.force, command=["geomsteer", *argv])
    return result


def concepts_list(text: str) -> list[str]:
    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise ConfigError(f"--concepts {text!r}: expected comma-separated WordNet synsets such as animal.n.01,plant.n.02")
    return names


def stat_line(st: dict) -> str:
    """observed [95% CI], effect size and p against the most conservative null; 'undefined' where missing."""
    def num(x: float | None, spec: str) -> str:
        return "undefined" if x is None else format(x, spec)

    ci = st.get("ci95")
    text = num(st.get("observed"), "8.3f") + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
    if st.get("p_value") is not None:
        text += (f"  effect {num(st.get('effect_size'), '+.1f')} sd, p {st['p_value']:.1e} "
                 f"({st.get('conservative_null', '').replace('_', ' ')})")
    return text


def null_line(st: dict) -> str:
    """'observed (null mean ± sd, effect e sd, p p)' against the most conservative null."""
    def f(x: Any, d: int = 3) -> str:
        return "undefined" if x is None else f"{x:.{d}g}"

    null = st.get("null", {}).get(st.get("conservative_null", ""), {})
    if not null:
        return f"{f(st.get('observed'))} (no null)"
    return (f"{f(st.get('observed'))} vs {st['conservative_null'].replace('_', ' ')} {f(null.get('mean'))} ± "
            f"{f(null.get('sd'))} ({null.get('n_draws')} draws), effect {f(st.get('effect_size'), 2)} sd, "
            f"p {f(st.get('p_value'), 2)}")
