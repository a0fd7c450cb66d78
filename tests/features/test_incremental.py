"""Days arriving one at a time: feature tables, the online store and the training set are updated,
not rebuilt, and end up exactly where a full rebuild of the same raw days gets (real Feast)."""
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from features import store
from features.contract import FunnelDataset, ingest, lineage, raw_days, write_partitioned
from features.engineering import PRIORS, build_feature_tables, read_table, read_tables_meta, table_path, view_dir
from features.generate import generate
from features.store import FeastPaths
from features.training_set import build_training_set, window
from features.views import VIEWS

pytestmark = pytest.mark.e2e
DAYS, FIRST = 10, 8  # the source's days; how many land before the daily runs


def _land(source, landing, days):
    """Copy the source's day folders ``days`` into the landing folder (what has arrived so far)."""
    for d in days:
        if not (landing / f"dt={d}").exists():
            shutil.copytree(source / f"dt={d}", landing / f"dt={d}")


def _stores_tables_equal(a, b):
    for view in VIEWS:
        pd.testing.assert_frame_equal(read_table(a, view.name), read_table(b, view.name), check_exact=True)
    pd.testing.assert_frame_equal(pd.read_parquet(table_path(a, PRIORS)), pd.read_parquet(table_path(b, PRIORS)),
                                  check_exact=True)


class Daily:
    """One data dir fed day by day: ingest, features build, apply, materialize, training set."""

    def __init__(self, root, params):
        self.root, self.params = root, params
        self.raw, self.feast = root / "raw", FeastPaths(root / "feast", root / "features")
        self.applied = False

    def ingest(self, landing):
        return ingest(landing, self.raw, self.params.task_graph, self.root / "quarantine")

    def run(self):
        p = self.params
        meta = build_feature_tables(self.raw, self.feast.tables, p.task_graph, p.features, VIEWS)
        if not self.applied:
            store.apply(self.feast, p.features.feature_service, VIEWS)
            self.applied = True
        online = store.materialize(self.feast)
        ts = build_training_set(self.feast, self.raw, self.root / "training_set", p.task_graph, p.features,
                                p.split, cache_dir=self.root / "retrieved")
        return SimpleNamespace(meta=meta, online=online, ts=ts)


@pytest.fixture(scope="module")
def daily(tmp_path_factory, params):
    """FIRST days landed, then one day at a time up to DAYS; beside it, every day ingested at once."""
    root = tmp_path_factory.mktemp("incremental")
    data = generate(rows=5000, days=DAYS, seed=5)
    write_partitioned(FunnelDataset(data.impressions, data.users, data.items), root / "source")
    days = sorted(p.name.removeprefix("dt=") for p in (root / "source").glob("dt=*"))
    landing = root / "landing"
    landing.mkdir()
    run = Daily(root / "daily", params)
    steps = []
    for n in range(FIRST, len(days) + 1):
        _land(root / "source", landing, days[:n])
        run.ingest(landing)
        steps.append(run.run())
    full = Daily(root / "full", params)
    full.ingest(root / "source")
    return SimpleNamespace(root=root, days=days, landing=landing, run=run, steps=steps, full=full,
                           full_meta=build_feature_tables(full.raw, full.feast.tables, params.task_graph,
                                                          params.features, VIEWS))


def test_each_new_day_updates_from_that_day_and_equals_a_full_build(daily):
    first, *later = daily.steps
    assert first.meta.update.mode == "full"
    for step, day in zip(later, daily.days[FIRST:], strict=True):
        assert (step.meta.update.mode, step.meta.update.since, step.meta.update.days) == ("incremental", day, (day,))
    _stores_tables_equal(daily.run.feast.tables, daily.full.feast.tables)
    got, want = read_tables_meta(daily.run.feast.tables), daily.full_meta
    assert got.views == want.views and got.raw == want.raw and got.days == (daily.days[0], daily.days[-1])


def test_a_rerun_with_nothing_new_writes_nothing(daily, params):
    tables = daily.run.feast.tables
    before = {p: p.stat().st_mtime_ns for p in tables.rglob("*") if p.is_file()}
    meta = build_feature_tables(daily.run.raw, tables, params.task_graph, params.features, VIEWS)
    assert meta.update.mode == "unchanged"
    assert {p: p.stat().st_mtime_ns for p in tables.rglob("*") if p.is_file()} == before
    assert set(store.materialize(daily.run.feast)["modes"].values()) == {"none"}


def test_online_store_loaded_incrementally_holds_each_entitys_latest_row(daily, params):
    first, *later = daily.steps
    assert set(first.online["modes"].values()) == {"full"}
    for step in later:
        assert set(step.online["modes"].values()) <= {"incremental", "none"}
        assert step.online["modes"]["user_activity"] == "incremental"
    table = read_table(daily.run.feast.tables, "user_activity").sort_values("event_timestamp")
    latest = table.groupby("user_id").tail(1).set_index("user_id").sample(20, random_state=0)
    fs = store.open_store(daily.run.feast)
    online = fs.get_online_features(features=["user_activity:clicks_7d", "user_activity:value_sum_30d"],
                                    entity_rows=[{"user_id": int(u)} for u in latest.index]).to_dict()
    np.testing.assert_array_equal(online["clicks_7d"], latest["clicks_7d"].to_numpy())
    np.testing.assert_array_equal(online["value_sum_30d"], latest["value_sum_30d"].to_numpy())


