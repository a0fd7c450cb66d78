"""Feature tables that the Feast feature views read: profiles and rolling behaviour aggregates.

Point-in-time rule (contract): an impression at time t sees only rows whose timestamps are strictly
before t. Feast joins the latest row with ``feature_timestamp <= t``, so each table is stamped such
that ``<=`` on the stamp means ``<`` on the underlying events:
- profile rows are stamped 1 microsecond after the time they take effect (a row valid from T is seen
  by impressions at t > T, never at t == T);
- aggregate rows are computed at day boundaries B over events in [B - w days, B), stamped B: every
  event counted happened strictly before any impression at t >= B.
Aggregate rows are emitted only at boundaries where some window's content changes, so the tables stay
sparse while an as-of join with no TTL limit still returns the exact window sums.

Which tables exist is the registry's business (``features.views``): ``build_feature_tables`` builds
each view's table and records, in ``tables.json``, every feature column's dtype, its fill for an
entity with no history yet, and its bounds; the Feast repo, the training set and the GX suite read
them from there.

Tables are updated, not rebuilt, as raw days arrive: each view's table is one Parquet file per day
(``<view>/dt=YYYY-MM-DD.parquet``, which Feast's source and the ASOF store read as one table through
a glob), and tables.json records the raw days (content hashes) they were built from. A new or
replaced raw day recomputes only what depends on it, per the view's ``Refresh``: its own day (profile
snapshots), the days from it on with ``max(windows_days)`` days of look-back (rolling aggregates), or
everything (a view that reads all history). Sums are added day by day in a fixed order, so an update
writes exactly the bytes a full rebuild would.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
import pandas as pd
from pydantic import Discriminator, NonNegativeInt, PositiveInt, Tag, ValidationError, field_validator

from features.contract import PARTITIONS, TABLES, MissingInput, raw_manifest, read_raw, require_input
from features.engines import DuckDBOffline, OfflineStore
from models.atomic import atomic_dir, atomic_file, write_text
from models.digest import sha256_file
from models.strict import Strict, kind_of
from models.tasks import TaskGraph

if TYPE_CHECKING:
    from features.views import View, Views

ONE_US = pd.Timedelta(microseconds=1)
DAY = pd.Timedelta(days=1)
TABLES_META = "tables.json"
PRIORS = "priors"  # platform-wide rates before each day boundary: the activity rates' fill and prior
TOTALS = "totals"  # platform-wide sums per day, from which the priors are recomputed on each update
DAY_FILE = "dt={}.parquet"  # one day's partition of a view's table
log = logging.getLogger(__name__)
# Fills of a feature column for an entity with no row before t (training_set.FillPolicy applies them):
UNKNOWN = "unknown"  # categorical id -> -1, an explicit "unknown" id (stays int64)
KEEP = "keep"        # numeric -> stays NaN (the models standardise and map NaN to the mean)
ZERO = "zero"        # count or sum -> 0
PRIOR = "prior:"     # rate -> the named priors.parquet column in force at t ("prior:<column>")
Dtype = Literal["int64", "float64"]  # a feature column: int64 a categorical id, float64 numeric (the contract's rule)
Bounds = tuple[float | None, float | None]  # (min, max) the GX suite checks; None: unchecked
NON_NEGATIVE: Bounds = (0.0, None)
RATE: Bounds = (0.0, 1.0)


class SqliteOnline(Strict):
    """Feast's SQLite online store: one file beside the registry (``<data>/feast/online.db``)."""

    kind: Literal["sqlite"] = "sqlite"


class RedisOnline(Strict):
    """A Redis server as Feast's online store (``infra/redis.sh start DIR`` runs one on loopback)."""

    kind: Literal["redis"]
    connection: str = "127.0.0.1:6379"  # host:port
    db: NonNegativeInt = 0  # Redis's numbered database: data dirs sharing one server each need their own

    @field_validator("connection")
    @classmethod
    def _host_and_port(cls, connection: str) -> str:
        host, _, port = connection.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{connection!r} is not host:port: write e.g. \"127.0.0.1:6379\"")
        return connection

    @property
    def host(self) -> str:
        """The server's host name or address."""
        return self.connection.rpartition(":")[0]

    @property
    def port(self) -> int:
        """The server's TCP port."""
        return int(self.connection.rpartition(":")[2])


