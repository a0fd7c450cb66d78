"""The pipeline's steps: one function each, called by the CLI (hence by DVC stages) and by the Prefect flow.

Every step reads ``params.yaml`` sections through ``Params`` and its inputs from ``Paths``, writes its
outputs atomically, and returns a small JSON-able summary (what it wrote, counts, timings).
"""
from __future__ import annotations

import json
import logging
import time
from functools import wraps
from pathlib import Path

from flows.params import Params, Paths

log = logging.getLogger("funnelflow")


def timed(fn):
    """Log the step's start and end and add ``seconds`` to its summary."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        log.info("step %s: start", fn.__name__)
        out = fn(*args, **kwargs) or {}
        out["seconds"] = round(time.perf_counter() - t0, 3)
        log.info("step %s: done in %.1fs", fn.__name__, out["seconds"])
        return out

    return wrapper


@timed
def generate(params: Params, paths: Paths, out: Path | None = None, oracle_out: Path | None = None) -> dict:
    """Synthetic funnel data in the contract layout; the oracle goes to a separate file."""
    from features.contract import FunnelDataset, write_dataset
    from features.generate import generate as gen

    g = params.generate
    data = gen(rows=g.rows, days=g.days, seed=g.seed, users=g.users, items=g.items, start=g.start)
    out = Path(out or paths.generated)
    summary = write_dataset(FunnelDataset(data.impressions, data.users, data.items), out,
                            extra={"generator": g.model_dump()})
    oracle_out = Path(oracle_out or paths.oracle)
    oracle_out.parent.mkdir(parents=True, exist_ok=True)
    tmp = oracle_out.with_suffix(".tmp")
    data.oracle.to_parquet(tmp, index=False)
    tmp.replace(oracle_out)
    return {"out": str(out), "oracle": str(oracle_out), **summary}


@timed
def ingest(params: Params, paths: Paths, source: Path | None = None, fmt: str | None = None) -> dict:
    """Check a dataset against the contract and store it as the raw snapshot (all or nothing)."""
    from features.contract import ingest as ingest_dataset

    fmt = fmt or params.data.format
    if source is None:
        source = paths.generated if params.data.source == "generate" else Path(params.data.source)
    if fmt != "funnel":
        from features.adapters import convert  # public-dataset layouts -> the contract

        return convert(fmt, Path(source), paths.raw, params.task_graph)
    return ingest_dataset(source, paths.raw, params.task_graph)


@timed
def build_features(params: Params, paths: Paths) -> dict:
    """Profile and rolling-aggregate tables (the Feast feature views' sources)."""
    from features.engineering import build_feature_tables

    return build_feature_tables(paths.raw, paths.features, params.task_graph, params.features)


@timed
def features_apply(params: Params, paths: Paths) -> dict:
    from features import store

    summary = {"applied": store.apply(paths.root)}
    _write_json(paths.root / "feast" / "applied.json", summary)
    return summary


@timed
def features_materialize(params: Params, paths: Paths) -> dict:
    from features import store

    summary = store.materialize(paths.root)
    _write_json(paths.root / "feast" / "materialized.json", summary)
    return summary


@timed
def training_set(params: Params, paths: Paths) -> dict:
    from features.training_set import build_training_set

    manifest = build_training_set(paths.root, params.task_graph, params.features, params.split, paths.training_set)
    return {"splits": {k: v["rows"] for k, v in manifest["splits"].items()}, "data_hash": manifest["data_hash"]}


@timed
def validate(params: Params, paths: Paths, raise_on_failure: bool = True) -> dict:
    from features.validation import validate_training_set

    report = validate_training_set(paths.training_set, paths.validation, params.task_graph, params.validation,
                                   raise_on_failure=raise_on_failure)
    return {"success": report.success, "evaluated": report.evaluated, "failed": len(report.failed),
            "summary": str(paths.validation / "summary.md"), "docs": report.docs_index}


def _splits(paths: Paths, *names: str):
    from features.training_set import load_split

    return [load_split(paths.training_set, n) for n in names]


def _write_json(path: Path, obj: dict) -> None:
    from flows.registry import write_json_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, obj)


