"""One chain of custody, on real components (Feast-built training set, torch, ONNX, the registry): the
two ways the issue shipped a model the gate never judged, a rerun that must not promote the same model
again, and a champion whose files changed after its promotion."""
import json

import pandas as pd
import pytest

from flows import steps
from flows.gate import CustodyError
from flows.params import GateConfig
from flows.registry import Registry, RegistryError

pytestmark = pytest.mark.e2e


@pytest.fixture()
def quick(fast_params):
    """One epoch and no gate bounds: custody is under test, not model quality."""
    train = fast_params.train.model_copy(update={"epochs": 1, "batch_size": 4096})
    return fast_params.model_copy(update={"train": train, "gate": GateConfig()})


def _judge(params, paths):
    steps.evaluate(params, paths)
    steps.score_champion(params, paths)
    return steps.gate(params, paths)


def _weak(params):
    return params.model_copy(update={"train": params.train.model_copy(update={"lr": 1e-6, "seed": 11})})


def test_only_the_blessed_model_is_exported_promoted_and_served(fresh_data, quick, tmp_path):
    paths, reg = fresh_data, Registry(fresh_data.registry)
    steps.train(quick, paths, progress=False)
    _judge(quick, paths)
    steps.export(quick, paths)
    assert steps.promote(quick, paths)["champion"] == "v0001"
    release = reg.release("v0001")
    blessing = json.loads((paths.gate / "blessing.json").read_text())
    assert {k: release[k] for k in blessing["candidate"]} == blessing["candidate"]

    # A rerun with nothing changed (DVC and the flow's cache skip training): judged and blessed again,
    # but the same model is not a new version.
    _judge(quick, paths)
    again = steps.promote(quick, paths)
    assert again["champion"] == "v0001" and again["promoted"] is False
    assert reg.list_versions() == ["v0001"] and len(reg.history()) == 1

    # Issue: a weak model trained after a blessed run was exported and promoted under the old blessing.
    weak = _weak(quick)
    steps.train(weak, paths, progress=False)
    for step in (steps.export, steps.promote):
        with pytest.raises(CustodyError, match=r"blessed model \(model\.pt\)"):
            step(weak, paths)
    assert reg.list_versions() == ["v0001"]

    # Issue: after a failed (here: skipped) export, promote shipped the previous bundle labelled with the
    # new blessing; the bundle folder then still holds v0001's bundle.
    _judge(weak, paths)
    with pytest.raises(CustodyError, match=r"was exported from model .*, not the blessed"):
        steps.promote(weak, paths)
    assert reg.champion()["version"] == "v0001" and reg.list_versions() == ["v0001"]
    steps.export(weak, paths)  # the fix the line names
    assert steps.promote(weak, paths)["champion"] == "v0002"

    # The champion's files changed after its promotion: refused where it is loaded, and rollback to an
    # intact version is the way out.
    test = pd.read_parquet(paths.training_set / "test.parquet").head(20)
    (tmp_path / "in").mkdir()
    test.drop(columns=["click", "conversion", "value"]).to_parquet(tmp_path / "in" / "impressions.parquet")
    onnx = reg.versions / "v0002" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-1] + b"\0")
    with pytest.raises(RegistryError, match=r"v0002/model\.onnx does not match the sha256"):
        steps.predict(weak, paths, tmp_path / "in", tmp_path / "preds.parquet")
    assert not (tmp_path / "preds.parquet").exists()
    assert steps.rollback(weak, paths)["champion"] == "v0001"
    assert steps.predict(weak, paths, tmp_path / "in", tmp_path / "preds.parquet")["champion"] == "v0001"
