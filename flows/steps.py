"""The pipeline's steps: one function each, called by the CLI (hence by DVC stages) and by the Prefect flow.

Every step reads ``params.yaml`` sections through ``Params`` and its inputs from ``Paths``, writes its
outputs atomically (models/atomic.py), and returns a small JSON-able summary (what it wrote, counts,
timings). A step whose input is missing (run out of order) raises ``MissingInput`` naming the command
that writes it (flows/stages.py reads that from dvc.yaml).
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Concatenate, ParamSpec

from flows import stages
from flows.params import Params, Paths
from models.atomic import atomic_file, clean_stale, write_json, write_text

if TYPE_CHECKING:
    import pandas as pd

    from features.store import FeastPaths
    from flows.registry import Registry
    from models.train import TrainResult

log = logging.getLogger("funnelflow")
P = ParamSpec("P")


def timed(fn: Callable[Concatenate[Params, Paths, P], dict | None]) -> Callable[Concatenate[Params, Paths, P], dict]:
    """The step wrapper: remove what a crashed run left in the data dir, log the step's start and end,
    and add ``seconds`` to its summary."""

    @wraps(fn)
    def wrapper(params: Params, paths: Paths, *args: P.args, **kwargs: P.kwargs) -> dict:
        clean_stale(paths.root)
        t0 = time.perf_counter()
        log.info("step %s: start", fn.__name__)
        out = fn(params, paths, *args, **kwargs) or {}
        out["seconds"] = round(time.perf_counter() - t0, 3)
        log.info("step %s: done in %.1fs", fn.__name__, out["seconds"])
        return out

    return wrapper


@timed
def generate(params: Params, paths: Paths, out: Path | None = None, oracle_out: Path | None = None) -> dict:
    """Synthetic funnel data as day partitions (only the days that have "arrived": ``land_days``); the
    oracle of the landed impressions goes to a separate file."""
    import pandas as pd

    from features.contract import FunnelDataset, write_partitioned
    from features.generate import generate as gen

    g = params.generate
    data = gen(rows=g.rows, days=g.days, seed=g.seed, users=g.users, items=g.items, start=g.start,
               drift_from_day=g.drift_from_day)
    end = pd.Timestamp(g.start, tz="UTC") + pd.Timedelta(days=g.land_days or g.days)
    landed = FunnelDataset(*(df[df["event_timestamp"] < end] for df in (data.impressions, data.users, data.items)))
    out = Path(out or paths.generated)
    summary = write_partitioned(landed, out, extra={"generator": g.model_dump()})
    oracle_out = Path(oracle_out or paths.oracle)
    with atomic_file(oracle_out) as tmp:
        data.oracle[data.oracle["impression_id"].isin(landed.impressions["impression_id"])].to_parquet(tmp, index=False)
    return {"out": str(out), "oracle": str(oracle_out), **summary}


@timed
def ingest(params: Params, paths: Paths, source: Path | None = None, fmt: str | None = None,
           new_lineage: str | None = None) -> dict:
    """Add a dataset's day partitions to the raw store, each checked against the contract: unchanged days
    kept, changed days replaced, bad days quarantined (``PartitionsQuarantined`` after the good ones are
    stored). ``new_lineage`` (a reason) empties the store first and starts a new lineage."""
    from features.contract import ingest as ingest_dataset

    fmt = fmt or params.data.format
    if source is None:
        source = paths.generated if params.data.source == "generate" else Path(params.data.source)
    if fmt != "funnel":
        from features.adapters import convert  # public-dataset layouts -> the contract

        return convert(fmt, Path(source), paths.raw, params.task_graph, quarantine_dir=paths.quarantine,
                       new_lineage=new_lineage)
    return ingest_dataset(source, paths.raw, params.task_graph, paths.quarantine, new_lineage,
                          label=str(Path(source).resolve()))


def source_plan(params: Params, paths: Paths, source: str | None) -> tuple[bool, Path | None]:
    """What a run lands before it trains: (generate first?, the folder to ingest, or None for none).

    ``--source DIR`` always ingests DIR, and a configured ``data.source`` folder is ingested. With
    ``data.source: generate`` the generator's days are made and ingested, unless the raw store holds days
    of another source (a user's ``funnelflow ingest DIR``): then the run trains on the raw store as it is.
    """
    from features.contract import raw_manifest

    if source is not None:
        return False, Path(source)
    if params.data.source != "generate":
        return False, Path(params.data.source)
    stored = {p["source"] for p in raw_manifest(paths.raw)["partitions"].values()}
    others = sorted(stored - {str(paths.generated.resolve())})
    if others:
        log.info("using the raw store from %s as it is (pass --source to add new data)", ", ".join(others))
        return False, None
    return True, paths.generated


@timed
def build_features(params: Params, paths: Paths) -> dict:
    """Every registered feature view's table (the Feast feature views' sources), updated for the raw
    days added or replaced since the last build (all of them the first time)."""
    from features.engineering import build_feature_tables
    from features.views import VIEWS

    meta = build_feature_tables(paths.raw, paths.features, params.task_graph, params.features, VIEWS)
    return {"rows": meta.rows, "days": list(meta.days), "update": meta.update.model_dump()}


def _feast(params: Params, paths: Paths) -> FeastPaths:
    """The data dir's Feast store, with the online store and the offline engine that params.yaml
    ``features.online_store`` and ``features.offline_store`` pick."""
    from features.store import FeastPaths

    return FeastPaths(paths.feast, paths.features, params.features.online_store, params.features.offline_store)


@timed
def features_apply(params: Params, paths: Paths) -> dict:
    """Register the entities, feature views and feature service of the view registry in Feast."""
    from features import store
    from features.views import VIEWS

    summary = {"applied": store.apply(_feast(params, paths), params.features.feature_service, VIEWS)}
    write_json(paths.feast / "applied.json", summary)
    return summary


@timed
def features_materialize(params: Params, paths: Paths) -> dict:
    """Load the latest feature values into Feast's online store: only the new days once loaded."""
    from features import store

    summary = store.materialize(_feast(params, paths))
    write_json(paths.feast / "materialized.json", summary)
    return summary


