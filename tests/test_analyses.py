"""The notebooks in analyses/ run top to bottom (jupytext sources, executed with nbclient).

CI runs each with smaller sizes set right after its parameters cell (never a skipped cell)."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# notebook -> parameter overrides for CI (the defaults are what a researcher runs)
NOTEBOOKS = {
    "park2024_hierarchy.py": 'models = ["gemma-3-270m"]\nmin_tokens = 300\nnull_draws = 2',
}


def _execute(name: str, overrides: str, workdir: Path):
    import jupytext
    import nbclient
    import nbformat

    nb = jupytext.read(ROOT / "analyses" / name)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(overrides, metadata={"tags": ["injected-parameters"]}))
    env_before = dict(os.environ)
    os.environ.update({"HF_HUB_OFFLINE": "1", "GEOMSTEER_QUIET": "1"})
    os.environ.pop("MPLBACKEND", None)  # the kernel's inline backend shows the figures
    try:
        client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                         resources={"metadata": {"path": str(workdir)}})
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    return nb


@pytest.mark.real_model
@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_notebook_runs_top_to_bottom(name, tmp_path):
    nb = _execute(name, NOTEBOOKS[name], tmp_path)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    html = [o for c in nb.cells for o in c.get("outputs", []) if "text/html" in o.get("data", {})]
    assert images and html  # the figures and the result tables rendered


def test_every_notebook_is_executed_in_ci():
    found = sorted(p.name for p in (ROOT / "analyses").glob("*.py"))
    assert found == sorted(NOTEBOOKS), f"give every notebook CI sizes in NOTEBOOKS: {set(found) ^ set(NOTEBOOKS)}"
