"""Every retrieved feature on a sample equals an independent reference built from the raw events with
``pandas.merge_asof`` / brute force, under the contract's rule: only rows strictly before t. On both
offline engines (params.yaml features.offline_store): the embedded DuckDB ASOF store, and Feast's Spark
offline store in ``local[2]`` (one Spark session for the test process), whose training set must be the
DuckDB one row for row."""
import json

import numpy as np
import pandas as pd
import pytest

from features.contract import read_raw
from features.engineering import read_table
from features.engines import SparkOffline
from features.training_set import UNKNOWN_ID
from flows import steps
from flows.params import Paths

pytestmark = pytest.mark.e2e
SAMPLE = 400
SPLITS = ("train", "validation", "test")
ENGINES = ("duckdb", "spark")
SPARK = SparkOffline(kind="spark", master="local[2]", driver_memory="1g", shuffle_partitions=2)


def _on(params, engine):
    if engine == "duckdb":
        return params
    return params.model_copy(update={"features": params.features.model_copy(update={"offline_store": SPARK})})


@pytest.fixture(scope="module")
def spark_data(tmp_path_factory, params, pipeline_data):
    """pipeline_data's raw store and feature tables, applied and joined again on Spark."""
    paths = Paths(tmp_path_factory.mktemp("spark"))
    for name in ("raw", "features"):
        getattr(paths, name).symlink_to(getattr(pipeline_data, name), target_is_directory=True)
    steps.features_apply(_on(params, "spark"), paths)
    steps.training_set(_on(params, "spark"), paths)
    return paths


@pytest.fixture(scope="module", params=ENGINES)
def engine_data(request, pipeline_data):
    return pipeline_data if request.param == "duckdb" else request.getfixturevalue("spark_data")


@pytest.fixture(scope="module")
def retrieved(engine_data):
    df = pd.concat([pd.read_parquet(engine_data.training_set / f"{s}.parquet") for s in SPLITS])
    return df.sample(SAMPLE, random_state=0).sort_values("event_timestamp").reset_index(drop=True)


def test_both_engines_write_the_same_training_set(pipeline_data, spark_data):
    """Row for row: every split's values, dtypes and order, and so the manifest's data hash."""
    for split in SPLITS:
        duck, spark = (pd.read_parquet(d.training_set / f"{split}.parquet") for d in (pipeline_data, spark_data))
        assert len(duck) > 1000
        pd.testing.assert_frame_equal(spark, duck, check_exact=True)
        ordered = spark.sort_values("impression_id", ignore_index=True)
        pd.testing.assert_frame_equal(ordered, duck.sort_values("impression_id", ignore_index=True), check_exact=True)
    duck, spark = (json.loads((d.training_set / "manifest.json").read_text()) for d in (pipeline_data, spark_data))
    assert spark["data_hash"] == duck["data_hash"]


def _strict_asof(left, right, key):
    right = right.sort_values("event_timestamp")
    return pd.merge_asof(left[["impression_id", key, "event_timestamp"]], right, on="event_timestamp",
                         by=key, allow_exact_matches=False).set_index("impression_id")


@pytest.mark.parametrize("table,key,view", [("users", "user_id", "user_profile"), ("items", "item_id", "item_profile")])
def test_profiles_match_strict_asof_reference(pipeline_data, retrieved, table, key, view):
    raw = read_raw(pipeline_data.raw, table)
    ref = _strict_asof(retrieved, raw, key).loc[retrieved.impression_id]
    for col in raw.columns.drop([key, "event_timestamp"]):
        got = retrieved[f"{view}__{col}"].to_numpy()
        want = ref[col].to_numpy()
        if np.issubdtype(raw[col].dtype, np.integer):
            want = np.where(pd.isna(want), UNKNOWN_ID, want).astype(np.int64)
            np.testing.assert_array_equal(got, want, err_msg=f"{view}__{col}")
        else:
            np.testing.assert_allclose(got, want.astype(float), equal_nan=True, err_msg=f"{view}__{col}")


