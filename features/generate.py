"""Synthetic funnel data in the contract layout, realistic enough to tell the models apart.

What makes it realistic (and why each matters for the models):
- Zipf user and item activity: a few heavy users/items, a long tail of rare ids (tests OOV handling).
- Latent user and item factors drive behaviour; the observable profile columns reveal them only partly
  (noisy, quantised), so behaviour aggregates and id embeddings carry extra signal.
- Profiles change over time (membership upgrades, price and rating changes): the state at impression
  time drives behaviour, so only a point-in-time-correct join recovers it.
- Position, time-of-day and device effects on clicks.
- click -> conversion (only after a click) -> heavy-tailed positive value (only after a conversion),
  driven by overlapping but different latent factors: the task dependence is real and exploitable.

The true probabilities and expected values of every impression are returned separately (the *oracle*,
in the contract's predictions layout) and are never written inside the dataset.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

LATENT_DIM = 8
CLICK_RATE = 0.05        # target mean click rate
CVR_GIVEN_CLICK = 0.12   # target mean conversion rate among clicks
VALUE_SIGMA = 0.9        # log-normal noise of the value: heavy right tail


@dataclass
class FunnelData:
    """A generated dataset (contract layout) and its oracle."""

    impressions: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    oracle: pd.DataFrame  # predictions layout, true probabilities: never part of the dataset


def _zipf_probs(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Zipf weights over n ids, assigned to ids in random order (so id order carries no signal)."""
    w = 1.0 / np.arange(1, n + 1) ** exponent
    rng.shuffle(w)
    return w / w.sum()


def _solve_bias(logits: np.ndarray, target: float, weights: np.ndarray | None = None) -> float:
    """The scalar b with weighted mean(sigmoid(logits + b)) == target (Newton; the mean is monotone in b)."""
    w = np.ones_like(logits) if weights is None else weights
    w = w / w.sum()
    b = float(np.log(target / (1 - target)))
    for _ in range(30):
        p = 1.0 / (1.0 + np.exp(-(logits + b)))
        f, df = (w * p).sum() - target, (w * p * (1 - p)).sum()
        b -= f / max(df, 1e-12)
        if abs(f) < 1e-7:
            break
    return b


