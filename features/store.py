"""Feast, configured in code: apply the registry's views, materialize, retrieve point-in-time features.

Each store is built from explicit folders (``FeastPaths``): Feast's registry and online store under
one, the feature tables its views read under the other. Nothing goes through the environment, so two
stores on two data dirs in one process do not see each other. The embedded defaults: the repo's ASOF
DuckDB offline store, a SQLite online store and a SQLite (SQL) registry. ``feature_repo/`` holds the
same settings as a feature_store.yaml for the ``feast`` CLI; a test keeps the two equal.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.contract import MissingInput, require_input
from features.engineering import TablesMeta, ViewMeta, read_tables_meta, table_glob, view_dir
from features.views import Entity as EntitySpec
from features.views import View, Views
from models.atomic import write_json

if TYPE_CHECKING:
    from feast import Entity, FeatureStore, FeatureView
    from feast.repo_config import RepoConfig

PROJECT = "funnelflow"
ASOF = "features.asof_offline_store.AsofDuckDBOfflineStore"
# Profiles and aggregates hold until superseded: the tables are already point-in-time stamped
# (see features/engineering.py), so the TTL only bounds how far back the join looks.
NO_EXPIRY = timedelta(days=3650)
ONLINE_RECORD = "online.json"  # the feature tables' day files the online store holds (day -> sha256)


@dataclass(frozen=True)
class FeastPaths:
    """The folders of one Feast store, made absolute (DuckDB and SQLite resolve relative paths against
    the current directory).

    Attributes:
        feast: the registry (registry.db) and the online store (online.db).
        tables: the feature tables that the feature views read (``features build`` writes them).
    """

    feast: Path
    tables: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "feast", Path(self.feast).resolve())
        object.__setattr__(self, "tables", Path(self.tables).resolve())

    @property
    def registry(self) -> Path:
        """Feast's SQL registry (SQLite)."""
        return self.feast / "registry.db"

    @property
    def online(self) -> Path:
        """Feast's SQLite online store."""
        return self.feast / "online.db"


def repo_config(paths: FeastPaths, offline_store: str = ASOF) -> RepoConfig:
    """Feast's configuration for the store in ``paths``; ``offline_store`` swaps the offline store type
    (e.g. "duckdb", "file") for comparisons, the registry and every definition staying the same."""
    from feast.repo_config import RepoConfig  # imported late: `import feast` costs seconds

    offline: dict[str, Any] = {"type": offline_store}
    if offline_store == ASOF:
        offline["tables"] = str(paths.tables)
    return RepoConfig(
        project=PROJECT,
        provider="local",
        registry={"registry_type": "sql", "path": f"sqlite:///{paths.registry}", "cache_ttl_seconds": 60},
        online_store={"type": "sqlite", "path": str(paths.online)},
        offline_store=offline,
        entity_key_serialization_version=3,
        auth={"type": "no_auth"},
        repo_path=paths.feast,
    )


def open_store(paths: FeastPaths, offline_store: str = ASOF) -> FeatureStore:
    """A FeatureStore on ``paths`` (see ``repo_config``)."""
    from feast import FeatureStore

    paths.feast.mkdir(parents=True, exist_ok=True)
    return FeatureStore(repo_path=str(paths.feast), config=repo_config(paths, offline_store))


def _open_applied(paths: FeastPaths, offline_store: str = ASOF) -> FeatureStore:
    """A store whose registry exists: opening a missing one would create it empty."""
    require_input(paths.registry, "features apply")
    return open_store(paths, offline_store)


def _entity(entity: EntitySpec) -> Entity:
    from feast import Entity, ValueType

    return Entity(name=entity.name, join_keys=[entity.key], value_type=ValueType.INT64,
                  description=entity.description)


def _feature_view(view: View, entity: Entity, tables: Path, meta: TablesMeta) -> FeatureView:
    """The Feast view of ``view``: its schema is its table's columns as recorded in tables.json, so a
    user's own profile columns (int64 categorical / float64 numeric, per the contract) flow through."""
    from feast import FeatureView, Field, FileSource
    from feast.types import Float64, Int64

    path = table_glob(tables, view.name)
    if view.name not in meta.views:
        raise MissingInput(view_dir(tables, view.name), "features build")
    schema = [Field(name=col, dtype=Int64 if m.dtype == "int64" else Float64)
              for col, m in meta.views[view.name].features.items()]
    return FeatureView(
        name=view.name,
        entities=[entity],
        ttl=NO_EXPIRY,
        schema=schema,
        # One table over the view's day files: the glob is read by DuckDB (ours and Feast's stores).
        source=FileSource(name=f"{view.name}_source", path=str(path), timestamp_field="event_timestamp"),
        online=True,
        description=view.description,
        tags={"kind": view.kind},
    )