@timed
def training_set(params: Params, paths: Paths) -> dict:
    """Point-in-time features on every impression of the window, filled, split by time, with a
    manifest; days joined before are reused from the retrieval cache."""
    from features.training_set import build_training_set

    manifest = build_training_set(_feast(params, paths), paths.raw, paths.training_set,
                                  params.task_graph, params.features, params.split, cache_dir=paths.retrieved)
    return {"splits": {k: v["rows"] for k, v in manifest["splits"].items()}, "data_hash": manifest["data_hash"],
            "days": manifest["days"], "retrieval": {k: len(v) for k, v in manifest["retrieval"].items()}}


@timed
def validate(params: Params, paths: Paths, raise_on_failure: bool = True, accept_drift: str | None = None) -> dict:
    """Validate the training set with the GX suite; summary and Data Docs under the validation dir.
    ``accept_drift`` (a reason): a failure on drift alone is accepted and logged, and the set becomes the
    drift reference."""
    from features.validation import validate_training_set

    report = validate_training_set(paths.training_set, paths.validation, params.task_graph, params.validation,
                                   raise_on_failure=raise_on_failure, accept_drift=accept_drift)
    # The outcome as DVC metrics (git-tracked); the summary and Data Docs stay in the ignored data dir.
    write_json(paths.reports / "validation" / "metrics.json",
               {"success": int(report.success), "evaluated": report.evaluated, "failed": len(report.failed)})
    return {"success": report.success, "evaluated": report.evaluated, "failed": len(report.failed),
            "drifted": report.drifted, "accepted_drift": report.accepted_drift,
            "summary": str(paths.validation / "summary.md"), "docs": report.docs_index,
            "markdown": report.to_markdown()}


def _splits(paths: Paths, *names: str) -> list[pd.DataFrame]:
    from features.training_set import load_split

    return [load_split(paths.training_set, n) for n in names]


