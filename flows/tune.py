"""`funnelflow tune`: an Optuna search of the configured model's knobs (params.yaml ``tune``).

- Each trial trains on the train split and is scored on the validation split with the training loop's
  own monitor (``train.monitor``: the best epoch's mean validation AUC by default); the test split is
  never read, so the gate's test metrics stay unseen by the search.
- TPE with a seed; a median pruner fed every epoch's validation score (``train_model``'s
  ``on_epoch_end``); ``tune.trials`` per run and ``tune.timeout_minutes`` (no trial starts after it).
- The study lives in SQLite (``<data>/tune/study.db``), named by a hash of what a trial's score depends
  on besides the values it samples: the training set, the search space and every other model and train
  key. A scheduled rerun on the same ones continues the study; a new training set starts a new one.
- A new study's first trial is params.yaml's own values (where the space holds them), so the best is
  never below the defaults on validation, and the summary says by how much it is above.
- The best trial's values go to tuned.yaml in the Overrides shape (flows/overrides.py); the pipeline
  trains with them when params.yaml says ``tune.apply: true`` (flows.params.apply_tuned).
- A trial runs through ``run_trial``: in-process for the CLI, as a Prefect task in the flow.
"""
from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import yaml

from flows.overrides import Overrides
from flows.params import FloatRange, Params, SearchSpace, with_overrides
from models.atomic import write_text

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("funnelflow.tune")
STUDY_DB = "study.db"
SECTIONS = ("model", "train")  # the sections a search may change: the Overrides shape's
BASELINE = "params.yaml"       # user attribute of the trial that ran params.yaml's own values
RunTrial = Callable[..., dict]  # (trial, params, train_df, valid_df, workdir) -> {"value", "pruned"}


def searched(space: SearchSpace) -> dict[str, FloatRange | list[Any]]:
    """The searched knobs as ``section.key`` -> range or choices (a null one is not searched)."""
    return {f"{section}.{key}": domain for section in SECTIONS
            for key, domain in getattr(space, section) if domain is not None}


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """The trial's value of every searched knob, by ``section.key``."""
    return {name: trial.suggest_float(name, d.low, d.high, log=d.log) if isinstance(d, FloatRange)
            else trial.suggest_categorical(name, d) for name, d in searched(space).items()}


def as_overrides(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"train.lr": 0.01}`` -> ``{"train": {"lr": 0.01}}`` (the Overrides shape)."""
    out: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        section, key = name.split(".")
        out.setdefault(section, {})[key] = value
    return out


def monitor_key(params: Params) -> str:
    """The column of ``train_model``'s per-epoch row that holds its monitor (what a trial scores)."""
    monitor = params.train.monitor
    return "valid_mean_auc" if monitor == "mean_auc" else "valid_" + monitor.replace("/", "_")


def study_name(params: Params, data_hash: str) -> str:
    """``<model>-<hash>`` of the training set, the search space and every model/train key it does not search."""
    dumped, names = params.model_dump(mode="json"), searched(params.tune.space)
    fixed = {s: {k: v for k, v in dumped[s].items() if f"{s}.{k}" not in names} for s in SECTIONS}
    key = json.dumps({"data_hash": data_hash, "space": dumped["tune"]["space"], "tasks": dumped["tasks"], **fixed},
                     sort_keys=True)
    return f"{params.model.name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def open_study(db: Path, name: str, params: Params, pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """Study ``name`` in the SQLite file ``db``, created or continued; a new one first runs params.yaml's values.

    ``pruner``: default a median pruner that waits for 5 finished trials and skips each trial's first epoch.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial instead of Optuna's
    db.parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        storage=f"sqlite:///{db}", study_name=name, load_if_exists=True,
        direction="maximize" if params.train.monitor_mode == "max" else "minimize",
        pruner=pruner or optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1))
    # TPE's first trials are draws of its seeded generator: offset by the trials done, a continued
    # study draws new points instead of the first run's again.
    study.sampler = optuna.samplers.TPESampler(seed=params.tune.seed + len(study.trials))
    if not study.trials:
        study.enqueue_trial(_own_values(params), user_attrs={BASELINE: True})
    return study


def _own_values(params: Params) -> dict[str, Any]:
    """params.yaml's value of each searched knob that lies in the space (``loss: auto`` as the loss it means)."""
    from models.losses import resolve_loss

    own: dict[str, Any] = {}
    for name, domain in searched(params.tune.space).items():
        section, key = name.split(".")
        value = resolve_loss(params.model) if name == "model.loss" else getattr(getattr(params, section), key)
        if isinstance(domain, FloatRange):
            inside = domain.low <= float(value) <= domain.high
        else:
            inside = value in domain
        if inside:
            own[name] = value
    return own


