"""The raw store of day partitions: idempotent ingest, replace one day only, quarantine, lineage, source choice."""
import pickle

import numpy as np
import pandas as pd
import pytest

from features.contract import (
    DAY_PREFIX,
    ContractError,
    FunnelDataset,
    MissingInput,
    PartitionsQuarantined,
    ingest,
    lineage,
    quarantine_records,
    raw_days,
    raw_manifest,
    read_raw,
    split_days,
    write_dataset,
    write_partitioned,
)
from features.generate import generate
from models.tasks import DEFAULT_FUNNEL

DAYS = [f"2026-09-0{d}" for d in range(1, 7)]


@pytest.fixture(scope="module")
def data():
    g = generate(rows=3_000, days=6, seed=5)
    return FunnelDataset(g.impressions, g.users, g.items)


def _store(tmp_path):
    return tmp_path / "raw", tmp_path / "quarantine"


def _files(raw):
    """Every stored file with its bytes and mtime: a rewrite of the same bytes shows too."""
    return {p.relative_to(raw): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(raw.rglob("*")) if p.is_file()}


def _day_files(files, day):
    return {p: v for p, v in files.items() if p.parts[0] == f"{DAY_PREFIX}{day}"}


def _edit_day(src, day, fn, table="impressions"):
    path = src / f"{DAY_PREFIX}{day}" / f"{table}.parquet"
    fn(pd.read_parquet(path)).to_parquet(path, index=False)


def test_reingest_is_idempotent_and_rewrites_nothing(tmp_path, data):
    raw, quarantine = _store(tmp_path)
    write_partitioned(data, tmp_path / "src")
    first = ingest(tmp_path / "src", raw, DEFAULT_FUNNEL, quarantine)
    assert first["added"] == DAYS and raw_days(raw) == DAYS and not first["quarantined"]
    before = _files(raw)
    again = ingest(tmp_path / "src", raw, DEFAULT_FUNNEL, quarantine)
    assert again["unchanged"] == DAYS and again["added"] == again["replaced"] == []
    assert _files(raw) == before  # not even partitions.json is rewritten
    assert again["lineage"] == first["lineage"] == lineage(raw)["id"]


def test_a_changed_day_replaces_that_day_only(tmp_path, data):
    raw, quarantine = _store(tmp_path)
    src = tmp_path / "src"
    write_partitioned(data, src)
    ingest(src, raw, DEFAULT_FUNNEL, quarantine)
    before = _files(raw)
    _edit_day(src, DAYS[2], lambda d: d.assign(position=d.position + 1))
    out = ingest(src, raw, DEFAULT_FUNNEL, quarantine)
    assert out["replaced"] == [DAYS[2]] and out["unchanged"] == DAYS[:2] + DAYS[3:]
    after = _files(raw)
    for day in DAYS[:2] + DAYS[3:]:
        assert _day_files(after, day) == _day_files(before, day)
    assert _day_files(after, DAYS[2]) != _day_files(before, DAYS[2])
    got = read_raw(raw, "impressions", days=[DAYS[2]])
    want = split_days(data)[DAYS[2]].impressions
    np.testing.assert_array_equal(got.position.to_numpy(), want.position.to_numpy() + 1)
    assert len(read_raw(raw, "impressions")) == len(data.impressions)


