"""The flow's cache keys: a stage's params sections and its deps, as dvc.yaml lists them."""
from flows.params import Paths
from flows.pipeline import cache_key, outputs_present


def test_cache_key_follows_deps_and_params_but_not_bytecode(params, tmp_path):
    paths = Paths(tmp_path / "data")
    paths.model.mkdir(parents=True)
    (paths.model / "model.pt").write_bytes(b"a")
    key = cache_key("evaluate", params, paths)
    cache = paths.model / "__pycache__"
    cache.mkdir()
    (cache / "x.cpython-311.pyc").write_bytes(b"compiled")
    assert cache_key("evaluate", params, paths) == key
    (paths.model / "model.pt").write_bytes(b"bb")
    assert cache_key("evaluate", params, paths) != key
    # A train param changes train's key only: evaluate's stage lists no params.
    other = params.model_copy(update={"train": params.train.model_copy(update={"epochs": 99})})
    assert cache_key("train", other, paths) != cache_key("train", params, paths)
    assert cache_key("evaluate", other, paths) == cache_key("evaluate", params, paths)


def test_outputs_present_checks_outs_metrics_and_plots(params, tmp_path):
    paths = Paths(tmp_path / "data")
    paths.evaluation.mkdir(parents=True)
    (paths.evaluation / "metrics.json").write_text("{}")
    assert not outputs_present("evaluate", paths)  # plots missing
    (paths.evaluation / "plots").mkdir()
    assert outputs_present("evaluate", paths)