# Which store serves the online features, picked by ``kind`` (models.strict.kind_of says why a callable).
# before-validator on every field rules out pydantic's field discriminator).
OnlineStore = Annotated[Annotated[SqliteOnline, Tag("sqlite")] | Annotated[RedisOnline, Tag("redis")],
                        Discriminator(kind_of, custom_error_type="online_store_kind",
                                      custom_error_message="a mapping whose kind is sqlite or redis: write "
                                                           "{kind: sqlite} or {kind: redis, connection: HOST:PORT}")]


class FeatureConfig(Strict):
    """The ``features`` section of params.yaml."""

    windows_days: tuple[PositiveInt, ...] = (1, 7, 30)
    prior_strength: float = 20.0
    feature_service: str = "funnel_model_v1"
    retrieval_chunk_rows: int = 1_000_000  # entity rows per Feast call: bounds peak memory (one chunk joined at a time)
    online_store: OnlineStore = SqliteOnline()  # serving only: no table, training set or model depends on it
    # The engine of the point-in-time join and materialization (features/engines.py): same rows on either
    offline_store: OfflineStore = DuckDBOffline()


    @field_validator("windows_days")
    @classmethod
    def _some_and_distinct(cls, days: tuple[int, ...]) -> tuple[int, ...]:
        if not days:
            raise ValueError("at least one window")
        if len(set(days)) != len(days):
            raise ValueError("each window once (a repeated window would name two features alike)")
        return days


def longest_window(cfg: FeatureConfig) -> int:
    """The look-back of the rolling aggregates: a day's rows read the ``max(windows_days)`` days before it."""
    return max(cfg.windows_days)


@dataclass(frozen=True)
class Refresh:
    """How a view's table follows new or replaced raw days.

    Attributes:
        mode: ``per_day``: rows of raw day D come from raw day D alone (profile snapshots), so only
            the changed days are rebuilt; ``window``: rows stamped on day D (stamp - 1 us) read raw
            days D - lookback to D only, so the days from the first changed one on are rebuilt;
            ``full``: rows may read any day, so the whole table is rebuilt on any change (the safe
            default for a view whose look-back is not known).
        lookback: ``window`` only: the days of look-back under a feature config.
    """

    mode: Literal["per_day", "window", "full"] = "full"
    lookback: Callable[[FeatureConfig], int] | None = None


PER_DAY = Refresh("per_day")
ROLLING = Refresh("window", longest_window)
FULL = Refresh("full")


@dataclass(frozen=True)
class BuildInputs:
    """What a view's builder and rules read: raw days, the task graph, the config, the priors.

    An update hands a builder only the raw days it needs (``days``): the rows it returns stamped
    before day ``since`` are dropped (they were built before, from fuller history).
    """

    raw_dir: Path
    impressions: pd.DataFrame  # user_id, item_id, event_timestamp and the labels of ``days``, read once
    tasks: TaskGraph
    cfg: FeatureConfig
    priors: pd.DataFrame
    day0: pd.Timestamp  # midnight of the first raw day
    n_days: int  # calendar days from day0 to the last raw day
    days: tuple[str, ...] = ()  # the raw days loaded (empty: all)
    since: int = 0  # the first day index whose rows are wanted

    def raw(self, key: str) -> pd.DataFrame:
        """The raw table whose rows are keyed by ``key`` (``user_id``: users, ``item_id``: items)."""
        table = next(name for name, k in TABLES.items() if k == key)
        return read_raw(self.raw_dir, table, days=self.days or None)


@dataclass(frozen=True)
class Metric:
    """One aggregated quantity: a count of impressions or of a binary task's positives, or a value sum."""

    name: str
    column: str | None  # None: count impressions


def activity_metrics(tasks: TaskGraph) -> list[Metric]:
    """Impressions, then every task's positives (binary) or value sum (regression)."""
    out = [Metric("impressions", None)]
    out += [Metric(t.name, t.column) for t in tasks.tasks]
    return out


