"""Shared fixtures: a small generated dataset, and the full data pipeline on it (real Feast, real GX)."""
from __future__ import annotations

import os
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
