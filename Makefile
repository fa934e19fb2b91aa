# netagg: the README's commands. Each target sets up what it needs on a fresh Debian machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# This machine kind has a local CPU wheel of exactly this torch; any other spec pulls CUDA.
TORCH  ?= torch==2.13.0

.PHONY: all demo demo-allreduce demo-gpt proto test lint typecheck unit bench bench-quick bench-bmv2 clean install sysdeps p4

all: test

sysdeps:
	@# A Debian python3 without venv/ensurepip needs python3-venv (root installs it).
	@$(PYTHON) -c "import venv, ensurepip" 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq python3-venv python3-pip; \
	  else echo "need python3-venv: apt-get install python3-venv" >&2; exit 1; fi; }
	@# Tools the network tests use (they skip, saying why, without them): best effort, root only.
	@# mininet: mnexec for the Mininet tests (its switch nodes are netagg's own, so Open vSwitch,
	@# which the package pulls in, need not run); tc (iproute2) for their TCLinks; ethtool for TCP
	@# across raw-Ethernet switch nodes (mininet_topos/netns.py turns their ports' offloads off).
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; for t in ip:iproute2 ping:iputils-ping nft:nftables ethtool:ethtool mnexec:mininet; do \
	    command -v $${t%%:*} >/dev/null || missing="$$missing $${t#*:}"; done; \
	  [ -z "$$missing" ] || { apt-get update -qq && apt-get install -y -qq $$missing; } || true; fi

$(STAMP): pyproject.toml netagg/_kernels.c | sysdeps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev,torch,bmv2]"
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/netagg demo

demo-allreduce: $(STAMP)
	$(BIN)/netagg demo-allreduce

# A small GPT trained with FSDP2 in bf16 over the netagg torch.distributed backend, then over gloo.
demo-gpt: $(STAMP)
	$(BIN)/netagg demo --gpt --out out/demo-gpt

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python proto/codegen.py --check

proto: $(STAMP)
	$(BIN)/python proto/codegen.py

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit tests/conformance -q

test: $(STAMP) lint typecheck
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/allreduce.py --out out/bench
	$(BIN)/python bench/ddp.py --out out/bench
	$(BIN)/python bench/collectives.py --full --out out/bench

bench-quick: $(STAMP)
	$(BIN)/python bench/allreduce.py --quick --out out/bench-quick
	$(BIN)/python bench/collectives.py --out out/bench-quick

# The P4 program for BMv2: p4c-bm2-ss from $(NETAGG_P4_PREFIX)/bin or PATH; output in build/p4/
# (git-ignored). ELEMENTS=32 compiles another packet size (a multiple of 8, 8-64).
P4C      ?= $(if $(NETAGG_P4_PREFIX),$(NETAGG_P4_PREFIX)/bin/p4c-bm2-ss,p4c-bm2-ss)
ELEMENTS ?= 64
P4_SRC   := $(wildcard p4/*.p4 p4/include/*.p4 p4/controls/*.p4)

p4: build/p4/netagg.json build/p4/forward.json

build/p4/%.json: p4/%.p4 $(P4_SRC)
	@command -v $(P4C) >/dev/null || { echo "p4c-bm2-ss not found: put it on PATH or set NETAGG_P4_PREFIX (see README, BMv2)" >&2; exit 1; }
	@mkdir -p build/p4
	$(P4C) --std p4-16 -DNETAGG_ELEMENTS=$(ELEMENTS) -o $@ --p4runtime-files build/p4/$*.p4info.txt $<

bench-bmv2: $(STAMP) p4
	$(BIN)/python bench/bmv2.py --out out/bench-bmv2

clean:
	rm -rf build out .pytest_cache .mypy_cache .ruff_cache
