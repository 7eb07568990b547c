"""The Ray backend: the same numbers as a local run, a killed worker retried, and the messages.

One local Ray instance (2 CPUs, one model actor) serves the module; its workers are told to die once, at one shard
of one extraction (GEOMSTEER_FAULT_KILL_SHARD, read by geomsteer.workers.extract_shard)."""

import json
import os
import sys

import numpy as np
import pytest

from geomsteer import activations as A
from geomsteer import cli, models
from geomsteer.backend import LocalBackend, ModelRef, get_backend
from geomsteer.errors import ConfigError

ray = pytest.importorskip("ray")  # an optional extra: 'make test' installs it (pyproject's test extra)

KILLED = "killed-store/shard-00001.safetensors"


@pytest.fixture(scope="module")
def ray_backend(tmp_path_factory):
    marker = tmp_path_factory.mktemp("fault") / "killed-once"
    old = os.environ.get("GEOMSTEER_FAULT_KILL_SHARD")
    os.environ["GEOMSTEER_FAULT_KILL_SHARD"] = f"{KILLED}:{marker}"
    os.environ.setdefault("GEOMSTEER_QUIET", "1")
    try:
        be = get_backend("ray", num_cpus=2, workers=1)  # one model actor: the other test worker needs its core
        be.marker = marker
        yield be
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("GEOMSTEER_FAULT_KILL_SHARD", None)
        else:
            os.environ["GEOMSTEER_FAULT_KILL_SHARD"] = old


def _texts():
    from geomsteer import corpus

    return corpus.wordnet_glosses().texts[:64]


def _extract(model, ref, out, backend):
    return A.extract_to_store(model, _texts(), ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"], out,
                              model_name="tiny", batch_size=8, context_length=32, shard_tokens=200,
                              backend=backend, model_ref=ref, progress=False)


def test_extraction_on_ray_equals_local_and_survives_a_killed_worker(tiny_gemma, ray_backend, tmp_path):
    r = models.resolve(tiny_gemma)
    model = models.load_model(r)
    local = _extract(model, None, tmp_path / "local", LocalBackend())
    assert len(local.manifest["shards"]) >= 3
    on_ray = _extract(model, ModelRef(r), tmp_path / "killed-store", ray_backend)
    assert ray_backend.marker.exists()  # a worker died at shard 1 and its job ran again
    on_ray.verify()
    assert on_ray.manifest["complete"] and on_ray.n_tokens == local.n_tokens
    strip = lambda m: [{k: v for k, v in s.items()} for s in m["shards"]]  # noqa: E731
    assert strip(on_ray.manifest) == strip(local.manifest)  # the same files, byte for byte (sha256)
    for h in local.hooks:
        assert np.array_equal(on_ray.load(h), local.load(h))


def test_unit_activations_on_ray_equal_local(tiny_gemma, ray_backend):
    r = models.resolve(tiny_gemma)
    model = models.load_model(r)
    words = ["dog", "cat", "elephant", "photosynthesis", "tree", "antidisestablishmentarianism", "car"] * 40
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    want, kept, n_tok = A.unit_activations(model, words, hooks, batch_size=16, progress=False)
    with ray_backend.model_pool(ModelRef(r)) as pool:
        got, kept2, n_tok2 = A.unit_activations_pool(pool, words, hooks, batch_size=16, batches_per_job=2)
    assert np.array_equal(kept, kept2) and np.array_equal(n_tok, n_tok2)
    for h in hooks:
        assert np.array_equal(got[h], want[h])


def test_similarity_on_ray_equals_local(tiny_gemma, ray_backend, tmp_path, capsys):
    docs = []
    for name, extra in (("local", []), ("ray", ["--backend", "ray"])):
        out = tmp_path / name
        code = cli.main(["similarity", "--models", tiny_gemma, tiny_gemma, "--words", "200", "--permutations", "20",
                         "--out", str(out), *extra])
        assert code == 0, capsys.readouterr().err
        docs.append(json.loads((out / "result.json").read_text()))
    a, b = docs
    assert b["provenance"]["backend"]["backend"] == "ray" and a["provenance"]["backend"] == {"backend": "local"}
    for key in ("scans", "best_pairs", "groups", "metrics_at_best_pair", "best_pair_max_statistic"):
        assert json.dumps(a[key], sort_keys=True) == json.dumps(b[key], sort_keys=True), key


def test_similarity_metric_tasks_on_ray_equal_local(ray_backend, monkeypatch):
    """Every metric of the best pairs and the groups, with its permutation null, as Ray tasks."""
    from threadpoolctl import threadpool_limits

    from geomsteer.analyzers.similarity import SimilarityAnalyzer
    from geomsteer.types import Activations

    rng = np.random.default_rng(0)
    n, base = 160, rng.normal(size=(160, 4))
    side = lambda d, name: [Activations(base @ rng.normal(size=(4, d)) + rng.normal(size=(n, d)), [str(i) for i in range(n)],
                                        name, f"blocks.{i}.hook_resid_post", {}) for i in range(2)]  # noqa: E731
    a, b, rb = side(6, "A"), side(7, "B"), side(7, "rB")
    groups = ["g1" if i % 2 else "g2" for i in range(n)]
    calls = []
    real_map = ray_backend.map
    monkeypatch.setattr(ray_backend, "map", lambda fn, items, shared=None, description=None: calls.append(len(items))
                        or real_map(fn, items, shared, description))
    kw = dict(k=5, n_permutations=12, top_pairs=2, min_group=60, seed=2)
    with threadpool_limits(1):
        local = SimilarityAnalyzer(**kw).fit(a, b, random_b=rb, groups=groups).result().to_dict()
        on_ray = SimilarityAnalyzer(**kw).fit(a, b, random_b=rb, groups=groups, backend=ray_backend).result().to_dict()
    assert calls == [2 * 10 + 2 * 4]  # 2 pairs x (9 metrics + their fast nulls), 2 groups x (3 metrics + fast nulls)
    for key in ("metrics", "tables"):
        assert json.dumps(local[key], sort_keys=True) == json.dumps(on_ray[key], sort_keys=True), key


def test_hierarchy_on_ray_equals_local(ray_backend):
    from conftest import planted

    from geomsteer.analyzers.hierarchy import HierarchyAnalyzer

    gamma, hier = planted(seed=3)
    local = HierarchyAnalyzer(seed=1, n_null_draws=3, n_random_tokens=300).fit(gamma, hier)
    on_ray = HierarchyAnalyzer(seed=1, n_null_draws=3, n_random_tokens=300, backend=ray_backend).fit(gamma, hier)
    assert np.array_equal(local.directions_.vectors, on_ray.directions_.vectors)
    assert json.dumps(local.metrics_, sort_keys=True, default=float) == \
        json.dumps(on_ray.metrics_, sort_keys=True, default=float)


def test_backend_messages(monkeypatch, tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown backend 'spark': expected one of local, ray"):
        get_backend("spark")
    with pytest.raises(ConfigError, match="names a Ray cluster, but the backend is local; add --backend ray"):
        get_backend("local", address="auto")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ConfigError, match=r"pip install 'geomsteer\[ray\]'"):
        get_backend("ray")
    code = cli.main(["similarity", "--models", "gemma-3-270m", "qwen2.5-0.5b", "--backend", "ray",
                     "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'geomsteer[ray]'" in err and "Traceback" not in err
