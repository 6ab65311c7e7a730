# Two commands on a fresh machine: `make run` (the main job) and `make test` (the test suite).
# Both create .venv and install the project first (CPU torch, then the project with its dev extra).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test bench bench-env device-wheels clean

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

# The tutorial benchmark runs in its own scratch venv, with torchdyn and torchode beside the project (never
# dependencies of nodecore). torchdyn goes in without its declared deps (they pull torchvision and notebook
# tooling); `from torchdyn.core import NeuralODE` needs torchcde -> torchsde -> trampoline and pytorch-lightning.
BENCH_VENV ?= .venv-bench
BENCH_PYTHON ?= python3.11
BENCH_PY := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_STAMP): pyproject.toml
	$(BENCH_PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install --quiet --upgrade pip
	# CPU torch first, as for .venv; then the project, then the other libraries (never the project's deps).
	$(BENCH_PY) -m pip install --quiet torch==2.13.0
	$(BENCH_PY) -m pip install --quiet -e .
	$(BENCH_PY) -m pip install --quiet torchode==1.0.1 pytorch-lightning==2.6.6
	$(BENCH_PY) -m pip install --quiet --no-deps torchdyn==1.0.6 torchcde==0.2.5 torchsde==0.2.6 trampoline==0.1.2
	$(BENCH_PY) -m pip uninstall --quiet -y torchvision 2>/dev/null || true
	$(BENCH_PY) -c "import torch, torchode; from torchdyn.core import NeuralODE; print('torch', torch.__version__)"
	touch $(BENCH_STAMP)

bench-env: $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BENCH_PY) bench/tutorial_bench.py --threads 1

# What bench/gpu_check.sh needs on a GPU machine with PyTorch and torchdiffeq but no package registry: pure-Python
# wheels of the libraries nodecore and the benchmark import beside those (Python 3.12 there).
device-wheels:
	python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_17_x86_64 -d .whl torchsde==0.2.6 trampoline==0.1.2 torchode==1.0.1 \
		torchtyping==0.1.5 typeguard==2.13.3

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
