"""What every job shares: checks made before any heavy step and the provenance stamp of a result."""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

from ..errors import ConfigError
from ..reports.common import check_output_dir, package_versions

__all__ = ["check_output_dir", "check_null_draws", "stamp", "DEFAULT_SEED", "sae_dirs"]

DEFAULT_SEED = 0


def check_null_draws(n: int, allow_zero: bool = True) -> None:
    """A null needs a mean and an sd: 0 (no null, where allowed) or at least 2 draws."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0 or n == 1 or (n == 0 and not allow_zero):
        raise ConfigError(f"--null-draws must be {'0 (no nulls) or ' if allow_zero else ''}at least 2 draws per null, "
                          f"got {n!r}: a null distribution needs a mean and an sd; 20 is the default")


def stamp(provenance: Mapping[str, Any], t0: float) -> dict:
    """A result's provenance with the run's duration and the package versions it ran with."""
    return {**provenance, "elapsed_seconds": round(time.perf_counter() - t0, 1), "packages": package_versions()}


def with_command(provenance: Mapping[str, Any], command: Sequence[str] | None) -> dict:
    """Provenance with the command line that wrote it (``None`` from the notebook API)."""
    return {**provenance, "command": list(command) if command else None}


def sae_dirs(saes: Any) -> dict:
    """SAE directories (or read SAEs), one per layer, keyed by the hook each records; errors say what is wrong."""
    from ..errors import DataError
    from ..saes import read_sae_dir

    if not isinstance(saes, (list, tuple)):
        saes = [saes]
    if not saes:
        raise ConfigError("no SAEs given: expected SAE directories, one per layer")
    by_hook: dict = {}
    for d in saes:
        sd = read_sae_dir(d)
        if not sd.hook:
            raise DataError(f"the SAE at {str(sd.path)!r} does not record its hook; expected an SAE written by "
                            "'geomsteer sae train'")
        if sd.hook in by_hook:
            raise DataError(f"two SAEs were given for {sd.hook}; give one SAE per layer")
        by_hook[sd.hook] = sd
    return by_hook
