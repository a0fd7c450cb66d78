"""Census-Income (KDD) benchmark: every model through the real pipeline steps, several seeds.

For each seed the census CSV is shuffled with that seed (``DataFrame.sample(frac=1, random_state=seed)``)
and written to ``work_dir/seed<seed>/census.csv.gz`` *before* the adapter turns row order into time,
so each seed gets a different time-based train/validation/test split (and model init seed). Then, in
``work_dir/seed<seed>`` (its own data dir: Feast store, validation reference, registry), the steps of
flows/steps.py run: ingest (census-kdd adapter), build_features, features_apply, features_materialize,
training_set, validate, and for each model train, evaluate, score_champion, gate, export, promote.
Gate change bounds are dropped (models are compared side by side, not champion vs challenger); the
absolute bounds are census ones. A model that fails to build/train on independent tasks is reported with the reason.

Run: ``python -m flows.benchmark SOURCE WORK_DIR [--models mmoe ple] [--seeds 1 2 3] [--epochs 3]``
"""
from __future__ import annotations

import argparse
import logging
import os
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd

from flows.params import Params, Paths, load_params
from models.networks import MODEL_NAMES, switch_model

MODELS = list(MODEL_NAMES)
CENSUS_GATE = [
    {"metric": "income/auc", "op": ">=", "value": 0.80},
    {"metric": "never_married/auc", "op": ">=", "value": 0.80},
    {"metric": "weeks_worked/rmse", "op": "<=", "value": 30.0},
]
CENSUS_BANDS = {"income": (0.02, 0.2), "never_married": (0.2, 0.7)}


def census_params(params_path=None, model: str = "mmoe", epochs: int = 3, seed: int = 7) -> Params:
    """params.yaml with the census task graph, bands, gate and ``data.format = census-kdd``."""
    from features.adapters import default_tasks

    params = load_params(params_path)
    raw = params.model_dump(mode="json")
    raw["data"] = {"source": raw["data"]["source"], "format": "census-kdd"}
    raw["tasks"] = [t.model_dump() for t in default_tasks("census-kdd").tasks]
    raw["validation"]["label_rate_bands"] = {k: list(v) for k, v in CENSUS_BANDS.items()}
    raw["validation"]["max_null_fraction"] = 0.0
    raw["gate"] = {"absolute": CENSUS_GATE, "change": []}
    raw["model"] = switch_model(params.model, model).model_dump(mode="json")  # drops knobs ``model`` lacks
    raw["train"].update(epochs=epochs, seed=seed, batch_size=1024, device="cpu")
    return Params(**raw)


def census_data(source: Path, seed_dir: Path, params: Params) -> Paths:
    """The census rows shuffled with ``params.train.seed`` (a different time split per seed), through the
    data steps (ingest .. validate) into ``seed_dir/data``; returns its Paths."""
    from flows import steps

    seed_dir.mkdir(parents=True, exist_ok=True)
    shuffled = seed_dir / "census.csv.gz"
    df = pd.read_csv(source, header=None, dtype=str, keep_default_na=False)
    df.sample(frac=1.0, random_state=params.train.seed).to_csv(shuffled, header=False, index=False)
    paths = Paths(seed_dir / "data")
    steps.ingest(params, paths, source=shuffled, fmt="census-kdd")
    for step in (steps.build_features, steps.features_apply, steps.features_materialize,
                 steps.training_set, steps.validate):
        step(params, paths)
    return paths


def _metric_names(params: Params) -> list[str]:
    return [f"{t.name}/auc" if t.kind == "binary" else f"{t.name}/rmse" for t in params.task_graph.tasks]


