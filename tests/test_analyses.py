"""The notebooks in analyses/ run top to bottom (jupytext sources, executed with nbclient).

CI runs each with smaller sizes set right after its parameters cell (never a skipped cell)."""

import json
import re
import sys
from pathlib import Path

import pytest

from geomsteer.stats import STAT_KEYS

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import notebooks  # noqa: E402  (tools/notebooks.py: the executor and renderer make analyses runs)

# notebook -> parameter overrides for CI (the defaults are what a researcher runs)
# ({sae} and {out} are filled in by the test: the shared small SAE of conftest.py, and a directory the
# notebook saves its results in for the checks below)
NOTEBOOKS = {
    "park2024_hierarchy.py": 'models = ["gemma-3-270m"]\nmin_tokens = 300\nnull_draws = 2',
    "steering_decomposition.py": ('sae = {sae!r}\nalphas = (-2, 0, 2)\nn_neutral = 4\nn_null = 6\ndecompose_k = 8\n'
                                  'out = {out!r}'),
    "cross_model_similarity.py": ('n_words = 240\nlayers = "every:6"\nn_permutations = 20\nscan_permutations = 20\n'
                                  'saes = [{sae!r}, None]\nsae_tokens = 1024\nsae_eval_tokens = 1024\nsae_width = 64\n'
                                  'feature_texts = 40\nout = {out!r}'),
    "mapper_sae_lens.py": 'sae = {sae!r}\nlayer = 6\nmax_words = 400\nn_cubes = 6\nn_null = 4\nout = {out!r}',
}


@pytest.mark.real_model
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xdist_group(f"test_analyses.py::{n[:-3]}"))
                                  for n in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(name, tmp_path, small_sae):
    out = tmp_path / "out"
    nb = notebooks.execute(ROOT / "analyses" / name, NOTEBOOKS[name].format(sae=str(small_sae), out=str(out)),
                           tmp_path)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    html = [o for c in nb.cells for o in c.get("outputs", []) if "text/html" in o.get("data", {})]
    assert images and html  # the figures and the result tables rendered
    if name in CHECKS:
        CHECKS[name](out)
    page = notebooks.render(nb, name[:-3], pages=tmp_path / "pages")  # the docs page make analyses writes
    text = page.read_text()
    assert "injected-parameters" not in text and "![figure" in text and "```python" in text
    assert all((page.parent / m).stat().st_size > 1000 for m in re.findall(r"!\[figure \d+\]\(([^)]+)\)", text))


def _doc(path):
    return json.loads((path / "result.json").read_text())


def check_steering(out):
    """What the sentiment vector on Gemma 3 270M must show at the CI sizes (6 draws of each null)."""
    per = _doc(out / "vectors")["metrics"]["per_hook"]["blocks.6.hook_resid_post"]
    assert per["held_out_pair_accuracy"] > 0.9 and per["norm"] > 2 * per["random_sign_norm"]
    sw = _doc(out / "sweep")
    stats = sw["metrics"]["per_hook"]["blocks.6.hook_resid_post"]["statistics"]
    for name in ("logodds_shift_at_-2", "logodds_shift_at_2"):  # both nulls from the vector's own pairs
        st = stats[name]
        assert set(STAT_KEYS) <= set(st) and set(st["null"]) == {"shuffled_labels", "covariance_directions"}
        assert st["n"] == 16 and st["null"]["shuffled_labels"]["n_draws"] == 6
        assert st["observed"] > max(n["mean"] for n in st["null"].values())  # beats its nulls' means
    grid = sw["tables"]["grid"]
    assert grid[0]["logodds_shift"] < 0 < grid[2]["logodds_shift"] and grid[2]["kl_neutral"] > 0
    assert sw["metrics"]["per_hook"]["blocks.6.hook_resid_post"]["monotone"]
    dec = _doc(out / "decomposition")
    assert dec["provenance"]["prompt_split"] == {"fit_prompts": 8, "score_prompts": 8}
    e = dec["metrics"]["explained_fraction"]
    # no ordering asserted against the null: with the tiny CI SAE (128 latents, 8 atoms) a covariance
    # direction is explained about as well as the vector
    assert 0 < e["sparse_coding"] <= 1 and 0 < e["sparse_coding_random_direction"] <= 1
    assert len(dec["tables"]["sparse_coding"]["atoms"]) == 8 and dec["tables"]["features"][0]["top_contexts"]
    prop = _doc(out / "propagation")
    st = prop["metrics"]["statistics"]["features_changed:blocks.6.hook_resid_post"]
    assert st["alpha"] == 2 and st["null"]["shuffled_labels"]["n_draws"] == 6 and set(STAT_KEYS) <= set(st)
    assert prop["provenance"]["command"] is None  # saved from the notebook


def check_similarity(out):
    """Gemma and Qwen share word structure far beyond a shuffled pairing (240 words, every 6th layer)."""
    doc = _doc(out / "similarity")
    assert doc["provenance"]["layers"]["qwen2.5-0.5b"] == [f"blocks.{i}.hook_resid_post" for i in (0, 6, 12, 18, 23)]
    best = doc["best_pairs"][0]
    cka = best["linear_cka_debiased"]
    assert cka["score"] > 0.2 and abs(cka["permutation"]["mean"]) < 0.05
    assert best["mutual_knn"]["score"] > 2 * best["mutual_knn"]["permutation"]["mean"]
    assert "random_model" not in doc["scans"]["cross"]["linear_cka_debiased"]
    assert (out / "similarity" / "report.html").is_file()


CHECKS = {"steering_decomposition.py": check_steering, "cross_model_similarity.py": check_similarity}


def test_every_notebook_is_executed_in_ci():
    found = sorted(p.name for p in (ROOT / "analyses").glob("*.py"))
    assert found == sorted(NOTEBOOKS), f"give every notebook CI sizes in NOTEBOOKS: {set(found) ^ set(NOTEBOOKS)}"
    pages = sorted(p.stem + ".py" for p in (ROOT / "docs" / "analyses").glob("*.md"))
    assert pages == found, f"render every notebook's page with make analyses: {set(found) ^ set(pages)}"
    nav = (ROOT / "mkdocs.yml").read_text()
    assert all(f"analyses/{n[:-3]}.md" in nav for n in found)


def test_large_pngs_are_palette_encoded_for_the_docs():
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray((rng.random((300, 400, 3)) * 255).astype("uint8")).save(buf, format="PNG")
    big = buf.getvalue()
    small = notebooks.small_png(big, limit=1000)
    assert len(small) < len(big) / 2 and Image.open(io.BytesIO(small)).size == (400, 300)
    assert notebooks.small_png(big[:500] + b"", limit=1000) == big[:500]  # under the limit: untouched


def test_a_notebook_that_raised_renders_nothing_and_removes_nothing(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1/0", outputs=[nbformat.v4.new_output(
        "error", ename="ZeroDivisionError", evalue="division by zero", traceback=[])])])
    old = tmp_path / "x_files" / "1.png"
    old.parent.mkdir()
    old.write_bytes(b"kept")
    with pytest.raises(RuntimeError, match="x: a cell raised ZeroDivisionError: division by zero"):
        notebooks.render(nb, "x", pages=tmp_path)
    assert old.read_bytes() == b"kept" and not (tmp_path / "x.md").exists()
