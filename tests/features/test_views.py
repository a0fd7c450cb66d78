"""Adding a feature view is one registry entry: it flows to the tables, Feast, the training set and GX."""
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from features import store
from features.engineering import (
    DAY,
    NON_NEGATIVE,
    RATE,
    UNKNOWN,
    ZERO,
    build_feature_tables,
    profile_fills,
    profile_table,
    table_glob,
)
from features.store import FeastPaths
from features.training_set import UNKNOWN_ID, build_training_set
from features.validation import build_suite, validate_frame
from features.views import ITEM, USER, VIEWS, Entity, View, Views

SERVICE = "with_item_reach"


def item_reach(inputs, key):
    """Per item and day: its impressions and its share of all impressions, stamped at the next midnight
    (events strictly before the stamp); the first day it was seen, as a categorical id."""
    imps = inputs.impressions
    day = ((imps["event_timestamp"] - inputs.day0) // DAY).rename("day")
    per_item = imps.groupby([imps[key], day]).size().rename("impressions_prev_day").reset_index()
    total = day.value_counts()
    per_item["share_prev_day"] = per_item["impressions_prev_day"] / per_item["day"].map(total).to_numpy()
    per_item["impressions_prev_day"] = per_item["impressions_prev_day"].astype(np.float64)
    per_item["first_day"] = per_item.groupby(key)["day"].transform("min").astype(np.int64)
    per_item["event_timestamp"] = (inputs.day0 + (per_item.pop("day") + 1) * DAY).astype("datetime64[us, UTC]")
    return per_item


REACH = View("item_reach", ITEM, "activity", item_reach,
             fill=lambda cols, inputs: {"impressions_prev_day": ZERO, "share_prev_day": ZERO, "first_day": UNKNOWN},
             bounds=lambda cols, inputs: {"impressions_prev_day": NON_NEGATIVE, "share_prev_day": RATE},
             description="Item reach on the previous day (test view)")


@pytest.fixture(scope="module")
def extended(pipeline_data, params, tmp_path_factory):
    """The default views plus item_reach, passed explicitly, taken through every data step."""
    views = VIEWS.with_view(REACH)
    root = tmp_path_factory.mktemp("extended")
    feast = FeastPaths(root / "feast", root / "features")
    cfg = params.features.model_copy(update={"feature_service": SERVICE})
    build_feature_tables(pipeline_data.raw, feast.tables, params.task_graph, cfg, views)
    applied = store.apply(feast, SERVICE, views)
    manifest = build_training_set(feast, pipeline_data.raw, root / "training_set", params.task_graph, cfg,
                                  params.split)
    train = pd.read_parquet(root / "training_set" / "train.parquet")
    return SimpleNamespace(feast=feast, applied=applied, manifest=manifest, train=train)


COLUMNS = ["item_reach__impressions_prev_day", "item_reach__share_prev_day", "item_reach__first_day"]


@pytest.mark.e2e
def test_the_extra_view_is_applied_and_served_by_the_named_service(extended):
    assert "item_reach" in extended.applied and SERVICE in extended.applied
    fs = store.open_store(extended.feast)
    served = [p.name for p in fs.get_feature_service(SERVICE).feature_view_projections]
    assert served == ["user_profile", "item_profile", "user_activity", "item_activity", "item_reach"]
    view = fs.get_feature_view("item_reach")
    assert view.tags == {"kind": "activity"} and view.entities == ["item"]
    assert view.batch_source.path == str(table_glob(extended.feast.tables, "item_reach"))


@pytest.mark.e2e
def test_the_extra_view_reaches_the_training_set_filled(extended):
    train = extended.train
    assert set(COLUMNS) <= set(train.columns) and set(COLUMNS) <= set(extended.manifest["feast_features"])
    assert train[COLUMNS].notna().all().all()
    assert train["item_reach__first_day"].dtype == np.int64
    assert (train["item_reach__first_day"] == UNKNOWN_ID).any(), "first-day impressions have no history: -1"
    assert (train["item_reach__impressions_prev_day"] == 0).any(), "no history: filled with 0"
    assert train["item_reach__share_prev_day"].between(0, 1).all()
    assert extended.manifest["feature_service"] == SERVICE
    assert extended.manifest["schema"]["item_reach__first_day"] == "int64"


@pytest.mark.e2e
def test_the_extra_view_gets_its_gx_expectations(extended, params, tmp_path):
    schema, bounds = extended.manifest["schema"], extended.manifest["bounds"]
    assert bounds["item_reach__share_prev_day"] == [0.0, 1.0]
    suite = build_suite(schema, bounds, params.task_graph, params.validation, None)
    checks = {(e.expectation_type, e.column) for e in suite if getattr(e, "column", None) in COLUMNS}
    assert ("expect_column_max_to_be_between", "item_reach__share_prev_day") in checks
    assert ("expect_column_min_to_be_between", "item_reach__impressions_prev_day") in checks
    assert ("expect_column_values_to_be_of_type", "item_reach__first_day") in checks
    broken = extended.train.assign(item_reach__share_prev_day=extended.train["item_reach__share_prev_day"] + 1.0)
    report = validate_frame(broken, params.task_graph, params.validation, tmp_path, schema, bounds)
    failed = {(f["expectation"], f["column"]) for f in report.failed}
    assert failed == {("expect_column_max_to_be_between", "item_reach__share_prev_day")}, report.to_markdown()


@pytest.mark.e2e
def test_tables_json_records_every_views_columns(extended):
    meta = json.loads((extended.feast.tables / "tables.json").read_text())
    assert list(meta["views"]) == ["user_profile", "item_profile", "user_activity", "item_activity", "item_reach"]
    assert meta["views"]["item_reach"]["features"]["first_day"] == {"dtype": "int64", "fill": "unknown",
                                                                    "min": None, "max": None}
    assert meta["views"]["user_activity"]["features"]["click_rate_7d"]["fill"] == "prior:prior_click_per_impressions"


def test_view_names_are_unique_and_an_entity_has_one_key():
    with pytest.raises(ValueError, match="unique"):
        VIEWS.with_view(VIEWS.entries[0])
    other_user = Entity("user", "person_id", "the same entity name, another key")
    with pytest.raises(ValueError, match="two join keys"):
        Views((View("a", USER, "profile", profile_table, profile_fills, lambda c, i: {}, ""),
               View("b", other_user, "profile", profile_table, profile_fills, lambda c, i: {}, "")))


@pytest.mark.e2e
def test_a_fill_that_does_not_fit_its_column_fails_at_build_time(pipeline_data, params, tmp_path):
    keep_ids = View("user_profile", USER, "profile", profile_table, lambda cols, inputs: dict.fromkeys(cols, "keep"),
                    lambda cols, inputs: {}, "")
    with pytest.raises(ValueError, match=r"view user_profile: column \w+ \(int64\) has fill 'keep'"):
        build_feature_tables(pipeline_data.raw, tmp_path / "features", params.task_graph, params.features,
                             Views((keep_ids,)))
    assert not (tmp_path / "features").exists()