def test_bad_day_is_quarantined_with_its_reason_and_the_stored_day_kept(tmp_path, data, caplog):
    raw, quarantine = _store(tmp_path)
    src = tmp_path / "src"
    write_partitioned(FunnelDataset(*(df[df.event_timestamp < pd.Timestamp(DAYS[5], tz="UTC")]
                                      for df in data.tables().values())), src)
    ingest(src, raw, DEFAULT_FUNNEL, quarantine)
    stored_day3 = _day_files(_files(raw), DAYS[3])
    write_partitioned(data, src)  # day 6 arrives...
    _edit_day(src, DAYS[3], lambda d: d.assign(conversion=1 - d.conversion))  # ...and day 4 again, labels flipped
    with pytest.raises(PartitionsQuarantined) as err:
        ingest(src, raw, DEFAULT_FUNNEL, quarantine)
    assert list(err.value.reasons) == [DAYS[3]] and "funnel rule" in err.value.reasons[DAYS[3]]
    assert raw_days(raw) == DAYS  # the good new day was stored before the error
    assert _day_files(_files(raw), DAYS[3]) == stored_day3  # the last good state keeps serving
    reason = (quarantine / f"{DAY_PREFIX}{DAYS[3]}" / "reason.txt").read_text()
    assert "conversion" in reason and "funnel rule" in reason
    assert (quarantine / f"{DAY_PREFIX}{DAYS[3]}" / "impressions.parquet").exists()  # the bad input is kept
    assert quarantine_records(quarantine)[DAYS[3]]["reason"] == err.value.reasons[DAYS[3]]
    assert "quarantined" not in raw_manifest(raw)  # a rejection leaves the raw store as it was
    # The same bad content again: skipped with a warning, not raised again.
    out = ingest(src, raw, DEFAULT_FUNNEL, quarantine)
    assert out["unchanged"] == DAYS[:3] + DAYS[4:] and DAYS[3] in caplog.text
    # Fixed: the day is replaced and its quarantine record cleared.
    write_partitioned(data, src)
    assert ingest(src, raw, DEFAULT_FUNNEL, quarantine)["unchanged"] == DAYS
    assert quarantine_records(quarantine) == {}


def _reuse_day1_ids(d, data):
    ids = split_days(data)[DAYS[0]].impressions.impression_id.to_numpy()
    n = min(len(ids), len(d))
    return d.assign(impression_id=np.r_[ids[:n], d.impression_id.to_numpy()[n:]])


@pytest.mark.parametrize("breaker,rule", [
    (lambda d, _: d.iloc[:0], "no impressions"),
    (lambda d, _: d.assign(event_timestamp=d.event_timestamp + pd.Timedelta(days=1)), "must fall on 2026-09-05"),
    (_reuse_day1_ids, "already used by another stored day"),
    (lambda d, _: d.assign(device=d.device.astype(np.float64)), "--new-lineage"),
    (lambda d, _: d.assign(extra=1.0), "not in the stored days"),
    (lambda d, _: d.assign(user_id=d.user_id.max() + 1), "unknown user_id"),
], ids=["empty", "wrong-day", "ids", "columns", "extra-column", "unknown-user"])
def test_partition_rules(tmp_path, data, breaker, rule):
    raw, quarantine = _store(tmp_path)
    src = tmp_path / "src"
    write_partitioned(data, src)
    _edit_day(src, DAYS[4], lambda d: breaker(d, data))
    with pytest.raises(PartitionsQuarantined) as err:
        ingest(src, raw, DEFAULT_FUNNEL, quarantine)
    assert list(err.value.reasons) == [DAYS[4]] and rule in err.value.reasons[DAYS[4]]
    assert raw_days(raw) == DAYS[:4] + DAYS[5:]


def test_flat_dataset_is_split_into_days(tmp_path, data):
    raw, quarantine = _store(tmp_path)
    write_dataset(data, tmp_path / "flat")
    assert ingest(tmp_path / "flat", raw, DEFAULT_FUNNEL, quarantine)["added"] == DAYS
    for name, df in data.tables().items():
        assert len(read_raw(raw, name)) == len(df)
    first = read_raw(raw, "users", days=[DAYS[0]])
    assert (first.event_timestamp < pd.Timestamp(DAYS[0], tz="UTC")).any()  # earlier profile rows: first day
    later = read_raw(raw, "users", days=DAYS[1:])
    assert (later.event_timestamp >= pd.Timestamp(DAYS[1], tz="UTC")).all()
    # The same days again in the partitioned layout hash differently (file bytes) but keep the lineage.
    write_partitioned(data, tmp_path / "parts")
    assert ingest(tmp_path / "parts", raw, DEFAULT_FUNNEL, quarantine)["lineage"] == lineage(raw)["id"]


