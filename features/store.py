"""Feast, configured in code: apply the registry's views, materialize, retrieve point-in-time features.

Each store is built from explicit folders (``FeastPaths``): Feast's registry and online store under
one, the feature tables its views read under the other. Nothing goes through the environment, so two
stores on two data dirs in one process do not see each other. The embedded defaults: the repo's ASOF
DuckDB offline store, a SQLite online store and a SQLite (SQL) registry; params.yaml
``features.online_store`` picks Redis instead, ``features.offline_store`` Feast's Spark offline store
and Spark compute engine (the Spark profile: ``_offline_config``; see features/engines.py).
``feature_repo/`` holds the same settings as a feature_store.yaml for the ``feast`` CLI; a test keeps
the two equal.
"""
from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.contract import MissingInput, require_input
from features.engineering import (
    OnlineStore,
    RedisOnline,
    SqliteOnline,
    TablesMeta,
    ViewMeta,
    read_tables_meta,
    table_glob,
    view_dir,
)
from features.engines import DuckDBOffline, OfflineStore, SparkOffline, spark_session
from features.views import Entity as EntitySpec
from features.views import View, Views
from models.atomic import write_json

if TYPE_CHECKING:
    from feast import Entity, FeatureStore, FeatureView
    from feast.data_source import DataSource
    from feast.repo_config import RepoConfig
    from redis import Redis

PROJECT = "funnelflow"
ENTITY_KEY_VERSION = 3  # Feast's entity key serialization (features/online.py reads Redis keys with it)
ASOF = "features.asof_offline_store.AsofDuckDBOfflineStore"
# Profiles and aggregates hold until superseded: the tables are already point-in-time stamped
# (see features/engineering.py), so the TTL only bounds how far back the join looks.
NO_EXPIRY = timedelta(days=3650)
ONLINE_RECORD = "online.json"  # the feature tables' day files the online store holds (day -> sha256)
# The load that online.json describes, written into the online store itself: a record whose token the
# store does not hold (another store, a flushed or restarted Redis, a deleted online.db) is not trusted.
LOAD_TOKEN = "funnelflow_online_load"  # a Redis key; a one-row table in SQLite


class OnlineStoreUnavailable(ConnectionError):
    """The configured online store cannot be reached: the message names it and how to fix it."""


@dataclass(frozen=True)
class FeastPaths:
    """The folders of one Feast store, made absolute (DuckDB and SQLite resolve relative paths against
    the current directory).

    Attributes:
        feast: the registry (registry.db), the SQLite online store (online.db) and online.json.
        tables: the feature tables that the feature views read (``features build`` writes them).
        online: the online store (params.yaml ``features.online_store``): SQLite in ``feast`` or Redis.
        offline: the engine of retrieval and materialization (``features.offline_store``): DuckDB or Spark.
    """

    feast: Path
    tables: Path
    online: OnlineStore = field(default_factory=SqliteOnline)
    offline: OfflineStore = field(default_factory=DuckDBOffline)

    def __post_init__(self) -> None:
        object.__setattr__(self, "feast", Path(self.feast).resolve())
        object.__setattr__(self, "tables", Path(self.tables).resolve())

    @property
    def registry(self) -> Path:
        """Feast's SQL registry (SQLite)."""
        return self.feast / "registry.db"

    @property
    def sqlite(self) -> Path:
        """Feast's SQLite online store (used when ``online`` is SQLite)."""
        return self.feast / "online.db"

    def describe(self) -> str:
        """The online store in one phrase, for records and messages (no folder: DVC tracks the records)."""
        if isinstance(self.online, RedisOnline):
            return f"redis {self.online.connection} db {self.online.db}"
        return f"sqlite {self.sqlite.name}"


def _online_store_config(paths: FeastPaths) -> dict[str, Any]:
    """Feast's online store settings. On Redis, writes skip Feast's per-key timestamp check: what is
    loaded is decided by ``materialize`` (only newer rows incrementally), and a reload after a replaced
    day must overwrite rows with the same timestamps, which that check would keep."""
    if isinstance(paths.online, RedisOnline):
        db = f",db={paths.online.db}" if paths.online.db else ""
        return {"type": "redis", "connection_string": f"{paths.online.connection}{db}", "skip_dedup": True}
    return {"type": "sqlite", "path": str(paths.sqlite)}