@timed
def train(params: Params, paths: Paths, resume: bool = False, progress: bool = True) -> dict:
    """Train the configured model; best epoch chosen on the validation split only. With ``train.nproc``
    > 1, that many DDP processes under torchrun, each reading its shard of the splits (the summary's
    ``ranks`` says which row groups); the model dir gets the same files either way."""
    ranks: list[dict] = []
    if params.train.nproc > 1:
        res, ranks = _train_distributed(params, paths, resume, progress)
    else:
        from models.train import train_model

        train_df, valid_df = _splits(paths, "train", "validation")
        res = train_model(train_df, valid_df, params.task_graph, params.model, params.train, paths.model,
                          resume=resume, progress=progress)
    summary = {"model": params.model.name, "best_epoch": res.best_epoch, "best_score": res.best_score,
               "valid": res.valid_metrics, "train_seconds": res.train_seconds,
               "samples_per_sec": res.samples_per_sec, "nproc": params.train.nproc}
    if ranks:
        summary["ranks"] = ranks
    write_json(paths.model / "train_summary.json", summary)
    return summary


def _train_distributed(params: Params, paths: Paths, resume: bool, progress: bool) -> tuple[TrainResult, list[dict]]:
    """``train.nproc`` torchrun workers (models/distributed.py); too few row groups is a params error."""
    from features.contract import require_input
    from flows.params import ParamsError
    from models.distributed import TooFewRowGroups, launch

    train_file, valid_file = (require_input(paths.training_set / f"{s}.parquet", "training-set")
                              for s in ("train", "validation"))
    try:
        return launch(train_file, valid_file, params.task_graph, params.model, params.train, paths.model,
                      params.train.nproc, resume=resume, progress=progress)
    except TooFewRowGroups as exc:
        raise ParamsError(f"params.yaml: train.nproc: {exc}") from None


def _oracle(paths: Paths, ids: pd.Series) -> pd.DataFrame | None:
    """The generator's true probabilities for these impressions, when the data came from it."""
    import pandas as pd

    if not paths.oracle.exists():
        return None
    oracle = pd.read_parquet(paths.oracle)
    return oracle if pd.Index(ids).isin(oracle["impression_id"]).all() else None


EVALUATED = "evaluated.json"  # beside the test metrics: the hashes of what they were measured on


def _model_file(paths: Paths) -> Path:
    from models.train import MODEL_FILE

    return paths.model / MODEL_FILE


@timed
def evaluate(params: Params, paths: Paths) -> dict:
    """Test metrics of the candidate per task, and its ROC/calibration plots; nothing about the champion."""
    from models.metrics import evaluate_predictions
    from models.plots import write_eval_plots
    from models.train import predict_frame

    stages.require(paths, _model_file(paths))
    (test,) = _splits(paths, "test")
    tasks = params.task_graph
    preds = predict_frame(paths.model, test)
    metrics = evaluate_predictions(test, preds, tasks, _oracle(paths, test["impression_id"]))
    write_json(paths.evaluation / "metrics.json", metrics)
    write_json(paths.evaluation / EVALUATED, _candidate(params, paths))  # which model the metrics are of
    plots = write_eval_plots(test, preds, tasks, paths.evaluation / "plots")
    return {"metrics": metrics, "plots": [str(p) for p in plots]}


@timed
def score_champion(params: Params, paths: Paths) -> dict:
    """The champion the candidate must beat, scored on the candidate's test rows (onnxruntime).

    Writes ``{"version", "metrics"}`` to the champion dir; version None (no metrics) before the first
    promotion. Once this very model is the champion, the one to beat stays the champion it was judged
    against, so a rerun after its promotion decides the same (and a no-op ``dvc repro`` stops here).
    """
    from flows.registry import Registry
    from models.digest import sha256_file

    model = _model_file(paths)
    stages.require(paths, model)
    registry = Registry(paths.registry)
    version = _champion_to_beat(registry, sha256_file(model))
    metrics = {} if version is None else _score(registry.verify(version), paths, params)
    record = {"version": version, "metrics": metrics}
    write_json(paths.champion / "champion.json", record)
    return record


def _champion_to_beat(registry: Registry, model_sha256: str) -> str | None:
    ptr = registry.champion()
    if ptr is None:
        return None
    release = registry.release(ptr["version"])
    return release.get("champion_before") if release.get("model_sha256") == model_sha256 else ptr["version"]


