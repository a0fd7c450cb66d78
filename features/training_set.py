"""The training set: Feast point-in-time features on every impression, then a time-based split.

Missing history is filled per feature column as the feature views declare (``features.views``,
recorded in tables.json), keeping the point-in-time rule and the contract's dtypes: categorical
profile columns with no snapshot yet -> -1 (an explicit "unknown" id), kept int64; activity counts
with no history -> 0; smoothed rates -> the platform prior in force at that time; numeric profile
columns stay NaN (the models standardise them and map NaN to the mean).

The set covers the last ``split.window_days`` calendar days of the raw store (all days when null);
the time split applies inside that window, so the newest days are the test set. Retrieval is done
once per day: the filled rows of each day are kept in a cache folder under a key of everything they
depend on (that day's raw content, every feature-table day file an impression of that day can see,
the priors in force, the feature config and the fill code), so a daily run retrieves only the new
day and a replaced raw day re-retrieves the days from it on.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import PositiveInt, model_validator

from features import store
from features.contract import MissingInput, day_of, raw_manifest, read_raw, require_input
from features.engineering import (
    DAY,
    KEEP,
    PRIOR,
    PRIORS,
    TABLES_META,
    UNKNOWN,
    ZERO,
    FeatureConfig,
    FeatureMeta,
    TablesMeta,
    read_tables_meta,
    table_path,
)
from features.store import FeastPaths
from models.atomic import atomic_dir, write_json
from models.preprocess import column_values
from models.strict import Strict
from models.tasks import TaskGraph

SPLITS = ("train", "validation", "test")
UNKNOWN_ID = -1
MANIFEST = "manifest.json"
CACHE_INDEX = "index.json"  # the retrieval cache's {day: key of what its rows depend on}
# Row groups of the split files: one per day and split, cut at this many rows (pyarrow's default cap is
# 1Mi). DDP ranks read whole row groups (models/distributed.py), so at 10M impressions a day of ~330k
# training rows makes 3 shardable groups, not 1; days below the cap (the 200k default) are unchanged.
ROW_GROUP_ROWS = 131_072
log = logging.getLogger(__name__)


class StaleTables(MissingInput):
    """The feature tables were built from other raw days than the raw store holds now."""

    def __init__(self, path: Path | str, command: str):
        super().__init__(path, command)
        self.args = (f"{path} was built from other raw days than the raw store holds: run "
                     f"`funnelflow {command}` first",)


class SplitConfig(Strict):
    """The ``split`` section of params.yaml: the window of days, then fractions of its impressions, by time."""

    train: float = 0.7
    validation: float = 0.15
    test: float = 0.15
    window_days: PositiveInt | None = None  # the last N calendar days of the raw store; None: every day

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        if min(self.train, self.validation, self.test) <= 0 or abs(self.train + self.validation + self.test - 1) > 1e-6:
            raise ValueError("split fractions must be positive and sum to 1")
        return self


def _features(tables_dir: Path) -> dict[str, FeatureMeta]:
    """``<view>__<column>`` -> its dtype, fill and bounds, for every view in tables.json."""
    meta = read_tables_meta(tables_dir)
    return {f"{view}__{col}": m for view, vm in meta.views.items() for col, m in vm.features.items()}


class FillPolicy:
    """What to put where Feast finds no row before t (see the module docstring), loaded once per run.
    The training set and online scoring (features/online.py) both fill through ``apply``; it works on
    numpy arrays, as a request of a few rows would otherwise spend ~20 ms in per-column pandas calls."""

    def __init__(self, tables_dir: Path):
        self.features = _features(tables_dir)
        priors = pd.read_parquet(require_input(table_path(tables_dir, PRIORS), "features build"))
        self.priors = priors.sort_values("event_timestamp", kind="stable")
        self._prior_times = _micros(self.priors["event_timestamp"])
        names = {m.fill.removeprefix(PRIOR) for m in self.features.values() if m.fill.startswith(PRIOR)}
        # Each prior's values with a NaN after the last: the index -1 of a time before the first prior.
        self._prior_values = {n: np.append(self.priors[n].to_numpy(np.float64), np.nan) for n in names}

    def _priors_at(self, micros: np.ndarray) -> dict[str, np.ndarray]:
        """Each prior used by a fill, as in force at each row's time: the last prior stamped at or
        before it (an as-of join), NaN before the first."""
        at = np.searchsorted(self._prior_times, micros, side="right") - 1
        return {name: values[at] for name, values in self._prior_values.items()}

    def apply(self, df: pd.DataFrame) -> pd.DataFrame:
        """``df`` with every feature column's missing values filled and its declared dtype."""
        filled = self.fill({c: df[c] for c in self.features}, _micros(df["event_timestamp"]))
        return pd.DataFrame({c: filled.get(c, df[c]) for c in df.columns}, index=df.index, copy=False)

    def in_force(self, micros: int) -> int:
        """Which priors row is in force at ``micros`` (int64 microseconds since the epoch; -1: none yet):
        the only way a fill depends on time."""
        return int(np.searchsorted(self._prior_times, micros, side="right")) - 1

    def fill(self, columns: Mapping[str, Any], micros: np.ndarray) -> dict[str, Any]:
        """Feature ``columns`` (all or some of this policy's: arrays or Series of rows stamped ``micros``,
        int64 microseconds since the epoch) filled: an online request fills its user's and its items'
        rows apart, and never builds a frame."""
        prior = self._priors_at(micros)
        out: dict[str, Any] = {}
        for col, x in columns.items():
            m = self.features[col]
            if m.fill == UNKNOWN:
                out[col] = column_values(x, np.int64, UNKNOWN_ID)
            elif m.fill == KEEP:
                out[col] = x
            else:
                v = column_values(x, np.float64, np.nan)
                fill = 0.0 if m.fill == ZERO else prior[m.fill.removeprefix(PRIOR)]
                out[col] = np.where(np.isnan(v), fill, v)
        return out


