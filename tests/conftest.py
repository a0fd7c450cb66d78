"""Shared fixtures: a small generated dataset, and the full data pipeline on it (real Feast, real GX)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("DO_NOT_TRACK", "1")
if "PYTEST_XDIST_WORKER" in os.environ:  # `make test` runs two workers: each its own Prefect home (SQLite)
    os.environ["PREFECT_HOME"] = f"{os.environ.get('PREFECT_HOME', '.prefect')}-{os.environ['PYTEST_XDIST_WORKER']}"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def params():
    from flows.params import load_params

    p = load_params(REPO / "params.yaml")
    return p.model_copy(update={"generate": p.generate.model_copy(update={"rows": 20_000, "days": 20, "seed": 3})})


@pytest.fixture(scope="session")
def small_data():
    from features.generate import generate

    return generate(rows=20_000, days=20, seed=3)


@pytest.fixture(scope="session")
def pipeline_data(tmp_path_factory, params):
    """Paths of a data dir taken through generate -> ingest -> features -> Feast -> training set."""
    from flows import steps
    from flows.params import Paths

    paths = Paths(tmp_path_factory.mktemp("pipeline"))
    steps.generate(params, paths)
    steps.ingest(params, paths)
    steps.build_features(params, paths)
    steps.features_apply(params, paths)
    steps.features_materialize(params, paths)
    steps.training_set(params, paths)
    return paths


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A Redis server on loopback (infra/redis.sh: installed when missing, a free port, in memory only),
    as its connection string "127.0.0.1:PORT"; stopped by its PID at the end. It fails, never skips,
    when Redis cannot be installed or started: the online-store tests must run."""
    folder, script = tmp_path_factory.mktemp("redis"), REPO / "infra" / "redis.sh"
    start = subprocess.run(["bash", str(script), "start", str(folder)], capture_output=True, text=True, timeout=900)
    if start.returncode != 0:
        pytest.fail(f"infra/redis.sh start {folder} failed: {start.stderr.strip()}", pytrace=False)
    yield start.stdout.strip().splitlines()[-1]
    subprocess.run(["bash", str(script), "stop", str(folder)], check=True, capture_output=True, timeout=60)
