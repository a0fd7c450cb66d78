"""The Prefect flow: the same step functions as the DVC stages, run as tasks.

- Retries on the I/O steps (ingest, Feast apply/materialize/retrieval), never on bad input.
- Results keyed on data and params versions: a task's cache key hashes its DVC stage's params
  sections, the CONTENT of each of its deps (dvc.yaml is the one list of what a step reads) and the
  folder it ingests (path and content); a cached step whose outputs have gone missing is re-run.
  score_champion, gate, export and promote are never cached: the champion they depend on lives outside
  any deps.
- Artifacts, from the steps' return values: the validation summary, the metrics table (candidate vs
  champion), and the gate decision.
- The steps' own log lines (``funnelflow`` logger: steps, epochs) go to the run's logs.
- Operations (flows/notify.py): a failed or refused run notifies the block params.yaml ``notify.block``
  names; a promotion emits ``funnelflow.model.promoted``, a refusal ``funnelflow.model.refused``.
- Typed parameters, editable in the Prefect UI: ``source`` (a landing folder of day partitions) and
  ``overrides`` of the model, training and gate sections (flows/overrides.py).
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from prefect.logging.handlers import APILogHandler

from features.validation import ValidationFailed
from flows import stages, steps
from flows.console import EXPECTED, quiet
from flows.gate import GateFailed
from flows.lock import data_dir_lock
from flows.notify import emit_promoted, emit_refused, notify_failure
from flows.overrides import Overrides, apply_overrides
from flows.params import TUNED_FILE, Params, Paths, load_params, params_file


def _fingerprint(path: Path) -> str:
    """The name and sha256 of every file under ``path``: the same bytes rewritten keep the key, other
    bytes of the same size and mtime change it. Bytecode caches are skipped: they appear when a module is
    first imported (often inside a step, after its key was taken) and derive from the sources anyway."""
    from models.digest import sha256_file

    if not path.exists():
        return "missing"
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(path.parent)}:{sha256_file(f)}\n".encode())
    return h.hexdigest()


def cache_key(stage: str, params: Params, paths: Paths, source: Path | None = None) -> str:
    """A stage's inputs as one key: its params sections, its deps' contents, the data dir and, for
    ingest, the folder it lands (``source``: path and content)."""
    h = hashlib.sha256(stage.encode())
    dumped = params.model_dump(mode="json")
    for entry in stages.stages()[stage].get("params", []):
        if isinstance(entry, str):  # another params file ({tuned.yaml: null}) is merged into ``params`` already
            section, _, key = entry.partition(".")
            value = dumped.get(section)
            h.update(json.dumps(value.get(key) if key and isinstance(value, dict) else value, sort_keys=True).encode())
    for dep in stages.deps(stage):
        h.update(_fingerprint(stages.resolve(dep, paths)).encode())
    h.update(str(paths.root).encode())
    if source is not None:
        h.update(f"source={Path(source).resolve()}:{_fingerprint(Path(source))}".encode())
    return h.hexdigest()


def outputs_present(stage: str, paths: Paths) -> bool:
    """Whether everything the stage writes is still there (else its cached result is stale)."""
    return all(stages.resolve(o, paths).exists() for o in stages.outs(stage))


def _no_retry_on_bad_input(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except EXPECTED:
        return False
    except Exception:
        return True
    return True


def _step_task(fn: Callable[..., dict], stage: str, retries: int = 0, cached: bool = True) -> Any:
    """A Prefect task around one step function; cached steps are keyed on their stage's inputs."""
    opts: dict[str, Any] = dict(name=stage, retries=retries, retry_delay_seconds=2,
                                retry_condition_fn=_no_retry_on_bad_input)
    if cached:
        # JSON, not Prefect's default pickle: reading a cached result back must not be able to run code.
        opts.update(cache_key_fn=lambda ctx, p: cache_key(stage, p["params"], p["paths"], p.get("source")),
                    persist_result=True, result_serializer="json")
    else:
        opts.update(cache_policy=NONE)
    return task(**opts)(fn)


T = {
    "generate": _step_task(steps.generate, "generate"),
    "ingest": _step_task(steps.ingest, "ingest", retries=2),
    "features": _step_task(steps.build_features, "features"),
    "features_apply": _step_task(steps.features_apply, "features_apply", retries=2),
    # Not cached: what the online store holds is checked by materialize itself (a restarted Redis is
    # empty though no input changed); with nothing new it loads nothing.
    "materialize": _step_task(steps.features_materialize, "materialize", retries=2, cached=False),
    "training_set": _step_task(steps.training_set, "training_set", retries=2),
    "validate": _step_task(steps.validate, "validate"),
    "train": _step_task(steps.train, "train"),
    "evaluate": _step_task(steps.evaluate, "evaluate"),
    "score_champion": _step_task(steps.score_champion, "score_champion", cached=False),
    "gate": _step_task(steps.gate, "gate", cached=False),
    "export": _step_task(steps.export, "export", cached=False),
    "promote": _step_task(steps.promote, "promote", cached=False),
}


def _call(stage: str, params: Params, paths: Paths, **kwargs: Any) -> dict:
    t = T[stage]
    if t.cache_key_fn is not None and not outputs_present(stage, paths):
        t = t.with_options(refresh_cache=True)
    return t(params=params, paths=paths, **kwargs)


