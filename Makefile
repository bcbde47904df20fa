# The README's commands. Each target is idempotent: a second run skips what is already done.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
IGPT := $(VENV)/bin/igpt
STAMP := $(VENV)/.installed
DATASET ?= mnist

SIZES ?= s m l
COURSE := 01_data 02_augmentation 03_centroids 04_model 05_training 06_completion 07_evaluation

.PHONY: all setup setup-page setup-test constraints browser data centroids augment pipeline sweep report test explorer explorer-screenshot gpu-session-data clean

# The main job: set up, fetch the data, run every course notebook on the default configuration (the
# `course` recipe, trained on the CPU), then rebuild figures/ and report/ from the run folder. It
# needs no root and no browser.
all: setup data centroids augment pipeline report

# A virtual environment with the project installed (editable) and what each job needs, at the
# versions the project is tested with (constraints.txt): the main job the library and the course's
# notebooks ([course]), the explorer page Voila too ([page]), the tests everything: their tools
# ([test]), the page and transformers ([hf]: the ImageGPT import and export tests).
PIP_INSTALL := $(PY) -m pip install --quiet -c constraints.txt -e
setup: $(STAMP)
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) '.[course]'
	touch $(STAMP)

setup-page: $(STAMP)-page
$(STAMP)-page: $(STAMP)
	$(PIP_INSTALL) '.[course,page]'
	touch $@

setup-test: $(STAMP)-test
$(STAMP)-test: $(STAMP)
	$(PIP_INSTALL) '.[course,page,hf,test]'
	touch $@

# constraints.txt from .venv, once `make test` has passed in it (after a change of versions).
constraints:
	{ grep '^#' constraints.txt; $(PY) -m pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

# Debian's chromium for the explorer's browser test (Playwright's own browser download needs the
# open web), installed where apt-get is and we are root or may sudo; anywhere else, or if the
# install fails, the browser test is skipped and says why. Nothing else needs it.
CHROMIUM := /usr/bin/chromium
browser:
	@if [ -x $(CHROMIUM) ]; then exit 0; \
	elif ! command -v apt-get >/dev/null; then echo "no apt-get here: not installing chromium; the browser test will be skipped"; \
	elif [ "$$(id -u)" != 0 ] && ! sudo -n true 2>/dev/null; then echo "not root and no sudo: not installing chromium; the browser test will be skipped"; \
	else echo "installing Debian's chromium for the browser test (apt-get)"; sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		{ $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null \
		|| echo "apt-get could not install chromium: the browser test will be skipped"; fi

data: setup
	$(IGPT) data --dataset $(DATASET)

centroids: data
	$(IGPT) centroids --dataset $(DATASET) --clusters 16 --figure figures/$(DATASET)_palette.png

augment: data
	$(IGPT) augment --dataset $(DATASET) --grid figures/$(DATASET)_augmented.png

# The course notebooks on their defaults (the `course` recipe: 16x16 images, about 20 minutes of
# training on 2 CPU cores), executed by papermill into runs/$(DATASET)-course/notebooks/ and recorded
# in report/runs/$(DATASET)-course/. Training skips a run folder that already holds the same finished run.
pipeline: data
	$(IGPT) sweep --sizes course --dataset $(DATASET) --notebooks $(COURSE)

# The S/M/L sweep (sized for a GPU): training, completion and evaluation notebooks per size.
# The long CPU experiments are named parameter sets of the same notebooks: `igpt experiment --list`,
# then e.g. `igpt experiment ladder-cpu-s --budget-minutes 150` (runs/ladder-cpu-s, report/runs/ladder-cpu-s).
sweep: data
	$(IGPT) sweep --sizes $(SIZES) --dataset $(DATASET) --preset-schedule

# The report: the report notebooks (notebooks/09 onwards) executed in place on the records under
# report/runs/ and report/bench/, exported to report/README.md, report/index.html and report/figures/.
report: setup
	$(IGPT) report

test: setup-test browser
	$(PY) -m pytest

# The completion explorer as a page of its own (Voila): open http://$(HOST):$(PORT)/ in a browser.
# MODEL picks the model (a shipped name or a .ckpt/.safetensors path; default: the shipped mnist).
HOST ?= 127.0.0.1
PORT ?= 8866
MODEL ?= $(IGPT_EXPLORER_MODEL)
# Each page load starts a kernel of its own; one idle for EXPLORER_IDLE_SECONDS (its page closed, or
# open and untouched) is shut down, so that visitors who leave do not keep their kernels (a busy
# kernel, one still completing, is not). A visitor who comes back after that reloads the page.
EXPLORER_IDLE_SECONDS ?= 900
EXPLORER_CULL_INTERVAL ?= 60
explorer: setup-page
	IGPT_EXPLORER_MODEL='$(MODEL)' $(VENV)/bin/voila notebooks/08_explorer.ipynb --no-browser --Voila.ip=$(HOST) --port=$(PORT) \
		--MappingKernelManager.cull_idle_timeout=$(EXPLORER_IDLE_SECONDS) \
		--MappingKernelManager.cull_interval=$(EXPLORER_CULL_INTERVAL) --MappingKernelManager.cull_connected=True

# figures/explorer.png: the browser test's page after its completion, by MODEL, else the shipped
# mnist model, else the tests' tiny checkpoint.
explorer-screenshot: setup-test browser
	IGPT_EXPLORER_MODEL='$(or $(MODEL),$(if $(wildcard models/mnist.safetensors),mnist))' \
	IGPT_EXPLORER_SCREENSHOT=figures/explorer.png $(PY) -m pytest tests/test_explorer_page.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

# MNIST and its palette (after `make data centroids`) packed for a lent GPU machine: the device tool
# carries data/gpu-session.tar.gz to scripts/gpu-session.sh.
gpu-session-data:
	tar -czf data/gpu-session.tar.gz data/MNIST/raw data/palettes/mnist-k16-28px-seed0.npy