def _offline_config(paths: FeastPaths, offline_store: str | None) -> dict[str, Any]:
    """Feast's offline store (and batch engine) settings: ``paths.offline``'s engine, or the store type
    ``offline_store`` names. The Spark profile: Feast's Spark offline store and its Spark compute engine
    for materialization, both on one Spark session started with ``SparkOffline.spark_conf``."""
    if offline_store is None and isinstance(paths.offline, SparkOffline):
        conf = paths.offline.spark_conf()
        return {"offline_store": {"type": "spark", "spark_conf": conf},
                "batch_engine": {"type": "spark.engine", "spark_conf": conf}}
    kind = offline_store or ASOF
    return {"offline_store": {"type": kind, "tables": str(paths.tables)} if kind == ASOF else {"type": kind}}


def repo_config(paths: FeastPaths, offline_store: str | None = None) -> RepoConfig:
    """Feast's configuration for the store in ``paths``; ``offline_store`` swaps the offline store type
    (e.g. "duckdb", "file") for comparisons, the registry and every definition staying the same."""
    from feast.repo_config import RepoConfig  # imported late: `import feast` costs seconds

    return RepoConfig(
        project=PROJECT,
        provider="local",
        registry={"registry_type": "sql", "path": f"sqlite:///{paths.registry}", "cache_ttl_seconds": 60},
        online_store=_online_store_config(paths),
        **_offline_config(paths, offline_store),
        entity_key_serialization_version=ENTITY_KEY_VERSION,
        auth={"type": "no_auth"},
        repo_path=paths.feast,
    )


def open_store(paths: FeastPaths, offline_store: str | None = None) -> FeatureStore:
    """A FeatureStore on ``paths`` (see ``repo_config``)."""
    from feast import FeatureStore

    paths.feast.mkdir(parents=True, exist_ok=True)
    return FeatureStore(repo_path=str(paths.feast), config=repo_config(paths, offline_store))


class AppliedForAnotherEngine(MissingInput):
    """The registry's views were applied for another offline engine than the store is opened with
    (their sources differ: Feast's Spark store reads only Spark sources)."""

    def __init__(self, path: Path | str, kind: str):
        super().__init__(path, "features apply")
        self.kind = kind
        self.args = (f"{path} holds views applied for another offline engine than params.yaml "
                     f"features.offline_store ({kind}): run `funnelflow features apply` first",)

    def __reduce__(self) -> tuple[type, tuple]:
        return (type(self), (self.path, self.kind))


def _open_applied(paths: FeastPaths, offline_store: str | None = None) -> FeatureStore:
    """A store whose registry exists (opening a missing one would create it empty) and, on
    ``paths.offline``'s engine, holds the views applied for that engine."""
    require_input(paths.registry, "features apply")
    fs = open_store(paths, offline_store)
    if offline_store is None:
        spark = isinstance(paths.offline, SparkOffline)
        if any((type(v.batch_source).__name__ == "SparkSource") != spark for v in fs.list_feature_views()):
            raise AppliedForAnotherEngine(paths.registry, paths.offline.kind)
        if isinstance(paths.offline, SparkOffline):
            spark_session(paths.offline)  # before Feast starts one: ours runs Python workers on this interpreter
    return fs


def _entity(entity: EntitySpec) -> Entity:
    from feast import Entity, ValueType

    return Entity(name=entity.name, join_keys=[entity.key], value_type=ValueType.INT64,
                  description=entity.description)