def _snapshot_times(n_keys: int, start: pd.Timestamp, end: pd.Timestamp, history_days: float,
                    updates_per_key: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per key: one initial snapshot before ``start`` and Poisson-many updates inside [start, end)."""
    n_upd = rng.poisson(updates_per_key, n_keys)
    keys = np.concatenate([np.arange(n_keys), np.repeat(np.arange(n_keys), n_upd)])
    span_us = (end - start).value // 1000
    first_us = start.value // 1000 - (rng.uniform(1, history_days, n_keys) * 86_400e6).astype(np.int64)
    upd_us = start.value // 1000 + rng.integers(0, span_us, n_upd.sum())
    ts_us = np.concatenate([first_us, upd_us])
    order = np.lexsort((ts_us, keys))
    return keys[order], ts_us[order]


def _utc(us: np.ndarray) -> pd.Series:
    """Microsecond UTC timestamps, the contract's precision."""
    return pd.Series(pd.to_datetime(us, unit="us", utc=True)).astype("datetime64[us, UTC]")


def _users(n: int, start, end, rng) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    lat = rng.normal(size=(n, LATENT_DIM)).astype(np.float32)
    click_bias = rng.normal(0, 0.6, n)
    conv_bias = rng.normal(0, 0.5, n)
    spend = rng.normal(0, 0.5, n)
    price_sens = np.abs(rng.normal(0.6, 0.3, n))
    keys, ts = _snapshot_times(n, start, end, 720, 0.4, rng)
    first = np.r_[True, keys[1:] != keys[:-1]]
    # Membership only goes up: each update is an upgrade, which raises conversion propensity afterwards.
    level0 = rng.choice(4, n, p=[0.55, 0.25, 0.15, 0.05])
    upgrades = pd.Series(keys).groupby(keys).cumcount().to_numpy()
    membership = np.minimum(level0[keys] + upgrades, 4)
    created_us = ts[first] - (rng.uniform(0, 400, n) * 86_400e6).astype(np.int64)
    noise = rng.normal(size=(n, 4))  # per user, so static attributes stay static across snapshots
    users = pd.DataFrame({
        "user_id": keys.astype(np.int64) + 1,
        "event_timestamp": _utc(ts),
        # Observable columns reveal the latents only partly: noisy and quantised.
        "age_band": np.clip(np.round(2.5 + lat[:, 0] + noise[:, 0]), 0, 6).astype(np.int64)[keys],
        "gender": (lat[:, 1] + 1.5 * noise[:, 1] > 0).astype(np.int64)[keys],
        "city_tier": np.digitize(spend + 0.7 * noise[:, 2], [-0.6, 0.0, 0.6]).astype(np.int64)[keys],
        # The latent dimension the user leans to most (noisy): with the item's category, it reveals
        # part of the user-item affinity that drives clicks.
        "fav_category": np.argmax(lat[:, :4] + 0.5 * rng.normal(size=(n, 4)), axis=1).astype(np.int64)[keys],
        "membership": membership.astype(np.int64),
        "account_age_days": np.round((ts - created_us[keys]) / 86_400e6, 1),
        "declared_income": np.round(np.exp(3.5 + spend + 0.8 * noise[:, 3]), 2)[keys],
    })
    hidden = dict(lat=lat, click_bias=click_bias, conv_bias=conv_bias, spend=spend, price_sens=price_sens)
    return users, hidden


def _items(n: int, start, end, rng) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    lat = rng.normal(size=(n, LATENT_DIM)).astype(np.float32)
    quality = rng.normal(0, 0.5, n)
    base_price = np.exp(rng.normal(3.0, 0.9, n))
    keys, ts = _snapshot_times(n, start, end, 365, 1.2, rng)
    first = np.r_[True, keys[1:] != keys[:-1]]
    # Price is a random walk over snapshots: the price at impression time drives conversion and value.
    step = np.where(first, 0.0, rng.normal(0, 0.35, len(keys)))
    walk = pd.Series(step).groupby(keys).cumsum().to_numpy()
    price = base_price[keys] * np.exp(walk)
    items = pd.DataFrame({
        "item_id": keys.astype(np.int64) + 1,
        "event_timestamp": _utc(ts),
        "category": (np.argmax(lat[keys, :4], axis=1) * 3 + (lat[keys, 4] > 0) + (lat[keys, 5] > 0.8)).astype(np.int64),
        "brand": (rng.integers(0, 50, n)[keys] + 50 * (quality[keys] > 0.4)).astype(np.int64),
        "price": np.round(price, 2),
        "rating": np.round(np.clip(3.6 + quality[keys] + rng.normal(0, 0.4, len(keys)), 1, 5), 1),
    })
    return items, dict(lat=lat, quality=quality)


def _asof(imps: pd.DataFrame, snaps: pd.DataFrame, key: str, cols: list[str]) -> pd.DataFrame:
    """The snapshot in force at each impression (strictly before it, as the contract's rule says)."""
    left = imps[["_row", key, "event_timestamp"]].sort_values("event_timestamp")
    right = snaps[[key, "event_timestamp", *cols]].sort_values("event_timestamp")
    m = pd.merge_asof(left, right, on="event_timestamp", by=key, allow_exact_matches=False)
    return m.sort_values("_row")[cols].reset_index(drop=True)


def _hour_of_day(n: int, rng) -> np.ndarray:
    """Diurnal traffic: a morning and a larger evening peak over a flat base."""
    w = 0.3 + np.exp(-((np.arange(24) - 9) ** 2) / 8) + 1.6 * np.exp(-((np.arange(24) - 20) ** 2) / 6)
    return rng.choice(24, n, p=w / w.sum())


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _behaviour(user: dict[str, np.ndarray], u: np.ndarray, item_lat: np.ndarray, item_quality: np.ndarray,
               ctx: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Click logit, conversion logit and log-value location of each impression, given the latent item
    factors and quality in force for it (rows of ``item_lat``/``item_quality`` align with the impressions)."""
    ul = user["lat"][u]
    affinity_click = np.einsum("ij,ij->i", ul[:, :4], item_lat[:, :4]) * 0.45
    affinity_conv = np.einsum("ij,ij->i", ul[:, 2:6], item_lat[:, 2:6]) * 0.45  # overlaps click's factors
    click_logit = (user["click_bias"][u] + item_quality + affinity_click - 0.35 * np.log(ctx["position"])
                   + ctx["hour_effect"] + np.array([0.0, 0.15, -0.2])[ctx["device"]] + 0.2 * (ctx["rating"] - 3.6))
    conv_logit = (user["conv_bias"][u] + 0.5 * item_quality + affinity_conv + 0.25 * ctx["membership"]
                  - user["price_sens"][u] * (ctx["log_price"] - 3.0) + 0.3 * (ctx["device"] == 0))
    # Value (e.g. revenue) given conversion: log-normal around price x spend propensity x quantity.
    mu = ctx["log_price"] + user["spend"][u] + 0.3 * np.einsum("ij,ij->i", ul[:, 6:], item_lat[:, 6:]) * 0.5
    return click_logit, conv_logit, mu


def _redrawn_items(n_items: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Item latent factors and quality after a concept drift, from their own stream (so the data before
    the drift is the same as without it)."""
    rng = np.random.default_rng([seed, 1])
    return rng.normal(size=(n_items, LATENT_DIM)).astype(np.float32), rng.normal(0, 0.5, n_items)


def generate(rows: int, days: int = 30, seed: int = 7, users: int | None = None,
             items: int | None = None, start: str = "2026-09-01", drift_from_day: int | None = None) -> FunnelData:
    """Generate ``rows`` impressions over ``days`` days; deterministic for a given seed.

    ``drift_from_day`` K: a concept drift after the first K days. From then on the item-side latent
    factors and quality are re-drawn, so the same observable features (category, brand, rating, ...)
    mean something else for clicks, conversions and value; rates stay calibrated as before the drift
    and the first K days are identical to a run without drift.
    """
    rng = np.random.default_rng(seed)
    # ~100 impressions per user and ~200 per item on average (Zipf around that): enough per id for
    # id embeddings and activity aggregates to recover part of the latent factors.
    n_users = users or max(200, rows // 100)
    n_items = items or max(100, rows // 200)
    t0 = pd.Timestamp(start, tz="UTC")
    t1 = t0 + pd.Timedelta(days=days)
    user_df, user_hidden = _users(n_users, t0, t1, rng)
    item_df, item_hidden = _items(n_items, t0, t1, rng)

    u = rng.choice(n_users, rows, p=_zipf_probs(n_users, 0.6, rng))
    it = rng.choice(n_items, rows, p=_zipf_probs(n_items, 0.8, rng))
    day = rng.integers(0, days, rows)
    hour = _hour_of_day(rows, rng)
    us = (t0.value // 1000 + day * 86_400_000_000 + hour * 3_600_000_000
          + rng.integers(0, 3_600_000_000, rows))
    order = np.argsort(us, kind="stable")
    u, it, hour, us, day = u[order], it[order], hour[order], us[order], day[order]
    position = np.minimum(rng.geometric(0.22, rows), 20).astype(np.int64)
    device = rng.choice(3, rows, p=[0.6, 0.3, 0.1]).astype(np.int64)

    imps = pd.DataFrame({"_row": np.arange(rows), "user_id": u + 1, "item_id": it + 1,
                         "event_timestamp": _utc(us)})
    ustate = _asof(imps, user_df, "user_id", ["membership"])
    istate = _asof(imps, item_df, "item_id", ["price", "rating"])
    ctx = {"position": position, "device": device, "hour_effect": 0.25 * np.cos((hour - 20) / 24 * 2 * np.pi),
           "membership": ustate["membership"].to_numpy(float), "rating": istate["rating"].to_numpy(float),
           "log_price": np.log(istate["price"].to_numpy(float))}
    item_lat, item_quality = item_hidden["lat"][it], item_hidden["quality"][it]
    click_logit, conv_logit, mu = _behaviour(user_hidden, u, item_lat, item_quality, ctx)
    # The rates are calibrated on the behaviour before any drift (so a drift leaves earlier days unchanged).
    click_bias = _solve_bias(click_logit, CLICK_RATE)
    # Calibrate the conversion rate among clicks: weight each impression by its click probability.
    conv_bias = _solve_bias(conv_logit, CVR_GIVEN_CLICK, _sigmoid(click_logit + click_bias))
    if drift_from_day is not None:
        drifted = day >= drift_from_day
        new_lat, new_quality = _redrawn_items(n_items, seed)
        item_lat = np.where(drifted[:, None], new_lat[it], item_lat)
        item_quality = np.where(drifted, new_quality[it], item_quality)
        click_logit, conv_logit, mu = _behaviour(user_hidden, u, item_lat, item_quality, ctx)
    p_click = _sigmoid(click_logit + click_bias)
    p_cvr = _sigmoid(conv_logit + conv_bias)
    value_given_conv = np.exp(mu + VALUE_SIGMA**2 / 2)

    click = rng.random(rows) < p_click
    conversion = click & (rng.random(rows) < p_cvr)
    value = np.where(conversion, np.round(np.exp(mu + rng.normal(0, VALUE_SIGMA, rows)), 2), 0.0)
    value = np.where(conversion, np.maximum(value, 0.01), 0.0)

    impressions = pd.DataFrame({
        "impression_id": np.arange(1, rows + 1, dtype=np.int64),
        "event_timestamp": imps["event_timestamp"],
        "user_id": imps["user_id"].astype(np.int64),
        "item_id": imps["item_id"].astype(np.int64),
        "position": position,
        "device": device,
        "hour": hour.astype(np.int64),
        "click": click.astype(np.int8),
        "conversion": conversion.astype(np.int8),
        "value": value.astype(np.float64),
    })
    oracle = pd.DataFrame({
        "impression_id": impressions["impression_id"],
        "p_click": p_click,
        "p_conversion": p_click * p_cvr,
        "p_conversion_given_click": p_cvr,
        "value_given_conversion": value_given_conv,
        "value_expected": p_click * p_cvr * value_given_conv,
    })
    return FunnelData(impressions, user_df, item_df, oracle)
