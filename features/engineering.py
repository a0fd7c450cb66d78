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
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from models.tasks import TaskGraph

ONE_US = pd.Timedelta(microseconds=1)
DAY = pd.Timedelta(days=1)


class FeatureConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    windows_days: list[int] = [1, 7, 30]
    prior_strength: float = 20.0
    feature_service: str = "funnel_model_v1"
    retrieval_chunk_rows: int = 1_000_000  # entity rows per Feast call: bounds peak memory (one chunk joined at a time)


@dataclass(frozen=True)
class Metric:
    """One aggregated quantity: a count of impressions or of a binary task's positives, or a value sum."""

    name: str
    column: str | None  # None: count impressions


def activity_metrics(tasks: TaskGraph) -> list[Metric]:
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


def profile_table(snapshots: pd.DataFrame) -> pd.DataFrame:
    """Profile snapshot rows, stamped 1 us after they take effect (strictly-before rule)."""
    out = snapshots.copy()
    out["event_timestamp"] = out["event_timestamp"] + ONE_US
    return out


def _daily(imps: pd.DataFrame, key: str, metrics: list[Metric], day0: pd.Timestamp) -> pd.DataFrame:
    day = ((imps["event_timestamp"] - day0) // DAY).astype(np.int64)
    cols = {m.name: (np.ones(len(imps)) if m.column is None else imps[m.column].to_numpy(np.float64))
            for m in metrics}
    frame = pd.DataFrame({key: imps[key].to_numpy(), "day": day.to_numpy(), **cols})
    return frame.groupby([key, "day"], sort=True, as_index=False).sum()


def _window_sums(daily: pd.DataFrame, key: str, metrics: list[Metric], windows: list[int],
                 n_days: int) -> pd.DataFrame:
    """Exact window sums at every boundary where one changes, by prefix sums over (key, day) codes."""
    keys, days = daily[key].to_numpy(), daily["day"].to_numpy()
    stride = n_days + max(windows) + 2
    kcode = pd.factorize(keys, sort=True)[0].astype(np.int64)
    code = kcode * stride + days  # sorted, as daily is sorted by (key, day)
    # Candidate boundaries: the day after an active day, and the day it falls out of each window.
    shifts = [1] + [1 + w for w in windows]
    cand = np.unique(np.concatenate([kcode * stride + days + s for s in shifts]))
    cand_day = cand % stride
    cand = cand[cand_day <= n_days]
    cand_key, cand_day = cand // stride, cand % stride
    prefix = {m.name: np.r_[0.0, np.cumsum(daily[m.name].to_numpy())] for m in metrics}
    hi = np.searchsorted(code, cand, side="left")  # rows with day < boundary
    out = {key: np.unique(keys)[cand_key], "boundary": cand_day}
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


def activity_table(imps: pd.DataFrame, key: str, tasks: TaskGraph, cfg: FeatureConfig,
                   priors: pd.DataFrame, day0: pd.Timestamp, n_days: int) -> pd.DataFrame:
    metrics = activity_metrics(tasks)
    daily = _daily(imps, key, metrics, day0)
    sums = _window_sums(daily, key, metrics, cfg.windows_days, n_days)
    pri = priors.set_index("boundary").loc[sums["boundary"]]
    out = {key: sums[key].to_numpy(np.int64), "event_timestamp": day0 + sums["boundary"].to_numpy() * DAY}
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


def activity_fill_values(tasks: TaskGraph, cfg: FeatureConfig) -> dict[str, str]:
    """How the training-set step fills an entity with no history: counts 0, rates the global prior."""
    fills = {}
    for w in cfg.windows_days:
        for m in activity_metrics(tasks):
            fills[_sum_name(m, tasks, w)] = "zero"
        for num, den in rate_pairs(tasks):
            fills[_rate_name(num, den, w)] = f"prior_{num}_per_{den}"
    return fills


def build_feature_tables(raw_dir: Path | str, out_dir: Path | str, tasks: TaskGraph,
                         cfg: FeatureConfig) -> dict:
    """Write user/item profile and activity tables plus the global priors; returns a summary."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    imps = pd.read_parquet(raw_dir / "impressions.parquet",
                           columns=["user_id", "item_id", "event_timestamp", *tasks.names])
    day0 = imps["event_timestamp"].min().floor("D")
    n_days = int((imps["event_timestamp"].max() - day0) // DAY) + 1
    priors = global_priors(imps, tasks, day0, n_days)
    tables = {
        "user_profile": profile_table(pd.read_parquet(raw_dir / "users.parquet")),
        "item_profile": profile_table(pd.read_parquet(raw_dir / "items.parquet")),
        "user_activity": activity_table(imps, "user_id", tasks, cfg, priors, day0, n_days),
        "item_activity": activity_table(imps, "item_id", tasks, cfg, priors, day0, n_days),
        "priors": priors,
    }
    summary = {}
    for name, df in tables.items():
        tmp = out_dir / f".{name}.parquet.tmp"
        df.to_parquet(tmp, index=False, coerce_timestamps="us")
        tmp.replace(out_dir / f"{name}.parquet")
        summary[name] = int(len(df))
    meta = {"rows": summary, "fills": activity_fill_values(tasks, cfg), "day0": day0.isoformat(),
            "n_days": n_days}
    (out_dir / "tables.json").write_text(json.dumps(meta, indent=2))
    return meta
