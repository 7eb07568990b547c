"""Where the work runs: in this process (``"local"``, the default) or on a Ray cluster (``"ray"``).

A backend does two things, and the analyses are written against them only:

- :meth:`map` applies a plain function to a list of items (a permutation draw, a chunk of
  categories), with one shared read-only context (put in Ray's object store once);
- :meth:`map_model` runs jobs that need a model (extract a shard of activations, read a chunk of
  words) on workers that each load the model once, from its name, and keep it.

Both return results in the order of the items, and every analysis merges them with the same code
whichever backend computed them, so a Ray run gives the numbers a local run gives (each item's
arithmetic is the same: one BLAS thread per task on both backends). A Ray task whose worker dies
is retried (``max_retries``); a model actor that dies is restarted and its job run again.

Ray is an optional extra: ``pip install 'geomsteer[ray]'``. With ``address=None`` a local Ray
instance is started on this machine's cores (``ray.init``); give ``address="auto"`` or
``"ray://host:10001"`` to join a running cluster.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .errors import ConfigError

__all__ = ["BACKENDS", "Backend", "LocalBackend", "RayBackend", "ModelRef", "get_backend"]

BACKENDS = ("local", "ray")
_ACTORS: dict[str, Any] = {}  # this process's Ray model actors: {"key": (workers, cpus each), "actors": [...]}
# environment variables handed to Ray workers (quiet progress, thread counts, test hooks)
_FORWARDED = ("GEOMSTEER_QUIET", "GEOMSTEER_FAULT_KILL_SHARD", "HF_HUB_OFFLINE", "HF_HOME", "GEOMSTEER_CACHE",
              "TRANSFORMERS_OFFLINE")


@dataclass(frozen=True)
class ModelRef:
    """What a worker needs to load a model by itself: its resolved files, device and dtype, and
    whether to re-randomize it (the shuffled-weights baseline, with this seed)."""

    resolved: Any  # geomsteer.models.ResolvedModel
    device: str = "cpu"
    dtype: str = "float32"
    rerandomize_seed: int | None = None
    rerandomize_rows: tuple[int, ...] | None = None  # the embedding rows a re-randomized model reads

    def load(self) -> Any:
        from . import models

        model = models.load_model(self.resolved, device=self.device, dtype=self.dtype)
        if self.rerandomize_seed is not None:
            if os.environ.get("GEOMSTEER_KEEP_MODELS"):  # the kept model is shared: shuffle a copy
                import copy

                model = copy.deepcopy(model)
            model = models.rerandomize(model, self.rerandomize_seed, embedding_rows=self.rerandomize_rows)
        return model


def _call(model: Any, job: tuple[str, tuple, dict]) -> Any:
    """Run one model job: ``(name of a function in geomsteer.workers, args, kwargs)``."""
    from . import workers

    name, args, kwargs = job
    return getattr(workers, name)(model, *args, **kwargs)


class Backend:
    """The interface; see :class:`LocalBackend` and :class:`RayBackend`."""

    name = "?"

    def map(self, fn: Callable[[Any, Any], Any], items: Sequence[Any], shared: Any = None,
            description: str | None = None) -> list[Any]:
        raise NotImplementedError

    def model_pool(self, model: ModelRef, loaded: Any = None) -> "ModelPool":
        """Workers holding ``model`` (``loaded``: an already loaded copy the local backend uses as it is);
        use as a context manager, and send it jobs with :meth:`ModelPool.map` / :meth:`ModelPool.imap`."""
        raise NotImplementedError

    def provenance(self) -> dict[str, Any]:
        return {"backend": self.name}


class LocalBackend(Backend):
    """Everything in this process, one item after another (each analysis keeps its own threads)."""

    name = "local"

    def map(self, fn, items, shared=None, description=None):
        from ._progress import track

        items = list(items)
        it = items if description is None else track(items, description)
        return [fn(shared, x) for x in it]

    def model_pool(self, model, loaded=None):
        return _LocalPool(model, loaded)


class RayBackend(Backend):
    """Ray tasks for :meth:`map`, Ray actors (one model each) for :meth:`map_model`.

    ``address``: an existing cluster (``"auto"``, ``"ray://host:port"``); ``None`` starts a local
    instance with ``num_cpus`` CPUs (default: all). ``workers``: how many model actors at most
    (default: the cluster's CPUs divided by ``cpus_per_worker``).
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, workers: int | None = None,
                 cpus_per_worker: float = 1.0, max_retries: int = 3):
        ray = _import_ray()
        self.address = address
        self.max_retries = int(max_retries)
        self.cpus_per_worker = float(cpus_per_worker)
        if not ray.is_initialized():
            env = {k: os.environ[k] for k in _FORWARDED if k in os.environ}
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "runtime_env": {"env_vars": env} if env else None}
            if address is None:
                kwargs["num_cpus"] = num_cpus
            else:
                kwargs["address"] = address
            try:
                ray.init(**{k: v for k, v in kwargs.items() if v is not None})
            except ConnectionError as e:
                raise ConfigError(f"could not join the Ray cluster at {address!r} ({e}); start one with 'ray start "
                                  "--head' or drop --address to start a local instance") from None
        total = int(ray.cluster_resources().get("CPU", 1))
        self.workers = max(1, int(workers or max(1, total // max(self.cpus_per_worker, 1))))

    def provenance(self) -> dict[str, Any]:
        ray = _import_ray()
        return {"backend": "ray", "ray": ray.__version__, "address": self.address or "local instance",
                "cluster_cpus": int(ray.cluster_resources().get("CPU", 0)), "model_workers": self.workers}

    def map(self, fn, items, shared=None, description=None):
        ray = _import_ray()
        items = list(items)
        if not items:
            return []
        self.shutdown()  # model actors hold CPUs that the tasks need
        ref = ray.put(shared)
        task = ray.remote(num_cpus=1, max_retries=self.max_retries)(_apply)
        futures = [task.remote(fn, ref, x) for x in items]
        return _gather(ray, futures, description)

    def model_pool(self, model, loaded=None):
        return _RayPool(self, model)

    def _model_actors(self) -> list[Any]:
        """The model actors: started on first use and kept for the process (shared by every RayBackend in it),
        so worker processes and their imports are reused from one model to the next. They hold CPUs;
        :meth:`map` stops them first so that its tasks can run."""
        key = (self.workers, self.cpus_per_worker)
        if _ACTORS.get("key") != key or not _ACTORS.get("actors"):
            self.shutdown()
            ray = _import_ray()
            cls = ray.remote(num_cpus=self.cpus_per_worker, max_restarts=self.max_retries,
                             max_task_retries=self.max_retries)(_ModelWorker)
            _ACTORS.update(key=key, actors=[cls.remote() for _ in range(self.workers)])
        return _ACTORS["actors"]

    def shutdown(self) -> None:
        """Stop the model actors (the Ray instance stays up)."""
        ray = _import_ray()
        for a in _ACTORS.get("actors") or []:
            ray.kill(a)
        _ACTORS.clear()



class ModelPool:
    """Jobs ``(function name in geomsteer.workers, args, kwargs)`` run against one model; results in job order."""

    def __enter__(self) -> "ModelPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        pass

    def imap(self, jobs: Sequence[tuple[str, tuple, dict]]):
        raise NotImplementedError

    def map(self, jobs: Sequence[tuple[str, tuple, dict]], description: str | None = None) -> list[Any]:
        from ._progress import track

        jobs = list(jobs)
        it = self.imap(jobs)
        return list(it if description is None else track(it, description, total=len(jobs)))

    def run(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """One job, on one worker."""
        return self.map([(name, args, kwargs)])[0]


class _LocalPool(ModelPool):
    def __init__(self, model: ModelRef, loaded: Any = None):
        self.model = loaded if loaded is not None else model.load()

    def imap(self, jobs):
        return (_call(self.model, j) for j in jobs)

    def close(self) -> None:
        self.model = None


class _RayPool(ModelPool):
    """The backend's model actors, each loading this model once (and dropping the model it held before);
    a job goes to whichever actor is free next."""

    def __init__(self, backend: RayBackend, model: ModelRef):
        self.actors = backend._model_actors()
        self.model = model

    def imap(self, jobs):
        from ray.util import ActorPool

        jobs = list(jobs)
        if not jobs:
            return iter(())
        return ActorPool(self.actors[: len(jobs)]).map(lambda a, j: a.run.remote(self.model, j), jobs)


def _apply(fn, shared, item):
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return fn(shared, item)


class _ModelWorker:
    """A Ray actor holding one loaded model at a time (the last one asked for)."""

    def __init__(self):
        import torch

        torch.set_num_threads(1)
        os.environ.setdefault("GEOMSTEER_QUIET", "1")
        self.ref: ModelRef | None = None
        self.model = None

    def run(self, ref: ModelRef, job):
        if ref != self.ref:
            self.model, self.ref = None, None  # free the old model before loading the next
            self.model, self.ref = ref.load(), ref
        return _call(self.model, job)


def _gather(ray, futures, description):
    if description is None:
        return ray.get(futures)
    from ._progress import track

    return [ray.get(f) for f in track(futures, description)]


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("the Ray backend needs Ray, which is not installed: pip install 'geomsteer[ray]' (or pip "
                          "install ray); without it use the default --backend local") from None
    return ray


def get_backend(backend: "str | Backend | None" = None, address: str | None = None, **kwargs: Any) -> Backend:
    """A backend by name (``"local"``, ``"ray"``), or the one given."""
    if isinstance(backend, Backend):
        return backend
    if backend in (None, "local"):
        if address is not None:
            raise ConfigError(f"--address {address!r} names a Ray cluster, but the backend is local; add --backend ray")
        return LocalBackend()
    if backend == "ray":
        return RayBackend(address=address, **kwargs)
    raise ConfigError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
