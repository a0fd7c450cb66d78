"""`funnelflow tune`: an Optuna study on the validation split only, continued across runs, pruned per
epoch; its best values in tuned.yaml, which the pipeline trains with when params.yaml says so."""
import shutil

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from flows import steps
from flows.cli import app
from flows.params import REPO_ROOT, TUNED_FILE, ParamsError, Paths, TuneConfig, load_params
from flows.tune import STUDY_DB, open_study, run_trial, search, study_name


@pytest.fixture()
def tune_paths(pipeline_data, tmp_path):
    """A data dir holding only the training set's validation split and 3000 of its train rows (quick
    trials): a step that opened the test split would fail."""
    import pandas as pd

    paths = Paths(tmp_path / "data")
    shutil.copytree(pipeline_data.training_set, paths.training_set)
    (paths.training_set / "test.parquet").unlink()
    train = paths.training_set / "train.parquet"
    pd.read_parquet(train).head(3000).to_parquet(train)
    return paths


@pytest.fixture()
def tune_params_file(tmp_path, params):
    """params.yaml for two quick trials of one epoch, with ``tune.apply: true``."""
    raw = params.model_dump(mode="json")
    raw["train"].update(epochs=1)
    raw["model"].update(hidden=[32], tower=[16])
    raw["tune"].update(apply=True, trials=2, timeout_minutes=None)
    raw["tune"]["space"]["train"]["batch_size"] = [1024, 2048]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_params_yaml_tune_section_equals_the_code_defaults():
    assert TuneConfig(**yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["tune"]) == TuneConfig()


def test_tune_writes_tuned_yaml_that_load_params_applies_and_a_rerun_continues_the_study(tune_paths,
                                                                                          tune_params_file):
    own = load_params(tune_params_file, tuned=False)
    tuned_file = tune_params_file.with_name(TUNED_FILE)
    first = steps.tune(own, tune_paths, tuned_file)
    assert first["trials"] == 2 and first["complete"] + first["pruned"] == 2
    assert first["params_yaml_value"] is not None  # trial 0 ran params.yaml's own values

    text = tuned_file.read_text()
    assert f"study {first['study']}" in text and f"{first['best']['value']:.4f}" in text
    tuned = yaml.safe_load(text)
    assert tuned["model"]["name"] == own.model.name
    best = first["best"]["params"]
    assert tuned["train"]["lr"] == best["train.lr"] and tuned["model"]["dropout"] == best["model.dropout"]

    applied = load_params(tune_params_file)
    assert applied.train.lr == best["train.lr"] and applied.model.embedding_dim == best["model.embedding_dim"]
    assert applied.tune == own.tune and applied.train.epochs == own.train.epochs  # the rest is params.yaml's
    raw = yaml.safe_load(tune_params_file.read_text())
    raw["tune"]["apply"] = False
    tune_params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    off = own.model_copy(update={"tune": own.tune.model_copy(update={"apply": False})})
    assert load_params(tune_params_file) == off

    # The CLI on the same training set and space continues the study instead of starting over.
    res = CliRunner().invoke(app, ["--params", str(tune_params_file), "--data-dir", str(tune_paths.root),
                                   "tune", "--trials", "1"])
    assert res.exit_code == 0, res.output
    studies = optuna.get_all_study_summaries(f"sqlite:///{tune_paths.tune / STUDY_DB}")
    assert [s.study_name for s in studies] == [first["study"]] and studies[0].n_trials == 3


def _train(params, **update):
    return params.model_copy(update={"train": params.train.model_copy(update=update)})


def test_the_study_is_new_for_another_training_set_or_space(params):
    name = study_name(params, "data-a")
    assert study_name(params, "data-a") == name and study_name(params, "data-b") != name
    space = params.tune.space.model_copy(update={"model": params.tune.space.model.model_copy(update={"dropout": None})})
    narrower = params.model_copy(update={"tune": params.tune.model_copy(update={"space": space})})
    assert study_name(narrower, "data-a") != name
    # A searched knob's value in params.yaml does not matter (every trial sets it); another knob does.
    assert study_name(_train(params, lr=0.5), "data-a") == name
    assert study_name(_train(params, epochs=9), "data-a") != name


def test_a_pruned_trial_stops_after_the_epoch_the_pruner_rejects(tune_paths, tune_params_file, caplog):
    from features.training_set import load_split

    params = _train(load_params(tune_params_file, tuned=False), epochs=2)
    params = params.model_copy(update={"tune": params.tune.model_copy(update={"trials": 1})})
    # No validation AUC reaches 1: this pruner rejects every epoch it is shown.
    study = open_study(tune_paths.tune / STUDY_DB, "pruned", params, optuna.pruners.ThresholdPruner(lower=1.0))
    train_df, valid_df = (load_split(tune_paths.training_set, s) for s in ("train", "validation"))
    with caplog.at_level("INFO", logger="funnelflow"):
        search(study, params, train_df, valid_df, tune_paths.tune, run_trial)
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [0]  # epoch 2 of 2 never ran
    assert any(r.name == "funnelflow.tune" and "trial 0 pruned" in r.getMessage() for r in caplog.records)
    assert not list(tune_paths.tune.glob("trial-*"))  # the trial's model folder is gone


@pytest.mark.parametrize(("text", "expected"), [
    ("model: {dropout: 1.5}", "tuned.yaml: model.dropout: Input should be less than 1"),
    ("train: {lr: fast}", "tuned.yaml: train.lr: Input should be a valid number, unable to parse string as a number"),
    ("model: {dropot: 0.1}", "tuned.yaml: model.dropot: Extra inputs are not permitted"),
    ("model: {name: esmm}", "tuned.yaml: model.name: tuned for esmm, but params.yaml trains tafe: run `funnelflow "
                            "tune` again, or set tune.apply: false"),
    ("gate: {change: []}", "tuned.yaml: gate: tuned values are model and train keys only; remove the gate section"),
    ("model: [", "tuned.yaml: not valid YAML: line 2, column 1: expected the node content, but found '<stream end>'"),
])
def test_a_bad_tuned_yaml_is_one_line_naming_the_file_and_key(tune_params_file, monkeypatch, text, expected):
    monkeypatch.chdir(tune_params_file.parent)
    (tune_params_file.parent / TUNED_FILE).write_text(text + "\n")
    with pytest.raises(ParamsError) as err:
        load_params(tune_params_file)
    assert str(err.value) == expected
