"""The Prefect flow: the same step functions as the DVC stages, run as tasks.

- Retries on the I/O steps (ingest, Feast apply/materialize/retrieval), never on bad input.
- Results keyed on data and params versions: a task's cache key hashes its DVC stage's params
  sections and the content fingerprints of its deps (dvc.yaml is the one list of what a step reads);
  a cached step whose outputs have gone missing is re-run.
- Artifacts: the validation summary, the metrics table, and the gate decision.
"""
from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from flows import steps
from flows.params import REPO_ROOT, Params, Paths, load_params

DATA_PREFIX = "data/"


@lru_cache(maxsize=1)
def dvc_stages() -> dict:
    return yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


def _names(entries: list) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries]


def _resolve(rel: str, paths: Paths) -> Path:
    """dvc.yaml paths are repo-relative with data under data/; map them onto this run's data dir."""
    return paths.root / rel[len(DATA_PREFIX):] if rel.startswith(DATA_PREFIX) else REPO_ROOT / rel


def _fingerprint(path: Path) -> str:
    """Size and mtime of every file under ``path`` (cheap; any rewrite changes it)."""
    if not path.exists():
        return "missing"
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path.parent)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def cache_key(stage: str, params: Params, paths: Paths) -> str:
    spec = dvc_stages()[stage]
    h = hashlib.sha256(stage.encode())
    dumped = params.model_dump(mode="json")
    for section in spec.get("params", []):
        h.update(json.dumps(dumped.get(section), sort_keys=True).encode())
    for dep in _names(spec.get("deps", [])):
        h.update(_fingerprint(_resolve(dep, paths)).encode())
    h.update(str(paths.root).encode())
    return h.hexdigest()


def outputs_present(stage: str, paths: Paths) -> bool:
    spec = dvc_stages()[stage]
    outs = _names(spec.get("outs", [])) + _names(spec.get("metrics", []))
    return all(_resolve(o, paths).exists() for o in outs)


def _no_retry_on_bad_input(task, task_run, state) -> bool:
    from features.contract import ContractError
    from features.validation import ValidationFailed
    from flows.gate import GateFailed

    try:
        state.result()
    except (ContractError, ValidationFailed, GateFailed):
        return False
    except Exception:
        return True
    return True


def _step_task(fn, stage: str, retries: int = 0, cached: bool = True):
    """A Prefect task around one step function; cached steps are keyed on their stage's inputs."""
    opts = dict(name=stage, retries=retries, retry_delay_seconds=2, retry_condition_fn=_no_retry_on_bad_input)
    if cached:
        opts.update(cache_key_fn=lambda ctx, p: cache_key(stage, p["params"], p["paths"]), persist_result=True)
    else:
        opts.update(cache_policy=NONE)
    return task(**opts)(fn)


T = {
    "generate": _step_task(steps.generate, "generate"),
    "ingest": _step_task(steps.ingest, "ingest", retries=2),
    "features": _step_task(steps.build_features, "features"),
    "features_apply": _step_task(steps.features_apply, "features_apply", retries=2),
    "materialize": _step_task(steps.features_materialize, "materialize", retries=2),
    "training_set": _step_task(steps.training_set, "training_set", retries=2),
    "validate": _step_task(steps.validate, "validate"),
    "train": _step_task(steps.train, "train"),
    # Evaluation re-scores the champion, which lives outside the stage's deps: never cached.
    "evaluate": _step_task(steps.evaluate, "evaluate", cached=False),
    "gate": _step_task(steps.gate, "gate", cached=False),
    "export": _step_task(steps.export, "export", cached=False),
    "promote": _step_task(steps.promote, "promote", cached=False),
}


def _call(stage: str, params: Params, paths: Paths, **kwargs):
    t = T[stage]
    if t.cache_key_fn is not None and not outputs_present(stage, paths):
        t = t.with_options(refresh_cache=True)
    return t(params=params, paths=paths, **kwargs)


def _publish_validation(paths: Paths) -> None:
    summary = paths.validation / "summary.md"
    if summary.exists():
        create_markdown_artifact(summary.read_text(), key="validation-summary",
                                 description=f"Great Expectations; Data Docs: {paths.validation / 'data_docs/index.html'}")


def _publish_metrics(paths: Paths) -> None:
    metrics = json.loads((paths.evaluation / "metrics.json").read_text())
    champ = json.loads((paths.evaluation / "champion_metrics.json").read_text())
    rows = [{"metric": k, "candidate": round(v, 6),
             "champion": None if champ.get(k) is None else round(champ[k], 6)} for k, v in metrics.items()]
    create_table_artifact(rows, key="test-metrics", description="Per-task test metrics, candidate vs champion")


def _publish_gate(paths: Paths) -> None:
    md = paths.gate / "blessing.md"
    if md.exists():
        create_markdown_artifact(md.read_text(), key="gate-decision", description="Promotion gate decision")


@flow(name="funnelflow-retrain", log_prints=True)
def retrain(params_path: str | None = None, data_dir: str | None = None, source: str | None = None) -> dict:
    """ingest (or generate) -> features apply + materialize -> training set -> validate -> train ->
    evaluate -> gate -> export -> promote. Fails (with the record as reason) on bad data or a failed gate."""
    logger = get_run_logger()
    params = load_params(params_path)
    paths = Paths(Path(data_dir).resolve()) if data_dir else Paths.default()
    os.environ["FUNNELFLOW_DATA_DIR"] = str(paths.root)
    out: dict = {}
    if source is None and params.data.source == "generate":
        out["generate"] = _call("generate", params, paths)
    out["ingest"] = _call("ingest", params, paths, source=Path(source) if source else None)
    for stage in ("features", "features_apply", "materialize", "training_set"):
        out[stage] = _call(stage, params, paths)
    try:
        out["validate"] = _call("validate", params, paths)
    finally:
        _publish_validation(paths)
    out["train"] = _call("train", params, paths, progress=False)
    out["evaluate"] = _call("evaluate", params, paths)
    _publish_metrics(paths)
    try:
        out["gate"] = _call("gate", params, paths)
    finally:
        _publish_gate(paths)
    out["export"] = _call("export", params, paths)
    out["promote"] = _call("promote", params, paths)
    logger.info("champion %s at %s", out["promote"]["champion"], out["promote"]["path"])
    return {"champion": out["promote"]["champion"], "champion_path": out["promote"]["path"],
            "metrics": str(paths.evaluation / "metrics.json"), "gate": str(paths.gate / "blessing.md"),
            "data_docs": str(paths.validation / "data_docs" / "index.html"),
            "steps": {k: v.get("seconds") for k, v in out.items()}}