def _micros(ts: pd.Series) -> np.ndarray:
    """Timestamps as int64 microseconds since the epoch, whatever their unit."""
    return ts.dt.as_unit("us").array.asi8


def split_times(ts: pd.Series, cfg: SplitConfig) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The two cut instants: the first ``train`` fraction of rows by time, then validation, then test.
    Cut on timestamps, not row counts, so no instant is split across two sets."""
    ts = ts.sort_values(ignore_index=True)
    n = len(ts)
    return ts.iloc[round(cfg.train * n)], ts.iloc[round((cfg.train + cfg.validation) * n)]


def split_masks(ts: pa.ChunkedArray, t1: pd.Timestamp, t2: pd.Timestamp) -> dict[str, pa.ChunkedArray]:
    """Row masks of each split: before ``t1``, from ``t1`` to before ``t2``, from ``t2`` on."""
    lo, hi = (pa.scalar(t.to_pydatetime(), ts.type) for t in (t1, t2))
    return {"train": pc.less(ts, lo), "validation": pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi)),
            "test": pc.greater_equal(ts, hi)}


def _file_hash(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def point_in_time_feature_batches(feast: FeastPaths, impressions: pd.DataFrame,
                                  feature_cfg: FeatureConfig) -> Iterator[pd.DataFrame]:
    """Feast's point-in-time join on every impression, missing history filled (see FillPolicy), one
    frame per ``retrieval_chunk_rows`` impressions, in the impressions' order."""
    policy = FillPolicy(feast.tables)
    for joined in store.historical_feature_batches(feast, impressions, feature_cfg.feature_service,
                                                   feature_cfg.retrieval_chunk_rows):
        yield policy.apply(joined)