def _score(version_dir: Path, paths: Paths, params: Params) -> dict:
    """A (verified) version's metrics on the candidate's test rows; its recorded metrics if its bundle
    can't read them. A bundle failing its checksums is an error, never a fallback."""
    from models.export import OnnxScorer
    from models.metrics import evaluate_predictions

    (test,) = _splits(paths, "test")
    scorer = OnnxScorer(version_dir)
    try:
        preds = scorer.predict(test)
    except Exception as exc:  # e.g. the feature schema changed since the champion was trained
        log.warning("champion %s cannot score the current test set (%s); using its recorded metrics",
                    version_dir.name, exc)
        return json.loads((version_dir / "metrics.json").read_text())
    return evaluate_predictions(test, preds, params.task_graph)


@timed
def gate(params: Params, paths: Paths) -> dict:
    """Decide from the candidate's metrics and the champion's record; write the decision either way;
    raise GateFailed when not blessed."""
    from flows.gate import decide, not_blessed, to_markdown, write_blessing
    from flows.registry import Registry

    metrics_file, champion_file = paths.evaluation / "metrics.json", paths.champion / "champion.json"
    stages.require(paths, metrics_file, paths.evaluation / EVALUATED, champion_file)
    champion = json.loads(champion_file.read_text())
    version = champion["version"]
    candidate = _candidate(params, paths)
    _require_evaluated(paths.evaluation / EVALUATED, candidate)
    _require_scored(champion_file, version, _champion_to_beat(Registry(paths.registry), candidate["model_sha256"]))
    blessing = decide(json.loads(metrics_file.read_text()), champion["metrics"] if version else None,
                      params.gate, version, candidate)
    decision = to_markdown(blessing)
    write_blessing(blessing, paths.gate / "blessing.json")
    write_text(paths.gate / "blessing.md", decision)
    _write_gate_metrics(blessing, paths.reports / "gate" / "gate.json")
    _write_gate_plot(blessing, paths.reports / "gate" / "gate_checks.csv", paths.gate / "gate.png")
    if not blessing["blessed"]:
        raise not_blessed(blessing, paths.gate / "blessing.md")
    return {"blessed": True, "champion": version, "checks": len(blessing["checks"]), "decision": decision}


def _candidate(params: Params, paths: Paths) -> dict[str, str]:
    """What a blessing binds, from what is on disk now: model.pt's sha256, the training set's data hash
    and the params hash (flows.gate.CANDIDATE_KEYS)."""
    from flows.params import params_hash
    from models.digest import sha256_file

    manifest = paths.training_set / "manifest.json"
    stages.require(paths, _model_file(paths), manifest)
    return {"model_sha256": sha256_file(_model_file(paths)),
            "data_hash": json.loads(manifest.read_text())["data_hash"], "params_sha256": params_hash(params)}


def _require_evaluated(record: Path, candidate: dict[str, str]) -> None:
    """The metrics must be of the model, data and params on disk now: a model retrained since
    ``evaluate`` would otherwise be blessed on its predecessor's metrics."""
    from flows.gate import CustodyError

    if json.loads(record.read_text()) != candidate:
        raise CustodyError(f"{record}: the test metrics are not of the model, training set and params on disk now"
                           " (changed since `funnelflow evaluate`): run `funnelflow evaluate`, then `funnelflow gate`")


def _require_scored(record: Path, scored: str | None, to_beat: str | None) -> None:
    """The champion's metrics must be of the registry's champion now: one promoted or rolled back since
    ``score-champion`` would otherwise be judged on another version's record."""
    from flows.gate import CustodyError

    if scored != to_beat:
        raise CustodyError(f"{record}: scored champion {scored or 'none'}, but the registry's champion to beat is "
                           f"{to_beat or 'none'} (changed since `funnelflow score-champion`): run `funnelflow "
                           "score-champion`, then `funnelflow gate`")


