# One command to set up and run everything, one to run the tests.
#   make up     install (first time) and start Triton with the models + the gateway
#   make test   install (first time) and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# System packages a fresh Debian machine lacks: the status-page browser test drives
# Debian's chromium, the shared-cache tests start Debian's redis-server. `make test`
# installs them itself (as root, or through sudo), so the README's one command really
# does all the set-up, not only CI's script.
SYSDEPS := chromium redis-server
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: up test lint bench install sysdeps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[models,pytriton,dev,otlp]'
	touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(BIN)/router up --routes routes.yaml --host 127.0.0.1 --port 8080

sysdeps:
	@missing=""; for p in $(SYSDEPS); do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing (Debian packages)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing; \
	fi

# The suite on two workers, a test file to each at a time (its module fixtures stay
# whole): the integration tests mostly wait on Triton, Redis and timers, and serially
# kept the two cores under half busy (16.5 min against 9 on two workers, measured
# 2026-12-07). Each worker starts its own session Triton. The tests marked `alone`
# (the budget tests, the chaos scenarios) hold latency or recovery bounds against the
# CPU models' real speed: beside another worker's inference they missed them, so they
# run afterwards, by themselves. `pytest` alone runs everything serially.
test: $(STAMP) sysdeps
	$(BIN)/ruff check image_router tests bench examples
	$(BIN)/mypy
	$(BIN)/pytest -n 2 --dist loadfile -m "not alone"
	$(BIN)/pytest -m alone

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nginx)
	$(BIN)/python bench/models.py
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/observability_overhead.py --ratio 0.1 --ratio 0.01
	$(BIN)/python bench/scenario.py --json bench/results/scenario.json --plots docs
	$(BIN)/python bench/peers.py
	$(BIN)/python bench/cpu_breakdown.py
	$(BIN)/python bench/every_peer.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
