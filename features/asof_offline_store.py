"""A Feast offline store: Feast's DuckDB store with the point-in-time join done as DuckDB ASOF joins.

Selected in feature_store.yaml by its import path::

    offline_store:
      type: features.asof_offline_store.AsofDuckDBOfflineStore

Why: Feast's DuckDB store (through ibis) joins every entity row to *every* feature row of its key
stamped at or before the row's time, then keeps the latest with a window function. That work grows
with entity rows x history per key: 34 s for 1M impressions on the funnel's four views here, and it
dominated the training-set step. ``ASOF LEFT JOIN`` finds the latest row per entity row directly
(sort-merge): same answer, a fraction of the time and memory (benchmarks/retrieval.py).

Same semantics as the stock store, which the tests check row for row: the latest feature row with
``timestamp <= entity timestamp`` and, when the view has a TTL, ``timestamp >= entity timestamp - ttl``
(else nulls); ties on the timestamp broken by the created-timestamp column when the source has one;
join-key and field mappings; ``full_feature_names``. Unlike the stock store, rows come back in the
entity frame's order. Anything this store does not handle (entity frame given as SQL, on-demand feature
views, the created-timestamp cutoff, non-Parquet sources) goes to the stock DuckDB store unchanged.
Everything else (materialization, pulls, writes) is the stock store's.

Its config also carries ``tables``, the folder of the feature tables, for the ``feast`` CLI: the
repo's feature_store.yaml fills it from ``$FUNNELFLOW_DATA_DIR`` and ``feature_repo/definitions.py``
builds the views on it. Feast parses this config first in every CLI command, so an unset variable
stops here with one line instead of a SQLAlchemy traceback when the registry opens.
"""
from __future__ import annotations

import re
from datetime import timedelta

import duckdb
import pandas as pd
import pyarrow as pa
from feast.data_format import ParquetFormat
from feast.feature_view import FeatureView
from feast.infra.offline_stores import offline_utils
from feast.infra.offline_stores.duckdb import DuckDBOfflineStore, DuckDBOfflineStoreConfig
from feast.infra.offline_stores.file_source import FileSource
from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata
from feast.infra.registry.base_registry import BaseRegistry
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import RepoConfig
from pydantic import StrictStr, field_validator

ROW = "__entity_row"  # entity order, carried through the joins


class AsofDuckDBOfflineStoreConfig(DuckDBOfflineStoreConfig):
    """The stock DuckDB store's settings, plus DuckDB threads and the feature tables' folder."""

    type: StrictStr = "features.asof_offline_store.AsofDuckDBOfflineStore"
    threads: int | None = None  # DuckDB threads; None: all cores
    tables: str | None = None  # the feature tables' folder (the feast CLI's definitions.py reads it)

    @field_validator("tables")
    @classmethod
    def _variable_set(cls, tables: str | None) -> str | None:
        unset = re.search(r"\$\{?(\w+)", tables or "")  # Feast leaves an unset variable as written
        if unset:
            # SystemExit, not ValueError: the feast CLI would print a config-error traceback.
            raise SystemExit(f"feature_store.yaml needs {unset.group(1)} (the data dir): run "
                             f"`{unset.group(1)}=$PWD/data feast -c features/feature_repo plan` from the repo root")
        return tables


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _parquet_path(fv: FeatureView) -> str | None:
    src = fv.batch_source
    if not isinstance(src, FileSource) or src.path.startswith(("s3://", "gs://", "az://", "http")):
        return None
    fmt = src.file_format
    if fmt is None and not src.path.endswith(".parquet"):
        return None
    return src.path if fmt is None or isinstance(fmt, ParquetFormat) else None


def _view_sql(fv: FeatureView, features: list[str], full_feature_names: bool, alias: str) -> tuple[str, str, list[str]]:
    """(subquery over the view's source, ASOF ON condition, select expressions) for one feature view."""
    src, path = fv.batch_source, _parquet_path(fv)
    assert isinstance(src, FileSource) and path is not None  # the only views get_historical_features sends here
    to_source = {feature: source for source, feature in src.field_mapping.items()}  # feature -> source column
    key_map = fv.projection.join_key_map or {e.name: e.name for e in fv.entity_columns}  # table key -> entity col
    ts, created = src.timestamp_field, src.created_timestamp_column
    cols = [f"{_q(to_source.get(k, k))} AS {_q('k_' + k)}" for k in key_map]
    cols.append(f"CAST({_q(ts)} AS TIMESTAMPTZ) AS __ts")
    cols += [f"{_q(to_source.get(f, f))} AS {_q('f_' + f)}" for f in features]
    sub = f"SELECT {', '.join(cols)} FROM read_parquet({_lit(path)})"
    if created:
        # Feast keeps, per timestamp, the row created last: do the same before the as-of join.
        keys = ", ".join(_q(to_source.get(k, k)) for k in key_map)
        sub += f" QUALIFY row_number() OVER (PARTITION BY {keys}, {_q(ts)} ORDER BY {_q(created)} DESC) = 1"
    on = [f"e.{_q(entity_col)} = {alias}.{_q('k_' + k)}" for k, entity_col in key_map.items()]
    on.append(f"e.__ts >= {alias}.__ts")
    prefix = f"{fv.projection.name_alias or fv.name}__" if full_feature_names else ""
    ttl: timedelta | None = fv.ttl
    fresh = f"{alias}.__ts >= e.__ts - to_microseconds({int(ttl.total_seconds() * 1e6)})" if ttl else None
    select = [(f"CASE WHEN {fresh} THEN {alias}.{_q('f_' + f)} END" if fresh else f"{alias}.{_q('f_' + f)}")
              + f" AS {_q(prefix + f)}" for f in features]
    return sub, " AND ".join(on), select