@pytest.mark.parametrize("key,view", [("user_id", "user_activity"), ("item_id", "item_activity")])
def test_activity_counts_match_brute_force(pipeline_data, retrieved, params, key, view):
    """Counts over [day(t) - w, day(t)), from raw events, all strictly before t."""
    events = read_raw(pipeline_data.raw, "impressions")
    by_key = dict(tuple(events.groupby(key)))
    for w in params.features.windows_days:
        for _, row in retrieved.iterrows():
            t = row.event_timestamp
            hi = t.floor("D")
            ev = by_key.get(row[key], events.iloc[:0])
            window = ev[(ev.event_timestamp >= hi - pd.Timedelta(days=w)) & (ev.event_timestamp < hi)]
            assert (window.event_timestamp < t).all()
            assert row[f"{view}__impressions_{w}d"] == len(window), (row.impression_id, w)
            assert row[f"{view}__clicks_{w}d"] == window.click.sum(), (row.impression_id, w)
            assert row[f"{view}__conversions_{w}d"] == window.conversion.sum(), (row.impression_id, w)
            assert row[f"{view}__value_sum_{w}d"] == pytest.approx(window.value.sum()), (row.impression_id, w)


def test_no_feature_row_later_than_the_impression(pipeline_data, retrieved):
    """Every retrieved aggregate equals the as-of row of its table with stamp <= t (Feast's rule), and
    that stamp is the day boundary at or before t: nothing from later rows leaks in."""
    for view, key in (("user_activity", "user_id"), ("item_activity", "item_id")):
        table = read_table(pipeline_data.features, view).sort_values("event_timestamp")
        ref = pd.merge_asof(retrieved[["impression_id", key, "event_timestamp"]],
                            table.rename(columns={"event_timestamp": "stamp"}),
                            left_on="event_timestamp", right_on="stamp", by=key)
        seen = ref.stamp.notna()
        assert (ref.stamp[seen] <= ref.event_timestamp[seen]).all()
        col = "clicks_7d"
        np.testing.assert_array_equal(retrieved[f"{view}__{col}"][seen.to_numpy()], ref[col][seen])


@pytest.mark.parametrize("engine", ENGINES)
def test_profile_row_stamped_exactly_at_impression_time_is_not_seen(tmp_path, params, small_data, engine):
    """A snapshot taking effect at exactly t must not be visible to an impression at t."""
    from features.contract import FunnelDataset, write_dataset

    params = _on(params, engine)
    imps = small_data.impressions.head(2000).copy()
    users = small_data.users.copy()
    target = imps.iloc[1500]
    users = pd.concat([users, pd.DataFrame([{**users[users.user_id == target.user_id].iloc[-1].to_dict(),
                                             "event_timestamp": target.event_timestamp, "membership": 99}])])
    write_dataset(FunnelDataset(imps, users.astype({"membership": np.int64}), small_data.items), tmp_path / "src")
    paths = Paths(tmp_path / "data")
    steps.ingest(params, paths, source=tmp_path / "src")
    steps.build_features(params, paths)
    steps.features_apply(params, paths)
    steps.training_set(params, paths)
    df = pd.concat([pd.read_parquet(paths.training_set / f"{s}.parquet") for s in ("train", "validation", "test")])
    same_user = df[df.user_id == target.user_id].set_index("impression_id")
    assert same_user.loc[target.impression_id, "user_profile__membership"] != 99
    later = same_user[same_user.event_timestamp > target.event_timestamp]
    assert (later["user_profile__membership"] == 99).all()


def test_training_set_split_is_by_time_and_manifest_is_complete(pipeline_data, params):
    man = json.loads((pipeline_data.training_set / "manifest.json").read_text())
    tr, va, te = (man["splits"][s] for s in ("train", "validation", "test"))
    assert tr["time_range"][1] < va["time_range"][0] and va["time_range"][1] < te["time_range"][0]
    assert tr["rows"] + va["rows"] + te["rows"] == params.generate.rows
    assert abs(tr["rows"] / params.generate.rows - params.split.train) < 0.01
    assert len(man["data_hash"]) == 64 and len(man["feast_features"]) > 20
