"""Evaluation metrics on the predictions layout (numpy and scikit-learn; torch-free).

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
from sklearn.metrics import log_loss, roc_auc_score

from models.tasks import TaskGraph, TaskSpec


def roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC AUC (ties count 1/2). NaN, where scikit-learn would raise, when a class is missing or a
    score is NaN/inf (a diverged model must not get a finite score that could pick it as best)."""
    y, s = np.asarray(y) > 0.5, np.asarray(s, dtype=np.float64)
    if not (0 < y.sum() < len(y) and np.isfinite(s).all()):
        return float("nan")
    return float(roc_auc_score(y, s))


def logloss(y: np.ndarray, p: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary log loss, predictions clipped to [eps, 1 - eps]; NaN when a prediction is NaN."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return float("nan") if np.isnan(p).any() else float(log_loss(y, p, labels=[0, 1]))


def gini(actual: np.ndarray, pred: np.ndarray) -> float:
    """Normalised Gini: Gini(actual ordered by pred) / Gini(actual ordered by actual); 1 = perfect
    ranking, 0 = random. scikit-learn has none for a continuous target."""
    a = np.asarray(actual, dtype=np.float64)
    if len(a) == 0 or a.sum() <= 0:
        return float("nan")
    return _lorenz_gini(a, np.asarray(pred, dtype=np.float64)) / _lorenz_gini(a, a)


def _lorenz_gini(a: np.ndarray, p: np.ndarray) -> float:
    """Area between the Lorenz curve of ``a`` (rows by ``p`` descending, ties in row order) and the diagonal."""
    cum = np.cumsum(a[np.argsort(-p, kind="stable")]) / a.sum()
    return float(cum.sum() / len(a) - (len(a) + 1) / (2.0 * len(a)))


def align_rows(labels_df: pd.DataFrame, preds_df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
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
    labels_df, preds_df = align_rows(labels_df, preds_df)
    oracle, covered = _oracle_rows(labels_df, oracle_df)
    res: dict[str, float] = {}
    for t in tasks.tasks:
        y = labels_df[t.column].to_numpy(np.float64)
        parent_rows = labels_df[t.parent].to_numpy() > 0.5 if t.parent else None
        metrics = _binary_metrics if t.kind == "binary" else _regression_metrics
        res.update({f"{t.name}/{k}": v for k, v in metrics(t, y, preds_df, parent_rows, oracle, covered).items()})
    return res


def _oracle_rows(labels_df: pd.DataFrame, oracle_df: pd.DataFrame | None) -> tuple[pd.DataFrame | None, np.ndarray]:
    """The oracle in the labels' row order, and the rows it covers (it may cover only some: its
    metrics and gaps use those)."""
    if oracle_df is None:
        return None, np.ones(len(labels_df), dtype=bool)
    if "impression_id" in oracle_df and "impression_id" in labels_df:
        oracle_df = oracle_df.set_index("impression_id").reindex(labels_df["impression_id"].to_numpy())
    else:
        oracle_df = oracle_df.reset_index(drop=True)
    return oracle_df, oracle_df.notna().all(axis=1).to_numpy()


def _binary_metrics(t: TaskSpec, y: np.ndarray, preds_df: pd.DataFrame, parent_rows: np.ndarray | None,
                    oracle: pd.DataFrame | None, covered: np.ndarray) -> dict[str, float]:
    p = preds_df[f"p_{t.name}"].to_numpy(np.float64)
    res = {"auc": roc_auc(y, p), "logloss": logloss(y, p)}
    if parent_rows is not None:
        pc = preds_df[f"p_{t.name}_given_{t.parent}"].to_numpy(np.float64)
        res[f"auc_given_{t.parent}"] = roc_auc(y[parent_rows], pc[parent_rows])
    if oracle is not None:
        res["oracle_auc"] = roc_auc(y[covered], oracle[f"p_{t.name}"].to_numpy(np.float64)[covered])
        res["oracle_gap"] = res["oracle_auc"] - roc_auc(y[covered], p[covered])
    return res


def _regression_metrics(t: TaskSpec, y: np.ndarray, preds_df: pd.DataFrame, parent_rows: np.ndarray | None,
                        oracle: pd.DataFrame | None, covered: np.ndarray) -> dict[str, float]:
    y = np.nan_to_num(y)
    e = preds_df[f"{t.name}_expected"].to_numpy(np.float64)
    res = {"rmse": _rmse(e, y), "mae": float(np.mean(np.abs(e - y))), "gini": gini(y, e)}
    if parent_rows is not None:
        c = preds_df[f"{t.name}_given_{t.parent}"].to_numpy(np.float64)[parent_rows]
        res[f"rmse_given_{t.parent}"] = _rmse(c, y[parent_rows]) if parent_rows.any() else float("nan")
    if oracle is not None:
        res["oracle_gini"] = gini(y[covered], oracle[f"{t.name}_expected"].to_numpy(np.float64)[covered])
        res["oracle_gap"] = res["oracle_gini"] - gini(y[covered], e[covered])
    return res


def _rmse(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.sqrt(np.mean((pred - y) ** 2)))


def mean_auc(metrics: dict[str, float], tasks: TaskGraph) -> float:
    """Mean chained-output AUC over binary tasks (NaNs skipped): the default monitored metric."""
    vals = [metrics[f"{t.name}/auc"] for t in tasks.binary if np.isfinite(metrics.get(f"{t.name}/auc", np.nan))]
    return float(np.mean(vals)) if vals else float("nan")
