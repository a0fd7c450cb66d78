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


def open_store(data_dir: Path | str):
    """A FeatureStore on this repo's feature_store.yaml, with its files under ``data_dir``."""
    _set_data_dir(data_dir)
    from feast import FeatureStore  # imported late: `import feast` costs seconds

    return FeatureStore(repo_path=str(REPO_PATH))


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


def historical_features(data_dir: Path | str, entity_df: pd.DataFrame, feature_service: str,
                        chunk_rows: int = 200_000) -> pd.DataFrame:
    """Point-in-time join of the feature service onto ``entity_df`` (keys, event_timestamp, anything else).

    Column names are ``<view>__<feature>`` (full_feature_names) so user and item columns never clash.
    The entity frame goes to Feast in chunks: DuckDB's as-of join peaks at ~7 GB for 1M entity rows in
    one call and at ~1.7 GB per 100k-row chunk, for the same total time (measured, 2 cores).
    Rows come back in Feast's order; callers re-sort by their own id.
    """
    import pyarrow as pa
    from tqdm.auto import tqdm

    store = open_store(data_dir)
    service = store.get_feature_service(feature_service)
    parts = []
    starts = range(0, len(entity_df), chunk_rows)
    for start in tqdm(starts, desc="point-in-time join", unit="chunk", disable=len(starts) < 3):
        chunk = entity_df.iloc[start:start + chunk_rows]
        job = store.get_historical_features(entity_df=chunk, features=service, full_feature_names=True)
        parts.append(job.to_arrow())
    df = pa.concat_tables(parts).to_pandas()
    df["event_timestamp"] = df["event_timestamp"].astype("datetime64[us, UTC]")  # the contract's precision
    return df


def online_features(data_dir: Path | str, entity_rows: list[dict], feature_service: str) -> pd.DataFrame:
    store = open_store(data_dir)
    service = store.get_feature_service(feature_service)
    return store.get_online_features(features=service, entity_rows=entity_rows, full_feature_names=True).to_df()