def feast_objects(tables: Path, service: str, views: Views) -> list:
    """Entities, one feature view per registry entry on the tables in ``tables``, and the feature
    service ``service`` serving every view."""
    from feast import FeatureService

    meta = read_tables_meta(tables)
    entities = {e.name: _entity(e) for e in views.entities}
    feature_views = [_feature_view(v, entities[v.entity.name], tables, meta) for v in views]
    served = FeatureService(name=service, features=list(feature_views),
                            description="Every feature the funnel models read")
    return [*entities.values(), *feature_views, served]


def apply(paths: FeastPaths, service: str, views: Views) -> list[str]:
    """Register the entities, feature views and the feature service (what `feast apply` does)."""
    objects = feast_objects(paths.tables, service, views)
    open_store(paths).apply(objects)
    return [o.name for o in objects]


def _materialize_mode(view: ViewMeta, loaded: dict[str, str] | None, last_end: datetime | None) -> str:
    """How to bring one view's online rows up to its table, given the day files (day -> sha256) last
    loaded and Feast's last materialized end: ``none`` (nothing new), ``incremental`` (only new days,
    every row at or after the last end) or ``full`` (first load, a day replaced or gone, or a new row
    stamped before the last end, which an incremental load would miss)."""
    if loaded is None or last_end is None:
        return "full"
    parts = view.partitions
    if any(parts.get(day) is None or parts[day].sha256 != sha for day, sha in loaded.items()):
        return "full"
    new = [p.time_range for day, p in parts.items() if day not in loaded and p.time_range is not None]
    if not new:
        return "none"
    return "incremental" if min(r[0] for r in new) >= last_end else "full"


def materialize(paths: FeastPaths) -> dict:
    """Bring Feast's SQLite online store up to the feature tables, loading only what changed.

    The day files loaded are recorded beside the online store (``online.json``); per view, new days
    whose rows all come after the last load go through Feast's ``materialize_incremental``, anything
    else (the first load, a replaced day) reloads the view's whole time range, and a view with
    nothing new is left alone.
    """
    meta = read_tables_meta(paths.tables)
    store = _open_applied(paths)
    record = paths.feast / ONLINE_RECORD
    loaded = json.loads(record.read_text())["views"] if record.exists() and paths.online.exists() else {}
    end = max(v.time_range[1] for v in meta.views.values() if v.time_range is not None)
    modes = {name: _materialize_mode(view, loaded.get(name), store.get_feature_view(name).most_recent_end_time)
             for name, view in meta.views.items() if view.time_range is not None}
    incremental = [n for n, m in modes.items() if m == "incremental"]
    if incremental:
        store.materialize_incremental(end_date=end, feature_views=incremental)
    full = [n for n, m in modes.items() if m == "full"]
    if full:
        start = min(meta.views[n].time_range[0] for n in full)  # type: ignore[index]  # modes skip None
        store.materialize(start_date=start, end_date=end, feature_views=full)
    views = {name: {day: p.sha256 for day, p in view.partitions.items()} for name, view in meta.views.items()}
    write_json(record, {"end": end.isoformat(), "views": views})
    return {"end": end.isoformat(), "modes": modes, "days": list(meta.days)}


def historical_feature_batches(paths: FeastPaths, entity_df: pd.DataFrame, feature_service: str,
                               chunk_rows: int = 1_000_000, offline_store: str = ASOF) -> Iterator[pd.DataFrame]:
    """Point-in-time join of the feature service onto ``entity_df``, one frame per ``chunk_rows`` rows.

    Each frame holds that chunk's rows in ``entity_df``'s order with ``<view>__<feature>`` columns
    (full_feature_names, so user and item columns never clash). Chunking bounds memory: a chunk's
    result is the only joined data alive at once, so callers can write it out before the next one.
    """
    from tqdm.auto import tqdm

    store = _open_applied(paths, offline_store)
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