def test_new_lineage_empties_the_store(tmp_path, data):
    raw, quarantine = _store(tmp_path)
    write_partitioned(data, tmp_path / "a")
    old = ingest(tmp_path / "a", raw, DEFAULT_FUNNEL, quarantine)["lineage"]
    other = generate(rows=1_000, days=2, seed=9, start="2026-10-01")
    write_partitioned(FunnelDataset(other.impressions, other.users, other.items), tmp_path / "b")
    out = ingest(tmp_path / "b", raw, DEFAULT_FUNNEL, quarantine, new_lineage="a new shop")
    assert out["lineage"] != old and lineage(raw)["reason"] == "a new shop"
    assert raw_days(raw) == ["2026-10-01", "2026-10-02"]
    assert sorted(p.name for p in raw.iterdir() if p.is_dir()) == ["dt=2026-10-01", "dt=2026-10-02"]


def test_a_rejected_source_changes_nothing_also_as_a_new_lineage_or_flat_and_empty(tmp_path, data):
    raw, quarantine = _store(tmp_path)
    write_partitioned(data, tmp_path / "a")
    ingest(tmp_path / "a", raw, DEFAULT_FUNNEL, quarantine)
    before = _files(raw)
    _edit_day(tmp_path / "a", DAYS[0], lambda d: d.assign(value=np.inf))
    for day in DAYS[1:]:
        _edit_day(tmp_path / "a", day, lambda d: d.assign(extra=1.0))
    with pytest.raises(PartitionsQuarantined) as err:  # every day bad: the old lineage stays
        ingest(tmp_path / "a", raw, DEFAULT_FUNNEL, quarantine, new_lineage="a new shop")
    assert sorted(err.value.reasons) == DAYS and _files(raw) == before
    write_dataset(FunnelDataset(data.impressions.head(0), data.users, data.items), tmp_path / "flat")
    with pytest.raises(ContractError, match="source has no impressions"):
        ingest(tmp_path / "flat", raw, DEFAULT_FUNNEL, quarantine)
    assert _files(raw) == before


def test_empty_store_names_ingest(tmp_path):
    with pytest.raises(MissingInput, match="funnelflow ingest"):
        read_raw(tmp_path / "raw", "impressions")


def test_quarantine_error_survives_a_pickle_round_trip(tmp_path):
    err = pickle.loads(pickle.dumps(PartitionsQuarantined({"2026-09-02": "no impressions"}, tmp_path)))
    assert err.reasons == {"2026-09-02": "no impressions"} and "dt=2026-09-02" in str(err)


def test_run_uses_a_users_ingested_raw_store_instead_of_generating(tmp_path, data, params):
    from flows import steps
    from flows.params import Paths

    paths = Paths(tmp_path / "data")
    assert steps.source_plan(params, paths, None) == (True, paths.generated)  # nothing stored yet
    write_partitioned(data, tmp_path / "mine")
    steps.ingest(params, paths, source=tmp_path / "mine")
    assert steps.source_plan(params, paths, None) == (False, None)  # `ingest DIR` then `run`: trains on DIR
    assert steps.source_plan(params, paths, str(tmp_path / "new")) == (False, tmp_path / "new")  # --source: always
    configured = params.model_copy(update={"data": params.data.model_copy(update={"source": str(tmp_path / "x")})})
    assert steps.source_plan(configured, paths, None) == (False, tmp_path / "x")
    other = Paths(tmp_path / "gen")
    write_partitioned(data, other.generated)
    steps.ingest(params, other)
    assert steps.source_plan(params, other, None) == (True, other.generated)  # generated data: generate again
