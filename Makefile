# TokenBook — every command a user needs. `make help` lists them.
#   make reproduce      run every built chapter (gpu scale with CUDA, else cpu) and build the book
#   make test           the test suite (what CI runs)
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tokenbook-setup
SCALE  ?= auto
C      ?=
O      ?=
OVERRIDES := $(foreach o,$(O),-o $(o))
# pip finds torch 2.13.0's CPU wheel on this kind of machine under /opt/wheels when it exists.
PIP_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: help setup test test-fast reproduce chapter book bench data lab list validate clean

help:
	@echo "make setup                 create $(VENV) with the pinned packages (idempotent)"
	@echo "make reproduce             run every built chapter (SCALE=auto|smoke|cpu|gpu), then build the book"
	@echo "make chapter C=prepacking  run one chapter (SCALE=cpu by default for it; O='chapter.n_prompts=16 ...')"
	@echo "make book                  build the HTML book from executed notebooks and results (never executes)"
	@echo "make test                  run the tests (CI); make test-fast skips notebook and book builds"
	@echo "make bench                 kernel benchmarks against PyTorch baselines (needs CUDA)"
	@echo "make lab                   open the notebooks in JupyterLab"
	@echo "make list | validate | clean"

# A stamp makes re-running instant; editing requirements.txt or pyproject.toml re-runs the install.
# On a machine whose python3 already has a CUDA torch, the venv sees it and keeps it (the lines
# marked `cpu-only` in requirements.txt are skipped).
$(STAMP): requirements.txt pyproject.toml
	@set -euo pipefail; \
	if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then \
	  echo "setup: CUDA torch found in python3; the venv reuses it"; cuda=1; venv_flags=--system-site-packages; \
	else cuda=0; venv_flags=; fi; \
	[ -x $(PY) ] || python3 -m venv $$venv_flags $(VENV); \
	reqs=$$(mktemp); grep -v -- 'no-deps' requirements.txt | { if [ $$cuda = 1 ]; then grep -v 'cpu-only'; else cat; fi; } > $$reqs; \
	$(PY) -m pip install -q --disable-pip-version-check $(PIP_LINKS) -r $$reqs; \
	$(PY) -m pip install -q --disable-pip-version-check --no-deps $$(grep -- 'no-deps' requirements.txt | sed 's/#.*//'); \
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .; \
	rm -f $$reqs; touch $(STAMP); echo "setup: $(VENV) ready"

setup: $(STAMP)

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

reproduce: setup
	@status=0; $(PY) -m tokenbook run --scale $(SCALE) $(OVERRIDES) || status=$$?; \
	$(PY) -m tokenbook book; exit $$status

chapter: setup
	@[ -n "$(C)" ] || { echo "usage: make chapter C=<slug> [SCALE=cpu] [O='key=value ...']  (make list shows slugs)"; exit 2; }
	$(PY) -m tokenbook run $(C) --scale $(if $(filter auto,$(SCALE)),cpu,$(SCALE)) $(OVERRIDES)

book: setup
	$(PY) -m tokenbook book

bench: setup
	$(PY) -m tokenbook.kernels.bench_all --out results/bench

data: setup
	$(PY) -m tokenbook.data prepare
	$(PY) -m tokenbook.tokenizers table

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

list: setup
	@$(PY) -m tokenbook list

validate: setup
	$(PY) -m tokenbook validate

clean:
	rm -rf build/ results/smoke/ .pytest_cache
