"""Model x loss comparison on one set of splits (pure: frames in, DataFrame out; the CLI wires it).

For each model, the losses tried are ``losses`` (default: its paper loss ``auto`` plus ``bce``,
``ctcvr`` and ``dependence``, deduplicated after resolving ``auto``; the joint losses are skipped for a
graph without a binary parent/child pair, where they equal ``bce``), plus the PWiseR add-on on the
paper loss for ``pwiser_models`` (esmm and mmoe by default). After the zoo, the LightGBM baseline
(models.gbdt: rows ``gbdt-chained`` and ``gbdt-direct``, model ``lightgbm``) unless ``gbdt`` is False;
it is a yardstick only, never trained by ``train`` nor promoted. Early stopping uses validation only;
metrics are on test.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from models.config import TrainConfig
from models.gbdt import train_gbdt_baseline
from models.metrics import evaluate_predictions
from models.networks import MODEL_NAMES, MODELS, ModelConfig, switch_model
from models.tasks import TaskGraph
from models.train import load_model, predict_frame, train_model


def _runs(models: list[str], losses: list[str] | None, tasks: TaskGraph,
          pwiser_models: tuple[str, ...], pwiser_weight: float) -> list[tuple[str, str, float]]:
    """(model, loss, pwiser weight) of every run, in table order."""
    chain = any(t.kind == "binary" and t.parent for t in tasks.tasks)
    runs: list[tuple[str, str, float]] = []
    for name in models:
        paper = MODELS[name].config_class.paper_loss
        wanted = losses or [paper, "bce", "ctcvr", "dependence"]
        resolved: list[str] = []
        for loss in wanted:
            loss = paper if loss == "auto" else loss
            if loss not in resolved and (chain or loss == "bce"):
                resolved.append(loss)
        runs += [(name, loss, 0.0) for loss in resolved]
        if name in pwiser_models and pwiser_weight > 0:
            runs.append((name, paper, pwiser_weight))
    return runs


def compare_models(
    train_df: pd.DataFrame, valid_df: pd.DataFrame, test_df: pd.DataFrame, tasks: TaskGraph,
    base_model_cfg: ModelConfig, train_cfg: TrainConfig, oracle_df: pd.DataFrame | None = None,
    models: list[str] | None = None, losses: list[str] | None = None,
    pwiser_models: tuple[str, ...] = ("esmm", "mmoe"), pwiser_weight: float = 0.1,
    work_dir: str | Path | None = None, progress: bool = False, gbdt: bool = True,
) -> pd.DataFrame:
    """One row per (model, loss[, +pwiser]): columns model, loss, pwiser_weight, paper_loss,
    best_epoch, valid_score (the training monitor at the best epoch), train_seconds,
    samples_per_sec, then every ``task/metric`` on test (oracle gaps
    included when ``oracle_df`` is given). Model dirs go to ``work_dir`` (temp dir if None).
    With ``gbdt``, the LightGBM baseline's rows follow (see ``_gbdt_rows``)."""
    models = models or list(MODEL_NAMES)
    rows = []
    with tempfile.TemporaryDirectory(prefix="funnel-compare-") as tmp:
        root = Path(work_dir) if work_dir else Path(tmp)
        for name, loss, pw in _runs(models, losses, tasks, pwiser_models, pwiser_weight):
            cfg = switch_model(base_model_cfg, name).model_copy(update={"loss": loss, "pwiser_weight": pw})
            run_dir = root / f"{name}__{loss}{'__pwiser' if pw else ''}"
            res = train_model(train_df, valid_df, tasks, cfg, train_cfg, run_dir, progress=progress)
            preds = predict_frame(load_model(run_dir), test_df)
            metrics = evaluate_predictions(test_df, preds, tasks, oracle_df)
            rows.append({"model": name, "loss": loss + ("+pwiser" if pw else ""), "pwiser_weight": pw,
                         "paper_loss": loss == cfg.paper_loss, "best_epoch": res.best_epoch,
                         "valid_score": res.best_score,
                         "train_seconds": res.train_seconds, "samples_per_sec": res.samples_per_sec, **metrics})
    if gbdt:
        rows += _gbdt_rows(train_df, valid_df, test_df, tasks, train_cfg, oracle_df)
    return pd.DataFrame(rows)


def _gbdt_rows(train_df: pd.DataFrame, valid_df: pd.DataFrame, test_df: pd.DataFrame, tasks: TaskGraph,
               train_cfg: TrainConfig, oracle_df: pd.DataFrame | None) -> list[dict]:
    """One row per baseline layout (model ``lightgbm``, loss = the layout's name). best_epoch is the
    best boosting iteration of the root task's model (the first task: click), train_seconds the fit time of
    the layout's models and samples_per_sec training rows per second of it. Threads: the training
    config's, else 2 (LightGBM's OpenMP slows sharply when it asks for more cores than are free)."""
    layouts, info = train_gbdt_baseline(train_df, valid_df, test_df, tasks, train_cfg.seed,
                                        num_threads=train_cfg.num_threads or 2)
    rows = []
    for name, preds in layouts.items():
        seconds = info.seconds["direct" if name == "gbdt-direct" else "chained"]
        rows.append({"model": "lightgbm", "loss": name, "pwiser_weight": 0.0, "paper_loss": False,
                     "best_epoch": info.best_iteration[tasks.tasks[0].name], "train_seconds": seconds,
                     "samples_per_sec": len(train_df) / seconds,
                     **evaluate_predictions(test_df, preds, tasks, oracle_df)})
    return rows
