"""The model half of the loop on real components: train -> evaluate -> score champion -> gate -> export
(onnxruntime parity) -> promote; the gate keeps the champion against a worse model; crashes leave it serving."""
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.contract import ContractError, read_raw
from flows import steps
from flows.gate import GateFailed
from flows.registry import Registry

pytestmark = pytest.mark.e2e


def _cycle(params, paths):
    steps.train(params, paths, progress=False)
    steps.evaluate(params, paths)
    steps.score_champion(params, paths)
    steps.gate(params, paths)
    steps.export(params, paths)
    return steps.promote(params, paths)


def _worse(params):
    """A model that barely trains: one epoch at a tiny learning rate."""
    return params.model_copy(update={"train": params.train.model_copy(update={"epochs": 1, "lr": 1e-6})})


def _reseeded(params):
    """Another seed, judged on the absolute bounds only: a different model that the gate blesses."""
    return params.model_copy(update={"train": params.train.model_copy(update={"seed": 8}),
                                     "gate": params.gate.model_copy(update={"change": []})})


def test_full_cycle_then_gate_blocks_worse_and_passes_better(fresh_data, fast_params):
    paths = fresh_data
    first = _cycle(fast_params, paths)
    reg = Registry(paths.registry)
    assert first["champion"] == "v0001" and reg.champion()["version"] == "v0001"
    version_dir = reg.champion_dir()
    for f in ("model.onnx", "bundle.json", "preprocess.json", "metrics.json", "blessing.json", "manifest.json",
              "params.yaml", "release.json"):
        assert (version_dir / f).exists(), f
    release = json.loads((version_dir / "release.json").read_text())
    manifest = json.loads((paths.training_set / "manifest.json").read_text())
    assert release["data_hash"] == manifest["data_hash"]
    assert json.loads((version_dir / "bundle.json").read_text())["parity_max_diff"] < 1e-5

    # A worse candidate: the change bounds against the champion (re-scored on the same test rows) fail.
    worse = _worse(fast_params)
    steps.train(worse, paths, progress=False)
    steps.evaluate(worse, paths)
    steps.score_champion(worse, paths)
    champ_metrics = json.loads((paths.champion / "champion.json").read_text())
    assert champ_metrics["version"] == "v0001"
    with pytest.raises(GateFailed, match="NOT BLESSED"):
        steps.gate(worse, paths)
    blessing = json.loads((paths.gate / "blessing.json").read_text())
    assert not blessing["blessed"] and any(c["kind"] == "change" and not c["passed"] for c in blessing["checks"])
    with pytest.raises(GateFailed):
        steps.export(worse, paths)
    with pytest.raises(GateFailed):
        steps.promote(worse, paths)
    assert reg.champion()["version"] == "v0001"

    # The same config as the champion, retrained: blessed, but the very same model is not promoted again.
    same = _cycle(fast_params, paths)
    assert same["champion"] == "v0001" and same["promoted"] is False and reg.list_versions() == ["v0001"]
    # Another seed, judged on the absolute bounds only: a new version, and rollback returns to v0001.
    second = _cycle(_reseeded(fast_params), paths)
    assert second["champion"] == "v0002" and second["previous"] == "v0001"
    assert steps.rollback(fast_params, paths)["champion"] == "v0001"


def test_crash_between_export_and_promotion_leaves_old_champion_serving(fresh_data, fast_params, monkeypatch, tmp_path):
    paths = fresh_data
    _cycle(fast_params, paths)
    pointer = (paths.registry / "champion.json").read_text()
    other = _reseeded(fast_params)  # another model: the champion's own would not be promoted again
    steps.train(other, paths, progress=False)
    steps.evaluate(other, paths)
    steps.score_champion(other, paths)
    steps.gate(other, paths)
    steps.export(other, paths)
    replace = os.replace

    def crash(src, dst):  # any rename inside the registry's versions: the staging of the new version
        if "versions" in Path(dst).parts:
            raise OSError("disk full (injected)")
        replace(src, dst)

    monkeypatch.setattr("models.atomic.os.replace", crash)
    with pytest.raises(OSError, match="injected"):
        steps.promote(other, paths)
    monkeypatch.undo()
    assert (paths.registry / "champion.json").read_text() == pointer
    assert Registry(paths.registry).list_versions() == ["v0001"]
    assert not [p for p in paths.registry.joinpath("versions").iterdir() if p.name.startswith(".")]
    # ...and the old champion still serves.
    test = pd.read_parquet(paths.training_set / "test.parquet").head(50)
    (tmp_path / "in").mkdir()
    test.drop(columns=["click", "conversion", "value"]).to_parquet(tmp_path / "in" / "impressions.parquet")
    out = steps.predict(fast_params, paths, tmp_path / "in", tmp_path / "preds.parquet")
    assert out["champion"] == "v0001" and out["rows"] == 50


