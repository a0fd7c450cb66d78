"""Drift that helps: the distribution checks stay quiet on a time subset of the same data and fire on a
real shift (a feature x3, the generator's concept drift); the reference is the last accepted training
set of its lineage; accepting a drift and starting a new lineage are recorded."""
import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.validation import (
    DRIFT,
    ValidationFailed,
    numeric_partition,
    read_drift_log,
    read_reference,
    read_training_set,
    reference_partitions,
    validate_frame,
    validate_training_set,
)
from flows import steps
from flows.cli import app
from flows.params import Paths
from models.atomic import write_json

pytestmark = pytest.mark.e2e

SCALED = ("item_profile__price", "user_activity__click_rate_7d")


@pytest.fixture(scope="module")
def full(pipeline_data):
    return read_training_set(pipeline_data.training_set)


@pytest.fixture(scope="module")
def manifest(pipeline_data):
    return json.loads((pipeline_data.training_set / "manifest.json").read_text())


@pytest.fixture(scope="module")
def drifted_data(tmp_path_factory, params):
    """The conftest's data (same rows, days and seed) with the generator's concept drift from day 8."""
    paths = Paths(tmp_path_factory.mktemp("drifted"))
    p = params.model_copy(update={"generate": params.generate.model_copy(update={"drift_from_day": 8})})
    for step in (steps.generate, steps.ingest, steps.build_features, steps.features_apply, steps.training_set):
        step(p, paths)
    return paths


def _check(frame, reference_frame, params, manifest, out):
    """Validate ``frame`` with ``reference_frame`` as the accepted reference."""
    reference = {"partitions": reference_partitions(reference_frame, params.task_graph, params.validation)}
    return validate_frame(frame.reset_index(drop=True), params.task_graph, params.validation, out,
                          manifest["schema"], manifest["bounds"], reference)


def _first(df, fraction):
    """The rows of the first ``fraction`` of the time range."""
    t = df["event_timestamp"]
    return df[t <= t.min() + fraction * (t.max() - t.min())]


def _from_day(df, day):
    t = df["event_timestamp"]
    return df[(t - t.min()).dt.days >= day]


def test_reference_covers_numeric_and_low_cardinality_features_not_ids(full, params):
    parts = reference_partitions(full, params.task_graph, params.validation)
    numeric = [c for c in full.columns if pd.api.types.is_float_dtype(full[c]) and c != "value"]
    assert set(numeric) <= set(parts)
    assert {"item_profile__category", "device"} <= set(parts)
    assert not {"user_id", "item_id", "impression_id", "click"} & set(parts)
    assert all(abs(sum(p["weights"]) - 1) < 1e-9 for p in parts.values())


def test_a_value_holding_most_rows_leaves_the_rest_its_own_bins():
    sparse = numeric_partition(np.r_[np.zeros(900), np.arange(1.0, 101.0)], bins=10)
    assert len(sparse["weights"]) >= 10 and sparse["weights"][0] == pytest.approx(0.9)
    assert numeric_partition(np.full(50, 3.0), bins=10) is None  # constant: nothing to compare


@pytest.mark.parametrize("reference_is_full", [True, False])
def test_an_85_percent_time_cut_of_the_same_data_is_not_drift(full, params, manifest, tmp_path, reference_is_full):
    cut = _first(full, 0.85)
    assert 0.7 < len(cut) / len(full) < 0.95
    ref, cur = (full, cut) if reference_is_full else (cut, full)
    report = _check(cur, ref, params, manifest, tmp_path)
    assert report.success, report.to_markdown()


def test_a_feature_scaled_x3_is_drift(full, params, manifest, tmp_path):
    report = _check(full.assign(**{c: full[c] * 3 for c in SCALED}), full, params, manifest, tmp_path)
    assert not report.success
    assert sorted(report.drifted) == sorted(SCALED), report.to_markdown()
    assert all(f["check"] == DRIFT and f["observed"] > params.validation.drift_max_kl for f in report.failed)
    assert "--accept-drift" in report.to_markdown()


def test_the_generators_concept_drift_is_drift(full, drifted_data, params, manifest, tmp_path):
    """The last week after a drift from day 8 against the same week without it: item-side behaviour
    changed, and with it the activity features built from it."""
    drifted = _from_day(read_training_set(drifted_data.training_set), 13)
    report = _check(drifted, _from_day(full, 13), params, manifest, tmp_path)
    assert not report.success and len(report.drifted) >= 5, report.to_markdown()
    assert any(c.startswith("item_activity__") for c in report.drifted)
    assert len(report.drifted) == len(report.failed)


