# Two entry points (see README): `make demo` runs the main job, `make test` runs the test suite.
# Each creates the virtual environment .venv on first use and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Offline datasets: ../shared/data when it exists (these machines), else torchvision downloads.
SHARED_DATA := $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)/mnist.npz),)
export ADV_TRANSPORT_DATA ?= $(SHARED_DATA)
endif

.PHONY: demo test test-all lint venv clean
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# pinned: installs from local disk on the project machines (an unpinned torch may pull a multi-GB download)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev,plugins]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/adv-transport demo

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

test-all: $(VENV)/.installed
	$(BIN)/python -m pytest -m ''

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
