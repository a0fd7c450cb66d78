"""The flow's typed overrides: merged over params.yaml and checked by the same model, typed in the flow's
parameter schema (what the Prefect UI's run form shows), and the deployment's defaults valid."""
import pytest
import yaml

from flows.overrides import GateOverrides, ModelOverrides, Overrides, TrainOverrides, apply_overrides
from flows.params import REPO_ROOT, Bound, ParamsError


def test_set_fields_replace_the_files_and_null_ones_keep_it(params):
    assert apply_overrides(params, Overrides()) == params
    out = apply_overrides(params, Overrides(model=ModelOverrides(dropout=0.2, hidden=[32]),
                                            train=TrainOverrides(epochs=1, lr=0.05),
                                            gate=GateOverrides(absolute=[])))
    assert (out.model.name, out.model.dropout, out.model.hidden, out.model.tower) == (
        params.model.name, 0.2, [32], params.model.tower)
    assert (out.train.epochs, out.train.lr, out.train.batch_size) == (1, 0.05, params.train.batch_size)
    assert out.gate.absolute == [] and out.gate.change == params.gate.change  # only the list given is replaced


def test_another_model_keeps_the_shared_knobs_and_drops_the_files_own(params):
    mmoe = apply_overrides(params, Overrides(model=ModelOverrides(name="mmoe", embedding_dim=8)))
    assert mmoe.model.name == "mmoe" and mmoe.model.experts == 4
    esmm = apply_overrides(mmoe, Overrides(model=ModelOverrides(name="esmm")))
    assert esmm.model.name == "esmm" and esmm.model.embedding_dim == 8
    assert "experts" not in type(esmm.model).model_fields  # mmoe's knob would be an unknown key of esmm


@pytest.mark.parametrize(("overrides", "line"), [
    (Overrides(train=TrainOverrides(lr=0.0)), "overrides: train.lr: Input should be greater than 0"),
    (Overrides(model=ModelOverrides(name="nope")), "overrides: model: name must be one of: shared_bottom, mmoe, "
                                                   "ple, esmm, aitm, tafe, htlnet"),
    (Overrides(gate=GateOverrides(absolute=[Bound(metric="click/auc_typo", op=">=", value=0.6)])),
     "overrides: gate.absolute[0].metric: unknown metric 'click/auc_typo'"),
])
def test_a_bad_override_is_one_line_naming_the_key(params, overrides, line):
    with pytest.raises(ParamsError) as err:
        apply_overrides(params, overrides)
    assert str(err.value).startswith(line) and "\n" not in str(err.value)


def test_the_flows_parameters_are_typed_for_the_ui():
    from prefect.utilities.callables import parameter_schema

    from flows.pipeline import retrain

    schema = parameter_schema(retrain.fn).model_dump()
    props, defs = schema["properties"], schema["definitions"]
    assert props["source"]["anyOf"] == [{"type": "string"}, {"type": "null"}]
    assert "day partitions" in props["source"]["description"]
    assert props["overrides"]["$ref"] == "#/definitions/Overrides"
    assert set(defs["Overrides"]["properties"]) == {"model", "train", "gate"}
    model, train = defs["ModelOverrides"]["properties"], defs["TrainOverrides"]["properties"]
    assert model["name"]["anyOf"][0]["enum"][:2] == ["shared_bottom", "mmoe"]  # a drop-down of the models
    assert train["epochs"]["anyOf"][0] == {"type": "integer"} and train["lr"]["anyOf"][0] == {"type": "number"}
    bound = defs["Bound"]["properties"]
    assert bound["op"]["enum"] == [">=", "<="] and bound["value"]["type"] == "number"
    assert defs["Overrides"]["additionalProperties"] is False  # a misspelt key is refused, not ignored


def test_the_deployment_lists_every_parameter_with_valid_defaults():
    from prefect.utilities.callables import parameter_schema

    from flows.pipeline import retrain

    (deployment,) = yaml.safe_load((REPO_ROOT / "infra" / "prefect.yaml").read_text())["deployments"]
    given = deployment["parameters"]
    assert set(given) == set(parameter_schema(retrain.fn).properties)
    assert Overrides.model_validate(given["overrides"]) == Overrides()
    assert given["source"] == "landing"  # the landing folder of day partitions, relative to the repo
