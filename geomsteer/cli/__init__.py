"""geomsteer's command line: parse, then make the same calls the notebook API makes, then write the report.

Errors in the input become one line on stderr and exit status 2, without a traceback; an
interrupt exits with 130 and leaves no half-written output.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..errors import GeomsteerError
from . import concepts, features, hierarchy, models, sae, similarity, steer, transfer
from .common import EXIT_INTERRUPT, EXIT_USAGE, Parser, stat_line

__all__ = ["main", "build_parser", "stat_line"]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = Parser(prog="geomsteer", description="Geometry and topology of language-model representations.")
    p.add_argument("--version", action="version", version=f"geomsteer {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    hierarchy.add_parser(sub)
    models.add_parser(sub)
    similarity.add_parser(sub)
    concepts.add_parsers(sub)
    steer.add_parser(sub)
    sae.add_parser(sub)
    features.add_parser(sub)
    transfer.add_parser(sub)
    return p


COMMANDS = {"hierarchy": hierarchy.run, "models": models.run, "sae": sae.run, "similarity": similarity.run,
            "mapper": concepts.run_mapper, "cluster": concepts.run_cluster, "steer": steer.run,
            "features": features.run, "transfer": transfer.run}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args, argv)
    except GeomsteerError as e:
        print(f"geomsteer: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("geomsteer: interrupted; no partial output was left behind", file=sys.stderr)
        return EXIT_INTERRUPT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