def rate_pairs(tasks: TaskGraph) -> list[tuple[str, str]]:
    """(numerator, denominator) metric pairs for the smoothed rates: each binary step over its parent."""
    return [(t.name, t.parent or "impressions") for t in tasks.binary]


def _rate_name(num: str, den: str, w: int) -> str:
    return f"{num}_rate_{w}d" if den == "impressions" else f"{num}_per_{den}_{w}d"


def _sum_name(m: Metric, tasks: TaskGraph, w: int) -> str:
    if m.column is None:
        return f"impressions_{w}d"
    return f"{m.name}_sum_{w}d" if tasks.get(m.name).kind == "regression" else f"{m.name}s_{w}d"


def profile_table(inputs: BuildInputs, key: str) -> pd.DataFrame:
    """Profile snapshot rows of the raw table keyed by ``key``, stamped 1 us after they take effect
    (strictly-before rule)."""
    out = inputs.raw(key)
    out["event_timestamp"] = out["event_timestamp"] + ONE_US
    return out


def _daily(imps: pd.DataFrame, key: str, metrics: list[Metric], day0: pd.Timestamp) -> pd.DataFrame:
    day = ((imps["event_timestamp"] - day0) // DAY).astype(np.int64)
    cols = {m.name: (np.ones(len(imps)) if m.column is None else imps[m.column].to_numpy(np.float64))
            for m in metrics}
    frame = pd.DataFrame({key: imps[key].to_numpy(), "day": day.to_numpy(), **cols})
    return frame.groupby([key, "day"], sort=True, as_index=False).sum()


def _window_sums(daily: pd.DataFrame, key: str, metrics: list[Metric], windows: Sequence[int],
                 n_days: int, first_boundary: int = 1) -> pd.DataFrame:
    """Exact window sums at every boundary from ``first_boundary`` on where one changes.

    Each sum adds the window's daily values oldest first, whatever else is loaded: an update that
    reads fewer days gets the very floats a full build gets (prefix-sum differences would not).
    """
    keys, days = daily[key].to_numpy(), daily["day"].to_numpy()
    stride = n_days + max(windows) + 2
    kcode = pd.factorize(keys, sort=True)[0].astype(np.int64)
    code = kcode * stride + days  # sorted, as daily is sorted by (key, day)
    # Candidate boundaries: the day after an active day, and the day it falls out of each window.
    # Each shifted run is sorted: a stable sort merges the runs, then duplicates go (np.unique's hash
    # was half of an update's time); runs are cut to the wanted boundaries first.
    shifts = [1, *(1 + w for w in windows)]
    runs = [code[(days + s >= first_boundary) & (days + s <= n_days)] + s for s in shifts]
    cand = np.sort(np.concatenate(runs), kind="stable")
    cand = cand[np.r_[True, cand[1:] != cand[:-1]]] if len(cand) else cand
    cand_key, cand_day = cand // stride, cand % stride
    values = {m.name: daily[m.name].to_numpy(np.float64) for m in metrics}
    acc: dict[str | tuple[str, int], np.ndarray] = {(m.name, w): np.zeros(len(cand)) for w in windows for m in metrics}
    for offset in range(max(windows), 0, -1):  # oldest day first
        want = cand - offset
        idx = np.minimum(np.searchsorted(code, want, side="left"), max(len(code) - 1, 0))
        found = code[idx] == want if len(code) else np.zeros(len(cand), bool)
        for w in (w for w in windows if w >= offset):
            for m in metrics:
                acc[(m.name, w)] += np.where(found, values[m.name][idx], 0.0)
    distinct = keys[np.r_[True, keys[1:] != keys[:-1]]] if len(keys) else keys  # keys are sorted
    out: dict[str | tuple[str, int], np.ndarray] = {key: distinct[cand_key], "boundary": cand_day, **acc}
    # The last candidate (activity fell out of the longest window) is all zeros: kept on purpose, so
    # the as-of join then reads zeros rather than stale counts.
    return pd.DataFrame(out)


def daily_totals(imps: pd.DataFrame, tasks: TaskGraph, day0: pd.Timestamp) -> pd.DataFrame:
    """Platform-wide impressions, positives and value sums per day index (the priors' input)."""
    daily = _daily(imps.assign(_all=0), "_all", activity_metrics(tasks), day0)
    return daily.drop(columns="_all").set_index("day")


def priors_from_totals(totals: pd.DataFrame, tasks: TaskGraph, day0: pd.Timestamp, n_days: int) -> pd.DataFrame:
    """Cumulative platform-wide rates before each day boundary: the prior the smoothed rates shrink to."""
    names = [m.name for m in activity_metrics(tasks)]
    full = totals[names].reindex(range(n_days), fill_value=0.0)
    cum = full.cumsum().shift(1).fillna(0.0)  # before boundary b = day b
    cum.loc[n_days] = full.sum()
    out = pd.DataFrame({"boundary": cum.index.to_numpy()})
    for num, den in rate_pairs(tasks):
        rate = (cum[num] / cum[den].where(cum[den] > 0)).to_numpy()
        # Before any history exists there is no prior: use the first day's rate (documented edge case).
        out[f"prior_{num}_per_{den}"] = pd.Series(rate).bfill().fillna(0.0).to_numpy()
    out["event_timestamp"] = day0 + out["boundary"] * DAY
    return out


def activity_table(inputs: BuildInputs, key: str) -> pd.DataFrame:
    """Per ``key``: impressions, positives and value sums over each window, and the smoothed rates,
    at every day boundary where a window's content changes (events strictly before the boundary)."""
    tasks, cfg = inputs.tasks, inputs.cfg
    metrics = activity_metrics(tasks)
    daily = _daily(inputs.impressions, key, metrics, inputs.day0)
    sums = _window_sums(daily, key, metrics, cfg.windows_days, inputs.n_days, inputs.since + 1)
    pri = inputs.priors.set_index("boundary").loc[sums["boundary"]]
    out = {key: sums[key].to_numpy(np.int64), "event_timestamp": inputs.day0 + sums["boundary"].to_numpy() * DAY}
    k = cfg.prior_strength
    for w in cfg.windows_days:
        for m in metrics:
            out[_sum_name(m, tasks, w)] = sums[(m.name, w)].to_numpy()
        for num, den in rate_pairs(tasks):
            prior = pri[f"prior_{num}_per_{den}"].to_numpy()
            out[_rate_name(num, den, w)] = (sums[(num, w)].to_numpy() + k * prior) / (sums[(den, w)].to_numpy() + k)
    frame = pd.DataFrame(out)
    frame["event_timestamp"] = frame["event_timestamp"].astype("datetime64[us, UTC]")
    return frame


def _activity_columns(inputs: BuildInputs) -> Iterator[tuple[str, str | None]]:
    """(column, prior column) of every activity feature: no prior for counts and sums."""
    tasks = inputs.tasks
    for w in inputs.cfg.windows_days:
        for m in activity_metrics(tasks):
            yield _sum_name(m, tasks, w), None
        for num, den in rate_pairs(tasks):
            yield _rate_name(num, den, w), f"prior_{num}_per_{den}"


def profile_fills(columns: dict[str, Dtype], inputs: BuildInputs) -> dict[str, str]:
    """Profile columns of an entity with no snapshot yet: categorical ids unknown, numerics NaN."""
    return {c: UNKNOWN if dtype == "int64" else KEEP for c, dtype in columns.items()}


def no_bounds(columns: dict[str, Dtype], inputs: BuildInputs) -> dict[str, Bounds]:
    """No range checks (a profile column's range is the user's data)."""
    return {}


def activity_fills(columns: dict[str, Dtype], inputs: BuildInputs) -> dict[str, str]:
    """Activity of an entity with no history: counts 0, rates the platform prior in force at t."""
    return {c: ZERO if prior is None else PRIOR + prior for c, prior in _activity_columns(inputs)}


def activity_bounds(columns: dict[str, Dtype], inputs: BuildInputs) -> dict[str, Bounds]:
    """Counts and sums are non-negative; smoothed rates lie in [0, 1]."""
    return {c: NON_NEGATIVE if prior is None else RATE for c, prior in _activity_columns(inputs)}


class FeatureMeta(Strict):
    """One feature column of a view's table, as recorded in tables.json."""

    dtype: Dtype
    fill: str
    min: float | None = None
    max: float | None = None


class PartitionMeta(Strict):
    """One day's file of a view's table: its rows, its content hash and its stamps' range."""

    rows: int
    sha256: str
    time_range: tuple[datetime, datetime] | None


class ViewMeta(Strict):
    """One view's table: its time range (what materialize loads), its feature columns and its day files."""

    time_range: tuple[datetime, datetime] | None
    features: dict[str, FeatureMeta]
    partitions: dict[str, PartitionMeta]  # day -> its file; a day without rows has none


class Update(Strict):
    """What the last ``build_feature_tables`` did: rebuilt everything, updated from a day, or nothing."""

    mode: Literal["full", "incremental", "unchanged"]
    since: str | None = None  # the first day recomputed
    days: tuple[str, ...] = ()  # the raw days added or replaced


class TablesMeta(Strict):
    """tables.json: what ``build_feature_tables`` wrote, read by the Feast repo and the training set."""

    rows: dict[str, int]
    day0: datetime
    n_days: int
    days: tuple[str, str]  # the first and last raw day covered
    lineage: str
    config_sha256: str  # the tasks, feature config, views and builder code the tables were built with
    raw: dict[str, str]  # raw day -> the content hash it was built from
    views: dict[str, ViewMeta]
    update: Update


def _feature_dtypes(table: pd.DataFrame, key: str) -> dict[str, Dtype]:
    """{feature column: dtype}: every column but the join key and the timestamp."""
    return {str(c): "int64" if pd.api.types.is_integer_dtype(t) else "float64"
            for c, t in table.dtypes.items() if c not in (key, "event_timestamp")}


def _fill_fits(fill: str | None, dtype: Dtype, priors: pd.DataFrame) -> bool:
    """int64 ids take UNKNOWN (they stay int64); float64 columns KEEP, ZERO or PRIOR of a priors column."""
    if dtype == "int64" or fill is None:
        return fill == UNKNOWN
    return fill in (KEEP, ZERO) or (fill.startswith(PRIOR) and fill[len(PRIOR):] in priors.columns)


def _features_meta(view: View, table: pd.DataFrame, inputs: BuildInputs) -> dict[str, FeatureMeta]:
    """The view's columns with their fills and bounds; a rule that misses a column or does not fit its
    dtype fails here, at build time, not in the training set."""
    for col in (view.entity.key, "event_timestamp"):
        if col not in table.columns:
            raise ValueError(f"view {view.name}: its table has no {col} column")
    dtypes = _feature_dtypes(table, view.entity.key)
    fills, bounds = view.fill(dtypes, inputs), view.bounds(dtypes, inputs)
    features = {}
    for col, dtype in dtypes.items():
        fill = fills.get(col)
        if not _fill_fits(fill, dtype, inputs.priors):
            raise ValueError(f"view {view.name}: column {col} ({dtype}) has fill {fill!r}; int64 ids take "
                             f"{UNKNOWN!r}, float64 columns {KEEP!r}, {ZERO!r} or {PRIOR!r}<priors column>")
        lo, hi = bounds.get(col, (None, None))
        features[col] = FeatureMeta(dtype=dtype, fill=str(fill), min=lo, max=hi)
    return features


def table_path(tables_dir: Path | str, name: str) -> Path:
    """The Parquet file of the ``priors`` (or ``totals``) table in the feature-tables folder."""
    return Path(tables_dir) / f"{name}.parquet"


def view_dir(tables_dir: Path | str, name: str) -> Path:
    """The folder of view ``name``'s day files."""
    return Path(tables_dir) / name


def table_glob(tables_dir: Path | str, name: str) -> Path:
    """Every day file of view ``name``: the path its Feast source reads as one table."""
    return view_dir(tables_dir, name) / DAY_FILE.format("*")


def read_table(tables_dir: Path | str, name: str) -> pd.DataFrame:
    """View ``name``'s whole table: its day files in day order."""
    files = sorted(view_dir(tables_dir, name).glob(DAY_FILE.format("*")))
    if not files:
        raise MissingInput(view_dir(tables_dir, name), "features build")
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def _source_sha(fn: Callable) -> str:
    """The content hash of the file that defines ``fn``: a change to a builder or its helpers rebuilds."""
    try:
        path = inspect.getsourcefile(inspect.unwrap(fn))
    except TypeError:
        path = None
    return sha256_file(Path(path)) if path else repr(fn)


def _config_sha(tasks: TaskGraph, cfg: FeatureConfig, views: Views) -> str:
    """What the tables depend on besides the raw days: tasks, windows, prior strength, views, code."""
    code = {_source_sha(fn) for v in views for fn in (v.build, v.fill, v.bounds)} | {_source_sha(_config_sha)}
    spec = {"tasks": tasks.model_dump(mode="json"), "windows_days": list(cfg.windows_days),
            "prior_strength": cfg.prior_strength, "code": sorted(code),
            "views": [[v.name, v.entity.key, v.kind, v.refresh.mode,
                       v.refresh.lookback(cfg) if v.refresh.lookback else None] for v in views]}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class _Plan:
    """One build: the raw days and what to recompute."""

    raw_dir: Path
    tasks: TaskGraph
    cfg: FeatureConfig
    views: Views
    raw: dict[str, str]  # raw day -> content hash
    lineage: str
    config: str
    changed: tuple[str, ...]  # raw days added or replaced (every day on a full build)
    full: bool

    @property
    def day0(self) -> pd.Timestamp:
        return pd.Timestamp(min(self.raw), tz="UTC")

    @property
    def n_days(self) -> int:
        return self.index(max(self.raw)) + 1

    @property
    def since(self) -> int:
        """The first day index recomputed."""
        return 0 if self.full else self.index(min(self.changed))

    def index(self, day: str) -> int:
        return (pd.Timestamp(day, tz="UTC") - self.day0).days

    def day(self, index: int) -> str:
        return (self.day0 + index * DAY).strftime("%Y-%m-%d")


def _changed(old: TablesMeta, lineage_id: str, config: str, raw: dict[str, str]) -> list[str] | None:
    """Raw days added or replaced since ``old`` was built; None: everything must be rebuilt (a new
    lineage, config or code, a day before the first or a day gone)."""
    if old.lineage != lineage_id or old.config_sha256 != config:
        return None
    if min(raw) != min(old.raw) or set(old.raw) - set(raw):
        return None
    return sorted(d for d, sha in raw.items() if old.raw.get(d) != sha)


def _old_meta(out_dir: Path) -> TablesMeta | None:
    """The tables.json in place, if it is one this version wrote."""
    try:
        return TablesMeta.model_validate_json((out_dir / TABLES_META).read_text())
    except (FileNotFoundError, ValidationError):
        return None


def build_feature_tables(raw_dir: Path | str, out_dir: Path | str, tasks: TaskGraph, cfg: FeatureConfig,
                         views: Views, full: bool = False) -> TablesMeta:
    """Bring every view's table, the priors and tables.json in ``out_dir`` up to date with the raw store.

    Only what the raw days added or replaced since the last build affect is computed (see
    ``Refresh``); with nothing new, nothing is written. ``full``, a new lineage, another feature
    config or builder code, or a day before the first rebuilds everything into a fresh folder that
    is swapped in whole.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    manifest = raw_manifest(raw_dir)
    raw = {d: p["sha256"] for d, p in manifest["partitions"].items()}
    if not raw:
        raise MissingInput(raw_dir / PARTITIONS, "ingest")
    lineage_id, config = manifest["lineage"]["id"], _config_sha(tasks, cfg, views)
    old = None if full else _old_meta(out_dir)
    changed = None if old is None else _changed(old, lineage_id, config, raw)
    if old is not None and changed == []:
        log.info("feature tables: raw days %s to %s already built; nothing to do", min(raw), max(raw))
        return old.model_copy(update={"update": Update(mode="unchanged")})
    if old is not None and changed is not None:
        plan = _Plan(raw_dir, tasks, cfg, views, raw, lineage_id, config, tuple(changed), full=False)
        meta = _write(plan, out_dir, old)
        if meta is not None:
            return meta
        log.info("feature tables: the priors of earlier days moved; rebuilding everything")
    plan = _Plan(raw_dir, tasks, cfg, views, raw, lineage_id, config, tuple(sorted(raw)), full=True)
    with atomic_dir(out_dir) as tmp:
        meta = _write(plan, tmp, None)
    assert meta is not None  # a full build has no earlier priors to disagree with
    return meta


def _load(plan: _Plan) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """The impressions an update needs: from ``since`` back by the longest look-back (all for a full
    build or a view that reads all history), and the raw days they come from."""
    modes = {v.refresh.mode for v in plan.views}
    back = max((v.refresh.lookback(plan.cfg) for v in plan.views if v.refresh.mode == "window" and v.refresh.lookback),
               default=0)
    first = 0 if plan.full or "full" in modes else max(plan.since - back, 0)
    days = tuple(d for d in sorted(plan.raw) if plan.index(d) >= first)
    imps = read_raw(plan.raw_dir, "impressions", days=days,
                    columns=["user_id", "item_id", "event_timestamp", *plan.tasks.names])
    return imps, days


def _priors(plan: _Plan, imps: pd.DataFrame, folder: Path, old: TablesMeta | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(daily totals, priors): the stored totals before ``since``, recomputed from it on."""
    new = daily_totals(imps, plan.tasks, plan.day0)
    new = new[new.index >= plan.since]
    if old is not None:
        kept = pd.read_parquet(table_path(folder, TOTALS)).set_index("day")
        new = pd.concat([kept[kept.index < plan.since], new])
    return new, priors_from_totals(new, plan.tasks, plan.day0, plan.n_days)


def _priors_kept(priors: pd.DataFrame, folder: Path, since: int) -> bool:
    """Whether the priors the kept days read (boundaries up to ``since``) are unchanged."""
    before = pd.read_parquet(table_path(folder, PRIORS))
    cols = ["boundary", *(c for c in priors.columns if c.startswith("prior_"))]
    return np.array_equal(before.loc[before["boundary"] <= since, cols].to_numpy(),
                          priors.loc[priors["boundary"] <= since, cols].to_numpy())


def _write(plan: _Plan, folder: Path, old: TablesMeta | None) -> TablesMeta | None:
    """Recompute and write what ``plan`` names into ``folder``; None if the kept days' priors moved."""
    imps, days = _load(plan)
    totals, priors = _priors(plan, imps, folder, old)
    if old is not None and not _priors_kept(priors, folder, plan.since):
        return None
    inputs = BuildInputs(plan.raw_dir, imps, plan.tasks, plan.cfg, priors, plan.day0, plan.n_days, days, plan.since)
    rows, metas = {}, {}
    for view in plan.views:
        frames, scope = _view_frames(view, inputs, plan)
        metas[view.name] = _write_view(view, frames, scope, inputs, plan, folder, old)
        rows[view.name] = sum(p.rows for p in metas[view.name].partitions.values())
    for name, table in ((PRIORS, priors), (TOTALS, totals.reset_index())):
        with atomic_file(table_path(folder, name)) as tmp:
            table.to_parquet(tmp, index=False, coerce_timestamps="us")
        rows[name] = len(table)
    update = (Update(mode="full", since=min(plan.raw), days=tuple(sorted(plan.raw))) if plan.full
              else Update(mode="incremental", since=plan.day(plan.since), days=plan.changed))
    meta = TablesMeta(rows=rows, day0=plan.day0.to_pydatetime(), n_days=plan.n_days,
                      days=(min(plan.raw), max(plan.raw)), lineage=plan.lineage, config_sha256=plan.config,
                      raw=dict(sorted(plan.raw.items())), views=metas, update=update)
    write_text(folder / TABLES_META, meta.model_dump_json(indent=2))
    return meta


def _stamp_days(table: pd.DataFrame, day0: pd.Timestamp) -> np.ndarray:
    """The day index of each row: the day its stamp closes (a row stamped at midnight belongs to the
    day before it, whose events it counts)."""
    return ((table["event_timestamp"] - ONE_US - day0) // DAY).to_numpy(np.int64)


def _split(table: pd.DataFrame, index: np.ndarray) -> dict[int, pd.DataFrame]:
    """``table``'s rows by day index, each day's rows in table order."""
    order = np.argsort(index, kind="stable")
    cuts = np.flatnonzero(np.diff(index[order])) + 1
    return {int(index[part[0]]): table.iloc[part].reset_index(drop=True)
            for part in np.split(order, cuts) if len(part)}


def _view_frames(view: View, inputs: BuildInputs, plan: _Plan) -> tuple[dict[int, pd.DataFrame], set[int]]:
    """({day index: rows}, the day indexes rewritten) of one view, per its ``Refresh``."""
    key, mode = view.entity.key, view.refresh.mode
    if mode == "per_day":
        imp_day = ((inputs.impressions["event_timestamp"] - plan.day0) // DAY).to_numpy(np.int64)
        frames = {}
        for d in plan.changed:
            i = plan.index(d)
            sub = replace(inputs, impressions=inputs.impressions[imp_day == i].reset_index(drop=True),
                          days=(d,), since=i)
            frames[i] = view.build(sub, key)
        return frames, set(frames)
    if mode == "window":
        table = view.build(inputs, key)
        index = _stamp_days(table, plan.day0)
        keep = index >= plan.since
        return _split(table[keep], index[keep]), set(range(plan.since, plan.n_days))
    table = view.build(replace(inputs, since=0), key)
    return _split(table, np.clip(_stamp_days(table, plan.day0), 0, plan.n_days - 1)), set(range(plan.n_days))


def _write_view(view: View, frames: dict[int, pd.DataFrame], scope: set[int], inputs: BuildInputs, plan: _Plan,
                folder: Path, old: TablesMeta | None) -> ViewMeta:
    """Write the view's day files in ``scope`` (removing days left without rows) and its meta."""
    before = old.views.get(view.name) if old is not None else None
    parts = {d: p for d, p in (before.partitions if before else {}).items() if plan.index(d) not in scope}
    for i in sorted(scope):
        path = view_dir(folder, view.name) / DAY_FILE.format(plan.day(i))
        frame = frames.get(i)
        if frame is None or frame.empty:
            path.unlink(missing_ok=True)
            continue
        with atomic_file(path) as tmp:
            frame.to_parquet(tmp, index=False, coerce_timestamps="us")
        ts = frame["event_timestamp"]
        parts[plan.day(i)] = PartitionMeta(rows=len(frame), sha256=sha256_file(path),
                                           time_range=(ts.min().to_pydatetime(), ts.max().to_pydatetime()))
    sample = next((f for f in frames.values() if not f.empty), None)
    if sample is not None:
        features = _features_meta(view, sample, inputs)
    elif before is not None:
        features = before.features
    else:  # no rows at all: an empty first day keeps the source readable, with the columns built
        sample = next(iter(frames.values()), pd.DataFrame({view.entity.key: pd.Series(dtype=np.int64),
                                                           "event_timestamp": pd.Series(dtype="datetime64[us, UTC]")}))
        features = _features_meta(view, sample, inputs)
        path = view_dir(folder, view.name) / DAY_FILE.format(plan.day(0))
        with atomic_file(path) as tmp:
            sample.iloc[:0].to_parquet(tmp, index=False, coerce_timestamps="us")
        parts[plan.day(0)] = PartitionMeta(rows=0, sha256=sha256_file(path), time_range=None)
    parts = dict(sorted(parts.items()))
    ranges = [p.time_range for p in parts.values() if p.time_range is not None]
    span = (min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else None
    return ViewMeta(time_range=span, features=features, partitions=parts)


def read_tables_meta(tables_dir: Path | str) -> TablesMeta:
    """tables.json of a feature-tables folder (``MissingInput`` before `funnelflow features build`)."""
    path = require_input(Path(tables_dir) / TABLES_META, "features build")
    return TablesMeta.model_validate_json(path.read_text())
