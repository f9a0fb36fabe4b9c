# One command to set up and run everything, one to run the tests.
#   make up     install (first time) and start Triton with the models + the gateway
#   make test   install (first time) and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: up test lint bench install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[models,pytriton,dev,otlp]'
	touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(BIN)/router up --routes routes.yaml --host 127.0.0.1 --port 8080

test: $(STAMP)
	$(BIN)/ruff check router tests bench
	$(BIN)/mypy
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/models.py
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/observability_overhead.py --ratio 0.1 --ratio 0.01

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