def _training_set(pipeline_data, dst, lineage, data_hash, frame=None):
    """A copy of the conftest's training set (each split transformed by ``frame``) under a given lineage."""
    dst.mkdir(parents=True)
    for split in ("train", "validation", "test"):
        df = pd.read_parquet(pipeline_data.training_set / f"{split}.parquet")
        (frame(df) if frame else df).to_parquet(dst / f"{split}.parquet")
    manifest = json.loads((pipeline_data.training_set / "manifest.json").read_text())
    write_json(dst / "manifest.json", {**manifest, "lineage": lineage, "data_hash": data_hash})
    return dst


def _x3(df):
    return df.assign(**{c: df[c] * 3 for c in SCALED})


def test_reference_follows_accepted_sets_accepting_drift_and_new_lineage_are_logged(pipeline_data, params, tmp_path):
    tasks, cfg, out = params.task_graph, params.validation, tmp_path / "validation"
    base = _training_set(pipeline_data, tmp_path / "base", "A", "hash-base")
    scaled = _training_set(pipeline_data, tmp_path / "x3", "A", "hash-x3", _x3)
    first = validate_training_set(base, out, tasks, cfg)
    assert first.success and first.drift_reference is None
    assert read_reference(out)["lineage"] == "A" and read_reference(out)["data_hash"] == "hash-base"
    # The lineage's first reference is logged as its start.
    [start] = read_drift_log(out)
    assert start["event"] == "new_lineage" and start["lineage"] == "A" and start["previous_lineage"] is None
    # Refused: the reference stays, nothing is logged.
    with pytest.raises(ValidationFailed, match="--accept-drift"):
        validate_training_set(scaled, out, tasks, cfg)
    assert read_reference(out)["data_hash"] == "hash-base" and read_drift_log(out) == [start]
    # Accepted with a reason: logged (who, when, what), and the set becomes the reference.
    accepted = validate_training_set(scaled, out, tasks, cfg, accept_drift="price now in cents")
    assert accepted.success and accepted.accepted_drift == "price now in cents"
    [_, entry] = read_drift_log(out)
    assert entry["event"] == "accept_drift" and entry["reason"] == "price now in cents"
    assert entry["data_hash"] == "hash-x3" and entry["reference_data_hash"] == "hash-base"
    assert {f["column"] for f in entry["failed"]} == set(SCALED) and entry["by"] and entry["at"]
    assert read_reference(out)["data_hash"] == "hash-x3"
    assert json.loads((out / "summary.json").read_text())["accepted_drift"] == "price now in cents"
    # Another lineage has no reference: the unscaled set passes and starts the new lineage's reference.
    other = _training_set(pipeline_data, tmp_path / "other", "B", "hash-other")
    assert validate_training_set(other, out, tasks, cfg).success
    assert read_drift_log(out)[-1] | {"at": None, "by": None} == {
        "at": None, "by": None, "event": "new_lineage", "lineage": "B", "data_hash": "hash-other",
        "previous_lineage": "A", "previous_data_hash": "hash-x3"}
    assert read_reference(out)["lineage"] == "B"


def test_accept_drift_does_not_accept_other_failures(pipeline_data, params, tmp_path):
    out = tmp_path / "validation"
    broken = _training_set(pipeline_data, tmp_path / "broken", "A", "hash-broken",
                           lambda d: _x3(d).assign(**{"item_profile__rating": float("nan")}))
    reference = {"lineage": "A", "data_hash": "hash-base",
                 "partitions": reference_partitions(read_training_set(pipeline_data.training_set),
                                                    params.task_graph, params.validation)}
    write_json(out / "reference.json", reference)
    with pytest.raises(ValidationFailed, match="item_profile__rating"):
        validate_training_set(broken, out, params.task_graph, params.validation, accept_drift="because")
    assert read_reference(out) == reference and read_drift_log(out) == []


def test_cli_names_the_way_out_and_accepts_drift_with_a_reason(pipeline_data, params, tmp_path):
    data = Paths(tmp_path / "data")
    _training_set(pipeline_data, data.training_set, "default", "hash-x3", _x3)
    write_json(data.validation / "reference.json", {
        "lineage": "default", "data_hash": "hash-base",
        "partitions": reference_partitions(read_training_set(pipeline_data.training_set), params.task_graph,
                                           params.validation)})
    runner = CliRunner()
    refused = runner.invoke(app, ["--data-dir", str(data.root), "validate"])
    assert refused.exit_code == 1
    assert "drift in item_profile__price, user_activity__click_rate_7d" in refused.output
    [error] = [line for line in refused.output.splitlines() if line.startswith("error:")]
    assert "--accept-drift" in error and "--new-lineage" in error
    accepted = runner.invoke(app, ["--data-dir", str(data.root), "validate", "--accept-drift", "new supplier"])
    assert accepted.exit_code == 0, accepted.output
    assert [e["reason"] for e in read_drift_log(data.validation)] == ["new supplier"]
