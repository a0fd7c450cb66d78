"""The contract as properties (hypothesis): random valid datasets are stored whole; a random single
mutation of a delivered day is rejected with the rule it breaks, and the raw store stays byte-identical."""
import hashlib
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from features.contract import (
    DAY_PREFIX,
    ContractError,
    FunnelDataset,
    PartitionsQuarantined,
    ingest,
    raw_days,
    read_raw,
    write_dataset,
    write_partitioned,
)
from models.tasks import DEFAULT_FUNNEL

START = pd.Timestamp("2025-03-01", tz="UTC")
RESERVED = {"impression_id", "event_timestamp", "user_id", "item_id", *DEFAULT_FUNNEL.names}
SETTINGS = settings(max_examples=20, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def datasets(draw) -> FunnelDataset:
    """A valid dataset: 2-3 days of a few impressions, profiles known from the first day, random extra
    columns (int64 categorical, float64 numeric with nulls), labels that respect the funnel."""
    days = draw(st.integers(2, 3))
    n_users, n_items = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    names = draw(st.lists(st.from_regex(r"[a-z][a-z0-9]{0,5}(_[a-z0-9]{1,4})?", fullmatch=True)
                          .filter(lambda c: c not in RESERVED), max_size=3, unique=True))
    kinds = draw(st.lists(st.sampled_from(["int64", "float64"]), min_size=len(names), max_size=len(names)))
    per_day = draw(st.lists(st.integers(1, 6), min_size=days, max_size=days))
    n = sum(per_day)
    day_of_row = np.repeat(np.arange(days), per_day)
    seconds = draw(st.lists(st.integers(3600, 86_399), min_size=n, max_size=n))
    ts = START + pd.to_timedelta(day_of_row, unit="D") + pd.to_timedelta(seconds, unit="s")
    click = np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), np.int8)
    conversion = click * np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), np.int8)
    amounts = draw(st.lists(st.floats(0.01, 1e6, allow_nan=False), min_size=n, max_size=n))
    imps = pd.DataFrame({
        "impression_id": np.arange(n, dtype=np.int64) + draw(st.integers(0, 10**12)),
        "event_timestamp": ts.astype("datetime64[us, UTC]"),
        "user_id": np.array(draw(st.lists(st.integers(0, n_users - 1), min_size=n, max_size=n)), np.int64),
        "item_id": np.array(draw(st.lists(st.integers(0, n_items - 1), min_size=n, max_size=n)), np.int64),
        "click": click, "conversion": conversion, "value": np.where(conversion == 1, amounts, 0.0),
    })
    for name, kind in zip(names, kinds, strict=True):
        values = draw(st.lists(st.integers(-5, 5) if kind == "int64" else
                               st.one_of(st.none(), st.floats(-1e9, 1e9, allow_nan=False)), min_size=n, max_size=n))
        imps[name] = np.array(values, np.int64) if kind == "int64" else np.array(values, np.float64)

    def profiles(key: str, count: int) -> pd.DataFrame:
        return pd.DataFrame({key: np.arange(count, dtype=np.int64), "event_timestamp": START.as_unit("us"),
                             "score": np.arange(count, dtype=np.float64)})

    return FunnelDataset(imps, profiles("user_id", n_users), profiles("item_id", n_items))


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(root)).encode() + f.read_bytes())
    return h.hexdigest()


def _write(ds: FunnelDataset, src: Path, flat: bool) -> None:
    (write_dataset if flat else write_partitioned)(ds, src)


@SETTINGS
@given(ds=datasets(), flat=st.booleans())
def test_a_valid_dataset_is_stored_whole(ds, flat):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _write(ds, root / "src", flat)
        out = ingest(root / "src", root / "raw", DEFAULT_FUNNEL, root / "quarantine")
        assert not out["quarantined"] and len(out["days"]) == ds.impressions.event_timestamp.dt.floor("D").nunique()
        stored = read_raw(root / "raw", "impressions").sort_values("impression_id", ignore_index=True)
        pd.testing.assert_frame_equal(stored, ds.impressions.sort_values("impression_id", ignore_index=True),
                                      check_dtype=True)


def _last_day(ds: FunnelDataset) -> pd.Series:
    day = ds.impressions.event_timestamp.dt.floor("D")
    return day == day.max()


def _edit(column, value):
    def edit(imps, rows):
        imps = imps.copy()
        imps.loc[imps.index[rows][:1], column] = value
        return imps
    return edit


# name -> (edit of the last day's impressions, a phrase of the rule it breaks)
MUTATIONS = {
    "dtype": (lambda d, r: d.assign(item_id=d.item_id.astype(np.float64)), "must be int64"),
    "null": (lambda d, r: d.assign(click=d.click.astype(np.float64).where(~r, np.nan)), "must not be null"),
    "inf": (lambda d, r: d.assign(value=np.where(r, np.inf, d.value)), "finite"),
    "empty": (lambda d, r: d[~r], "no impressions"),
    "duplicate": (lambda d, r: pd.concat([d, d[r].head(1)]), "must be unique"),
    "funnel-order": (lambda d, r: d.assign(conversion=np.where(r, 1, d.conversion).astype(np.int8),
                                           click=np.where(r, 0, d.click).astype(np.int8)), "funnel rule"),
    "time-sentinel": (_edit("event_timestamp", pd.Timestamp(0, tz="UTC")), "null sentinel"),
    "unknown-reference": (lambda d, r: d.assign(user_id=np.where(r, 10**9, d.user_id)), "unknown user_id"),
    "bad-name": (lambda d, r: d.assign(**{"my__col": 1.0}), "single underscores"),
    "new-column": (lambda d, r: d.assign(extra=1), "not in the stored days"),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
@settings(SETTINGS, max_examples=8)
@given(ds=datasets(), flat=st.booleans())
def test_a_single_mutation_is_rejected_with_its_rule_and_the_store_is_unchanged(ds, flat, mutation):
    edit, rule = MUTATIONS[mutation]
    flat = flat and mutation != "empty"  # a day folder without impressions: only a partitioned source says so
    last = _last_day(ds).to_numpy()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _write(FunnelDataset(ds.impressions[~last], ds.users, ds.items), root / "stored", flat)
        ingest(root / "stored", root / "raw", DEFAULT_FUNNEL, root / "quarantine")
        before, days = _tree_hash(root / "raw"), raw_days(root / "raw")
        if flat:  # the whole source again, its last day broken
            write_dataset(FunnelDataset(edit(ds.impressions, last).reset_index(drop=True), ds.users, ds.items),
                          root / "src")
        else:  # the day partitions again, the last day's file broken
            write_partitioned(ds, root / "src")
            day_file = sorted((root / "src").glob(f"{DAY_PREFIX}*"))[-1] / "impressions.parquet"
            day = pd.read_parquet(day_file)
            edit(day, np.ones(len(day), bool)).to_parquet(day_file, index=False)
        with pytest.raises((PartitionsQuarantined, ContractError)) as err:
            ingest(root / "src", root / "raw", DEFAULT_FUNNEL, root / "quarantine")
        assert rule in str(err.value), (mutation, str(err.value))
        assert _tree_hash(root / "raw") == before and raw_days(root / "raw") == days