def point_in_time_features(feast: FeastPaths, impressions: pd.DataFrame, feature_cfg: FeatureConfig) -> pd.DataFrame:
    """All of point_in_time_feature_batches as one frame sorted by impression_id (batch scoring)."""
    parts = list(point_in_time_feature_batches(feast, impressions, feature_cfg))
    joined = pd.concat(parts, ignore_index=True) if parts else impressions.iloc[:0]
    return joined.sort_values("impression_id", kind="stable").reset_index(drop=True)


def window(days: Sequence[str], window_days: int | None) -> list[str]:
    """The raw days inside the last ``window_days`` calendar days (all of them when None)."""
    days = sorted(days)
    if window_days is None or not days:
        return days
    first = (pd.Timestamp(days[-1]) - (window_days - 1) * DAY).strftime("%Y-%m-%d")
    return [d for d in days if d >= first]


def _day_keys(tables: Path, meta: TablesMeta, raw: dict[str, str], days: list[str],
              feature_cfg: FeatureConfig) -> dict[str, str]:
    """Per day, a hash of everything its filled rows depend on: its raw content, every feature-table
    day file an impression of that day can see (stamped before the next midnight), the priors in
    force up to that day, the tables' config, the fills, the feature service and this module."""
    priors = pd.read_parquet(table_path(tables, PRIORS)).sort_values("boundary")
    prior_cols = sorted(c for c in priors.columns if c.startswith("prior_"))
    files = sorted((p.time_range[0], view, day, p.sha256) for view, vm in meta.views.items()
                   for day, p in vm.partitions.items() if p.time_range is not None)
    base = hashlib.sha256(json.dumps([meta.config_sha256, feature_cfg.feature_service,
                                      {v: {c: m.model_dump() for c, m in vm.features.items()}
                                       for v, vm in meta.views.items()},
                                      Path(__file__).read_text()], sort_keys=True).encode()).hexdigest()
    day0 = pd.Timestamp(meta.day0)
    keys = {}
    for day in days:
        end = pd.Timestamp(day, tz="UTC") + DAY
        seen = [f[1:] for f in files if f[0] < end]
        index = (pd.Timestamp(day, tz="UTC") - day0).days
        in_force = priors.loc[priors["boundary"] <= index, prior_cols].to_numpy().tobytes()
        h = hashlib.sha256(f"{base}|{raw[day]}|{json.dumps(seen)}|".encode())
        h.update(in_force)
        keys[day] = h.hexdigest()
    return keys


class DayCache:
    """The filled rows of each raw day (``dt=DAY.parquet``) with their keys (index.json)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        index = self.folder / CACHE_INDEX
        self.index: dict[str, str] = json.loads(index.read_text()) if index.exists() else {}

    def path(self, day: str) -> Path:
        """The day's file."""
        return self.folder / f"dt={day}.parquet"

    def valid(self, day: str, key: str) -> bool:
        """Whether the day's rows are cached under ``key``."""
        return self.index.get(day) == key and self.path(day).exists()

    def keep_only(self, keys: dict[str, str]) -> None:
        """Drop the days outside ``keys`` (left the window or the raw store, or about to be rewritten)
        and record ``keys``, whose files are written."""
        for f in self.folder.glob("dt=*.parquet"):
            if f.stem.removeprefix("dt=") not in keys:
                f.unlink()
        self.index = dict(keys)
        write_json(self.folder / CACHE_INDEX, self.index)


def _retrieve_days(feast: FeastPaths, imps: pd.DataFrame, feature_cfg: FeatureConfig, cache: DayCache) -> None:
    """Feast's point-in-time join on ``imps`` (in time order, chunked), each day's filled rows
    written to its cache file."""
    day = day_of(imps["event_timestamp"]).to_numpy()
    writer: pq.ParquetWriter | None = None
    current, start = None, 0
    try:
        for batch in point_in_time_feature_batches(feast, imps, feature_cfg):
            batch_day = day[start:start + len(batch)]
            start += len(batch)
            for d in pd.unique(batch_day):
                table = pa.Table.from_pandas(batch[batch_day == d], preserve_index=False)
                if d != current:
                    if writer is not None:
                        writer.close()
                    current, writer = d, pq.ParquetWriter(cache.path(str(d)), table.schema)
                assert writer is not None
                writer.write_table(table.cast(writer.schema))
    finally:
        if writer is not None:
            writer.close()


