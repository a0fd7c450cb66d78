"""Steps on planted records (no training): the gate reads the candidate's and the champion's records,
steps run out of order name the command that fixes them, a step start cleans a crashed run's temps."""
import hashlib
import json
import subprocess
import sys

import pytest

from features.contract import MissingInput
from flows import stages, steps
from flows.gate import CustodyError, GateFailed
from flows.params import Bound, ChangeBound, GateConfig, Paths, params_hash
from flows.registry import Registry
from models.export import FORMAT_VERSION


@pytest.fixture()
def paths(tmp_path):
    return Paths(tmp_path / "data")


def _gated(params, **gate):
    return params.model_copy(update={"gate": GateConfig(**gate)})


def _plant(paths, candidate, version=None, champion=None, params=None):
    _model(paths)
    _manifest(paths)
    paths.evaluation.mkdir(parents=True)
    (paths.evaluation / "metrics.json").write_text(json.dumps(candidate))
    if params is not None:  # what `evaluate` records beside the metrics
        (paths.evaluation / steps.EVALUATED).write_text(json.dumps(steps._candidate(params, paths)))
    paths.champion.mkdir(parents=True)
    (paths.champion / "champion.json").write_text(json.dumps({"version": version, "metrics": champion or {}}))
    if version is not None:  # the registry's champion that `score-champion` scored
        (paths.registry / "versions" / version).mkdir(parents=True)
        (paths.registry / "versions" / version / "release.json").write_text('{"model_sha256": "another model"}')
        (paths.registry / "champion.json").write_text(json.dumps({"version": version}))


def test_gate_decides_from_the_candidate_and_champion_records(params, paths):
    cfg = _gated(params, absolute=[Bound(metric="click/auc", op=">=", value=0.6)],
                 change=[ChangeBound(metric="click/auc", max_drop=0.01)])
    _plant(paths, {"click/auc": 0.70}, "v0003", {"click/auc": 0.72}, params=params)
    with pytest.raises(GateFailed, match="NOT BLESSED") as err:
        steps.gate(cfg, paths)
    assert "1 of 2 checks failed: click/auc drop <= 0.01" in err.value.summary
    blessing = json.loads((paths.gate / "blessing.json").read_text())
    assert blessing["champion_version"] == "v0003" and not blessing["blessed"]
    # No champion yet: change bounds are not checked.
    (paths.registry / "champion.json").unlink()
    (paths.champion / "champion.json").write_text(json.dumps({"version": None, "metrics": {}}))
    out = steps.gate(cfg, paths)
    assert out["blessed"] and out["champion"] is None and out["checks"] == 1
    assert out["decision"].startswith("## Gate: BLESSED")


def test_gate_without_checks_still_writes_the_files_its_stage_declares(params, paths):
    _plant(paths, {"click/auc": 0.7}, params=params)
    steps.gate(_gated(params), paths)
    for name in ("blessing.json", "blessing.md", "gate.png", "gate_checks.csv"):
        assert (paths.gate / name).exists(), name
    assert (paths.gate / "gate_checks.csv").read_text().startswith("check,value,bound,baseline,passed")


@pytest.mark.parametrize(("step", "missing", "command"), [
    (steps.evaluate, "model/model.pt", "train"),
    (steps.score_champion, "model/model.pt", "train"),
    (steps.gate, "evaluation/metrics.json", "evaluate"),
    (steps.export, "gate/blessing.json", "gate"),
    (steps.promote, "gate/blessing.json", "gate"),
])
def test_a_step_run_out_of_order_names_the_command_that_writes_its_input(params, paths, step, missing, command):
    with pytest.raises(MissingInput) as err:
        step(params, paths)
    assert str(err.value) == f"{paths.root / missing} is missing: run `funnelflow {command}` first"


def test_gate_without_the_champion_record_names_score_champion(params, paths):
    paths.evaluation.mkdir(parents=True)
    (paths.evaluation / "metrics.json").write_text("{}")
    (paths.evaluation / steps.EVALUATED).write_text("{}")
    with pytest.raises(MissingInput, match="run `funnelflow score-champion` first"):
        steps.gate(params, paths)


def test_stage_commands_come_from_dvc_yaml(paths):
    assert stages.producer(paths.feast / "applied.json", paths) == "features_apply"
    assert stages.command("features_apply") == "features apply"
    assert stages.command("train") == "train"  # without --no-progress
    assert stages.producer(paths.training_set / "train.parquet", paths) == "training_set"
    assert stages.producer(paths.root / "elsewhere.txt", paths) is None


def _model(paths, payload=b"weights"):
    paths.model.mkdir(parents=True, exist_ok=True)
    (paths.model / "model.pt").write_bytes(payload)
    return hashlib.sha256(payload).hexdigest()