def _source(view: View, tables: Path, offline: OfflineStore) -> DataSource:
    """One table over the view's day files (a glob): read by DuckDB (ours and Feast's stores) or Spark.
    Each kind has its own name: Feast's SQL registry reads a source's stored row as the new source's
    class, so a Spark source under a name stored for a file source fails to apply."""
    path = str(table_glob(tables, view.name))
    if isinstance(offline, SparkOffline):
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

        return SparkSource(name=f"{view.name}_spark_source", path=path, file_format="parquet",
                           timestamp_field="event_timestamp")
    from feast import FileSource

    return FileSource(name=f"{view.name}_source", path=path, timestamp_field="event_timestamp")


def _feature_view(view: View, entity: Entity, tables: Path, meta: TablesMeta, offline: OfflineStore) -> FeatureView:
    """The Feast view of ``view``: its schema is its table's columns as recorded in tables.json, so a
    user's own profile columns (int64 categorical / float64 numeric, per the contract) flow through."""
    from feast import FeatureView, Field
    from feast.types import Float64, Int64

    if view.name not in meta.views:
        raise MissingInput(view_dir(tables, view.name), "features build")
    schema = [Field(name=col, dtype=Int64 if m.dtype == "int64" else Float64)
              for col, m in meta.views[view.name].features.items()]
    return FeatureView(
        name=view.name,
        entities=[entity],
        ttl=NO_EXPIRY,
        schema=schema,
        source=_source(view, tables, offline),
        online=True,
        description=view.description,
        tags={"kind": view.kind},
    )


def feast_objects(tables: Path, service: str, views: Views, offline: OfflineStore | None = None) -> list:
    """Entities, one feature view per registry entry on the tables in ``tables`` (sources for the
    ``offline`` engine; None: the default), and the feature service ``service`` serving every view."""
    from feast import FeatureService

    meta = read_tables_meta(tables)
    entities = {e.name: _entity(e) for e in views.entities}
    engine = offline or DuckDBOffline()
    feature_views = [_feature_view(v, entities[v.entity.name], tables, meta, engine) for v in views]
    served = FeatureService(name=service, features=list(feature_views),
                            description="Every feature the funnel models read")
    return [*entities.values(), *feature_views, served]


def apply(paths: FeastPaths, service: str, views: Views) -> list[str]:
    """Register the entities, feature views and the feature service (what `feast apply` does)."""
    objects = feast_objects(paths.tables, service, views, paths.offline)
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
    """Bring Feast's online store (SQLite or Redis) up to the feature tables, loading only what changed.

    The day files loaded are recorded beside the registry (``online.json``) with a token that the
    load also writes into the online store: the record is trusted only while the store holds its
    token, so another store (a switch in params.yaml), a flushed or restarted Redis or a deleted
    online.db gets a full load. Per view, new days whose rows all come after the last load go through
    Feast's ``materialize_incremental``, anything else (the first load, a replaced day) reloads the
    view's whole time range, and a view with nothing new is left alone.

    Raises:
        OnlineStoreUnavailable: the Redis server does not answer.
    """
    meta = read_tables_meta(paths.tables)
    store = _open_applied(paths)
    record_path = paths.feast / ONLINE_RECORD
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    token = _read_token(paths)
    loaded = record["views"] if token is not None and record.get("token") == token else {}
    end = max(v.time_range[1] for v in meta.views.values() if v.time_range is not None)
    modes = {name: _materialize_mode(view, loaded.get(name), store.get_feature_view(name).most_recent_end_time)
             for name, view in meta.views.items() if view.time_range is not None}
    if set(modes.values()) - {"none"}:
        token = _load(store, paths, meta, modes, end, fresh=not loaded)
    views = {name: {day: p.sha256 for day, p in view.partitions.items()} for name, view in meta.views.items()}
    write_json(record_path, {"store": paths.describe(), "token": token, "end": end.isoformat(), "views": views})
    _write_token(paths, token)
    return {"store": paths.describe(), "end": end.isoformat(), "modes": modes, "days": list(meta.days)}


