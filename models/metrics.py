"""Evaluation metrics on the predictions layout (numpy only; torch-free).

Keys are ``task/metric``. Binary: ``auc``/``logloss`` of the chained (joint) output on all rows and
``auc_given_<parent>`` (conditional output on rows where the parent is 1). Regression: ``rmse``/``mae``
of ``<task>_expected`` on all rows, ``rmse_given_<parent>`` of ``<task>_given_<parent>`` on parent rows,
and ``gini`` (normalised Gini of expected value vs label, as in HTLNet's evaluation). With an oracle
frame (true probabilities/expectations, same layout): ``oracle_auc`` / ``oracle_gini`` and
``oracle_gap`` = oracle metric - model metric.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from models.tasks import TaskGraph


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties get their average rank (vectorised, O(n log n))."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    new_group = np.r_[True, xs[1:] != xs[:-1]]
    group = np.cumsum(new_group) - 1
    starts = np.flatnonzero(new_group)
    ends = np.r_[starts[1:], len(xs)]
    avg = (starts + 1 + ends) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = avg[group]
    return ranks


def roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney AUC with ties counted 1/2; NaN when a class is missing."""
    y = np.asarray(y) > 0.5
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = average_ranks(np.asarray(s, dtype=np.float64))
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(y: np.ndarray, p: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def gini(actual: np.ndarray, pred: np.ndarray) -> float:
    """Normalised Gini: Gini(actual ordered by pred) / Gini(actual ordered by actual).

    Rows ordered by prediction descending (ties: original order); 1 = perfect ranking, 0 = random."""

    def _g(a: np.ndarray, p: np.ndarray) -> float:
        order = np.argsort(-p, kind="mergesort")
        cum = np.cumsum(a[order]) / a.sum()
        n = len(a)
        return float(cum.sum() / n - (n + 1) / (2.0 * n))

    a, p = np.asarray(actual, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    if len(a) == 0 or a.sum() <= 0:
        return float("nan")
    return _g(a, p) / _g(a, a)


def _align(labels_df: pd.DataFrame, preds_df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Same rows in the same order: positional when impression_ids agree, else an inner merge."""
    if "impression_id" not in labels_df or "impression_id" not in preds_df:
        return labels_df.reset_index(drop=True), preds_df.reset_index(drop=True)
    a, b = labels_df["impression_id"].to_numpy(), preds_df["impression_id"].to_numpy()
    if len(a) == len(b) and np.array_equal(a, b):
        return labels_df.reset_index(drop=True), preds_df.reset_index(drop=True)
    m = labels_df.merge(preds_df, on="impression_id", suffixes=("", "__pred"))
    return m[labels_df.columns], m[preds_df.columns]


def evaluate_predictions(
    labels_df: pd.DataFrame, preds_df: pd.DataFrame, tasks: TaskGraph, oracle_df: pd.DataFrame | None = None
) -> dict[str, float]:
    """All metrics as ``{"task/metric": value}`` (see the module docstring)."""
    labels_df, preds_df = _align(labels_df, preds_df)
    covered = None
    if oracle_df is not None:  # the oracle may cover only some rows: its metrics and gaps use those
        if "impression_id" in oracle_df and "impression_id" in labels_df:
            oracle_df = oracle_df.set_index("impression_id").reindex(labels_df["impression_id"].to_numpy())
        else:
            oracle_df = oracle_df.reset_index(drop=True)
        covered = oracle_df.notna().all(axis=1).to_numpy()
    res: dict[str, float] = {}
    for t in tasks.tasks:
        y = labels_df[t.column].to_numpy(np.float64)
        parent_rows = labels_df[t.parent].to_numpy() > 0.5 if t.parent else None
        if t.kind == "binary":
            p = preds_df[f"p_{t.name}"].to_numpy(np.float64)
            res[f"{t.name}/auc"] = roc_auc(y, p)
            res[f"{t.name}/logloss"] = logloss(y, p)
            if t.parent:
                pc = preds_df[f"p_{t.name}_given_{t.parent}"].to_numpy(np.float64)
                res[f"{t.name}/auc_given_{t.parent}"] = roc_auc(y[parent_rows], pc[parent_rows])
            if oracle_df is not None:
                o = oracle_df[f"p_{t.name}"].to_numpy(np.float64)[covered]
                res[f"{t.name}/oracle_auc"] = roc_auc(y[covered], o)
                res[f"{t.name}/oracle_gap"] = res[f"{t.name}/oracle_auc"] - roc_auc(y[covered], p[covered])
        else:
            y = np.nan_to_num(y)
            e = preds_df[f"{t.name}_expected"].to_numpy(np.float64)
            res[f"{t.name}/rmse"] = float(np.sqrt(np.mean((e - y) ** 2)))
            res[f"{t.name}/mae"] = float(np.mean(np.abs(e - y)))
            res[f"{t.name}/gini"] = gini(y, e)
            if t.parent and parent_rows is not None:
                c = preds_df[f"{t.name}_given_{t.parent}"].to_numpy(np.float64)[parent_rows]
                res[f"{t.name}/rmse_given_{t.parent}"] = float(np.sqrt(np.mean((c - y[parent_rows]) ** 2))) if parent_rows.any() else float("nan")
            if oracle_df is not None:
                o = oracle_df[f"{t.name}_expected"].to_numpy(np.float64)[covered]
                res[f"{t.name}/oracle_gini"] = gini(y[covered], o)
                res[f"{t.name}/oracle_gap"] = res[f"{t.name}/oracle_gini"] - gini(y[covered], e[covered])
    return res


def mean_auc(metrics: dict[str, float], tasks: TaskGraph) -> float:
    """Mean chained-output AUC over binary tasks (NaNs skipped): the default monitored metric."""
    vals = [metrics[f"{t.name}/auc"] for t in tasks.binary if np.isfinite(metrics.get(f"{t.name}/auc", np.nan))]
    return float(np.mean(vals)) if vals else float("nan")
