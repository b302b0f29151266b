# The two commands of the README: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export TCP_NODELAY := 1

.PHONY: demo test lint typecheck system venv bench chaos train evaluate clean

# onnxruntime and onnxruntime-openvino install the same module: either is removed first, so
# the build pyproject.toml names for this platform is installed alone.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip uninstall -q -y onnxruntime onnxruntime-openvino 2>/dev/null || true
	$(BIN)/python -m pip install -q -e '.[dev,train]'
	touch $(STAMP)

venv: $(STAMP)

system:
	./scripts/system-deps.sh

demo: $(STAMP)
	NODULEFLOW_SKIP_BROWSER=1 ./scripts/system-deps.sh
	$(BIN)/noduleflow demo

test: $(STAMP) system
	$(BIN)/ruff check services tests
	$(BIN)/ruff format --check services tests
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit tests/integration tests/e2e

lint: $(STAMP)
	$(BIN)/ruff check services tests
	$(BIN)/ruff format --check services tests

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP) system
	$(BIN)/python tests/perf/bench_ingest.py
	$(BIN)/python tests/perf/bench_analyze.py
	$(BIN)/python tests/perf/bench_worker.py
	$(BIN)/python tests/perf/bench_api.py
	$(BIN)/python tests/perf/bench_turnaround.py
	$(BIN)/python tests/perf/bench_burst.py

# The chaos suite (not part of `make test`; about 3 minutes on 2 cores): the distributed form
# under a seeded storm of kills, broker and database cuts and a full disk (tests/chaos/run.py).
CHAOS_SEED ?= 1717
chaos: $(STAMP) system
	$(BIN)/python -m tests.chaos.run --seed $(CHAOS_SEED)

train: $(STAMP)
	$(BIN)/noduleflow train
	$(BIN)/noduleflow train --out models/nodule-seg --rescore-only

evaluate: $(STAMP)
	$(BIN)/noduleflow evaluate

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
