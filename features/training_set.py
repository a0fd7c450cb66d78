"""The training set: Feast point-in-time features on every impression, then a time-based split.

Missing history is filled per feature column as the feature views declare (``features.views``,
recorded in tables.json), keeping the point-in-time rule and the contract's dtypes: categorical
profile columns with no snapshot yet -> -1 (an explicit "unknown" id), kept int64; activity counts
with no history -> 0; smoothed rates -> the platform prior in force at that time; numeric profile
columns stay NaN (the models standardise them and map NaN to the mean).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import model_validator

from features import store
from features.contract import raw_table, require_input
from features.engineering import (
    KEEP,
    PRIOR,
    PRIORS,
    UNKNOWN,
    ZERO,
    FeatureConfig,
    FeatureMeta,
    read_tables_meta,
    table_path,
)
from features.store import FeastPaths
from models.atomic import atomic_dir
from models.strict import Strict
from models.tasks import TaskGraph

SPLITS = ("train", "validation", "test")
UNKNOWN_ID = -1
MANIFEST = "manifest.json"


class SplitConfig(Strict):
    """The ``split`` section of params.yaml: fractions of the impressions, by time."""

    train: float = 0.7
    validation: float = 0.15
    test: float = 0.15

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
    """What to put where Feast finds no row before t (see the module docstring), loaded once per run."""

    def __init__(self, tables_dir: Path):
        self.features = _features(tables_dir)
        priors = pd.read_parquet(require_input(table_path(tables_dir, PRIORS), "features build"))
        self.priors = priors.sort_values("event_timestamp")

    def _priors_at(self, ts: pd.Series) -> dict[str, np.ndarray]:
        """Each prior used by a fill, as in force at each row's time (row order kept)."""
        names = {m.fill.removeprefix(PRIOR) for m in self.features.values() if m.fill.startswith(PRIOR)}
        order = np.argsort(ts.array.asi8, kind="stable")  # int64: no Timestamp objects
        at_t = pd.merge_asof(ts.iloc[order].to_frame("event_timestamp").reset_index(drop=True),
                             self.priors, on="event_timestamp")
        out = {name: np.empty(len(ts)) for name in names}
        for name, values in out.items():
            values[order] = at_t[name].to_numpy()
        return out

    def apply(self, df: pd.DataFrame) -> pd.DataFrame:
        """``df`` with every feature column's missing values filled and its declared dtype."""
        prior = self._priors_at(df["event_timestamp"])
        out = {}
        for col, m in self.features.items():
            if m.fill == UNKNOWN:
                out[col] = df[col].fillna(UNKNOWN_ID).astype(np.int64)
            elif m.fill == ZERO:
                out[col] = df[col].astype(np.float64).fillna(0.0)
            elif m.fill != KEEP:
                at_t = pd.Series(prior[m.fill.removeprefix(PRIOR)], index=df.index)
                out[col] = df[col].astype(np.float64).fillna(at_t)
        return df.assign(**out)


def split_times(ts: pd.Series, cfg: SplitConfig) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The two cut instants: the first ``train`` fraction of rows by time, then validation, then test.
    Cut on timestamps, not row counts, so no instant is split across two sets."""
    ts = ts.sort_values(ignore_index=True)
    n = len(ts)
    return ts.iloc[round(cfg.train * n)], ts.iloc[round((cfg.train + cfg.validation) * n)]


def split_masks(ts: pd.Series, t1: pd.Timestamp, t2: pd.Timestamp) -> dict[str, np.ndarray]:
    """Row masks of each split: before ``t1``, from ``t1`` to before ``t2``, from ``t2`` on."""
    return {"train": (ts < t1).to_numpy(), "validation": ((ts >= t1) & (ts < t2)).to_numpy(),
            "test": (ts >= t2).to_numpy()}


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


def build_training_set(feast: FeastPaths, raw_dir: Path | str, out_dir: Path | str, tasks: TaskGraph,
                       feature_cfg: FeatureConfig, split_cfg: SplitConfig) -> dict:
    """Retrieve, fill, split and write train/validation/test Parquet files plus manifest.json.

    Streams: impressions go to Feast in time order, one chunk at a time, and each filled chunk is
    appended to the split files, so peak memory is the raw impressions plus one chunk, not the
    whole joined set. The files go to a temp folder swapped in at the end: the previous training set
    stays readable until then, and stays in place if the build fails.
    """
    imps = pd.read_parquet(raw_table(raw_dir, "impressions"))
    imps = imps.sort_values(["event_timestamp", "impression_id"], kind="stable", ignore_index=True)
    cuts = split_times(imps["event_timestamp"], split_cfg)
    features = _features(feast.tables)
    with atomic_dir(out_dir) as tmp, SplitWriter(tmp, tasks, feature_cfg, declared_schema(imps, features),
                                                 _bounds(features)) as writer:
        for batch in point_in_time_feature_batches(feast, imps, feature_cfg):
            for name, mask in split_masks(batch["event_timestamp"], *cuts).items():
                writer.write(name, batch[mask])
        return writer.finish()


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

    def write(self, split: str, df: pd.DataFrame) -> None:
        """Append ``df`` to ``split``'s file and count its rows, time range and positives."""
        if df.empty:
            return
        table = pa.Table.from_pandas(df, preserve_index=False)
        self._arrow_schema = self._arrow_schema or table.schema
        if split not in self._writers:
            self._writers[split] = pq.ParquetWriter(self.out_dir / f"{split}.parquet", self._arrow_schema)
        self._writers[split].write_table(table.cast(self._arrow_schema))
        st = self._stats.setdefault(split, {"rows": 0, "min": None, "max": None, "pos": {}})
        ts = df["event_timestamp"]
        st["min"] = ts.min() if st["min"] is None else min(st["min"], ts.min())
        st["max"] = ts.max() if st["max"] is None else max(st["max"], ts.max())
        st["rows"] += len(df)
        for t in self.tasks.tasks:
            st["pos"][t.name] = st["pos"].get(t.name, 0) + int((df[t.column] > 0).sum())

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
