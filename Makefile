# Two commands on a fresh machine: `make run` (the main job) and `make test` (the test suite).
# Both create .venv and install the project first (CPU torch, then the project with its dev extra).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch first: a bare `torch` would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,lightning]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) flows/train_flow.py

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/tutorial_bench.py --threads 1

clean:
	rm -rf artifacts/* .pytest_cache

.PHONY: up down deploy worker
up: $(STAMP)
	$(PY) deployments/stack.py up

down: $(STAMP)
	$(PY) deployments/stack.py down

deploy: $(STAMP)
	$(PY) deployments/stack.py deploy

worker: $(STAMP)
	$(PY) deployments/stack.py worker --pool cpu
