"""Evaluation plots: ROC and calibration (reliability) per binary task, as PNG + DVC-plottable CSV.

CSV layouts: ``roc_<task>.csv`` (fpr,tpr), ``calibration_<task>.csv`` (bin,predicted,observed,count).
Both curves come from scikit-learn. Calibration bins are quantile bins of the prediction (our choice:
funnel rates are small, so equal-width bins would put almost every row in the first bin).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_curve

from models.atomic import atomic_file
from models.metrics import align_rows
from models.tasks import TaskGraph


def roc_points(y: np.ndarray, s: np.ndarray, max_points: int = 1000) -> pd.DataFrame:
    """ROC curve (one point per distinct threshold, thinned to ``max_points``)."""
    fpr, tpr, _ = roc_curve(np.asarray(y) > 0.5, s, drop_intermediate=False)
    if len(fpr) > max_points:
        keep = np.unique(np.r_[np.linspace(0, len(fpr) - 1, max_points).astype(int), len(fpr) - 1])
        fpr, tpr = fpr[keep], tpr[keep]
    return pd.DataFrame({"fpr": fpr, "tpr": tpr})


def calibration_bins(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Mean predicted vs observed rate per quantile bin of the prediction (empty bins left out)."""
    observed, predicted = calibration_curve(y, p, n_bins=n_bins, strategy="quantile")
    # calibration_curve returns no counts: the same bins it uses (quantile edges, right-closed)
    edges = np.percentile(p, np.linspace(0, 100, n_bins + 1))
    count = np.bincount(np.searchsorted(edges[1:-1], p), minlength=n_bins)
    kept = np.flatnonzero(count)
    return pd.DataFrame({"bin": kept, "predicted": predicted, "observed": observed, "count": count[kept]})


def save_png(fig: Figure, path: Path) -> None:
    """Write ``fig`` to ``path`` as PNG, atomically."""
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")


def save_csv(df: pd.DataFrame, path: Path) -> None:
    """Write ``df`` to ``path`` as CSV without the index, atomically."""
    with atomic_file(path) as tmp:
        df.to_csv(tmp, index=False)


def write_eval_plots(
    labels_df: pd.DataFrame, preds_df: pd.DataFrame, tasks: TaskGraph, out_dir: str | Path
) -> list[Path]:
    """Write roc_<task>.{csv,png} and calibration_<task>.{csv,png} for every binary task."""
    out = Path(out_dir)
    labels_df, preds_df = align_rows(labels_df, preds_df)
    written: list[Path] = []
    for t in tasks.binary:
        y = labels_df[t.column].to_numpy(np.float64)
        p = preds_df[f"p_{t.name}"].to_numpy(np.float64)
        roc, cal = roc_points(y, p), calibration_bins(y, p)
        save_csv(roc, out / f"roc_{t.name}.csv")
        save_csv(cal, out / f"calibration_{t.name}.csv")
        save_png(_roc_figure(roc, t.name), out / f"roc_{t.name}.png")
        save_png(_calibration_figure(cal, t.name), out / f"calibration_{t.name}.png")
        written += [out / f"{kind}_{t.name}.{ext}" for kind in ("roc", "calibration") for ext in ("csv", "png")]
    return written


def _roc_figure(roc: pd.DataFrame, task: str) -> Figure:
    fig = Figure(figsize=(4.5, 4))  # no pyplot: no global backend or figure registry
    ax = fig.subplots()
    ax.plot(roc.fpr, roc.tpr)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC: p_{task}")
    return fig


def _calibration_figure(cal: pd.DataFrame, task: str) -> Figure:
    fig = Figure(figsize=(4.5, 4))  # no pyplot: no global backend or figure registry
    ax = fig.subplots()
    hi = max(cal.predicted.max(), cal.observed.max()) * 1.05
    ax.plot(cal.predicted, cal.observed, "o-")
    ax.plot([0, hi], [0, hi], "k--", lw=0.8)
    ax.set(xlabel="mean predicted", ylabel="observed rate", title=f"calibration: p_{task}")
    return fig