def _write_gate_metrics(blessing: dict, path: Path) -> None:
    """The decision as DVC metrics: ``blessed`` 0/1 and each check's value and verdict, so that
    ``dvc exp show`` and ``dvc metrics diff`` show why a candidate was refused."""
    checks = {f"{c['kind']}:{c['metric']}": {"value": c["value"], "passed": int(c["passed"])}
              for c in blessing["checks"]}
    write_json(path, {"blessed": int(blessing["blessed"]), "failed": sum(not c["passed"] for c in blessing["checks"]),
                      "checks": checks})


def _write_gate_plot(blessing: dict, csv: Path, png: Path) -> None:
    """The gate table as a DVC-plottable CSV and a PNG (value vs bound per check); both written even
    with no checks, as the DVC stage declares them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    rows = pd.DataFrame(blessing["checks"], columns=["kind", "metric", "rule", "value", "bound", "baseline", "passed"])
    rows["check"] = rows["kind"] + ":" + rows["metric"]
    with atomic_file(csv) as tmp:
        rows[["check", "value", "bound", "baseline", "passed"]].to_csv(tmp, index=False)
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * max(len(rows), 1)))
    y = range(len(rows))
    colors = ["tab:green" if p else "tab:red" for p in rows["passed"]]
    ax.scatter(rows["value"], y, c=colors, label="candidate", zorder=3)
    ax.scatter(rows["bound"], y, marker="|", s=300, c="black", label="bound")
    ax.set_yticks(list(y), list(rows["check"] + " " + rows["rule"]))
    ax.set_title("Gate: " + ("BLESSED" if blessing["blessed"] else "NOT BLESSED"))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_file(png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


@timed
def export(params: Params, paths: Paths) -> dict:
    """ONNX bundle of a blessed candidate, parity-checked against torch on held test rows."""
    from flows.gate import require_blessed
    from models.export import export_onnx

    stages.require(paths, paths.gate / "blessing.json", _model_file(paths))
    require_blessed(paths.gate / "blessing.json", _candidate(params, paths))
    (test,) = _splits(paths, "test")
    onnx_path = export_onnx(paths.model, paths.bundle, test.head(512), params.export)
    meta = json.loads((paths.bundle / "bundle.json").read_text())
    return {"onnx": str(onnx_path), "parity_max_diff": meta.get("parity_max_diff"), "exporter": meta.get("exporter")}


@timed
def promote(params: Params, paths: Paths) -> dict:
    """Move the champion pointer to a new version holding the bundle and its records, if the blessing,
    the bundle and what is on disk are one candidate; a candidate whose model is the champion's is not
    promoted again (``promoted`` False)."""
    from flows.gate import require_blessed
    from flows.params import REPO_ROOT
    from flows.registry import Registry, git_commit

    records = {"metrics.json": paths.evaluation / "metrics.json", "blessing.json": paths.gate / "blessing.json",
               "manifest.json": paths.training_set / "manifest.json"}
    stages.require(paths, records["blessing.json"], paths.bundle / "bundle.json", _model_file(paths),
                   *records.values())
    blessing = require_blessed(records["blessing.json"], _candidate(params, paths))
    bundle_meta = _blessed_bundle(paths, blessing["candidate"]["model_sha256"])
    records["params.yaml"] = paths.root / "params.used.yaml"
    write_text(records["params.yaml"], _params_yaml(params))
    release = {"model": bundle_meta["model"], "git_commit": git_commit(REPO_ROOT),
               "onnx_sha256": bundle_meta["files"]["model.onnx"], **blessing["candidate"],
               "champion_before": blessing.get("champion_version")}
    ptr = Registry(paths.registry).promote(paths.bundle, records, release, verify=_verify_bundle(paths))
    return {"champion": ptr["version"], "path": ptr["path"], "previous": ptr.get("previous"),
            "promoted": ptr["promoted"]}


def _blessed_bundle(paths: Paths, model_sha256: str) -> dict:
    """bundle.json of the exported bundle, if its files are intact and it was exported from the blessed model."""
    from flows.gate import CustodyError
    from models.export import BundleError, read_bundle

    try:
        meta = read_bundle(paths.bundle)
    except BundleError as exc:
        raise CustodyError(f"{exc} (`funnelflow export`)") from None
    if meta["model_sha256"] != model_sha256:
        raise CustodyError(f"{paths.bundle} was exported from model {meta['model_sha256'][:12]}, not the blessed "
                           f"{model_sha256[:12]} (a failed or skipped export?): run `funnelflow export` again")
    return meta


def _params_yaml(params: Params) -> str:
    import yaml

    return yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)


def _verify_bundle(paths: Paths) -> Callable[[Path], None]:
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
    """Point the champion back at ``to`` (default: the version before the current one)."""
    from flows.registry import Registry

    ptr = Registry(paths.registry).rollback(to)
    return {"champion": ptr["version"], "previous": ptr["previous"]}


@timed
def compare(params: Params, paths: Paths, models: list[str] | None = None, losses: list[str] | None = None,
            epochs: int | None = None, out: Path | None = None) -> dict:
    """Every model (with each applicable loss) trained on the current training set with the same seed:
    per-task test metrics, oracle gaps, training time and samples/s, as compare.csv and compare.md."""
    from models.compare import compare_models

    train_cfg = params.train if epochs is None else params.train.model_copy(update={"epochs": epochs})
    tr, va, te = _splits(paths, "train", "validation", "test")
    table = compare_models(tr, va, te, params.task_graph, params.model, train_cfg,
                           oracle_df=_oracle(paths, te["impression_id"]), models=models, losses=losses, progress=True)
    out = out or paths.root / "compare"
    with atomic_file(out / "compare.csv") as tmp:
        table.to_csv(tmp, index=False)
    md = table.to_markdown(index=False, floatfmt=".4f")
    write_text(out / "compare.md", md)
    return {"table": md, "csv": str(out / "compare.csv"), "markdown": str(out / "compare.md")}


@timed
def tune(params: Params, paths: Paths, out: Path, run_trial: Callable[..., dict] | None = None) -> dict:
    """An Optuna search of params.yaml ``tune.space`` for the configured model (flows/tune.py): trials
    trained on the train split, scored and pruned on validation (the test split is never read), the study
    in <data>/tune continued while the training set and space are unchanged; its best values to ``out``
    (tuned.yaml). ``params`` must be params.yaml's own (``load_params(tuned=False)``); ``run_trial``: how a
    trial runs (the Prefect flow's task; default in this process)."""
    from flows import tune as tuning

    manifest = paths.training_set / "manifest.json"
    stages.require(paths, manifest)
    train_df, valid_df = _splits(paths, "train", "validation")
    return tuning.tune(params, train_df, valid_df, json.loads(manifest.read_text())["data_hash"], paths.tune, out,
                       run_trial or tuning.run_trial)


@timed
def predict(params: Params, paths: Paths, input_dir: Path, output: Path) -> dict:
    """Point-in-time features from Feast for the given impressions, scored by the champion (onnxruntime).

    The input is checked with the contract's impressions rules (labels not needed) and must hold the
    context columns the champion reads; the output must be a new file path, not the input.
    """
    from features.contract import ContractError, check_scoring_input, read_table
    from features.training_set import point_in_time_features
    from flows.registry import Registry, RegistryError
    from models.export import OnnxScorer

    path = input_dir / "impressions.parquet" if input_dir.is_dir() else input_dir
    if output.is_dir() or output.resolve() == path.resolve():
        raise ContractError(str(output), "-", "--output must be a Parquet file path, not a folder or the input file: "
                                              "name another file")
    champ = Registry(paths.registry).champion_dir()
    if champ is None:
        raise RegistryError(f"no champion in {paths.registry}: run `funnelflow run` (or `dvc repro`) first")
    scorer = OnnxScorer(champ)
    cols = scorer.preprocessor.columns
    imps = check_scoring_input(read_table(path), str(path), [c for c in cols.categorical if "__" not in c],
                               [c for c in cols.numeric if "__" not in c])
    feats = point_in_time_features(_feast(params, paths), imps, params.features)
    preds = scorer.predict(feats)
    with atomic_file(output) as tmp:
        preds.to_parquet(tmp, index=False)
    return {"rows": len(preds), "champion": champ.name, "output": str(output), "columns": list(preds.columns)}
