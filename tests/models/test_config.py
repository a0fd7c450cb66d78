import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from models.config import ExportConfig, ModelConfigBase, TrainConfig
from models.networks import DEFAULT_MODEL, MODEL_NAMES, MODELS, parse_model_config, switch_model

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def _own_knobs(name: str) -> dict:
    """The knobs of model ``name`` beyond the shared ones, with their defaults."""
    fields = MODELS[name].config_class.model_fields
    return {k: f.default for k, f in fields.items() if k not in ModelConfigBase.model_fields}


def test_params_yaml_equals_the_code_defaults():
    """Every value params.yaml sets for model/train/export is the code default, so neither can drift."""
    raw = yaml.safe_load(PARAMS.read_text())
    assert raw["model"]["name"] == DEFAULT_MODEL
    assert parse_model_config(raw["model"]) == parse_model_config({})
    assert TrainConfig(**raw["train"]) == TrainConfig()
    assert ExportConfig(**raw["export"]) == ExportConfig()


def test_params_yaml_documents_every_per_model_knob_with_its_default():
    text = PARAMS.read_text()
    for name in MODEL_NAMES:
        if knobs := _own_knobs(name):
            line = f"#   {name}: " + ", ".join(f"{k}: {v}" for k, v in knobs.items())
            assert re.search(rf"^\s*{re.escape(line)}$", text, re.MULTILINE), line


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_params_yaml_model_section_runs_every_model(name):
    """``dvc exp run -S model.name=<name>`` edits only the name: the section must parse for each model."""
    raw = yaml.safe_load(PARAMS.read_text())["model"]
    cfg = parse_model_config({**raw, "name": name})
    assert type(cfg) is MODELS[name].config_class and cfg.hidden == raw["hidden"]


def test_registry_names_match_modules_and_configs():
    assert list(MODELS) == list(MODEL_NAMES)
    for name, net in MODELS.items():
        assert net.__module__ == f"models.networks.{name}"
        assert net.config_class.model_fields["name"].default == name


def test_a_knob_of_another_model_is_an_error():
    with pytest.raises(ValidationError, match="experts"):
        parse_model_config({"name": "esmm", "experts": 4})
    with pytest.raises(ValidationError, match="htl_tau"):  # the old prefixed name
        parse_model_config({"name": "htlnet", "htl_tau": 2.0})
    with pytest.raises(ValidationError, match="calibrator"):
        parse_model_config({"name": "tafe", "calibrator": 0.5})
    with pytest.raises(ValidationError, match="name must be one of: shared_bottom, mmoe, "):
        parse_model_config({"name": "nope"})
    assert parse_model_config({"name": "htlnet", "tau": 2.0}).tau == 2.0


def test_a_section_without_a_name_is_the_default_model():
    cfg = parse_model_config({"hidden": [8]})
    assert cfg.name == DEFAULT_MODEL and cfg.hidden == [8]


def test_switch_model_keeps_the_shared_knobs():
    mmoe = parse_model_config({"name": "mmoe", "hidden": [8, 4], "dropout": 0.2, "loss": "bce", "experts": 2})
    esmm = switch_model(mmoe, "esmm")
    assert type(esmm).__name__ == "ESMMConfig" and "experts" not in type(esmm).model_fields
    assert (esmm.hidden, esmm.dropout, esmm.loss) == ([8, 4], 0.2, "bce")
    assert switch_model(mmoe, "ple").experts == 2  # a knob both models have carries over
    htl = switch_model(esmm, "htlnet")
    assert htl.tau == 1.0 and htl.hidden == [8, 4]  # the target's own knobs: defaults
    assert switch_model(htl, "mmoe") == mmoe.model_copy(update={"experts": 4})
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        switch_model(mmoe, "nope")


def test_paper_loss_and_penalty_weight_come_from_the_model_config():
    assert [MODELS[n].config_class.paper_loss for n in MODEL_NAMES] == [
        "bce", "bce", "bce", "ctcvr", "calibrated", "dependence", "bce"]
    assert parse_model_config({"name": "aitm", "calibrator": 0.3}).penalty_weight == 0.3
    assert parse_model_config({"name": "tafe", "dependence_penalty": 2.0}).penalty_weight == 2.0
    assert parse_model_config({"name": "aitm", "dependence_penalty": 2.0}).penalty_weight == 0.6


def test_configs_are_frozen():
    with pytest.raises(ValidationError):
        parse_model_config({}).dropout = 0.5  # type: ignore[misc]