@timed
def train(params: Params, paths: Paths, resume: bool = False, progress: bool = True) -> dict:
    """Train the configured model; best epoch chosen on the validation split only."""
    from models.train import train_model

    train_df, valid_df = _splits(paths, "train", "validation")
    res = train_model(train_df, valid_df, params.task_graph, params.model, params.train, paths.model,
                      resume=resume, progress=progress)
    summary = {"model": params.model.name, "best_epoch": res.best_epoch, "best_score": res.best_score,
               "valid": res.valid_metrics, "train_seconds": res.train_seconds,
               "samples_per_sec": res.samples_per_sec}
    _write_json(paths.model / "train_summary.json", summary)
    return summary


def _oracle(paths: Paths, ids) -> "pd.DataFrame | None":
    """The generator's true probabilities for these impressions, when the data came from it."""
    import pandas as pd

    if not paths.oracle.exists():
        return None
    oracle = pd.read_parquet(paths.oracle)
    return oracle if pd.Index(ids).isin(oracle["impression_id"]).all() else None


@timed
def evaluate(params: Params, paths: Paths) -> dict:
    """Test metrics of the candidate (and of the champion on the same rows), plus ROC/calibration plots."""
    from models.metrics import evaluate_predictions
    from models.plots import write_eval_plots
    from models.train import predict_frame

    from flows.registry import Registry

    (test,) = _splits(paths, "test")
    tasks = params.task_graph
    preds = predict_frame(paths.model, test)
    metrics = evaluate_predictions(test, preds, tasks, _oracle(paths, test["impression_id"]))
    out = paths.evaluation
    _write_json(out / "metrics.json", metrics)
    plots = write_eval_plots(test, preds, tasks, out / "plots")
    champion = {}
    champ_dir = Registry(paths.registry).champion_dir()
    if champ_dir is not None:
        champion = {"version": champ_dir.name, **_score_champion(champ_dir, test, tasks)}
    _write_json(out / "champion_metrics.json", champion)
    return {"metrics": metrics, "champion": champion.get("version"), "plots": [str(p) for p in plots]}


def _score_champion(champ_dir: Path, test, tasks) -> dict:
    """The champion's metrics on the candidate's test rows; {} if its bundle can't read them."""
    from models.export import OnnxScorer
    from models.metrics import evaluate_predictions

    try:
        preds = OnnxScorer(champ_dir).predict(test)
    except Exception as exc:  # e.g. the feature schema changed since the champion was trained
        log.warning("champion %s cannot score the current test set (%s); using its recorded metrics",
                    champ_dir.name, exc)
        return json.loads((champ_dir / "metrics.json").read_text())
    return evaluate_predictions(test, preds, tasks)


@timed
def gate(params: Params, paths: Paths) -> dict:
    """Decide; write blessing.json either way; raise GateFailed when not blessed."""
    from flows.gate import GateFailed, decide, to_markdown, write_blessing

    candidate = json.loads((paths.evaluation / "metrics.json").read_text())
    champ = json.loads((paths.evaluation / "champion_metrics.json").read_text())
    version = champ.pop("version", None)
    blessing = decide(candidate, champ if version else None, params.gate, version)
    write_blessing(blessing, paths.gate / "blessing.json")
    (paths.gate / "blessing.md").write_text(to_markdown(blessing))
    _write_gate_plot(blessing, paths.gate)
    if not blessing["blessed"]:
        raise GateFailed(to_markdown(blessing))
    return {"blessed": True, "champion": version, "checks": len(blessing["checks"])}


