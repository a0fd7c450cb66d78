"""The training set: Feast point-in-time features on every impression, then a time-based split.

Missing history is filled in a way that keeps the point-in-time rule and the contract's dtypes:
- categorical profile columns with no snapshot yet -> -1 (an explicit "unknown" id), kept int64;
- activity counts with no history -> 0; smoothed rates -> the platform prior in force at that time;
- numeric profile columns stay NaN (the models standardise them and map NaN to the mean).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, model_validator

from features import store
from features.engineering import FeatureConfig
from models.tasks import TaskGraph

SPLITS = ("train", "validation", "test")
UNKNOWN_ID = -1


class SplitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train: float = 0.7
    validation: float = 0.15
    test: float = 0.15

    @model_validator(mode="after")
    def _sums_to_one(self) -> "SplitConfig":
        if min(self.train, self.validation, self.test) <= 0 or abs(self.train + self.validation + self.test - 1) > 1e-6:
            raise ValueError("split fractions must be positive and sum to 1")
        return self


def _feature_kinds(features_dir: Path) -> dict[str, str]:
    """``<view>__<column>`` -> 'categorical' | 'numeric', from the feature tables' Parquet schemas."""
    kinds = {}
    for view, key in store.KEYS.items():
        for col in pq.read_schema(features_dir / f"{view}.parquet"):
            if col.name not in (key, "event_timestamp"):
                kinds[f"{view}__{col.name}"] = "categorical" if str(col.type).startswith("int") else "numeric"
    return kinds


class FillPolicy:
    """What to put where Feast finds no row before t (see the module docstring), loaded once per run."""

    def __init__(self, features_dir: Path):
        meta = json.loads((features_dir / "tables.json").read_text())
        self.fills: dict[str, str] = meta["fills"]
        self.kinds = _feature_kinds(features_dir)
        self.priors = pd.read_parquet(features_dir / "priors.parquet").sort_values("event_timestamp")

    def apply(self, df: pd.DataFrame) -> pd.DataFrame:
        out = {col: df[col].fillna(UNKNOWN_ID).astype(np.int64)
               for col, kind in self.kinds.items() if kind == "categorical"}
        order = np.argsort(df["event_timestamp"].array.asi8, kind="stable")  # int64: no Timestamp objects
        at_t = pd.merge_asof(df[["event_timestamp"]].iloc[order].reset_index(drop=True), self.priors,
                             on="event_timestamp")
        prior = {name: np.empty(len(df)) for name in set(self.fills.values()) - {"zero"}}
        for name, values in prior.items():
            values[order] = at_t[name].to_numpy()
        for view in ("user_activity", "item_activity"):
            for feat, fill in self.fills.items():
                col = f"{view}__{feat}"
                values = df[col].astype(np.float64)
                out[col] = values.fillna(0.0) if fill == "zero" else values.fillna(pd.Series(prior[fill], index=df.index))
        return df.assign(**out)


def split_times(ts: pd.Series, cfg: SplitConfig) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The two cut instants: the first ``train`` fraction of rows by time, then validation, then test.
    Cut on timestamps, not row counts, so no instant is split across two sets."""
    ts = ts.sort_values(ignore_index=True)
    n = len(ts)
    return ts.iloc[int(round(cfg.train * n))], ts.iloc[int(round((cfg.train + cfg.validation) * n))]


def split_masks(ts: pd.Series, t1, t2) -> dict[str, np.ndarray]:
    return {"train": (ts < t1).to_numpy(), "validation": ((ts >= t1) & (ts < t2)).to_numpy(),
            "test": (ts >= t2).to_numpy()}


def _file_hash(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def point_in_time_feature_batches(data_dir: Path | str, impressions: pd.DataFrame,
                                  feature_cfg: FeatureConfig) -> Iterator[pd.DataFrame]:
    """Feast's point-in-time join on every impression, missing history filled (see FillPolicy), one
    frame per ``retrieval_chunk_rows`` impressions, in the impressions' order."""
    data_dir = Path(data_dir)
    policy = FillPolicy(data_dir / "features")
    for joined in store.historical_feature_batches(data_dir, impressions, feature_cfg.feature_service,
                                                   feature_cfg.retrieval_chunk_rows):
        yield policy.apply(joined)


def point_in_time_features(data_dir: Path | str, impressions: pd.DataFrame,
                           feature_cfg: FeatureConfig) -> pd.DataFrame:
    """All of point_in_time_feature_batches as one frame sorted by impression_id (batch scoring)."""
    parts = list(point_in_time_feature_batches(data_dir, impressions, feature_cfg))
    joined = pd.concat(parts, ignore_index=True) if parts else impressions.iloc[:0]
    return joined.sort_values("impression_id", kind="stable").reset_index(drop=True)


