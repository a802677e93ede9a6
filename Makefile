PY ?= python3
VENV = .venv
BIN = $(VENV)/bin
TORCH_PIN = torch==2.13.0
# TORCH=cpu installs torch from PyTorch's CPU wheel index (a CPU-only machine whose pip
# would otherwise resolve the CUDA build); the default takes whatever pip is configured with
TORCH ?= default
TORCH_INDEX_cpu = --index-url https://download.pytorch.org/whl/cpu

RUN ?= runs/quick-$(shell date +%Y%m%d-%H%M%S)

.PHONY: install test lint lab clean evolve device-wheels

# Stamp file: re-run the install whenever pyproject.toml changes.
# torch is installed FIRST with an exact pin (local CPU wheel) so that the
# later `torch>=2.4` requirement is already satisfied and pip never pulls CUDA.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install $(TORCH_PIN) $(TORCH_INDEX_$(TORCH))
	$(BIN)/python -m pip install -e '.[dev,notebooks,sb3]'
	touch $@

install: $(VENV)/.installed

# The import ladder, the tests, then every notebook executed at the CI budget (EVORL_BUDGET=ci).
test: $(VENV)/.installed
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q tests
	EVORL_BUDGET=ci $(BIN)/python -m pytest -q --nbmake --nbmake-timeout=600 notebooks

# The main job: a quick search (bootstrapped from DQN, CartPole, 600 candidates) on local
# worker processes, one per core, into a new run folder; prints the top programs at the end.
evolve: $(VENV)/.installed
	$(BIN)/evorl-nb evolve --preset quick --out $(RUN) --backend local

# Wheels a GPU machine with no package index needs for bench/device_check.sh (its image
# has torch, numpy, sympy, tqdm, cloudpickle; not gymnasium): pure Python, any platform.
device-wheels: $(VENV)/.installed
	rm -rf .whl && mkdir -p .whl
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: -d .whl \
	  gymnasium==$$($(BIN)/python -c "import gymnasium; print(gymnasium.__version__)") \
	  farama-notifications==$$($(BIN)/python -c "from importlib.metadata import version; print(version('farama-notifications'))")

lint: $(VENV)/.installed
	$(BIN)/ruff check evorl_nb tests

# As root (containers) JupyterLab refuses to start without --allow-root.
lab: $(VENV)/.installed
	$(BIN)/jupyter lab notebooks/ $$(test "$$(id -u)" = 0 && echo --allow-root)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
