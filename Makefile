# The two set-up commands are `make run` and `make test`; both create .venv when it is missing.
# Tests force HF_HUB_OFFLINE=1 themselves (tests/conftest.py); `make run` on a GPU host may use the hub.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME := $(CURDIR)/.dagster_home
export TOKENIZERS_PARALLELISM := false

.PHONY: run ui test lint install bench-incremental bench-scoring bench-gpu

$(BIN)/ragft: pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $@

install: $(BIN)/ragft

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

run: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/ragft run

ui: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000

test: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check ragft_dagster tests
	$(BIN)/ruff format --check ragft_dagster tests
	$(BIN)/mypy

# Full vs. incremental data + index stages on a 34-document corpus (figures in the README).
bench-incremental: install
	$(BIN)/python -m ragft_dagster.bench incremental --json .artifacts/bench-incremental.json

# Batched log-likelihood scoring vs. the published generate-and-parse protocol, quickstart questions
# with RAG (figures in the README; `python -m ragft_dagster.bench scoring --model DIR` for a real model).
bench-scoring: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m ragft_dagster.bench scoring --json .artifacts/bench-scoring.json

# GPU host only (elsewhere it stops with a message): SFT LoRA, DPO and MCQ-scoring throughput and
# MFU of a random-init Mistral-7B-shaped model at the published settings, and the published SFT run
# projected from them (targets: <= 4 min and MFU >= 40% on one H100). Nothing is downloaded;
# `python -m ragft_dagster.gpu_bench --shape tiny --device cpu` checks the script on any machine.
bench-gpu: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m ragft_dagster.gpu_bench --json .artifacts/bench-gpu.json
