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

# A second, small environment: the latest timm (which has an optimizer registry) put in front of the main
# environment's timm 1.0.9 (no registry, pinned by robustbench), to run the timm plugin tests against both.
TIMM_LATEST := .timm-latest
$(TIMM_LATEST)/.installed: $(VENV)/.installed
	rm -rf $(TIMM_LATEST)
	$(BIN)/pip install -q --no-deps --target $(TIMM_LATEST) 'timm>=1.0.12'
	touch $@

test: $(VENV)/.installed $(TIMM_LATEST)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest
	ADV_TRANSPORT_EXPECT_TIMM_REGISTRY=0 $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_timm_plugin.py
	ADV_TRANSPORT_EXPECT_TIMM_REGISTRY=1 PYTHONPATH=$(CURDIR)/$(TIMM_LATEST) \
		$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_timm_plugin.py

test-all: $(VENV)/.installed
	$(BIN)/python -m pytest -m ''

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) $(TIMM_LATEST) runs .pytest_cache .ruff_cache
