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

import numpy as np
import pandas as pd
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


def fill_missing(df: pd.DataFrame, features_dir: Path) -> pd.DataFrame:
    """Fill what Feast leaves null (no row before t) per the module docstring; returns a new frame."""
    meta = json.loads((features_dir / "tables.json").read_text())
    kinds = _feature_kinds(features_dir)
    out = {}
    for col, kind in kinds.items():
        if kind == "categorical":
            out[col] = df[col].fillna(UNKNOWN_ID).astype(np.int64)
    priors = pd.read_parquet(features_dir / "priors.parquet").sort_values("event_timestamp")
    order = np.argsort(df["event_timestamp"].to_numpy(), kind="stable")
    at_t = pd.merge_asof(df[["event_timestamp"]].iloc[order].reset_index(), priors, on="event_timestamp")
    at_t = at_t.set_index("index").loc[df.index]
    for view in ("user_activity", "item_activity"):
        for feat, fill in meta["fills"].items():
            col = f"{view}__{feat}"
            values = df[col].astype(np.float64)
            out[col] = values.fillna(0.0) if fill == "zero" else values.fillna(at_t[fill])
    return df.assign(**out)


def time_split(df: pd.DataFrame, cfg: SplitConfig) -> dict[str, pd.DataFrame]:
    """Split by impression time: the first ``train`` fraction of rows, then validation, then test."""
    df = df.sort_values(["event_timestamp", "impression_id"], kind="stable").reset_index(drop=True)
    n = len(df)
    ts = df["event_timestamp"]
    t1 = ts.iloc[int(round(cfg.train * n))]
    t2 = ts.iloc[int(round((cfg.train + cfg.validation) * n))]
    # Cut on timestamps, not row counts, so no instant is split across two sets.
    return {"train": df[ts < t1], "validation": df[(ts >= t1) & (ts < t2)], "test": df[ts >= t2]}


def _file_hash(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def point_in_time_features(data_dir: Path | str, impressions: pd.DataFrame,
                           feature_cfg: FeatureConfig) -> pd.DataFrame:
    """Feast's point-in-time join on every impression, sorted by impression_id, missing history
    filled (see fill_missing). Training and batch scoring both read features through here."""
    data_dir = Path(data_dir)
    joined = store.historical_features(data_dir, impressions, feature_cfg.feature_service,
                                      feature_cfg.retrieval_chunk_rows)
    if len(joined) != len(impressions):
        raise RuntimeError(f"Feast returned {len(joined)} rows for {len(impressions)} impressions")
    joined = joined.sort_values("impression_id", kind="stable").reset_index(drop=True)
    return fill_missing(joined, data_dir / "features")


def build_training_set(data_dir: Path | str, tasks: TaskGraph, feature_cfg: FeatureConfig,
                       split_cfg: SplitConfig, out_dir: Path | str | None = None) -> dict:
    """Retrieve, fill, split and write train/validation/test Parquet files plus manifest.json."""
    data_dir = Path(data_dir)
    out_dir = Path(out_dir or data_dir / "training_set")
    features_dir = data_dir / "features"
    imps = pd.read_parquet(data_dir / "raw" / "impressions.parquet")
    joined = point_in_time_features(data_dir, imps, feature_cfg)
    splits = time_split(joined, split_cfg)
    return write_splits(splits, out_dir, tasks, feature_cfg, declared_schema(imps, features_dir))


def declared_schema(impressions: pd.DataFrame, features_dir: Path) -> dict[str, str]:
    """{column: dtype} the training set must have: the raw impressions' columns (contract-checked) plus
    each Feast feature by its view type (Int64 -> int64 after filling, Float64 -> float64)."""
    schema = {c: str(t) for c, t in impressions.dtypes.items()}
    kinds = _feature_kinds(features_dir)
    schema.update({c: "int64" if k == "categorical" else "float64" for c, k in kinds.items()})
    return schema


def write_splits(splits: dict[str, pd.DataFrame], out_dir: Path, tasks: TaskGraph,
                 feature_cfg: FeatureConfig, schema: dict[str, str]) -> dict:
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    manifest: dict = {"splits": {}, "feature_service": feature_cfg.feature_service,
                      "feast_features": [c for c in schema if "__" in c], "schema": schema,
                      "tasks": [t.model_dump() for t in tasks.tasks]}
    try:
        for name, df in splits.items():
            df.to_parquet(tmp / f"{name}.parquet", index=False, coerce_timestamps="us")
            ts = df["event_timestamp"]
            manifest["splits"][name] = {
                "rows": int(len(df)),
                "time_range": [ts.min().isoformat(), ts.max().isoformat()],
                "label_rates": {t.name: float((df[t.column] > 0).mean()) for t in tasks.tasks},
            }
        manifest["data_hash"] = _file_hash([tmp / f"{s}.parquet" for s in splits])
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def load_split(data_dir_or_set: Path | str, split: str) -> pd.DataFrame:
    path = Path(data_dir_or_set)
    path = path / f"{split}.parquet" if (path / f"{split}.parquet").exists() else path / "training_set" / f"{split}.parquet"
    return pd.read_parquet(path)
