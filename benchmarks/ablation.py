"""Ablations of the seed methods, over seeds: HTLNet's two units, PWiseR's weight, TAFE's loss.

    python -m benchmarks.ablation --data-dir data --seeds 7 8 9 [--only "htlnet, neither" ...]

Trains each variant (a model and a few model/train fields changed from params.yaml; tuned.yaml is not
applied) once per seed on the data dir's training set (``funnelflow training-set``), picks the epoch
on the validation split (``models.train.train_model``), scores the TEST split and prints a markdown
table: mean ± std over the seeds of click AUC, chained conversion AUC and value Gini, and each seed's
best epoch. One line per run goes to stderr as it finishes.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from flows.params import load_params
from models.metrics import evaluate_predictions
from models.networks import ModelConfig, switch_model
from models.train import predict_frame, train_model

# name -> (model fields, train fields); "name" in the model fields switches the model.
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "htlnet (paper: both units)": ({"name": "htlnet"}, {}),
    "htlnet, no label embedding": ({"name": "htlnet", "label_embedding": False}, {}),
    "htlnet, no gradient adjustment": ({"name": "htlnet", "gradient_adjustment": False}, {}),
    "htlnet, neither": ({"name": "htlnet", "label_embedding": False, "gradient_adjustment": False}, {}),
    "mmoe bce": ({"name": "mmoe", "loss": "bce"}, {}),
    "mmoe bce + pwiser 0.1": ({"name": "mmoe", "loss": "bce", "pwiser_weight": 0.1}, {}),
    "mmoe bce + pwiser 0.5": ({"name": "mmoe", "loss": "bce", "pwiser_weight": 0.5}, {}),
    "mmoe bce + pwiser 1.0": ({"name": "mmoe", "loss": "bce", "pwiser_weight": 1.0}, {}),
    "esmm ctcvr": ({"name": "esmm", "loss": "ctcvr"}, {}),
    "esmm ctcvr + pwiser 0.5": ({"name": "esmm", "loss": "ctcvr", "pwiser_weight": 0.5}, {}),
    "tafe dependence (paper)": ({"name": "tafe", "loss": "dependence"}, {}),
    "tafe bce": ({"name": "tafe", "loss": "bce"}, {}),
    "tafe ctcvr": ({"name": "tafe", "loss": "ctcvr"}, {}),
}
METRICS = {"click AUC": "click/auc", "conversion AUC (chained)": "conversion/auc", "value Gini": "value/gini"}


def variant_model(base: ModelConfig, fields: dict[str, Any]) -> ModelConfig:
    """``base`` switched to ``fields["name"]`` (if given) with the other fields set."""
    model = switch_model(base, fields["name"]) if "name" in fields else base
    return model.model_copy(update={k: v for k, v in fields.items() if k != "name"})


def run(data_dir: Path, seeds: list[int], names: list[str], work: Path, epochs: int | None = None,
        threads: int | None = None) -> pd.DataFrame:
    """One row per (variant, seed): test metrics of the epoch chosen on validation. ``epochs``: None =
    params.yaml's; ``threads``: CPU threads per run (None: all cores)."""
    params = load_params(tuned=False)  # the methods against params.yaml, not against a search's result
    train, valid, test = (pd.read_parquet(data_dir / "training_set" / f"{s}.parquet")
                          for s in ("train", "validation", "test"))
    labels = test[["impression_id", *params.task_graph.names]]
    base_train = params.train.model_copy(update={"num_threads": threads} | ({"epochs": epochs} if epochs else {}))
    rows = []
    for name in names:
        model_fields, train_fields = VARIANTS[name]
        model = variant_model(params.model, model_fields)
        for seed in seeds:
            t0 = time.perf_counter()
            res = train_model(train, valid, params.task_graph, model,
                              base_train.model_copy(update={**train_fields, "seed": seed}),
                              work / f"{name.replace(' ', '_')}-{seed}", progress=False)
            metrics = evaluate_predictions(labels, predict_frame(res.out_dir, test), params.task_graph)
            rows.append({"variant": name, "seed": seed, "best_epoch": res.best_epoch}
                        | {label: metrics[key] for label, key in METRICS.items()})
            print(f"{name} seed {seed}: " + ", ".join(f"{k} {rows[-1][k]:.4f}" for k in METRICS)
                  + f", best epoch {res.best_epoch}, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return pd.DataFrame(rows)


def _mean_std(values: pd.Series) -> str:
    """``mean ± std`` (sample std; 0 for one seed)."""
    return f"{values.mean():.4f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.4f}"


def table(df: pd.DataFrame) -> str:
    """Markdown: one row per variant, mean ± std over its seeds, the best epoch of each seed."""
    lines = ["| variant | " + " | ".join(METRICS) + " | best epoch per seed |",
             "|---|" + "---|" * (len(METRICS) + 1)]
    for name, g in df.groupby("variant", sort=False):
        cells = [_mean_std(g[m]) for m in METRICS] + [",".join(str(e) for e in g.best_epoch)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=Path("data"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    ap.add_argument("--epochs", type=int, help="default: params.yaml's train.epochs")
    ap.add_argument("--threads", type=int, help="CPU threads per run (default: all cores); 1 on shared cores")
    ap.add_argument("--only", action="append", choices=list(VARIANTS), help="repeatable; default: every variant")
    a = ap.parse_args(argv)
    logging.disable(logging.INFO)  # one table, not a log line per epoch
    with tempfile.TemporaryDirectory(prefix="funnelflow-ablation-") as tmp:
        df = run(a.data_dir, a.seeds, a.only or list(VARIANTS), Path(tmp), a.epochs, a.threads)
    print(f"test split, mean ± std over seeds {' '.join(map(str, a.seeds))}; epoch chosen on validation\n")
    print(table(df))


if __name__ == "__main__":
    main()
