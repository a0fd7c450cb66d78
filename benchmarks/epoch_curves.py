"""Validation metrics per epoch for variants of the configured model: which task peaks early, and what moves it.

    python -m benchmarks.epoch_curves --data-dir data --epochs 6 [--only "lr 0.002" ...]

Trains on the data dir's training set (``funnelflow training-set``) with params.yaml, once per variant
(a few model/train fields changed), and prints each epoch's validation click and conversion AUC and the
epoch the run's monitor picks. Validation only: the test split is not read.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.ablation import variant_model
from flows.params import load_params
from models.train import train_model

# name -> (model fields, train fields); "name" in the model fields switches the model.
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "params.yaml": ({}, {}),
    "before: embedding_l2 0, constant lr": ({"embedding_l2": 0.0}, {"lr_schedule": "constant"}),
    "embedding_l2 0": ({"embedding_l2": 0.0}, {}),
    "constant lr": ({}, {"lr_schedule": "constant"}),
    "no id embeddings (min_count 1e9)": ({"min_count": 10**9}, {}),
    "loss dependence": ({"loss": "dependence"}, {}),
    "tafe": ({"name": "tafe"}, {}),
    "lr 0.002": ({}, {"lr": 0.002}),
    "lr 0.002, batch 1024": ({}, {"lr": 0.002, "batch_size": 1024}),
    "min_count 20": ({"min_count": 20}, {}),
    "weight_decay 1e-5": ({}, {"weight_decay": 1e-5}),
    "dropout 0.3": ({"dropout": 0.3}, {}),
    "embedding_dim 4": ({"embedding_dim": 4}, {}),
    "regression_weight 0": ({"regression_weight": 0.0}, {}),
    "loss ctcvr": ({"loss": "ctcvr"}, {}),
    "esmm": ({"name": "esmm"}, {}),
}


def curves(data_dir: Path, epochs: int, names: list[str], work: Path) -> pd.DataFrame:
    """One row per (variant, epoch): validation click/conversion AUC, and the epoch the run chose."""
    params = load_params()
    train, valid = (pd.read_parquet(data_dir / "training_set" / f"{s}.parquet") for s in ("train", "validation"))
    train_cfg = params.train.model_copy(update={"epochs": epochs, "patience": epochs})
    rows = []
    for name in names:
        model_fields, train_fields = VARIANTS[name]
        res = train_model(train, valid, params.task_graph, variant_model(params.model, model_fields),
                          train_cfg.model_copy(update=train_fields),
                          work / name.replace(" ", "_"), progress=False)
        for row in res.history:
            rows.append({"variant": name, "epoch": int(row["epoch"]), "best_epoch": res.best_epoch,
                         "click_auc": row["valid_click_auc"], "conversion_auc": row["valid_conversion_auc"]})
    return pd.DataFrame(rows)


def table(df: pd.DataFrame) -> str:
    """Markdown: one row per variant, each epoch's ``click / conversion`` validation AUC."""
    lines = ["| variant | best epoch | " + " | ".join(f"epoch {e}" for e in sorted(df.epoch.unique())) + " |",
             "|---|---|" + "---|" * df.epoch.nunique()]
    for name, g in df.groupby("variant", sort=False):
        cells = [f"{r.click_auc:.3f} / {r.conversion_auc:.3f}" for r in g.itertuples()]
        lines.append(f"| {name} | {g.best_epoch.iloc[0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=Path("data"))
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--only", action="append", choices=list(VARIANTS), help="repeatable; default: every variant")
    a = ap.parse_args(argv)
    logging.disable(logging.INFO)  # one table, not a log line per epoch
    with tempfile.TemporaryDirectory(prefix="funnelflow-epochs-") as tmp:
        df = curves(a.data_dir, a.epochs, a.only or list(VARIANTS), Path(tmp))
    print("validation AUC per epoch, click / conversion (chained)\n")
    print(table(df))


if __name__ == "__main__":
    main()
