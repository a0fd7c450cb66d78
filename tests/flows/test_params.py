"""params.yaml is checked at load: unknown keys, change bounds without exactly one limit, task typos;
every problem is one line naming the file and the key."""
import typing

import pytest
import yaml
from pydantic import ValidationError

from flows.params import REPO_ROOT, ChangeBound, Params, ParamsError, load_params
from models.strict import Strict


@pytest.fixture()
def raw():
    return yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def _load(tmp_path, raw):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_params(path)


def _classes(annotation):
    """The classes inside an annotation: list[X], X | Y, Annotated[X, ...] (a discriminated union)."""
    if isinstance(annotation, type):
        return [annotation]
    return [c for arg in typing.get_args(annotation) for c in _classes(arg)]


def test_every_section_is_strict():
    for name, field in Params.model_fields.items():
        classes = _classes(field.annotation)
        assert classes and all(issubclass(c, Strict) for c in classes), name


@pytest.mark.parametrize("limits", [{}, {"max_drop": 0.01, "max_increase": 0.02}])
def test_a_change_bound_sets_exactly_one_limit(limits):
    with pytest.raises(ValidationError, match="must set exactly one of max_drop"):
        ChangeBound(metric="click/auc", **limits)
    assert ChangeBound(metric="value/rmse", max_increase_rel=0.05).limit == ("max_increase_rel", 0.05)


def test_a_change_bound_without_a_limit_fails_at_load_not_at_the_gate(tmp_path, raw):
    raw["gate"]["change"].append({"metric": "click/auc"})
    with pytest.raises(ParamsError) as err:
        _load(tmp_path, raw)
    assert str(err.value) == (f"{tmp_path / 'params.yaml'}: gate.change[3]: Value error, change bound on 'click/auc' "
                              "must set exactly one of max_drop, max_increase, max_increase_rel, max_drop_rel "
                              "(it sets none)")


def test_a_task_key_typo_is_an_error_not_a_root_task(tmp_path, raw):
    raw["tasks"][1] = {"name": "conversion", "kind": "binary", "parnet": "click"}
    with pytest.raises(ParamsError, match=r"params.yaml: tasks\[1\].parnet: Extra inputs are not permitted"):
        _load(tmp_path, raw)


def test_one_line_per_error_and_graph_errors_name_tasks(tmp_path, raw):
    raw["generate"]["rows"] = "many"
    raw["split"]["bogus"] = 1
    with pytest.raises(ParamsError) as err:
        _load(tmp_path, raw)
    lines = str(err.value).splitlines()
    assert len(lines) == 2 and lines[0].endswith("params.yaml: generate.rows: Input should be a valid integer, "
                                                 "unable to parse string as an integer")
    assert lines[1].endswith("params.yaml: split.bogus: Extra inputs are not permitted")
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["tasks"] = raw["tasks"][1:]  # conversion's parent is gone
    with pytest.raises(ParamsError, match=r"params\.yaml: tasks: Value error, task 'conversion': parent 'click'"):
        _load(tmp_path, raw)


def test_yaml_syntax_and_missing_file_are_one_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("data:\n  source: [generate\n")
    with pytest.raises(ParamsError, match=r"params.yaml: not valid YAML: line \d+, column \d+: ") as err:
        load_params(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(ParamsError, match=r"nope\.yaml: no such file"):
        load_params(tmp_path / "nope.yaml")


@pytest.mark.parametrize(("section", "key", "value", "expected"), [
    ("train", "epochs", True, "train.epochs: true/false given where a bool is not accepted"),
    ("model", "dropout", False, "model.dropout: true/false given where a bool is not accepted"),
    ("features", "windows_days", [-1], "features.windows_days[0]: Input should be greater than 0"),
    ("features", "windows_days", [7, 7], "features.windows_days: Value error, each window once"),
    ("features", "windows_days", [], "features.windows_days: Value error, at least one window"),
    (None, "tasks", [], "tasks: List should have at least 1 item"),
    (None, "tasks", [{"name": "my__click", "kind": "binary"}], "tasks[0].name: String should match pattern"),
])
def test_accepted_before_though_wrong_is_one_line_now(tmp_path, raw, section, key, value, expected):
    (raw[section] if section else raw)[key] = value
    with pytest.raises(ParamsError) as err:
        _load(tmp_path, raw)
    assert str(err.value).startswith(f"{tmp_path / 'params.yaml'}: {expected}"), str(err.value)
    assert "\n" not in str(err.value)


def test_a_bool_field_still_takes_true(tmp_path, raw):
    raw["model"]["batch_norm"] = True
    assert _load(tmp_path, raw).model.batch_norm is True
