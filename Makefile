# netagg: the README's commands. Each target sets up what it needs on a fresh Debian machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# This machine kind has a local CPU wheel of exactly this torch; any other spec pulls CUDA.
TORCH  ?= torch==2.13.0

.PHONY: all demo demo-allreduce proto test lint typecheck unit bench bench-quick clean install sysdeps

all: test

sysdeps:
	@# A Debian python3 without venv/ensurepip needs python3-venv (root installs it).
	@$(PYTHON) -c "import venv, ensurepip" 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq python3-venv python3-pip; \
	  else echo "need python3-venv: apt-get install python3-venv" >&2; exit 1; fi; }

$(STAMP): pyproject.toml | sysdeps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev,torch]"
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/netagg demo

demo-allreduce: $(STAMP)
	$(BIN)/netagg demo-allreduce

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python proto/codegen.py --check

proto: $(STAMP)
	$(BIN)/python proto/codegen.py

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

test: $(STAMP) lint typecheck
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/allreduce.py --out out/bench
	$(BIN)/python bench/ddp.py --out out/bench

bench-quick: $(STAMP)
	$(BIN)/python bench/allreduce.py --quick --out out/bench-quick

clean:
	rm -rf build out .pytest_cache .mypy_cache .ruff_cache
