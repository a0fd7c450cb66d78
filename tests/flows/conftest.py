import shutil

import pytest

from flows import steps
from flows.params import Paths


@pytest.fixture()
def fresh_data(pipeline_data, tmp_path, params):
    """A private copy of the pipeline's data dir (through the training set), with Feast re-applied so
    its registry points at this copy's feature tables."""
    paths = Paths(tmp_path / "data")
    shutil.copytree(pipeline_data.root, paths.root)
    for p in ("registry", "gate", "bundle", "evaluation", "model", "validation"):
        shutil.rmtree(paths.root / p, ignore_errors=True)
    (paths.root / "feast" / "registry.db").unlink()
    steps.features_apply(params, paths)
    return paths


@pytest.fixture()
def fast_params(params):
    """Small, quick training for end-to-end tests."""
    return params.model_copy(update={
        "train": params.train.model_copy(update={"epochs": 3, "batch_size": 256, "lr": 0.002}),
        "model": params.model.model_copy(update={"hidden": [64, 32], "tower": [32]}),
    })