def _write_gate_plot(blessing: dict, out: Path) -> None:
    """The gate table as a DVC-plottable CSV and a PNG (value vs bound per check)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    rows = pd.DataFrame(blessing["checks"])
    if rows.empty:
        return
    rows["check"] = rows["kind"] + ":" + rows["metric"]
    rows[["check", "value", "bound", "baseline", "passed"]].to_csv(out / "gate_checks.csv", index=False)
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(rows)))
    y = range(len(rows))
    ax.scatter(rows["value"], y, c=["tab:green" if p else "tab:red" for p in rows["passed"]], label="candidate", zorder=3)
    ax.scatter(rows["bound"], y, marker="|", s=300, c="black", label="bound")
    ax.set_yticks(list(y), rows["check"] + " " + rows["rule"])
    ax.set_title("Gate: " + ("BLESSED" if blessing["blessed"] else "NOT BLESSED"))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "gate.png", dpi=100)
    plt.close(fig)


@timed
def export(params: Params, paths: Paths) -> dict:
    """ONNX bundle of a blessed candidate, parity-checked against torch on held test rows."""
    from flows.gate import require_blessed
    from models.export import export_onnx

    require_blessed(paths.gate / "blessing.json")
    (test,) = _splits(paths, "test")
    onnx_path = export_onnx(paths.model, paths.bundle, test.head(512), params.export)
    meta = json.loads((paths.bundle / "bundle.json").read_text())
    return {"onnx": str(onnx_path), "parity_max_diff": meta.get("parity_max_diff"), "exporter": meta.get("exporter")}


@timed
def promote(params: Params, paths: Paths) -> dict:
    """Move the champion pointer to a new version holding the bundle and its records."""
    from flows.gate import require_blessed
    from flows.params import REPO_ROOT
    from flows.registry import Registry, git_commit

    blessing = require_blessed(paths.gate / "blessing.json")
    bundle_meta = json.loads((paths.bundle / "bundle.json").read_text())
    manifest = json.loads((paths.training_set / "manifest.json").read_text())
    params_file = paths.root / "params.used.yaml"
    params_file.write_text(_params_yaml(params))
    release = {"model": bundle_meta["model"], "data_hash": manifest["data_hash"], "git_commit": git_commit(REPO_ROOT),
               "onnx_sha256": bundle_meta["onnx_sha256"], "champion_before": blessing.get("champion_version")}
    records = {"metrics.json": paths.evaluation / "metrics.json", "blessing.json": paths.gate / "blessing.json",
               "manifest.json": paths.training_set / "manifest.json", "params.yaml": params_file}
    ptr = Registry(paths.registry).promote(paths.bundle, records, release, verify=_verify_bundle(paths))
    return {"champion": ptr["version"], "path": ptr["path"], "previous": ptr.get("previous")}


def _params_yaml(params: Params) -> str:
    import yaml

    return yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)


def _verify_bundle(paths: Paths):
    """A promotion check: the copied bundle loads (sha256 verified) and scores test rows to finite values."""

    def verify(version_dir: Path) -> None:
        import numpy as np

        from models.export import OnnxScorer

        (test,) = _splits(paths, "test")
        preds = OnnxScorer(version_dir).predict(test.head(256))
        if not np.isfinite(preds.drop(columns="impression_id").to_numpy()).all():
            raise RuntimeError(f"bundle in {version_dir} scores non-finite values")

    return verify


@timed
def rollback(params: Params, paths: Paths, to: str | None = None) -> dict:
    from flows.registry import Registry

    ptr = Registry(paths.registry).rollback(to)
    return {"champion": ptr["version"], "previous": ptr["previous"]}


@timed
def predict(params: Params, paths: Paths, input_dir: Path, output: Path) -> dict:
    """Point-in-time features from Feast for the given impressions, scored by the champion (onnxruntime)."""
    import os

    import pandas as pd

    from features.contract import ContractError
    from features.training_set import point_in_time_features
    from flows.registry import Registry
    from models.export import OnnxScorer

    champ = Registry(paths.registry).champion_dir()
    if champ is None:
        raise RuntimeError(f"no champion in {paths.registry}: run the pipeline first")
    path = input_dir / "impressions.parquet" if (input_dir / "impressions.parquet").exists() else input_dir
    imps = pd.read_parquet(path)
    for col in ("impression_id", "user_id", "item_id", "event_timestamp"):
        if col not in imps.columns:
            raise ContractError(str(path), col, "required column is missing")
    # Labels are not needed to score; `<view>__<feature>` columns would clash with Feast's own.
    imps = imps.drop(columns=[c for c in imps.columns if c in params.task_graph.names or "__" in c])
    feats = point_in_time_features(paths.root, imps, params.features)
    preds = OnnxScorer(champ).predict(feats)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    preds.to_parquet(tmp, index=False)
    os.replace(tmp, output)
    return {"rows": len(preds), "champion": champ.name, "output": str(output), "columns": list(preds.columns)}
