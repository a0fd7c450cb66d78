"""Each contract rule: a clear error naming file, column and rule; a failed ingest leaves nothing behind."""
import numpy as np
import pandas as pd
import pytest

from features.contract import (
    ContractError,
    FunnelDataset,
    PartitionsQuarantined,
    check_dataset,
    ingest,
    read_dataset,
    read_raw,
    write_dataset,
)
from models.tasks import DEFAULT_FUNNEL


@pytest.fixture()
def good(small_data):
    return FunnelDataset(small_data.impressions.head(3000).copy(), small_data.users.copy(), small_data.items.copy())


def _break(ds, table, fn):
    frames = ds.tables()
    frames[table] = fn(frames[table].copy())
    return FunnelDataset(**frames)


def _set(col, rows, value):
    def f(df):
        df.loc[rows, col] = value
        return df
    return f


CASES = [
    ("impressions", lambda d: d.drop(columns=["user_id"]), "user_id", "missing"),
    ("impressions", lambda d: d.drop(columns=["conversion"]), "conversion", "missing"),
    ("impressions", lambda d: d.assign(user_id=d.user_id.astype(str)), "user_id", "int64"),
    ("impressions", lambda d: d.assign(impression_id=np.r_[d.impression_id[:2], d.impression_id[:-2]]),
     "impression_id", "unique"),
    ("impressions", lambda d: d.assign(event_timestamp=d.event_timestamp.dt.tz_localize(None)),
     "event_timestamp", "UTC"),
    ("impressions", lambda d: d.assign(event_timestamp=d.event_timestamp.dt.tz_convert("Europe/Paris")),
     "event_timestamp", "UTC"),
    ("impressions", lambda d: _set("conversion", d.index[d.click == 0][:3], 1)(d), "conversion", "funnel rule"),
    ("impressions", lambda d: _set("value", d.index[d.conversion == 0][:2], 5.0)(d), "value", "funnel rule"),
    ("impressions", lambda d: _set("value", d.index[d.conversion == 1][:1], -1.0)(d), "value", "negative"),
    ("impressions", lambda d: _set("click", d.index[:2], 2)(d), "click", "0 or 1"),
    ("impressions", lambda d: d.assign(device=d.device.astype(str)), "device", "int64 (categorical) or float64"),
    ("impressions", lambda d: _set("value", d.index[d.conversion == 1][:1], np.inf)(d), "value", "finite"),
    ("items", lambda d: _set("price", d.index[:1], -np.inf)(d), "price", "finite"),
    ("impressions", lambda d: d.assign(myfeat__x=1.0), "myfeat__x", "single underscores"),
    ("users", lambda d: pd.concat([d, d[["gender"]]], axis=1), "gender", "unique"),
    ("impressions", lambda d: d.assign(event_timestamp=d.event_timestamp.astype("datetime64[ns, UTC]")
                                       + pd.Timedelta(1, "ns")), "event_timestamp", "microseconds"),
    ("impressions", lambda d: _set("event_timestamp", d.index[:1], pd.Timestamp(0, tz="UTC"))(d),
     "event_timestamp", "null sentinel"),
    ("users", lambda d: _set("event_timestamp", d.index[:1], pd.Timestamp("2099-01-01", tz="UTC"))(d),
     "event_timestamp", "far-future"),
    ("users", lambda d: pd.concat([d, d.head(2)]), "user_id", "one row per"),
    ("items", lambda d: d.drop(columns=["event_timestamp"]), "event_timestamp", "missing"),
]


@pytest.mark.parametrize("table,breaker,column,rule", CASES, ids=[f"{c[0]}-{c[2]}-{c[3]}" for c in CASES])
def test_each_rule_names_file_column_and_rows(good, table, breaker, column, rule):
    with pytest.raises(ContractError) as err:
        check_dataset(_break(good, table, breaker), DEFAULT_FUNNEL, source="src")
    e = err.value
    assert e.file == f"src/{table}.parquet"
    assert e.column == column
    assert rule in e.rule
    assert column in str(e) and f"{table}.parquet" in str(e)


def test_funnel_error_shows_the_offending_rows(good):
    bad_rows = good.impressions.index[good.impressions.click == 0][:3]
    ids = good.impressions.loc[bad_rows, "impression_id"].tolist()
    with pytest.raises(ContractError) as err:
        check_dataset(_break(good, "impressions", _set("conversion", bad_rows, 1)), DEFAULT_FUNNEL)
    assert err.value.n_rows == 3
    for i in ids:
        assert str(i) in str(err.value)


def test_good_dataset_passes_and_normalises_dtypes(good):
    ds = _break(good, "impressions", lambda d: d.assign(position=d.position.astype(np.int32),
                                                         click=d.click.astype(np.int64)))
    out = check_dataset(ds, DEFAULT_FUNNEL)
    assert out.impressions.position.dtype == np.int64 and out.impressions.click.dtype == np.int8


def test_bad_day_leaves_the_stored_day_intact(tmp_path, good):
    src_ok, src_bad, raw, quarantine = tmp_path / "ok", tmp_path / "bad", tmp_path / "raw", tmp_path / "q"
    write_dataset(good, src_ok)
    ingest(src_ok, raw, DEFAULT_FUNNEL, quarantine)
    files = sorted(p for p in raw.rglob("*") if p.is_file())
    before = {p: p.read_bytes() for p in files}
    write_dataset(_break(good, "impressions", _set("value", good.impressions.index[:1], -3.0)), src_bad)
    with pytest.raises(PartitionsQuarantined) as err:
        ingest(src_bad, raw, DEFAULT_FUNNEL, quarantine)
    day = good.impressions.event_timestamp.iloc[0].strftime("%Y-%m-%d")
    assert list(err.value.reasons) == [day] and "value must not be negative" in err.value.reasons[day]
    after = {p: p.read_bytes() for p in files}
    assert {p: b for p, b in after.items() if p.name != "partitions.json"} == \
        {p: b for p, b in before.items() if p.name != "partitions.json"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "ok", "q", "raw"]  # no temp folder left
    pd.testing.assert_frame_equal(read_raw(raw, "impressions"), check_dataset(good, DEFAULT_FUNNEL).impressions)


def test_missing_file_and_parts_folder(tmp_path, good):
    write_dataset(good, tmp_path / "ds")
    (tmp_path / "ds" / "items.parquet").unlink()
    with pytest.raises(ContractError, match=r"items\.parquet"):
        read_dataset(tmp_path / "ds")
    # impressions as a folder of parts is accepted
    parts = tmp_path / "parts"
    write_dataset(good, parts)
    imp = pd.read_parquet(parts / "impressions.parquet")
    (parts / "impressions.parquet").unlink()
    (parts / "impressions").mkdir()
    imp.iloc[:1000].to_parquet(parts / "impressions" / "a.parquet")
    imp.iloc[1000:].to_parquet(parts / "impressions" / "b.parquet")
    assert len(read_dataset(parts).impressions) == len(imp)


def test_input_errors_survive_a_pickle_round_trip():
    """Prefect may persist a failed task's exception; the typed errors must come back intact."""
    import pickle

    from features.contract import ContractError, MissingInput

    missing = pickle.loads(pickle.dumps(MissingInput("data/raw", "ingest")))
    assert isinstance(missing, MissingInput) and str(missing) == "data/raw is missing: run `funnelflow ingest` first"
    bad = pickle.loads(pickle.dumps(ContractError("impressions.parquet", "click", "must be 0 or 1")))
    assert isinstance(bad, ContractError) and str(bad) == "impressions.parquet: column 'click': must be 0 or 1"