@contextmanager
def _step_logs_to_run() -> Iterator[None]:
    """Send the ``funnelflow`` logger's INFO lines (steps, epochs) to the run's logs while the flow runs."""
    logger, handler = logging.getLogger("funnelflow"), APILogHandler()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _publish_metrics(candidate: dict[str, float], champion: dict) -> None:
    base = champion["metrics"]
    rows = [{"metric": k, "candidate": round(v, 6), "champion": None if base.get(k) is None else round(base[k], 6)}
            for k, v in candidate.items()]
    create_table_artifact(rows, key="test-metrics",
                          description=f"Per-task test metrics, candidate vs champion {champion['version'] or '(none)'}")


NO_OVERRIDES = Overrides()


@flow(name="funnelflow-retrain", log_prints=True, on_failure=[notify_failure], on_crashed=[notify_failure])
def retrain(params_path: str | None = None, data_dir: str | None = None, source: str | None = None,
            overrides: Overrides = NO_OVERRIDES) -> dict:
    """Ingest (or generate) -> features apply + materialize -> training set -> validate -> train ->
    evaluate -> score champion -> gate -> export -> promote. Fails (with the record as reason) on bad
    data or a failed gate, and then notifies params.yaml ``notify.block``.

    Args:
        params_path: the params.yaml to read (null: $FUNNELFLOW_PARAMS, else the repo's).
        data_dir: the data dir (null: $FUNNELFLOW_DATA_DIR, else <repo>/data).
        source: the folder to ingest: a landing folder of dt=YYYY-MM-DD/ day partitions (only new or
            changed days are added) or a flat dataset (null: params.yaml data.source).
        overrides: model, training and gate settings over params.yaml; a field left null keeps the file's.
    """
    quiet()
    paths = Paths(Path(data_dir).resolve()) if data_dir else Paths.default()
    with _step_logs_to_run(), data_dir_lock(paths.root, "funnelflow-retrain (Prefect flow)"):
        return _retrain(apply_overrides(load_params(params_path), overrides), paths, source)


def _retrain(params: Params, paths: Paths, source: str | None) -> dict:
    out: dict[str, dict] = {}
    make, land = steps.source_plan(params, paths, source)  # a user's `ingest DIR` is kept, not regenerated over
    if make:
        out["generate"] = _call("generate", params, paths)
    if land is not None:
        out["ingest"] = _call("ingest", params, paths, source=land)
    for stage in ("features", "features_apply", "materialize", "training_set"):
        out[stage] = _call(stage, params, paths)
    try:
        out["validate"] = _call("validate", params, paths)
    except ValidationFailed as exc:
        create_markdown_artifact(str(exc), key="validation-summary", description="Great Expectations")
        raise
    create_markdown_artifact(out["validate"]["markdown"], key="validation-summary",
                             description="Great Expectations")
    out["train"] = _call("train", params, paths, progress=False)
    out["evaluate"] = _call("evaluate", params, paths)
    out["score_champion"] = _call("score_champion", params, paths)
    _publish_metrics(out["evaluate"]["metrics"], out["score_champion"])
    try:
        out["gate"] = _call("gate", params, paths)
    except GateFailed as exc:
        create_markdown_artifact(str(exc), key="gate-decision", description="Promotion gate decision")
        emit_refused(_blessing(paths), paths.gate / "blessing.md")
        raise
    create_markdown_artifact(out["gate"]["decision"], key="gate-decision", description="Promotion gate decision")
    out["export"] = _call("export", params, paths)
    out["promote"] = _call("promote", params, paths)
    get_run_logger().info("champion %s at %s", out["promote"]["champion"], out["promote"]["path"])
    if out["promote"]["promoted"]:
        emit_promoted(out["promote"], out["evaluate"]["metrics"], _blessing(paths)["candidate"]["model_sha256"])
    return {"champion": out["promote"]["champion"], "promoted": out["promote"]["promoted"],
            "champion_path": out["promote"]["path"],
            "metrics": str(paths.evaluation / "metrics.json"), "gate": str(paths.gate / "blessing.md"),
            "data_docs": str(paths.validation / "data_docs" / "index.html"),
            "steps": {k: v.get("seconds") for k, v in out.items()}}


@flow(name="funnelflow-tune", log_prints=True, on_failure=[notify_failure], on_crashed=[notify_failure])
def tune_search(params_path: str | None = None, data_dir: str | None = None) -> dict:
    """`funnelflow tune` as a flow: for each trial the flow asks Optuna for the values, a ``tune_trial``
    task trains them on the train split and scores them on validation, and the flow tells Optuna the
    result; the best values go to tuned.yaml beside params.yaml (flows/tune.py).

    Args:
        params_path: the params.yaml to read (null: $FUNNELFLOW_PARAMS, else the repo's); its ``tune``
            section sets the trials, the time budget, the seed and the space.
        data_dir: the data dir holding the training set and the study (null: $FUNNELFLOW_DATA_DIR, else
            <repo>/data).
    """
    from flows.tune import run_trial

    quiet()
    paths = Paths(Path(data_dir).resolve()) if data_dir else Paths.default()
    path = params_file(params_path)
    trial = task(name="tune_trial", cache_policy=NONE)(run_trial)  # never cached: each call is a new trial
    with _step_logs_to_run(), data_dir_lock(paths.root, "funnelflow-tune (Prefect flow)"):
        return steps.tune(load_params(path, tuned=False), paths, path.with_name(TUNED_FILE), run_trial=trial)


def _blessing(paths: Paths) -> dict:
    """The gate's decision record of this run."""
    return json.loads((paths.gate / "blessing.json").read_text())
