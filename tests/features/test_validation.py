"""The GX suite passes good data and fails seeded bad data, with a readable summary and Data Docs."""
import json

import numpy as np
import pandas as pd
import pytest

from features.validation import ValidationFailed, validate_frame, validate_training_set

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def frame(pipeline_data):
    return pd.read_parquet(pipeline_data.training_set / "train.parquet")


@pytest.fixture(scope="module")
def manifest(pipeline_data):
    return json.loads((pipeline_data.training_set / "manifest.json").read_text())


@pytest.fixture(scope="module")
def schema(manifest):
    return manifest["schema"]


@pytest.fixture(scope="module")
def bounds(manifest):
    return manifest["bounds"]


@pytest.fixture(scope="module")
def cfg(params):
    return params.validation


def _failed(report):
    return {(f["expectation"], f["column"]) for f in report.failed}


def test_good_training_set_passes_and_builds_docs(frame, params, cfg, schema, bounds, tmp_path):
    report = validate_frame(frame, params.task_graph, cfg, tmp_path, schema, bounds)
    assert report.success, report.to_markdown()
    assert (tmp_path / "data_docs" / "index.html").exists()


BAD = {
    "conversion without click": (lambda d: d.assign(conversion=np.where(d.index < 5, 1, d.conversion).astype(np.int8)),
                                 ("expect_column_values_to_be_between", "conversion")),
    "value without conversion": (lambda d: d.assign(value=np.where((d.index < 5) & (d.conversion == 0), 3.0, d.value)),
                                 ("expect_column_values_to_be_between", "value")),
    "click rate out of band": (lambda d: d.assign(click=np.ones(len(d), np.int8)),
                               ("expect_column_mean_to_be_between", "click")),
    "nulls in a feature": (lambda d: d.assign(**{"item_profile__price": np.where(d.index % 5 == 0, np.nan,
                                                                                  d["item_profile__price"])}),
                           ("expect_column_values_to_not_be_null", "item_profile__price")),
    "rate above one": (lambda d: d.assign(**{"user_activity__click_rate_7d": d["user_activity__click_rate_7d"] + 1.0}),
                       ("expect_column_max_to_be_between", "user_activity__click_rate_7d")),
    "wrong dtype": (lambda d: d.assign(**{"user_profile__age_band": d["user_profile__age_band"].astype(float)}),
                    ("expect_column_values_to_be_of_type", "user_profile__age_band")),
    "missing column": (lambda d: d.drop(columns=["item_profile__rating"]), ("expect_table_columns_to_match_set", "-")),
}


@pytest.mark.parametrize("name", list(BAD))
def test_seeded_bad_data_fails_the_suite(frame, params, cfg, schema, bounds, tmp_path, name):
    breaker, expected = BAD[name]
    report = validate_frame(breaker(frame.copy()), params.task_graph, cfg, tmp_path, schema, bounds)
    assert not report.success
    assert expected in _failed(report), report.to_markdown()
    assert expected[1] in report.to_markdown()


def test_drift_against_the_accepted_reference_and_no_reference_update_on_failure(pipeline_data, params, cfg, tmp_path):
    ts_dir, out = pipeline_data.training_set, tmp_path / "validation"
    first = validate_training_set(ts_dir, out, params.task_graph, cfg)
    assert first.success and first.drift_reference is None
    reference = json.loads((out / "reference.json").read_text())
    assert "user_activity__click_rate_7d" in reference["partitions"]
    # Same data again: drift checks run against the accepted reference and pass.
    second = validate_training_set(ts_dir, out, params.task_graph, cfg)
    assert second.success and second.evaluated > first.evaluated
    reference = json.loads((out / "reference.json").read_text())  # every accepted set moves it
    # Scale a feature x10: its drift check fails, the run raises, and the reference is left as it was
    # (a rejected set never becomes the baseline).
    drifted = tmp_path / "drifted"
    drifted.mkdir()
    for s in ("train", "validation", "test"):
        df = pd.read_parquet(ts_dir / f"{s}.parquet")
        df["item_profile__price"] = df["item_profile__price"] * 10
        df.to_parquet(drifted / f"{s}.parquet")
    (drifted / "manifest.json").write_text((ts_dir / "manifest.json").read_text())
    with pytest.raises(ValidationFailed, match="item_profile__price"):
        validate_training_set(drifted, out, params.task_graph, cfg)
    assert json.loads((out / "reference.json").read_text()) == reference
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["success"] and any(f["column"] == "item_profile__price" for f in summary["failed"])
