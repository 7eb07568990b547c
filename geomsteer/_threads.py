"""Side-by-side work on the cores of one machine: a thread pool whose workers run BLAS on one thread each.

numpy releases the GIL in its products, gathers and partitions, so independent pieces of an analysis
(one layer's Gram matrix, one metric's permutation null) run side by side on threads. Each piece
computes exactly what it would alone, so the results do not depend on the number of threads."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterable, Iterator


class Mapper:
    """``mapper(fn, items) -> list`` in the order of ``items``; ``mapper.imap`` yields the results as
    they come (in order). Without an executor, in this thread."""

    def __init__(self, executor: Any = None) -> None:
        self.executor = executor

    def imap(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        return iter(self.executor.map(fn, items)) if self.executor is not None else (fn(x) for x in items)

    def __call__(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list:
        return list(self.imap(fn, items))


serial_map = Mapper()


@contextlib.contextmanager
def thread_map(n_jobs: int | None = None, one_blas_thread: bool = False) -> Iterator[Mapper]:
    """A :class:`Mapper` over ``n_jobs`` threads (default: every core), BLAS limited to one thread
    while the block runs; ``n_jobs=1`` maps in this thread and leaves BLAS as it is, unless
    ``one_blas_thread`` (then every piece runs on one BLAS thread whatever ``n_jobs``)."""
    from threadpoolctl import threadpool_limits

    n = int(n_jobs or os.cpu_count() or 1)
    if n <= 1:
        with threadpool_limits(1) if one_blas_thread else contextlib.nullcontext():
            yield serial_map
        return
    from concurrent.futures import ThreadPoolExecutor

    with threadpool_limits(1), ThreadPoolExecutor(n) as ex:
        yield Mapper(ex)


__all__ = ["Mapper", "serial_map", "thread_map"]
