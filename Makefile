# The two README commands: `make run` (set up, then the whole pipeline on embedded defaults) and
# `make test` (set up, then every test; .ci/run calls it). Everything installs from this repo's files.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_LOGGING_LEVEL ?= WARNING

.PHONY: setup run test test-fast lint bench bench-serving bench-setup bench-peer spark-setup redis clean

setup: $(VENV)/.installed

# torch first, from its pin in requirements-torch.txt (a CPU wheel lies on disk here; a GPU host gets the
# CUDA build), then the lock file (exact versions of everything else, tested together), then this package,
# editable.
$(VENV)/.installed: requirements-torch.txt requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"
	$(PY) -m pip install -q -r requirements-torch.txt
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $@

run: setup
	$(VENV)/bin/funnelflow run

# Two workers, one test file at a time each (--dist loadfile): the users of the ci_blessed fixture (one
# `dvc repro`) share a file, and so do the tests on a real Prefect API (never two servers at once).
test: setup bench-setup spark-setup redis lint
	$(PY) -m pytest -q -n 2 --dist loadfile

# ruff (style, imports, docstrings) and mypy (types); both must be clean.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test-fast: setup bench-setup redis
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not e2e"

# Every benchmark, each printing its tables (docs/benchmarks.md); BENCH_ROWS=100000 for a quick pass.
BENCH_ROWS ?= 100000 1000000 10000000
BENCH_DIR ?= /tmp/funnelflow-bench
bench: bench-setup redis
	$(PY) -m benchmarks.peer_rechub --cpu-bf16
	$(PY) -m benchmarks.serving --fresh --models mmoe,ple,aitm,htlnet
	$(PY) -m benchmarks.online
	$(PY) -m benchmarks.pipeline --flow --rows $(BENCH_ROWS) --plot docs/img/pipeline_scaling.png --work-dir $(BENCH_DIR)/flow
	$(PY) -m benchmarks.retrieval --rows $(BENCH_ROWS) --work-dir $(BENCH_DIR)/retrieval --max-gb 16 --max-seconds 600
	$(PY) -m benchmarks.train_throughput

# Serving cost of the champion in data/registry (after `make run`); SERVING_ARGS="--fresh" builds one.
bench-serving: setup
	$(PY) -m benchmarks.serving $(SERVING_ARGS)

# Benchmark-only peers (the `bench` extra: torch-rechub), never in the runtime stack; requirements.lock is
# a constraint there, so this cannot move torch or any locked package.
bench-setup: $(VENV)/.bench-installed

# Debian's redis-server for the online-store tests (installed as root when missing; the tests start and
# stop their own server with infra/redis.sh).
redis:
	infra/redis.sh install

$(VENV)/.bench-installed: requirements-bench.txt $(VENV)/.installed
	$(PY) -m pip install -q -r requirements-bench.txt
	touch $@

# The `spark` extra (pyspark, ~490 MB) for params.yaml features.offline_store {kind: spark} and its
# tests; requirements.lock is a constraint there too. Spark also needs Java 17+ on the machine.
spark-setup: $(VENV)/.spark-installed

$(VENV)/.spark-installed: requirements-spark.txt $(VENV)/.installed
	$(PY) -m pip install -q -r requirements-spark.txt
	touch $@

bench-peer: bench-setup
	$(PY) -m benchmarks.peer_rechub --cpu-bf16

clean:
	rm -rf data runs .pytest_cache