def benchmark_census(source: Path, work_dir: Path, models: list[str] | None = None, seeds=(1, 2, 3),
                     epochs: int = 3, params_path=None) -> pd.DataFrame:
    """One row per model: per-task test AUC (binary) / RMSE (regression) mean and std over seeds."""
    from flows import steps

    models = list(models or MODELS)
    work_dir = Path(work_dir).resolve()
    runs: list[dict] = []
    t_all = time.perf_counter()
    for seed in seeds:
        t0 = time.perf_counter()
        paths = census_data(source, work_dir / f"seed{seed}", census_params(params_path, models[0], epochs, seed))
        print(f"[seed {seed}] data pipeline done in {time.perf_counter() - t0:.1f}s", flush=True)
        for name in models:
            params = census_params(params_path, name, epochs, seed)
            t1 = time.perf_counter()
            run = {"model": name, "seed": seed, "status": "ok"}
            try:
                steps.train(params, paths, progress=False)
                metrics = steps.evaluate(params, paths)["metrics"]
                run.update({m: metrics.get(m, np.nan) for m in _metric_names(params)})
            except Exception as exc:  # a model that cannot run on independent tasks
                run["status"] = f"skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                logging.getLogger("funnelflow").debug(traceback.format_exc())
            else:
                try:
                    steps.score_champion(params, paths)
                    steps.gate(params, paths)
                    steps.export(params, paths)
                    steps.promote(params, paths)
                    run["status"] = "promoted"
                except Exception as exc:  # GateFailed or an export/promotion failure: metrics still count
                    run["status"] = f"not promoted: {type(exc).__name__}"
            run["seconds"] = round(time.perf_counter() - t1, 1)
            runs.append(run)
            shown = {k: round(v, 4) for k, v in run.items() if "/" in k}
            print(f"[seed {seed}] {name}: {run['status']} {shown} ({run['seconds']}s)", flush=True)
    print(f"benchmark done in {time.perf_counter() - t_all:.0f}s", flush=True)
    return summarize(pd.DataFrame(runs), _metric_names(census_params(params_path)))


def summarize(runs: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """One row per model: how many seeds ran, mean and std of each metric, statuses, seconds per run."""
    rows = []
    for name, g in runs.groupby("model", sort=False):
        ok = g[g["status"].isin(["ok", "promoted"]) | g["status"].str.startswith("not promoted")]
        row = {"model": name, "seeds": len(ok)}
        for m in metrics:
            vals = ok[m].astype(float) if m in ok else pd.Series(dtype=float)
            row[f"{m} mean"] = vals.mean() if len(vals) else np.nan
            row[f"{m} std"] = vals.std(ddof=0) if len(vals) else np.nan
        row["status"] = "; ".join(sorted(set(g["status"])))
        twin = _identical_to(runs, name, metrics)
        if twin:  # e.g. ESMM/AITM without a parent chain reduce to the same network
            row["status"] += f" (identical to {twin} on every seed: no parent chain to model)"
        row["seconds/run"] = g["seconds"].mean()
        rows.append(row)
    return pd.DataFrame(rows)


def _identical_to(runs: pd.DataFrame, name: str, metrics: list[str]) -> str | None:
    cols = [m for m in metrics if m in runs]
    mine = runs[runs["model"] == name].set_index("seed")[cols]
    if not cols or mine.isna().all().all():
        return None
    for other in runs["model"].unique():
        if other == name:
            break  # only name the earlier model of a pair
        theirs = runs[runs["model"] == other].set_index("seed")[cols]
        if theirs.shape == mine.shape and np.allclose(theirs.loc[mine.index].to_numpy(float), mine.to_numpy(float)):
            return str(other)
    return None


def format_table(df: pd.DataFrame) -> str:
    """Markdown: one row per model, ``mean ± std`` per task metric."""
    metrics = [c[: -len(" mean")] for c in df.columns if c.endswith(" mean")]
    head = ["model", "seeds", *metrics, "status", "s/run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in df.iterrows():
        cells = [str(r["model"]), str(r["seeds"])]
        for m in metrics:
            mean, std = r[f"{m} mean"], r[f"{m} std"]
            cells.append("n/a" if pd.isna(mean) else f"{mean:.4f} ± {std:.4f}")
        cells += [str(r["status"]).replace("|", "/"), f"{r['seconds/run']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path)
    ap.add_argument("work_dir", type=Path)
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--seeds", nargs="*", type=int, default=[1, 2, 3])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--params", default=None)
    a = ap.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "WARNING"))
    df = benchmark_census(a.source, a.work_dir, a.models, tuple(a.seeds), a.epochs, a.params)
    print(format_table(df))


if __name__ == "__main__":
    main()