def run_trial(trial: optuna.Trial, params: Params, train_df: pd.DataFrame, valid_df: pd.DataFrame,
              workdir: Path) -> dict:
    """Train ``params`` with the trial's values on ``train_df``, scored on ``valid_df`` each epoch and
    reported to the pruner; stops at the pruner's first word.

    Returns:
        ``{"value": the best epoch's score (pruned: the last epoch's), "pruned": bool}``.
    """
    from models.train import train_model

    trial_params = with_overrides(params, as_overrides(suggest(trial, params.tune.space)), "tune.space")
    key, scores = monitor_key(params), []

    def report(epoch: int, row: dict[str, float]) -> None:
        scores.append(row[key])
        trial.report(row[key], epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()

    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workdir, prefix=f"trial-{trial.number}-") as out:
        try:
            res = train_model(train_df, valid_df, trial_params.task_graph, trial_params.model, trial_params.train,
                              out, progress=False, on_epoch_end=report)
        except optuna.TrialPruned:
            return {"value": scores[-1], "pruned": True}
    return {"value": res.best_score, "pruned": False}


def search(study: optuna.Study, params: Params, train_df: pd.DataFrame, valid_df: pd.DataFrame, workdir: Path,
           run: RunTrial = run_trial) -> None:
    """``tune.trials`` trials of ``study`` (fewer when ``tune.timeout_minutes`` runs out), each through ``run``."""

    def objective(trial: optuna.Trial) -> float:
        outcome = run(trial, params, train_df, valid_df, workdir)
        if outcome["pruned"]:
            raise optuna.TrialPruned()
        return float(outcome["value"])

    minutes = params.tune.timeout_minutes
    study.optimize(objective, n_trials=params.tune.trials, timeout=None if minutes is None else minutes * 60,
                   callbacks=[_log_trial])


def _log_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """One line per finished trial: its number, state, score and values."""
    values = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    epoch = trial.last_step
    if trial.state == optuna.trial.TrialState.COMPLETE:
        best = study.best_trial
        score = f"{trial.value:.4f} (best {best.value:.4f}, trial {best.number})"
    else:  # pruned: the last epoch it reached; failed (a non-finite score): none
        score = "-" if epoch is None else f"{trial.intermediate_values[epoch]:.4f} at epoch {epoch + 1}"
    log.info("trial %d %s: %s: %s", trial.number, trial.state.name.lower(), score, values)


def summary(study: optuna.Study) -> dict:
    """Trial counts, the best trial, params.yaml's own score and the seconds a finished trial took."""
    states = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == states.COMPLETE]
    baseline = next((t.value for t in done if t.user_attrs.get(BASELINE)), None)
    seconds = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done
               if t.datetime_complete and t.datetime_start]
    best = study.best_trial if done else None
    return {"study": study.study_name, "trials": len(trials), "complete": len(done),
            "pruned": sum(t.state == states.PRUNED for t in trials),
            "best": None if best is None else {"trial": best.number, "value": best.value, "params": best.params},
            "params_yaml_value": baseline,
            "seconds_per_complete_trial": round(sum(seconds) / len(seconds), 1) if seconds else None}


def write_tuned(path: Path, study: optuna.Study, params: Params, data_hash: str) -> None:
    """The best trial's values as tuned.yaml (the Overrides shape, with the model they were tuned for),
    under a header recording the study, its score and the training set."""
    info, best = summary(study), study.best_trial
    sections = as_overrides(best.params)
    sections["model"] = {"name": params.model.name, **sections.get("model", {})}
    tuned = Overrides.model_validate(sections).model_dump(mode="json", exclude_none=True, exclude={"gate"})
    own = info["params_yaml_value"]
    header = (f"# Written by `funnelflow tune` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: the best trial "
              f"(#{best.number}) of study {study.study_name}\n"
              f"# (<data>/tune/{STUDY_DB}; {info['trials']} trials: {info['complete']} complete, "
              f"{info['pruned']} pruned), validation {params.train.monitor} {best.value:.4f}"
              f"{'' if own is None else f' (params.yaml alone: {own:.4f})'}.\n"
              f"# Training set data_hash {data_hash}.\n"
              "# The pipeline trains with these values when params.yaml sets tune.apply: true (flows/params.py\n"
              "# apply_tuned); DVC's train stage tracks this file.\n")
    write_text(path, header + yaml.safe_dump(tuned, sort_keys=False))


def tune(params: Params, train_df: pd.DataFrame, valid_df: pd.DataFrame, data_hash: str, study_dir: Path,
         out: Path, run: RunTrial = run_trial) -> dict:
    """Run (or continue) the study of this training set and space, then write its best values to ``out``
    (left as it is when no trial has finished)."""
    study = open_study(study_dir / STUDY_DB, study_name(params, data_hash), params)
    search(study, params, train_df, valid_df, study_dir, run)
    info = summary(study)
    if info["best"] is None:
        log.warning("no trial of study %s has finished: %s left as it is", study.study_name, out)
    else:
        write_tuned(out, study, params, data_hash)
    return {**info, "storage": str(study_dir / STUDY_DB), "tuned": str(out) if info["best"] else None}