def build_training_set(data_dir: Path | str, tasks: TaskGraph, feature_cfg: FeatureConfig,
                       split_cfg: SplitConfig, out_dir: Path | str | None = None) -> dict:
    """Retrieve, fill, split and write train/validation/test Parquet files plus manifest.json.

    Streams: impressions go to Feast in time order, one chunk at a time, and each filled chunk is
    appended to the split files, so peak memory is the raw impressions plus one chunk, not the
    whole joined set.
    """
    data_dir = Path(data_dir)
    out_dir = Path(out_dir or data_dir / "training_set")
    imps = pd.read_parquet(data_dir / "raw" / "impressions.parquet")
    imps = imps.sort_values(["event_timestamp", "impression_id"], kind="stable", ignore_index=True)
    cuts = split_times(imps["event_timestamp"], split_cfg)
    schema = declared_schema(imps, data_dir / "features")
    with SplitWriter(out_dir, tasks, feature_cfg, schema) as writer:
        for batch in point_in_time_feature_batches(data_dir, imps, feature_cfg):
            masks = split_masks(batch["event_timestamp"], *cuts)
            for name, mask in masks.items():
                writer.write(name, batch[mask])
        return writer.commit()


def declared_schema(impressions: pd.DataFrame, features_dir: Path) -> dict[str, str]:
    """{column: dtype} the training set must have: the raw impressions' columns (contract-checked) plus
    each Feast feature by its view type (Int64 -> int64 after filling, Float64 -> float64)."""
    schema = {c: str(t) for c, t in impressions.dtypes.items()}
    kinds = _feature_kinds(features_dir)
    schema.update({c: "int64" if k == "categorical" else "float64" for c, k in kinds.items()})
    return schema


class SplitWriter:
    """Appends frames to train/validation/test Parquet files in a temp dir; ``commit`` writes the
    manifest and swaps the directory in, so a failure leaves the previous training set untouched."""

    def __init__(self, out_dir: Path, tasks: TaskGraph, feature_cfg: FeatureConfig, schema: dict[str, str]):
        self.out_dir, self.tasks, self.schema = Path(out_dir), tasks, schema
        self.tmp = self.out_dir.with_name(f".{self.out_dir.name}.tmp-{os.getpid()}")
        self.manifest: dict = {"splits": {}, "feature_service": feature_cfg.feature_service,
                               "feast_features": [c for c in schema if "__" in c], "schema": schema,
                               "tasks": [t.model_dump() for t in tasks.tasks]}
        self._writers: dict[str, pq.ParquetWriter] = {}
        self._stats: dict[str, dict] = {}
        self._arrow_schema: pa.Schema | None = None

    def __enter__(self) -> "SplitWriter":
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self

    def write(self, split: str, df: pd.DataFrame) -> None:
        if df.empty:
            return
        table = pa.Table.from_pandas(df, preserve_index=False)
        self._arrow_schema = self._arrow_schema or table.schema
        if split not in self._writers:
            self._writers[split] = pq.ParquetWriter(self.tmp / f"{split}.parquet", self._arrow_schema)
        self._writers[split].write_table(table.cast(self._arrow_schema))
        st = self._stats.setdefault(split, {"rows": 0, "min": None, "max": None, "pos": {}})
        ts = df["event_timestamp"]
        st["min"] = ts.min() if st["min"] is None else min(st["min"], ts.min())
        st["max"] = ts.max() if st["max"] is None else max(st["max"], ts.max())
        st["rows"] += len(df)
        for t in self.tasks.tasks:
            st["pos"][t.name] = st["pos"].get(t.name, 0) + int((df[t.column] > 0).sum())

    def commit(self) -> dict:
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
        self.manifest["data_hash"] = _file_hash([self.tmp / f"{s}.parquet" for s in SPLITS])
        (self.tmp / "manifest.json").write_text(json.dumps(self.manifest, indent=2))
        if self.out_dir.exists():
            shutil.rmtree(self.out_dir)
        os.replace(self.tmp, self.out_dir)
        return self.manifest

    def __exit__(self, *exc) -> None:
        for w in self._writers.values():
            w.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def read_frame(*paths: Path | str) -> pd.DataFrame:
    """Parquet files (same schema) as one frame at ~1x its size in memory: Arrow buffers are freed
    column by column as pandas takes them over (pd.read_parquet holds both copies: 2x at the peak)."""
    tables = [pq.read_table(p) for p in paths]
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    del tables
    df = table.to_pandas(self_destruct=True, split_blocks=True)
    pa.default_memory_pool().release_unused()  # decode buffers the pool would keep (~0.8 GB at 10M rows)
    return df


def load_split(data_dir_or_set: Path | str, split: str) -> pd.DataFrame:
    path = Path(data_dir_or_set)
    path = path / f"{split}.parquet" if (path / f"{split}.parquet").exists() else path / "training_set" / f"{split}.parquet"
    return read_frame(path)
