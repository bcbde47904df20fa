# The README's commands. Each target is idempotent: a second run skips what is already done.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
IGPT := $(VENV)/bin/igpt
STAMP := $(VENV)/.installed
DATASET ?= mnist

.PHONY: all setup data centroids augment test clean

# The main job: set up, fetch the data, and run the pipeline on its default configuration.
all: setup data centroids augment

# A virtual environment with the project installed (editable) and its test tools.
setup: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

data: setup
	$(IGPT) data --dataset $(DATASET)

centroids: data
	$(IGPT) centroids --dataset $(DATASET) --clusters 16 --figure figures/$(DATASET)_palette.png

augment: data
	$(IGPT) augment --dataset $(DATASET) --grid figures/$(DATASET)_augmented.png

test: setup
	$(PY) -m pytest

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
