"""Thin wrappers over the real Feast APIs: apply the repo, materialize, retrieve point-in-time features.

The embedded defaults keep every Feast file under ``<data dir>/feast``; feature_store.yaml reads the
data dir from ``$FUNNELFLOW_DATA_DIR``, which ``open_store`` sets (to an absolute path) before Feast
parses the file.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

REPO_PATH = Path(__file__).resolve().parent / "feature_repo"
VIEWS = ["user_profile", "item_profile", "user_activity", "item_activity"]
KEYS = {"user_profile": "user_id", "user_activity": "user_id", "item_profile": "item_id", "item_activity": "item_id"}
log = logging.getLogger(__name__)


def _set_data_dir(data_dir: Path | str) -> Path:
    data_dir = Path(data_dir).resolve()
    (data_dir / "feast").mkdir(parents=True, exist_ok=True)
    os.environ["FUNNELFLOW_DATA_DIR"] = str(data_dir)
    return data_dir


def open_store(data_dir: Path | str, offline_store: str | None = None):
    """A FeatureStore on this repo's feature_store.yaml, with its files under ``data_dir``.

    ``offline_store`` swaps the offline store type (e.g. "duckdb", "file") for comparisons; the
    registry and every definition stay the same.
    """
    _set_data_dir(data_dir)
    from feast import FeatureStore  # imported late: `import feast` costs seconds
    from feast.repo_config import load_repo_config

    if offline_store is None:
        return FeatureStore(repo_path=str(REPO_PATH))
    config = load_repo_config(REPO_PATH, REPO_PATH / "feature_store.yaml")
    config.offline_config = {"type": offline_store}
    return FeatureStore(repo_path=str(REPO_PATH), config=config)


def _load_definitions():
    """Import feature_repo/definitions.py fresh, so schemas follow the current feature tables."""
    spec = importlib.util.spec_from_file_location("funnelflow_feature_definitions", REPO_PATH / "definitions.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.pop(spec.name, None)
    spec.loader.exec_module(module)
    return module


def apply(data_dir: Path | str) -> list[str]:
    """Register entities, feature views and the feature service (what `feast apply` does)."""
    store = open_store(data_dir)
    defs = _load_definitions()
    objects = [defs.user, defs.item, *(getattr(defs, v) for v in VIEWS), defs.funnel_model_v1]
    store.apply(objects)
    return [o.name for o in objects]


def table_time_range(data_dir: Path | str) -> tuple[datetime, datetime]:
    tables = Path(data_dir) / "features"
    lo, hi = [], []
    for v in VIEWS:
        ts = pd.read_parquet(tables / f"{v}.parquet", columns=["event_timestamp"])["event_timestamp"]
        lo.append(ts.min())
        hi.append(ts.max())
    return min(lo).to_pydatetime(), max(hi).to_pydatetime()


def materialize(data_dir: Path | str) -> dict:
    """Load the latest feature values of every entity into the SQLite online store."""
    store = open_store(data_dir)
    start, end = table_time_range(data_dir)
    store.materialize(start_date=start - timedelta(seconds=1), end_date=end + timedelta(seconds=1))
    return {"start": start.isoformat(), "end": end.isoformat(), "views": VIEWS}


def historical_feature_batches(data_dir: Path | str, entity_df: pd.DataFrame, feature_service: str,
                               chunk_rows: int = 1_000_000, offline_store: str | None = None) -> Iterator[pd.DataFrame]:
    """Point-in-time join of the feature service onto ``entity_df``, one frame per ``chunk_rows`` rows.

    Each frame holds that chunk's rows in ``entity_df``'s order with ``<view>__<feature>`` columns
    (full_feature_names, so user and item columns never clash). Chunking bounds memory: a chunk's
    result is the only joined data alive at once, so callers can write it out before the next one.
    """
    from tqdm.auto import tqdm

    store = open_store(data_dir, offline_store)
    service = store.get_feature_service(feature_service)
    starts = range(0, len(entity_df), chunk_rows)
    for start in tqdm(starts, desc="point-in-time join", unit="chunk", disable=len(starts) < 3):
        chunk = entity_df.iloc[start:start + chunk_rows]
        job = store.get_historical_features(entity_df=chunk, features=service, full_feature_names=True)
        df = job.to_arrow().to_pandas(split_blocks=True, self_destruct=True)
        df["event_timestamp"] = df["event_timestamp"].astype("datetime64[us, UTC]")  # the contract's precision
        yield _in_entity_order(df, chunk)


def _in_entity_order(df: pd.DataFrame, chunk: pd.DataFrame) -> pd.DataFrame:
    """The repo's offline store keeps the entity order; Feast's stock stores do not (then re-order)."""
    if len(df) != len(chunk):
        raise RuntimeError(f"Feast returned {len(df)} rows for {len(chunk)} entity rows")
    ids = chunk["impression_id"].to_numpy()
    if not np.array_equal(df["impression_id"].to_numpy(), ids):
        df = df.set_index("impression_id").loc[ids].reset_index()[df.columns]
    df.index = pd.RangeIndex(len(df))  # no copy (reset_index would copy every column)
    return df


def online_features(data_dir: Path | str, entity_rows: list[dict], feature_service: str) -> pd.DataFrame:
    store = open_store(data_dir)
    service = store.get_feature_service(feature_service)
    return store.get_online_features(features=service, entity_rows=entity_rows, full_feature_names=True).to_df()
