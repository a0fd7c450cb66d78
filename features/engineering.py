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
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from features.contract import TABLES, raw_table, require_input
from models.atomic import atomic_dir
from models.strict import Strict
from models.tasks import TaskGraph

if TYPE_CHECKING:
    from features.views import View, Views

ONE_US = pd.Timedelta(microseconds=1)
DAY = pd.Timedelta(days=1)
TABLES_META = "tables.json"
PRIORS = "priors"  # platform-wide rates before each day boundary: the activity rates' fill and prior
# Fills of a feature column for an entity with no row before t (training_set.FillPolicy applies them):
UNKNOWN = "unknown"  # categorical id -> -1, an explicit "unknown" id (stays int64)
KEEP = "keep"        # numeric -> stays NaN (the models standardise and map NaN to the mean)
ZERO = "zero"        # count or sum -> 0
PRIOR = "prior:"     # rate -> the named priors.parquet column in force at t ("prior:<column>")
Dtype = Literal["int64", "float64"]  # a feature column: int64 a categorical id, float64 numeric (the contract's rule)
Bounds = tuple[float | None, float | None]  # (min, max) the GX suite checks; None: unchecked
NON_NEGATIVE: Bounds = (0.0, None)
RATE: Bounds = (0.0, 1.0)


class FeatureConfig(Strict):
    """The ``features`` section of params.yaml."""

    windows_days: tuple[int, ...] = (1, 7, 30)
    prior_strength: float = 20.0
    feature_service: str = "funnel_model_v1"
    retrieval_chunk_rows: int = 1_000_000  # entity rows per Feast call: bounds peak memory (one chunk joined at a time)


@dataclass(frozen=True)
class BuildInputs:
    """What a view's builder and rules read: the raw snapshot, the task graph, the config, the priors."""

    raw_dir: Path
    impressions: pd.DataFrame  # user_id, item_id, event_timestamp and the labels, read once for every view
    tasks: TaskGraph
    cfg: FeatureConfig
    priors: pd.DataFrame
    day0: pd.Timestamp  # midnight before the first impression
    n_days: int

    def raw(self, key: str) -> pd.DataFrame:
        """The raw table whose rows are keyed by ``key`` (``user_id``: users, ``item_id``: items)."""
        table = next(name for name, k in TABLES.items() if k == key)
        return pd.read_parquet(raw_table(self.raw_dir, table))


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
                 n_days: int) -> pd.DataFrame:
    """Exact window sums at every boundary where one changes, by prefix sums over (key, day) codes."""
    keys, days = daily[key].to_numpy(), daily["day"].to_numpy()
    stride = n_days + max(windows) + 2
    kcode = pd.factorize(keys, sort=True)[0].astype(np.int64)
    code = kcode * stride + days  # sorted, as daily is sorted by (key, day)
    # Candidate boundaries: the day after an active day, and the day it falls out of each window.
    shifts = [1, *(1 + w for w in windows)]
    cand = np.unique(np.concatenate([kcode * stride + days + s for s in shifts]))
    cand_day = cand % stride
    cand = cand[cand_day <= n_days]
    cand_key, cand_day = cand // stride, cand % stride
    prefix = {m.name: np.r_[0.0, np.cumsum(daily[m.name].to_numpy())] for m in metrics}
    hi = np.searchsorted(code, cand, side="left")  # rows with day < boundary
    out: dict[str | tuple[str, int], np.ndarray] = {key: np.unique(keys)[cand_key], "boundary": cand_day}
    for w in windows:
        lo = np.searchsorted(code, cand - w, side="left")  # rows with day < boundary - w
        for m in metrics:
            out[(m.name, w)] = prefix[m.name][hi] - prefix[m.name][lo]
    # The last candidate (activity fell out of the longest window) is all zeros: kept on purpose, so
    # the as-of join then reads zeros rather than stale counts.
    return pd.DataFrame(out)


