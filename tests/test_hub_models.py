"""Hub models offline: the commands run against fabricated Hugging Face caches (tests/hubcache.py), in a
subprocess with HF_HOME pointing at the cache and HF_HUB_OFFLINE=1, as a user's shell would run them."""

import json
import os
import subprocess
import sys

import pytest
from hubcache import PYTHIA_70M, fabricate_gemma_2b, fabricate_pythia_70m


def geomsteer(argv, hf_home, tmp_path, timeout=900):
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "GEOMSTEER_QUIET": "1",
           "GEOMSTEER_CACHE": str(tmp_path / "geomsteer-cache"), "OMP_NUM_THREADS": "1"}
    env.pop("GEOMSTEER_KEEP_MODELS", None)
    return subprocess.run([sys.executable, "-m", "geomsteer", *argv], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def gemma_2b_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("hf-gemma")
    fabricate_gemma_2b(home)
    return home


def test_hierarchy_on_gemma_2b_from_the_hub_cache(gemma_2b_home, tmp_path):
    out = tmp_path / "h"
    p = geomsteer(["hierarchy", "--model", "gemma-2b", "--null-draws", "2", "--min-tokens", "1500",
                                 "--out", str(out)], gemma_2b_home, tmp_path)
    assert p.returncode == 0, p.stderr
    doc = json.loads((out / "result.json").read_text())
    prov = json.dumps(doc["provenance"])
    assert "huggingface-cache" in prov and "google/gemma-2b" in prov
    assert doc["metrics"]["heldout_projection"]["null"]  # the statistics ran, with their nulls


def test_hub_weights_that_do_not_match_transformer_lens_get_a_clear_message(gemma_2b_home, tmp_path):
    # --layers runs the model in TransformerLens, whose own configuration of gemma-2b has 18 layers of 2048
    p = geomsteer(["hierarchy", "--model", "gemma-2b", "--layers", "0", "--out", str(tmp_path / "h")],
                  gemma_2b_home, tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "do not match TransformerLens's configuration for google/gemma-2b (TransformerLens expects layers 18, " \
           "d_model 2048" in p.stderr, p.stderr
    assert "the files have layers 2, d_model 16" in p.stderr and "delete it and download google/gemma-2b again" in p.stderr


@pytest.mark.real_model
def test_sae_train_and_steer_compute_on_a_pythia_70m_shaped_model(tmp_path):
    home = tmp_path / "hf"
    snap = fabricate_pythia_70m(home)
    cfg = json.loads((snap / "config.json").read_text())
    assert {k: cfg[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size")} == \
        {k: PYTHIA_70M[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size")}
    sae = tmp_path / "sae"
    p = geomsteer(["sae", "train", "--model", "pythia-70m", "--hook", "blocks.2.hook_resid_post", "--tokens", "4096",
                   "--d-sae", "64", "--k", "8", "--batch-size", "512", "--epochs", "1", "--eval-tokens", "1024",
                   "--ce-documents", "16", "--out", str(sae)], home, tmp_path)
    assert p.returncode == 0, p.stderr
    meta = json.loads((sae / "geomsteer.json").read_text())
    assert meta["model"] == "pythia-70m" and meta["tokens"] >= 4096
    steer = tmp_path / "steer"
    p = geomsteer(["steer", "compute", "--model", "pythia-70m", "--layers", "2,4", "--out", str(steer)], home, tmp_path)
    assert p.returncode == 0, p.stderr
    assert (steer / "vectors.safetensors").stat().st_size > 4 * 512
