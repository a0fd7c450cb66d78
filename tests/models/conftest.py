"""A tiny funnel generator with a planted signal (independent of features.generate)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.config import TrainConfig
from models.networks import MODELS, parse_model_config
from models.tasks import DEFAULT_FUNNEL, TaskGraph, TaskSpec


def make_funnel(n: int, seed: int = 0, n_users: int = 300, n_items: int = 100, n_extra_num: int = 2):
    """(frame, oracle) with click -> conversion -> value. The planted signal: a per-user and a
    per-item effect, a device effect and two numeric features drive the click and conversion logits;
    value is lognormal with a mean rising with one numeric feature. The oracle frame holds the true
    probabilities / expectations in the predictions layout."""
    rng = np.random.default_rng(seed)
    gen = np.random.default_rng(12345)  # effects fixed across splits
    u_eff, i_eff = gen.normal(0, 1.0, n_users), gen.normal(0, 1.0, n_items)
    dev_eff = np.array([0.0, 0.6, -0.6])
    user = rng.integers(0, n_users, n)
    item = rng.integers(0, n_items, n)
    device = rng.integers(0, 3, n)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    click_logit = -1.3 + u_eff[user] + 0.8 * i_eff[item] + dev_eff[device] + 0.7 * x1
    conv_logit = -1.0 + 0.8 * i_eff[item] - 0.5 * u_eff[user] + 0.8 * x2
    p_click, p_conv_c = 1 / (1 + np.exp(-click_logit)), 1 / (1 + np.exp(-conv_logit))
    click = rng.random(n) < p_click
    conv = click & (rng.random(n) < p_conv_c)
    mu, sigma = 2.0 + 0.5 * x2, 0.5
    value = np.where(conv, np.exp(rng.normal(mu, sigma)), 0.0)
    df = pd.DataFrame({
        "impression_id": np.arange(n, dtype=np.int64) + seed * 10_000_000,
        "event_timestamp": pd.Timestamp("2026-09-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 86400, n), unit="s"),
        "user_id": (user + 1000).astype(np.int64),
        "item_id": (item + 5000).astype(np.int64),
        "ctx__device": device.astype(np.int64),
        "user_activity__x1": x1,
        "item_stats__x2": x2,
    })
    for k in range(n_extra_num):  # noise features
        df[f"noise__n{k}"] = rng.normal(size=n)
    df.loc[rng.random(n) < 0.02, "noise__n0"] = np.nan  # NaNs must be handled
    df["click"], df["conversion"], df["value"] = click.astype(np.int8), conv.astype(np.int8), value
    oracle = pd.DataFrame({
        "impression_id": df.impression_id,
        "p_click": p_click, "p_conversion_given_click": p_conv_c, "p_conversion": p_click * p_conv_c,
        "value_given_conversion": np.exp(mu + sigma ** 2 / 2),
    })
    oracle["value_expected"] = oracle.p_conversion * oracle.value_given_conversion
    return df, oracle


INDEPENDENT = TaskGraph(tasks=[
    TaskSpec(name="income", kind="binary"),
    TaskSpec(name="never_married", kind="binary"),
    TaskSpec(name="weeks", kind="regression"),
])


def make_independent(n: int, seed: int = 0) -> pd.DataFrame:
    """Census-like: three independent targets."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 20, n), rng.normal(size=n)
    return pd.DataFrame({
        "impression_id": np.arange(n, dtype=np.int64),
        "event_timestamp": pd.Timestamp("2026-01-01", tz="UTC"),
        "user_id": rng.integers(0, 50, n).astype(np.int64), "item_id": a.astype(np.int64), "age": b,
        "income": (rng.random(n) < 1 / (1 + np.exp(-b))).astype(np.int8),
        "never_married": (rng.random(n) < 0.3).astype(np.int8),
        "weeks": np.abs(rng.normal(30 + 5 * b, 5)),
    })


def model_config(name: str, *, experts: int | None = None, **knobs):
    """``name``'s config from ``knobs``; ``experts`` only for the models that have experts (any other
    knob a model lacks stays an error)."""
    if experts is not None and "experts" in MODELS[name].config_class.model_fields:
        knobs["experts"] = experts
    return parse_model_config({"name": name, **knobs})


@pytest.fixture(scope="session")
def funnel_splits():
    train, _ = make_funnel(12000, seed=1)
    valid, _ = make_funnel(3000, seed=2)
    test, oracle = make_funnel(3000, seed=3)
    return train, valid, test, oracle


@pytest.fixture
def small_cfgs():
    mc = model_config("mmoe", embedding_dim=8, hidden=[32, 16], tower=[16], experts=2)
    # 1 thread: tiny nets, immune to a busy core
    tc = TrainConfig(epochs=2, batch_size=512, lr=0.01, patience=2, seed=3, num_threads=1)
    return mc, tc


__all__ = ["DEFAULT_FUNNEL", "INDEPENDENT", "make_funnel", "make_independent", "model_config"]
