"""The zoo against the LightGBM baseline, several seeds: does the default model beat gradient-boosted trees?

    python -m benchmarks.targets WORK_DIR [--rows 1000000] [--census PATH] [--seeds 7 8 9] [--models mmoe tafe]

Data sets: the project's generator at ``--rows`` impressions (one data dir, made once by the pipeline's own
steps: generate .. validate) and, with ``--census``, the census sample (one data dir per seed, the rows
shuffled with it: ``flows.benchmark.census_data``). For each seed, every model with its paper loss
(params.yaml otherwise, the seed as ``train.seed``) and the LightGBM baseline train on the same splits
(``models.compare.compare_models``: early stopping and the choice of the best zoo model on validation,
metrics on test). Each (data set, seed) table is kept in WORK_DIR, so a rerun only adds what is missing.

Printed per data set: mean ± std test AUC per binary task and the verdict of each target,
* default: the params.yaml model >= the baseline on every binary task;
* best zoo: the zoo model with the best validation score >= the baseline + 0.005 on every binary task
  (generator: click and chained conversion; census: income and never_married),
where the baseline of a task is the better of its LightGBM layouts (chained or direct).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from flows import steps
from flows.benchmark import census_data, census_params
from flows.params import Params, Paths, load_params
from models.compare import compare_models
from models.networks import MODEL_NAMES

MARGIN = 0.005  # the best zoo model must beat the baseline by this much


def generated_data(params: Params, work: Path) -> Paths:
    """The generator's data set through the data steps, made once per WORK_DIR."""
    paths = Paths(work / f"generated-{params.generate.rows}" / "data")
    if not (paths.training_set / "test.parquet").exists():
        steps.generate(params, paths)
        steps.ingest(params, paths)
        for step in (steps.build_features, steps.features_apply, steps.features_materialize,
                     steps.training_set, steps.validate):
            step(params, paths)
    return paths


def seed_table(params: Params, paths: Paths, models: list[str], out: Path) -> pd.DataFrame:
    """compare_models' table for one seed (read back when ``out`` exists)."""
    if out.exists():
        return pd.read_csv(out)
    split = {s: pd.read_parquet(paths.training_set / f"{s}.parquet") for s in ("train", "validation", "test")}
    chain = any(t.parent for t in params.task_graph.binary)  # else every model trains with bce (no joint loss)
    table = compare_models(split["train"], split["validation"], split["test"], params.task_graph, params.model,
                           params.train, models=models, losses=["auto" if chain else "bce"], pwiser_weight=0.0,
                           progress=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    return table


def verdicts(runs: pd.DataFrame, params: Params) -> list[str]:
    """One line per target: pass/FAIL with the figures (means over seeds)."""
    binary = [f"{t.name}/auc" for t in params.task_graph.binary]
    zoo, gbdt = runs[runs.model != "lightgbm"], runs[runs.model == "lightgbm"]
    base = gbdt.groupby("loss")[binary].mean().max()  # per task: the better layout
    means = zoo.groupby("model")[[*binary, "valid_score"]].mean()
    default, best = params.model.name, str(means["valid_score"].idxmax())
    lines = []
    for label, name, margin in (("default", default, 0.0), ("best zoo (by validation)", best, MARGIN)):
        gaps = {m: means.loc[name, m] - base[m] for m in binary}
        ok = all(g >= margin for g in gaps.values())
        shown = ", ".join(f"{m} {means.loc[name, m]:.4f} vs {base[m]:.4f} ({g:+.4f})" for m, g in gaps.items())
        lines.append(f"{'pass' if ok else 'FAIL'}: {label} {name} >= baseline{f' + {margin}' if margin else ''}: "
                     f"{shown}")
    return lines


def summary(runs: pd.DataFrame, params: Params) -> str:
    """Markdown: one row per model (and baseline layout), mean ± std over seeds of each binary task's AUC."""
    binary = [f"{t.name}/auc" for t in params.task_graph.binary]
    lines = ["| model | loss | " + " | ".join(binary) + " | best epochs |", "|---|---|" + "---|" * (len(binary) + 1)]
    for (model, loss), g in runs.groupby(["model", "loss"], sort=False):
        cells = [f"{g[m].mean():.4f} ± {g[m].std(ddof=0):.4f}" for m in binary]
        epochs = ",".join(str(int(e)) for e in g["best_epoch"]) if model != "lightgbm" else "-"
        lines.append(f"| {model} | {loss} | " + " | ".join(cells) + f" | {epochs} |")
    return "\n".join(lines)


def report(name: str, tables: list[pd.DataFrame], params: Params) -> None:
    runs = pd.concat(tables, ignore_index=True)
    print(f"\n## {name} ({len(tables)} seeds)\n\n{summary(runs, params)}\n")
    print("\n".join(verdicts(runs, params)), flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work_dir", type=Path)
    ap.add_argument("--rows", type=int, default=1_000_000, help="generated impressions (0: skip the generator)")
    ap.add_argument("--census", type=Path, default=None, help="the census CSV (shared/data/census_income_kdd)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    ap.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=list(MODEL_NAMES))
    ap.add_argument("--params", type=Path, default=None)
    a = ap.parse_args(argv)
    logging.disable(logging.INFO)
    work = a.work_dir.resolve()
    base = load_params(a.params)
    if a.rows:
        gen = base.model_copy(update={"generate": base.generate.model_copy(update={"rows": a.rows})})
        paths = generated_data(gen, work)
        tables = [seed_table(_seeded(gen, s), paths, a.models, work / f"generated-{a.rows}" / f"seed{s}.csv")
                  for s in a.seeds]
        report(f"generator, {a.rows:,} impressions", tables, gen)
    if a.census:
        tables = []
        for s in a.seeds:
            # census' task graph, bands and gate; params.yaml's training, with the seed
            census = census_params(a.params, base.model.name, seed=s)
            params = _seeded(census.model_copy(update={"train": base.train}), s)
            seed_dir = work / "census" / f"seed{s}"
            paths = (Paths(seed_dir / "data") if (seed_dir / "data" / "training_set" / "test.parquet").exists()
                     else census_data(a.census, seed_dir, params))
            tables.append(seed_table(params, paths, a.models, seed_dir / "compare.csv"))
        report("census", tables, params)


def _seeded(params: Params, seed: int) -> Params:
    return params.model_copy(update={"train": params.train.model_copy(update={"seed": seed})})


if __name__ == "__main__":
    main()