def _manifest(paths, data_hash="d" * 64):
    paths.training_set.mkdir(parents=True, exist_ok=True)
    (paths.training_set / "manifest.json").write_text(json.dumps({"data_hash": data_hash}))


def _bundle(path, model_sha256):
    """A bundle in the export layout (files and their sha256 in bundle.json), exported from ``model_sha256``."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.onnx").write_bytes(b"graph")
    (path / "bundle.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "model": "mmoe",
                                                  "model_sha256": model_sha256,
                                                  "files": {"model.onnx": hashlib.sha256(b"graph").hexdigest()}}))
    return path


def test_no_champion_before_the_first_promotion(params, paths):
    _model(paths)
    out = steps.score_champion(params, paths)
    assert out["version"] is None and out["metrics"] == {}
    assert json.loads((paths.champion / "champion.json").read_text()) == {"version": None, "metrics": {}}


def test_a_promoted_candidate_is_still_judged_against_the_champion_it_beat(params, paths, tmp_path):
    """After promotion the candidate is the champion; rescoring it against itself would change the
    record, rerun the gate and promote the same model again (a no-op `dvc repro` must not)."""
    sha = _model(paths)
    bundle = _bundle(tmp_path / "bundle", sha)
    Registry(paths.registry).promote(bundle, {}, {"model_sha256": sha, "champion_before": None})
    assert steps.score_champion(params, paths)["version"] is None


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_a_step_start_removes_temps_of_dead_runs_only(params, paths):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        paths.model.mkdir(parents=True)
        dead_tmp = paths.model / f".x.tmp-{_dead_pid()}"
        live_tmp = paths.model / f".x.tmp-{live.pid}"
        dead_tmp.write_text("half")
        live_tmp.write_text("being written")
        with pytest.raises(Exception, match="no champion"):
            steps.rollback(params, paths)  # any step: the wrapper cleans before the step body runs
        assert not dead_tmp.exists() and live_tmp.exists()
    finally:
        live.kill()
        live.wait()


def test_the_blessing_records_the_candidates_hashes(params, paths):
    _plant(paths, {"click/auc": 0.7}, params=params)
    steps.gate(_gated(params), paths)
    blessing = json.loads((paths.gate / "blessing.json").read_text())
    assert blessing["candidate"] == {"model_sha256": hashlib.sha256(b"weights").hexdigest(), "data_hash": "d" * 64,
                                     "params_sha256": params_hash(_gated(params))}


def test_the_gate_refuses_metrics_measured_on_another_model(params, paths):
    """A model retrained after `evaluate` is not blessed on its predecessor's metrics."""
    _plant(paths, {"click/auc": 0.7}, params=params)
    _model(paths, b"retrained since evaluate")
    with pytest.raises(CustodyError, match=r"not of the model, training set and params on disk now"):
        steps.gate(_gated(params), paths)
    assert not (paths.gate / "blessing.json").exists()


@pytest.mark.parametrize("step", [steps.export, steps.promote])
def test_export_and_promote_refuse_what_the_gate_did_not_judge(params, paths, step):
    """A model trained (or a training set rebuilt, or params changed) after the blessing is not shipped
    under it; the one line names the hash that differs."""
    cfg = _gated(params)
    _plant(paths, {"click/auc": 0.7}, params=params)
    steps.gate(cfg, paths)
    _bundle(paths.bundle, _model(paths))
    _model(paths, b"weaker weights")
    with pytest.raises(CustodyError, match=r"blessed model \(model\.pt\) .* run `funnelflow evaluate`"):
        step(cfg, paths)
    _model(paths)
    _manifest(paths, "e" * 64)
    with pytest.raises(CustodyError, match=r"blessed training set"):
        step(cfg, paths)
    _manifest(paths)
    other = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": cfg.train.epochs + 1})})
    with pytest.raises(CustodyError, match=r"blessed params"):
        step(other, paths)
    assert not paths.registry.exists()


def test_promote_refuses_a_bundle_exported_from_another_model(params, paths):
    """After a failed export the folder still holds the previous model's bundle: not shipped under the
    new blessing."""
    cfg = _gated(params)
    _plant(paths, {"click/auc": 0.7}, params=params)
    steps.gate(cfg, paths)
    _bundle(paths.bundle, "0" * 64)
    with pytest.raises(CustodyError, match=r"exported from model 000000000000, not the blessed .*`funnelflow export`"):
        steps.promote(cfg, paths)
    (paths.bundle / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(CustodyError, match=r"model\.onnx does not match the sha256"):
        steps.promote(cfg, paths)
    assert not paths.registry.exists()