class AsofRetrievalJob(RetrievalJob):
    """Runs the as-of join when the result is asked for (to_arrow / to_df), like Feast's own jobs."""

    def __init__(self, entity_df: pd.DataFrame, ts_col: str, feature_views: list[tuple[FeatureView, list[str]]],
                 full_feature_names: bool, threads: int | None, metadata: RetrievalMetadata):
        super().__init__()
        self._entity_df, self._ts_col, self._views = entity_df, ts_col, feature_views
        self._full_feature_names, self._threads, self._metadata = full_feature_names, threads, metadata

    @property
    def full_feature_names(self) -> bool:
        return self._full_feature_names

    @property
    def on_demand_feature_views(self) -> list[OnDemandFeatureView]:
        return []

    @property
    def metadata(self) -> RetrievalMetadata | None:
        return self._metadata

    def sql(self) -> str:
        subs, joins, selects = [], [], []
        for i, (fv, features) in enumerate(self._views):
            alias = f"v{i}"
            sub, on, select = _view_sql(fv, features, self._full_feature_names, alias)
            subs.append(f"{alias}_src AS ({sub})")
            joins.append(f"ASOF LEFT JOIN {alias}_src {alias} ON {on}")
            selects += select
        entity_cols = ", ".join(f"e.{_q(c)}" for c in self._entity_df.columns)
        return (f"WITH {', '.join(subs)}\n"
                f"SELECT {entity_cols}, {', '.join(selects)}\n"
                f"FROM (SELECT *, CAST({_q(self._ts_col)} AS TIMESTAMPTZ) AS __ts FROM entity_rows) e\n"
                + "\n".join(joins) + f"\nORDER BY e.{ROW}")

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        entity = pa.Table.from_pandas(self._entity_df, preserve_index=False)
        entity = entity.append_column(ROW, pa.array(range(len(entity)), pa.int64()))
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            # DuckDB turns an ASOF join whose probe side it thinks is small into a nested loop plus
            # group-by; it cannot size the Arrow scan, and the loop was 6x slower on 200k rows.
            con.execute("SET asof_loop_join_threshold = 0")
            if self._threads:
                con.execute(f"SET threads = {int(self._threads)}")
            con.register("entity_rows", entity)
            table = con.execute(self.sql()).to_arrow_table()
        finally:
            con.close()
        ts_type = entity.schema.field(self._ts_col).type
        return table.set_column(table.schema.get_field_index(self._ts_col), self._ts_col,
                                table.column(self._ts_col).cast(ts_type))

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        return self._to_arrow_internal(timeout).to_pandas()

    def persist(self, storage, allow_overwrite: bool = False, timeout: int | None = None):
        raise NotImplementedError("persist: retrieve with to_arrow() and write the table yourself")


def _asof_job(config: RepoConfig, feature_views: list[FeatureView], feature_refs: list[str],
              entity_df: pd.DataFrame, full_feature_names: bool) -> AsofRetrievalJob:
    ts_col = offline_utils.infer_event_timestamp_from_entity_df(dict(entity_df.dtypes))
    if ROW in entity_df.columns:
        raise ValueError(f"entity_df may not have a column named {ROW!r}")
    views = []
    for fv in feature_views:
        prefix = f"{fv.projection.name_to_use()}:"
        views.append((fv, [r.split(":", 1)[1] for r in feature_refs if r.startswith(prefix)]))
    ts = entity_df[ts_col]
    metadata = RetrievalMetadata(features=feature_refs, keys=[c for c in entity_df.columns if c != ts_col],
                                 min_event_timestamp=ts.min() if len(ts) else None,
                                 max_event_timestamp=ts.max() if len(ts) else None)
    return AsofRetrievalJob(entity_df, ts_col, views, full_feature_names,
                            getattr(config.offline_store, "threads", None), metadata)


class AsofDuckDBOfflineStore(DuckDBOfflineStore):
    """Feast's DuckDB offline store whose point-in-time join runs as DuckDB ASOF joins (see above)."""

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: pd.DataFrame | str,
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
    ) -> RetrievalJob:
        odfvs = OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry)
        supported = not (odfvs or filter_by_created_timestamp or any(_parquet_path(fv) is None for fv in feature_views))
        if isinstance(entity_df, pd.DataFrame) and supported:
            return _asof_job(config, feature_views, feature_refs, entity_df, full_feature_names)
        return DuckDBOfflineStore.get_historical_features(
            config, feature_views, feature_refs, entity_df, registry, project, full_feature_names,
            filter_by_created_timestamp)
