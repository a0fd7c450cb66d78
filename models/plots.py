"""Evaluation plots: ROC and calibration (reliability) per binary task, as PNG + DVC-plottable CSV.

CSV layouts: ``roc_<task>.csv`` (fpr,tpr), ``calibration_<task>.csv`` (bin,predicted,observed,count).
Calibration bins are equal-count quantile bins of the prediction (our choice: funnel rates are small,
so equal-width bins would put almost every row in the first bin).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from models.metrics import _align  # noqa: E402
from models.tasks import TaskGraph  # noqa: E402


def roc_points(y: np.ndarray, s: np.ndarray, max_points: int = 1000) -> pd.DataFrame:
    """ROC curve (one point per distinct threshold, thinned to ``max_points``)."""
    y = np.asarray(y) > 0.5
    order = np.argsort(-np.asarray(s, dtype=np.float64), kind="mergesort")
    ss, ys = np.asarray(s)[order], y[order]
    last = np.r_[ss[1:] != ss[:-1], True]  # end of each tie group
    tp, fp = np.cumsum(ys)[last], np.cumsum(~ys)[last]
    fpr = np.r_[0.0, fp / max(1, (~y).sum())]
    tpr = np.r_[0.0, tp / max(1, y.sum())]
    if len(fpr) > max_points:
        keep = np.unique(np.r_[np.linspace(0, len(fpr) - 1, max_points).astype(int), len(fpr) - 1])
        fpr, tpr = fpr[keep], tpr[keep]
    return pd.DataFrame({"fpr": fpr, "tpr": tpr})


def calibration_bins(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Mean predicted vs observed rate per equal-count bin of the prediction."""
    order = np.argsort(np.asarray(p), kind="mergesort")
    chunks = np.array_split(order, n_bins)
    rows = [(i, float(np.mean(p[c])), float(np.mean(y[c])), len(c)) for i, c in enumerate(chunks) if len(c)]
    return pd.DataFrame(rows, columns=["bin", "predicted", "observed", "count"])


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_eval_plots(labels_df: pd.DataFrame, preds_df: pd.DataFrame, tasks: TaskGraph, out_dir: str | Path) -> list[Path]:
    """Write roc_<task>.{csv,png} and calibration_<task>.{csv,png} for every binary task."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels_df, preds_df = _align(labels_df, preds_df)
    written: list[Path] = []
    for t in tasks.binary:
        y = labels_df[t.column].to_numpy(np.float64)
        p = preds_df[f"p_{t.name}"].to_numpy(np.float64)
        roc, cal = roc_points(y, p), calibration_bins(y, p)
        roc.to_csv(out / f"roc_{t.name}.csv", index=False)
        cal.to_csv(out / f"calibration_{t.name}.csv", index=False)
        fig, ax = plt.subplots(figsize=(4.5, 4))
        ax.plot(roc.fpr, roc.tpr)
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC: p_{t.name}")
        _save(fig, out / f"roc_{t.name}.png")
        fig, ax = plt.subplots(figsize=(4.5, 4))
        hi = max(cal.predicted.max(), cal.observed.max()) * 1.05
        ax.plot(cal.predicted, cal.observed, "o-")
        ax.plot([0, hi], [0, hi], "k--", lw=0.8)
        ax.set(xlabel="mean predicted", ylabel="observed rate", title=f"calibration: p_{t.name}")
        _save(fig, out / f"calibration_{t.name}.png")
        written += [out / f"{kind}_{t.name}.{ext}" for kind in ("roc", "calibration") for ext in ("csv", "png")]
    return written
