"""Steps run out of order name the missing input and the command that makes it; writers swap whole
folders in, so the previous output stays readable until then; config defaults equal params.yaml."""
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from features import store, training_set
from features.contract import MissingInput
from features.engineering import FeatureConfig, build_feature_tables
from features.store import FeastPaths
from features.training_set import SplitConfig, build_training_set, load_split
from features.validation import ValidationConfig, validate_training_set
from features.views import VIEWS

REPO = Path(__file__).resolve().parents[2]


def test_load_split_names_the_missing_file_and_the_command(tmp_path):
    with pytest.raises(MissingInput) as err:
        load_split(tmp_path / "training_set", "train")
    assert str(err.value) == f"{tmp_path}/training_set/train.parquet is missing: run `funnelflow training-set` first"
    assert isinstance(err.value, FileNotFoundError)


def test_each_loader_names_the_step_to_run(tmp_path, params):
    cases = [
        (lambda: build_feature_tables(tmp_path / "raw", tmp_path / "features", params.task_graph, params.features,
                                      VIEWS), "raw/partitions.json", "ingest"),
        (lambda: store.materialize(FeastPaths(tmp_path / "feast", tmp_path / "features")),
         "features/tables.json", "features build"),
        (lambda: validate_training_set(tmp_path / "training_set", tmp_path / "validation", params.task_graph,
                                       params.validation), "training_set/manifest.json", "training-set"),
    ]
    for call, missing, command in cases:
        with pytest.raises(MissingInput) as err:
            call()
        assert str(err.value) == f"{tmp_path / missing} is missing: run `funnelflow {command}` first"
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a failed step leaves nothing behind"


@pytest.mark.e2e
def test_training_set_before_features_apply(pipeline_data, params, tmp_path):
    feast = FeastPaths(tmp_path / "feast", pipeline_data.features)
    with pytest.raises(MissingInput, match=r"feast/registry.db is missing: run `funnelflow features apply` first"):
        build_training_set(feast, pipeline_data.raw, tmp_path / "training_set", params.task_graph, params.features,
                           params.split)
    assert not (tmp_path / "feast" / "registry.db").exists(), "no empty registry created"
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "no training set or temp folder left"


@pytest.mark.e2e
def test_the_previous_training_set_stays_until_the_new_one_is_complete(pipeline_data, params, tmp_path,
                                                                       monkeypatch):
    feast = FeastPaths(pipeline_data.feast, pipeline_data.features)
    out = tmp_path / "training_set"
    build_training_set(feast, pipeline_data.raw, out, params.task_graph, params.features, params.split)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = training_set.point_in_time_feature_batches

    def fails_after_one_batch(*args, **kwargs):
        for batch in real(*args, **kwargs):
            assert len(load_split(out, "train")) > 0, "readers still see the previous training set"
            yield batch
            raise OSError("disk full (injected)")

    monkeypatch.setattr(training_set, "point_in_time_feature_batches", fails_after_one_batch)
    with pytest.raises(OSError, match="injected"):
        build_training_set(feast, pipeline_data.raw, out, params.task_graph, params.features, params.split)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["training_set"], "no temp folder left"


@pytest.mark.parametrize("section,model", [("features", FeatureConfig), ("split", SplitConfig),
                                           ("validation", ValidationConfig)])
def test_code_defaults_equal_params_yaml_and_configs_are_strict(section, model):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())[section]
    assert model() == model(**raw)
    with pytest.raises(ValidationError, match="extra"):
        model(**raw, typo=1)
    with pytest.raises(ValidationError, match="frozen"):
        setattr(model(), next(iter(raw)), None)