def test_training_set_retrieves_only_the_new_day_and_equals_a_fresh_one(daily, params):
    for step, day in zip(daily.steps[1:], daily.days[FIRST:], strict=True):
        assert step.ts["retrieval"]["joined"] == [day]
        assert len(step.ts["retrieval"]["reused"]) == daily.days.index(day)
    last = daily.steps[-1].ts
    fresh = build_training_set(daily.run.feast, daily.run.raw, daily.root / "fresh", params.task_graph,
                               params.features, params.split)
    assert fresh["retrieval"]["reused"] == [] and fresh["data_hash"] == last["data_hash"]
    manifest = json.loads((daily.run.root / "training_set" / "manifest.json").read_text())
    assert manifest["days"] == [daily.days[0], daily.days[-1]] and manifest["window_days"] is None
    assert manifest["lineage"] == lineage(daily.run.raw)["id"]


def test_a_replaced_day_recomputes_from_that_day_on(daily, params, tmp_path):
    day = daily.days[-2]
    tables = daily.run.feast.tables
    before = read_tables_meta(tables)
    path = daily.landing / f"dt={day}" / "impressions.parquet"
    imps = pd.read_parquet(path)
    half = np.arange(len(imps)) < len(imps) // 2
    for col in ("click", "conversion", "value"):  # the first half never clicked: labels changed, funnel kept
        imps[col] = np.where(half, 0, imps[col]).astype(imps[col].dtype)
    imps.to_parquet(path, index=False)
    assert daily.run.ingest(daily.landing)["replaced"] == [day]
    step = daily.run.run()
    assert (step.meta.update.mode, step.meta.update.since) == ("incremental", day)
    for view in ("user_activity", "item_activity"):
        old, new = before.views[view].partitions, step.meta.views[view].partitions
        assert {d: p for d, p in new.items() if d < day} == {d: p for d, p in old.items() if d < day}
        assert any(new[d] != old[d] for d in new if d >= day)
        assert step.online["modes"][view] == "full"  # rows replaced in the past: reloaded whole
    assert step.meta.views["user_profile"].partitions == before.views["user_profile"].partitions
    build_feature_tables(daily.run.raw, tmp_path / "rebuilt", params.task_graph, params.features, VIEWS, full=True)
    _stores_tables_equal(tables, tmp_path / "rebuilt")
    assert step.ts["retrieval"]["joined"] == [d for d in daily.days if d >= day]
    fresh = build_training_set(daily.run.feast, daily.run.raw, tmp_path / "fresh", params.task_graph,
                               params.features, params.split)
    assert fresh["data_hash"] == step.ts["data_hash"]


def test_window_keeps_the_last_days_and_splits_inside_them(daily, params):
    split = params.split.model_copy(update={"window_days": 5})
    out = build_training_set(daily.run.feast, daily.run.raw, daily.root / "windowed", params.task_graph,
                             params.features, split, cache_dir=daily.run.root / "retrieved")
    days = raw_days(daily.run.raw)[-5:]
    assert window(raw_days(daily.run.raw), 5) == days and out["days"] == [days[0], days[-1]]
    assert out["retrieval"] == {"joined": [], "reused": days}  # every day already joined
    (tr0, tr1), (va0, va1), (te0, te1) = ([pd.Timestamp(t) for t in out["splits"][s]["time_range"]]
                                          for s in ("train", "validation", "test"))
    assert pd.Timestamp(days[0], tz="UTC") <= tr0 and tr1 < va0 <= va1 < te0 <= te1
    assert te1.strftime("%Y-%m-%d") == days[-1]  # the newest day is in the test set
    assert sorted(p.name for p in (daily.run.root / "retrieved").glob("dt=*")) == [f"dt={d}.parquet" for d in days]


def test_a_new_lineage_rebuilds_everything(daily, params, tmp_path):
    raw, tables = tmp_path / "raw", tmp_path / "features"
    ingest(daily.landing, raw, params.task_graph, tmp_path / "q")
    build_feature_tables(raw, tables, params.task_graph, params.features, VIEWS)
    ingest(daily.landing, raw, params.task_graph, tmp_path / "q", new_lineage="test: start over")
    meta = build_feature_tables(raw, tables, params.task_graph, params.features, VIEWS)
    assert meta.update.mode == "full"
    assert sorted(p.name for p in view_dir(tables, "user_activity").glob("dt=*")) == sorted(
        f"dt={d}.parquet" for d in meta.views["user_activity"].partitions)
