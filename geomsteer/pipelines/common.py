"""What every job shares: checks made before any heavy step and the provenance stamp of a result."""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

from ..errors import ConfigError
from ..reports.common import check_output_dir, package_versions

__all__ = ["check_output_dir", "check_null_draws", "stamp", "DEFAULT_SEED"]

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
