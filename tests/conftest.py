import os

# Tests never reach the hub and never print progress bars.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GEOMSTEER_QUIET"] = "1"
# Each worker process loads a real model once and reuses it (geomsteer.models.load_model).
os.environ["GEOMSTEER_KEEP_MODELS"] = "1"
# Under pytest-xdist each worker has a core: one BLAS/OpenMP thread per process (set before numpy
# and torch load). Two workers with two threads each oversubscribe two cores, and spinning OpenMP
# threads then made token-by-token generation 5-9x slower. The notebooks' kernels inherit this.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    import threadpoolctl  # a pytest plugin may have loaded numpy's BLAS already: limit it too

    threadpoolctl.threadpool_limits(int(os.environ["OMP_NUM_THREADS"]))

import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from geomsteer.types import ConceptHierarchy  # noqa: E402


def make_hierarchy(edges, tokens, pos="n"):
    """A ConceptHierarchy from parent->child edges and a {name: token ids} mapping."""
    g = nx.DiGraph()
    for name, toks in tokens.items():
        g.add_node(name, tokens=np.array(sorted(set(toks)), dtype=np.int64), merged=[], definition="")
    g.add_edges_from(edges)
    for r in [n for n in g if g.in_degree(n) == 0]:
        for n, d in nx.single_source_shortest_path_length(g, r).items():
            g.nodes[n]["depth"] = d
    return ConceptHierarchy(g, pos, "synthetic", "▁", 1, {"n_categories": len(tokens)})


def planted(seed=0, d=48, n_leaf=60, vocab=3000, noise=0.3):
    """A planted two-level hierarchy: each node has its own random direction and a token's
    embedding is the sum of the directions on its path to the root, plus noise.

    root -> A, B;  A -> A1, A2, A3;  B -> B1, B2, B3. Returns (gamma, hierarchy).
    """
    rng = np.random.default_rng(seed)
    nodes = ["root", "A", "B", "A1", "A2", "A3", "B1", "B2", "B3"]
    parent = {"A": "root", "B": "root", "A1": "A", "A2": "A", "A3": "A", "B1": "B", "B2": "B", "B3": "B"}
    e = {n: rng.standard_normal(d) * (2.0 if n != "root" else 1.0) for n in nodes}
    gamma = rng.standard_normal((vocab, d)) * noise * 3
    ids = rng.permutation(vocab)
    tokens = {n: [] for n in nodes}
    k = 0
    for leaf in ["A1", "A2", "A3", "B1", "B2", "B3"]:
        leaf_ids = ids[k : k + n_leaf]
        k += n_leaf
        path = [leaf]
        while path[-1] in parent:
            path.append(parent[path[-1]])
        gamma[leaf_ids] = sum(e[p] for p in path) + noise * rng.standard_normal((n_leaf, d))
        for p in path:
            tokens[p].extend(leaf_ids.tolist())
    edges = [(p, c) for c, p in parent.items()]
    return gamma.astype(np.float32), make_hierarchy(edges, tokens)


@pytest.fixture(scope="session")
def gemma_unembedding():
    from geomsteer import models

    return models.load_unembedding("gemma-3-270m")


def tiny_model(tokenizer="gemma-3-270m", n_layers=2, d_model=16, seed=0, prepend_bos=None):
    """A HookedTransformer with random weights and a real model's tokenizer (no download).

    ``prepend_bos`` defaults to what the real model does: Gemma prepends its BOS, Qwen2.5 none."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from geomsteer import models

    tok = models.load_tokenizer(tokenizer)
    cfg = HookedTransformerConfig(n_layers=n_layers, d_model=d_model, d_head=4, n_heads=d_model // 4, n_ctx=64,
                                  d_vocab=len(tok), act_fn="relu", default_prepend_bos=(tokenizer != "qwen2.5-0.5b") if prepend_bos is None else prepend_bos,
                                  seed=seed)
    m = HookedTransformer(cfg)
    m.set_tokenizer(tok, default_padding_side="right")
    m.eval()
    return m


@pytest.fixture(scope="session")
def small_sae(tmp_path_factory):
    """A small SAE trained by 'geomsteer sae train' on Gemma 3 270M (real model; shared by the SAE,
    Mapper and clustering tests)."""
    import fcntl

    from geomsteer import cli

    # Under pytest-xdist each worker is its own session: the workers share one base directory, and
    # the first to take the lock trains the SAE that the others then read.
    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    out = root / "small_sae" / "sae"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "geomsteer.json").is_file():
            return out
        assert cli.main(["sae", "train", "--model", "gemma-3-270m", "--hook", "blocks.6.hook_resid_post",
                         "--tokens", "4096", "--d-sae", "128", "--k", "8", "--batch-size", "512", "--eval-tokens", "4096",
                         "--ce-documents", "16", "--out", str(out)]) == 0
    return out


# Scheduling (make test runs --dist loadgroup): a test file is one group, kept on one worker so that
# its module fixtures are built once, except the notebooks, each its own group (tests/test_analyses.py),
# so that the two workers share them. The longest groups go first, so that neither worker is left with
# a long one at the end while the other idles; the groups that need the shared SAE start first.
# In fact xdist (--dist loadgroup) hands the groups out by their number of tests, most first, and this
# order only breaks ties, so the one-test notebooks run near the end. Keeping this order instead
# (--no-loadscope-reorder), with the longest groups first, was measured slower here: 14 min 27 s against
# 12 min 20 s, the heavy groups side by side (notebook kernels beside the Ray tests).
FIRST = ["test_analyses.py::steering_decomposition", "test_cli_steer.py", "test_hub_models.py",
         "test_analyses.py::cross_model_similarity", "test_backend.py",
         "test_models.py", "test_analyses.py::mapper_sae_lens", "test_cli.py", "test_topology.py",
         "test_analyses.py::park2024_hierarchy", "test_api.py", "test_similarity.py", "test_steering_analyzers.py",
         "test_cli_features.py", "test_wheel.py", "test_steer_hierarchy.py", "test_hierarchy_analyzer.py",
         "test_hierarchy_layers.py", "test_features.py", "test_features_gemma.py",
         "test_erasure.py", "test_labels.py", "test_wordnet.py", "test_steering.py", "test_cli_sae.py"]


def _group(item) -> str:
    for mark in item.iter_markers("xdist_group"):
        return str(mark.args[0])
    return item.path.name


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(FIRST)}
    for item in items:
        if not any(item.iter_markers("xdist_group")):
            item.add_marker(pytest.mark.xdist_group(item.path.name))
    items.sort(key=lambda item: rank.get(_group(item), len(FIRST)))  # stable: order within a group is kept


def tiny_gemma_dir(root, n_layers=3, hidden=16, seed=0):
    """A Gemma 3 architecture with random weights and Gemma's tokenizer, saved as a local model directory
    (what a user passes as --model PATH)."""
    import torch
    import transformers as tf

    from geomsteer import models

    tok = models.load_tokenizer("gemma-3-270m")
    torch.manual_seed(seed)
    m = tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=n_layers,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=256, sliding_window=64))
    m.save_pretrained(root)
    tok.save_pretrained(root)
    return str(root)


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory):
    """One tiny random Gemma 3 directory (2 layers, width 16, Gemma's tokenizer) for the whole run; under
    pytest-xdist the first worker to take the lock writes it and the others read it."""
    import fcntl

    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    out = root / "tiny_gemma" / "model"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "config.json").is_file():
            tiny_gemma_dir(out.parent / "staging", n_layers=2)
            (out.parent / "staging").rename(out)
    return str(out)