def _impressions(raw_dir: Path | str, days: list[str]) -> pd.DataFrame:
    """The impressions of ``days`` in the training set's order: by time, then id."""
    imps = read_raw(raw_dir, "impressions", days=days)
    return imps.sort_values(["event_timestamp", "impression_id"], kind="stable", ignore_index=True)


def build_training_set(feast: FeastPaths, raw_dir: Path | str, out_dir: Path | str, tasks: TaskGraph,
                       feature_cfg: FeatureConfig, split_cfg: SplitConfig, cache_dir: Path | str | None = None) -> dict:
    """Retrieve, fill, split and write train/validation/test Parquet files plus manifest.json.

    The days of the window not in the retrieval cache ``cache_dir`` (see the module docstring; None:
    a throw-away one) are joined, then every day's rows are streamed from the cache into the split
    files, so peak memory is the new days' impressions plus one chunk. The files go to a temp folder
    swapped in at the end: the previous training set stays readable until then, and stays in place
    if the build fails. Returns the manifest plus ``retrieval`` (the days joined and reused).
    """
    raw = {d: p["sha256"] for d, p in raw_manifest(raw_dir)["partitions"].items()}
    days = window(list(raw), split_cfg.window_days)
    meta = read_tables_meta(feast.tables)
    if any(meta.raw.get(d) != raw[d] for d in days):
        raise StaleTables(Path(feast.tables) / TABLES_META, "features build")
    cuts = split_times(read_raw(raw_dir, "impressions", days=days, columns=["event_timestamp"])["event_timestamp"],
                       split_cfg)
    features = _features(feast.tables)
    keys = _day_keys(Path(feast.tables), meta, raw, days, feature_cfg)
    with atomic_dir(out_dir) as tmp:
        cache = DayCache(Path(cache_dir) if cache_dir is not None else tmp / ".days")
        cache.folder.mkdir(parents=True, exist_ok=True)
        todo = [d for d in days if not cache.valid(d, keys[d])]
        log.info("training set: %d days joined, %d reused from the retrieval cache", len(todo), len(days) - len(todo))
        imps = _impressions(raw_dir, todo or days[-1:])
        schema = declared_schema(imps, features)
        if todo:
            cache.keep_only({d: keys[d] for d in days if d not in todo})  # a day cut short is never valid
            _retrieve_days(feast, imps, feature_cfg, cache)
        del imps
        cache.keep_only(keys)
        with SplitWriter(tmp, tasks, feature_cfg, schema, _bounds(features)) as writer:
            for d in days:
                table = pq.read_table(cache.path(d))
                for name, mask in split_masks(table["event_timestamp"], *cuts).items():
                    writer.write(name, table.filter(mask))
            writer.manifest.update({"lineage": meta.lineage, "days": [days[0], days[-1]],
                                    "window_days": split_cfg.window_days})
            manifest = writer.finish()
        if cache_dir is None:
            shutil.rmtree(cache.folder)
    return {**manifest, "retrieval": {"joined": todo, "reused": [d for d in days if d not in todo]}}


def declared_schema(impressions: pd.DataFrame, features: dict[str, FeatureMeta]) -> dict[str, str]:
    """{column: dtype} the training set must have: the raw impressions' columns (contract-checked) plus
    each Feast feature by its view type (Int64 -> int64 after filling, Float64 -> float64)."""
    schema = {str(c): str(t) for c, t in impressions.dtypes.items()}
    schema.update({c: m.dtype for c, m in features.items()})
    return schema