def _load(store: FeatureStore, paths: FeastPaths, meta: TablesMeta, modes: dict[str, str], end: datetime,
          fresh: bool) -> str:
    """Run the loads ``modes`` asks for and return the new load's token. The store's token is removed
    first, so a load that dies half way is not trusted; a ``fresh`` store (nothing of it trusted) gets
    its tables first (SQLite's are made by ``apply``, against the store configured then)."""
    _write_token(paths, None)
    if fresh:
        views = store.list_feature_views()
        store.provider.update_infra(PROJECT, tables_to_delete=[], tables_to_keep=views, entities_to_delete=[],
                                    entities_to_keep=store.list_entities(), partial=True)
    incremental = [n for n, m in modes.items() if m == "incremental"]
    if incremental:
        store.materialize_incremental(end_date=end, feature_views=incremental)
    full = [n for n, m in modes.items() if m == "full"]
    if full:
        start = min(meta.views[n].time_range[0] for n in full)  # type: ignore[index]  # modes skip None
        store.materialize(start_date=start, end_date=end, feature_views=full)
    return uuid.uuid4().hex


def _redis(online: RedisOnline) -> Redis:
    from redis import Redis

    return Redis(host=online.host, port=online.port, db=online.db, socket_connect_timeout=5, decode_responses=True)


def _read_token(paths: FeastPaths) -> str | None:
    """The token of the load the online store holds; None: none, or one that did not finish."""
    if isinstance(paths.online, RedisOnline):
        from redis.exceptions import ConnectionError as RedisDown

        try:
            value = _redis(paths.online).get(LOAD_TOKEN)
        except RedisDown as exc:
            raise OnlineStoreUnavailable(
                f"online store {paths.describe()} (params.yaml features.online_store) does not answer ({exc}): "
                "start it (infra/redis.sh start DIR) or fix features.online_store.connection") from exc
        return None if value is None else str(value)
    if not paths.sqlite.exists():
        return None
    with closing(sqlite3.connect(paths.sqlite)) as con:
        try:
            row = con.execute(f"SELECT token FROM {LOAD_TOKEN}").fetchone()
        except sqlite3.OperationalError:  # no such table: no load of ours in this file
            return None
    return None if row is None else str(row[0])


def _write_token(paths: FeastPaths, token: str | None) -> None:
    """Put ``token`` into the online store (None: remove it)."""
    if isinstance(paths.online, RedisOnline):
        client = _redis(paths.online)
        if token is None:
            client.delete(LOAD_TOKEN)
        else:
            client.set(LOAD_TOKEN, token)
        return
    with closing(sqlite3.connect(paths.sqlite)) as con, con:
        con.execute(f"CREATE TABLE IF NOT EXISTS {LOAD_TOKEN} (token TEXT NOT NULL)")
        con.execute(f"DELETE FROM {LOAD_TOKEN}")
        if token is not None:
            con.execute(f"INSERT INTO {LOAD_TOKEN} VALUES (?)", (token,))


def historical_feature_batches(paths: FeastPaths, entity_df: pd.DataFrame, feature_service: str,
                               chunk_rows: int = 1_000_000, offline_store: str | None = None,
                               ) -> Iterator[pd.DataFrame]:
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
        yield _in_entity_order(_utc(df), chunk)


def _utc(df: pd.DataFrame) -> pd.DataFrame:
    """The entity timestamps at the contract's precision, in UTC: Spark hands them back naive, as
    wall-clock time in its session time zone (UTC, see SparkOffline.spark_conf)."""
    ts = df["event_timestamp"]
    df["event_timestamp"] = (ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts).astype("datetime64[us, UTC]")
    return df


def _in_entity_order(df: pd.DataFrame, chunk: pd.DataFrame) -> pd.DataFrame:
    """The repo's offline store keeps the entity order; Feast's stock stores do not (then re-order)."""
    if len(df) != len(chunk):
        raise RuntimeError(f"Feast returned {len(df)} rows for {len(chunk)} entity rows")
    ids = chunk["impression_id"].to_numpy()
    if not np.array_equal(df["impression_id"].to_numpy(), ids):
        df = df.set_index("impression_id").loc[ids].reset_index()[df.columns]
    df.index = pd.RangeIndex(len(df))  # no copy (reset_index would copy every column)
    return df