def test_predict_writes_the_contract_layout(fresh_data, fast_params, tmp_path, small_data):
    paths = fresh_data
    _cycle(fast_params, paths)
    test = pd.read_parquet(paths.training_set / "test.parquet")
    raw_cols = read_raw(paths.raw, "impressions").columns
    (tmp_path / "in").mkdir()
    test[raw_cols].drop(columns=["click", "conversion", "value"]).to_parquet(tmp_path / "in" / "impressions.parquet")
    steps.predict(fast_params, paths, tmp_path / "in", tmp_path / "preds.parquet")
    preds = pd.read_parquet(tmp_path / "preds.parquet")
    assert list(preds.columns) == ["impression_id", "p_click", "p_conversion", "p_conversion_given_click",
                                   "value_given_conversion", "value_expected"]
    assert sorted(preds.impression_id) == sorted(test.impression_id)
    assert preds[["p_click", "p_conversion", "p_conversion_given_click"]].apply(lambda s: s.between(0, 1)).all().all()
    assert (preds.p_conversion <= preds.p_click + 1e-7).all()
    assert np.allclose(preds.p_conversion, preds.p_click * preds.p_conversion_given_click, atol=1e-6)
    assert (preds.value_expected >= 0).all()
    # Scores equal the offline evaluation's (same features from Feast, same model through ONNX).
    from models.export import OnnxScorer

    direct = OnnxScorer(Registry(paths.registry).champion_dir()).predict(test).set_index("impression_id")
    np.testing.assert_allclose(preds.set_index("impression_id").loc[direct.index, "p_click"], direct["p_click"],
                               atol=1e-6)
    # Bad input: the contract's rules (labels not needed) and the champion's columns, one error each.
    imps = pd.read_parquet(tmp_path / "in" / "impressions.parquet")
    for broken, column, rule in _BAD_SCORING_INPUT:
        (tmp_path / "bad").mkdir(exist_ok=True)
        broken(imps.copy()).to_parquet(tmp_path / "bad" / "impressions.parquet")
        with pytest.raises(ContractError) as err:
            steps.predict(fast_params, paths, tmp_path / "bad", tmp_path / "bad.parquet")
        assert (err.value.column, rule in err.value.rule) == (column, True), str(err.value)
    assert not (tmp_path / "bad.parquet").exists()
    for out in (tmp_path / "in" / "impressions.parquet", tmp_path / "in"):  # never over the input, never a folder
        with pytest.raises(ContractError, match="not a folder or the input file"):
            steps.predict(fast_params, paths, tmp_path / "in", out)
    assert pd.read_parquet(tmp_path / "in" / "impressions.parquet").equals(imps)


_BAD_SCORING_INPUT = [
    (lambda d: d.drop(columns=["position"]), "position", "missing"),
    (lambda d: d.head(0), "-", "no impressions"),
    (lambda d: d.assign(event_timestamp=d.event_timestamp.dt.tz_localize(None)), "event_timestamp", "UTC"),
    (lambda d: d.assign(event_timestamp=d.event_timestamp.astype(str)), "event_timestamp", "UTC"),
    (lambda d: d.assign(position=d.position.astype(str)), "position", "int64"),
    (lambda d: d.assign(position=d.position.astype(float).where(d.index % 2 == 0)), "position", "without nulls"),
    (lambda d: pd.concat([d, d.head(2)]), "impression_id", "unique"),
    (lambda d: d.assign(event_timestamp=pd.Timestamp("2099-01-01", tz="UTC")), "event_timestamp", "far-future"),
]