def _bounds(features: dict[str, FeatureMeta]) -> dict[str, list[float | None]]:
    """{column: [min, max]} of every feature with a declared bound (the GX suite checks them)."""
    return {c: [m.min, m.max] for c, m in features.items() if m.min is not None or m.max is not None}


class SplitWriter:
    """Appends frames to train/validation/test Parquet files in ``out_dir``; ``finish`` writes the
    manifest. Used inside ``atomic_dir``, which swaps the folder in once finished."""

    def __init__(self, out_dir: Path, tasks: TaskGraph, feature_cfg: FeatureConfig, schema: dict[str, str],
                 bounds: dict[str, list[float | None]]):
        self.out_dir, self.tasks, self.schema = Path(out_dir), tasks, schema
        self.manifest: dict = {"splits": {}, "feature_service": feature_cfg.feature_service,
                               "feast_features": [c for c in schema if "__" in c], "schema": schema,
                               "bounds": bounds, "tasks": [t.model_dump() for t in tasks.tasks]}
        self._writers: dict[str, pq.ParquetWriter] = {}
        self._stats: dict[str, dict] = {}
        self._arrow_schema: pa.Schema | None = None

    def __enter__(self) -> SplitWriter:
        return self

    def write(self, split: str, table: pa.Table) -> None:
        """Append ``table`` (Arrow: no pandas round trip) to ``split``'s file and count its rows, time
        range and positives."""
        if table.num_rows == 0:
            return
        self._arrow_schema = self._arrow_schema or table.schema
        if split not in self._writers:
            self._writers[split] = pq.ParquetWriter(self.out_dir / f"{split}.parquet", self._arrow_schema)
        self._writers[split].write_table(table.cast(self._arrow_schema), row_group_size=ROW_GROUP_ROWS)
        st = self._stats.setdefault(split, {"rows": 0, "min": None, "max": None, "pos": {}})
        span = pc.min_max(table["event_timestamp"])
        lo, hi = pd.Timestamp(span["min"].as_py()), pd.Timestamp(span["max"].as_py())
        st["min"] = lo if st["min"] is None else min(st["min"], lo)
        st["max"] = hi if st["max"] is None else max(st["max"], hi)
        st["rows"] += table.num_rows
        for t in self.tasks.tasks:
            st["pos"][t.name] = st["pos"].get(t.name, 0) + pc.sum(pc.greater(table[t.column], 0)).as_py()

    def finish(self) -> dict:
        """Close the split files, write manifest.json (split stats, schema, data hash); return it."""
        for split in SPLITS:
            if split not in self._writers:
                raise ValueError(f"the {split} split is empty: too few impressions or timestamps to split")
            self._writers.pop(split).close()
            st = self._stats[split]
            self.manifest["splits"][split] = {
                "rows": st["rows"],
                "time_range": [st["min"].isoformat(), st["max"].isoformat()],
                "label_rates": {name: pos / st["rows"] for name, pos in st["pos"].items()},
            }
        self.manifest["data_hash"] = _file_hash([self.out_dir / f"{s}.parquet" for s in SPLITS])
        (self.out_dir / MANIFEST).write_text(json.dumps(self.manifest, indent=2))
        return self.manifest

    def __exit__(self, *exc: object) -> None:
        for w in self._writers.values():
            w.close()


def read_frame(*paths: Path | str) -> pd.DataFrame:
    """Parquet files (same schema) as one frame at ~1x its size in memory: Arrow buffers are freed
    column by column as pandas takes them over (pd.read_parquet holds both copies: 2x at the peak)."""
    tables = [pq.read_table(p) for p in paths]
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    del tables
    df = table.to_pandas(self_destruct=True, split_blocks=True)
    pa.default_memory_pool().release_unused()  # decode buffers the pool would keep (~0.8 GB at 10M rows)
    return df


def load_split(training_set_dir: Path | str, split: str) -> pd.DataFrame:
    """One split of the training set in ``training_set_dir``."""
    return read_frame(require_input(Path(training_set_dir) / f"{split}.parquet", "training-set"))