def global_priors(imps: pd.DataFrame, tasks: TaskGraph, day0: pd.Timestamp, n_days: int) -> pd.DataFrame:
    """Cumulative platform-wide rates before each day boundary: the prior the smoothed rates shrink to."""
    metrics = activity_metrics(tasks)
    daily = _daily(imps.assign(_all=0), "_all", metrics, day0)
    full = daily.set_index("day").reindex(range(n_days), fill_value=0.0)
    cum = full[[m.name for m in metrics]].cumsum().shift(1).fillna(0.0)  # before boundary b = day b
    cum.loc[n_days] = full[[m.name for m in metrics]].sum()
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
    sums = _window_sums(daily, key, metrics, cfg.windows_days, inputs.n_days)
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


class ViewMeta(Strict):
    """One view's table: its time range (what materialize loads) and its feature columns."""

    time_range: tuple[datetime, datetime]
    features: dict[str, FeatureMeta]


class TablesMeta(Strict):
    """tables.json: what ``build_feature_tables`` wrote, read by the Feast repo and the training set."""

    rows: dict[str, int]
    day0: datetime
    n_days: int
    views: dict[str, ViewMeta]


def _feature_dtypes(table: pd.DataFrame, key: str) -> dict[str, Dtype]:
    """{feature column: dtype}: every column but the join key and the timestamp."""
    return {str(c): "int64" if pd.api.types.is_integer_dtype(t) else "float64"
            for c, t in table.dtypes.items() if c not in (key, "event_timestamp")}


def _fill_fits(fill: str | None, dtype: Dtype, priors: pd.DataFrame) -> bool:
    """int64 ids take UNKNOWN (they stay int64); float64 columns KEEP, ZERO or PRIOR of a priors column."""
    if dtype == "int64" or fill is None:
        return fill == UNKNOWN
    return fill in (KEEP, ZERO) or (fill.startswith(PRIOR) and fill[len(PRIOR):] in priors.columns)


def _view_meta(view: View, table: pd.DataFrame, inputs: BuildInputs) -> ViewMeta:
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
    ts = table["event_timestamp"]
    return ViewMeta(time_range=(ts.min().to_pydatetime(), ts.max().to_pydatetime()), features=features)


def table_path(tables_dir: Path | str, name: str) -> Path:
    """The Parquet file of view (or ``priors``) table ``name`` in the feature-tables folder."""
    return Path(tables_dir) / f"{name}.parquet"


def _inputs(raw_dir: Path, tasks: TaskGraph, cfg: FeatureConfig) -> BuildInputs:
    imps = pd.read_parquet(raw_table(raw_dir, "impressions"),
                           columns=["user_id", "item_id", "event_timestamp", *tasks.names])
    day0 = imps["event_timestamp"].min().floor("D")
    n_days = int((imps["event_timestamp"].max() - day0) // DAY) + 1
    return BuildInputs(raw_dir, imps, tasks, cfg, global_priors(imps, tasks, day0, n_days), day0, n_days)


def build_feature_tables(raw_dir: Path | str, out_dir: Path | str, tasks: TaskGraph, cfg: FeatureConfig,
                         views: Views) -> TablesMeta:
    """Write every view's table, the global priors and tables.json into ``out_dir`` (swapped in whole)."""
    inputs = _inputs(Path(raw_dir), tasks, cfg)
    rows, metas = {}, {}
    with atomic_dir(out_dir) as tmp:
        for view in views:
            table = view.build(inputs, view.entity.key)
            metas[view.name] = _view_meta(view, table, inputs)
            table.to_parquet(table_path(tmp, view.name), index=False, coerce_timestamps="us")
            rows[view.name] = len(table)
        inputs.priors.to_parquet(table_path(tmp, PRIORS), index=False, coerce_timestamps="us")
        rows[PRIORS] = len(inputs.priors)
        meta = TablesMeta(rows=rows, day0=inputs.day0.to_pydatetime(), n_days=inputs.n_days, views=metas)
        (tmp / TABLES_META).write_text(meta.model_dump_json(indent=2))
    return meta


def read_tables_meta(tables_dir: Path | str) -> TablesMeta:
    """tables.json of a feature-tables folder (``MissingInput`` before `funnelflow features build`)."""
    path = require_input(Path(tables_dir) / TABLES_META, "features build")
    return TablesMeta.model_validate_json(path.read_text())
