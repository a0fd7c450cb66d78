"""The CLI: every expected failure (bad input, a refused gate, a step out of order, a bad params.yaml)
exits 1 with one line naming the cause and the fix, no traceback (-v adds it); nothing is written."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from features.contract import FunnelDataset, raw_days, read_raw, write_dataset
from features.validation import ValidationFailed
from flows import steps
from flows.cli import app
from flows.params import REPO_ROOT, Paths, load_params

REPO = Path(__file__).resolve().parents[2]


def _cli(*args, data_dir, env=None):
    return subprocess.run([sys.executable, "-m", "flows.cli", "--data-dir", str(data_dir), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


def _one_line_failure(stderr: str) -> str:
    """The error line, the last on stderr; before it, only the steps' own log lines."""
    *logs, last = stderr.strip().splitlines()
    assert last.startswith("error: ") and "Traceback" not in stderr, stderr
    assert all(re.match(r"\d\d:\d\d:\d\d funnelflow: ", line) for line in logs), stderr
    return last


def _invoke(*args, data_dir):
    res = CliRunner().invoke(app, ["--data-dir", str(data_dir), *args])
    assert res.exit_code == 1, res.output
    return res


def test_ingest_bad_input_exits_with_a_clear_message(tmp_path, small_data):
    imps = small_data.impressions.head(500).copy()
    row = imps.index[imps.click == 0][0]
    imps.loc[row, "conversion"] = 1
    write_dataset(FunnelDataset(imps, small_data.users, small_data.items), tmp_path / "src")
    res = _cli("ingest", str(tmp_path / "src"), data_dir=tmp_path / "data")
    assert res.returncode == 1
    _one_line_failure(res.stderr)
    assert "impressions.parquet" in res.stderr and "conversion" in res.stderr and "funnel rule" in res.stderr
    assert str(imps.loc[row, "impression_id"]) in res.stderr
    assert raw_days(tmp_path / "data" / "raw") == []  # the bad day is quarantined, nothing stored
    assert len(list((tmp_path / "data" / "quarantine").glob("dt=*/reason.txt"))) == 1


def test_generate_then_ingest(tmp_path):
    res = _cli("generate", "--rows", "3000", "--days", "5", data_dir=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "oracle" / "oracle.parquet").exists()
    assert not any("oracle" in p.name for p in (tmp_path / "generated").iterdir())
    res = _cli("ingest", data_dir=tmp_path)
    assert res.returncode == 0, res.stderr
    assert len(read_raw(tmp_path / "raw", "impressions")) == 3000


def test_a_step_out_of_order_names_the_command_that_fixes_it(tmp_path):
    line = _one_line_failure(_invoke("evaluate", data_dir=tmp_path).stderr)
    assert line == f"error: {tmp_path / 'model' / 'model.pt'} is missing: run `funnelflow train` first"
    line = _one_line_failure(_invoke("train", "--no-progress", data_dir=tmp_path).stderr)
    assert "training_set" in line and "run `funnelflow training-set` first" in line


def test_a_refused_gate_is_one_line_naming_the_failed_check(tmp_path):
    (tmp_path / "evaluation").mkdir()
    (tmp_path / "evaluation" / "metrics.json").write_text(json.dumps({"click/auc": 0.5}))
    (tmp_path / "champion").mkdir()
    (tmp_path / "champion" / "champion.json").write_text(json.dumps({"version": None, "metrics": {}}))
    for rel, text in (("model/model.pt", "weights"), ("training_set/manifest.json", '{"data_hash": "d"}')):
        (tmp_path / rel).parent.mkdir()  # what the blessing binds (flows.gate.CANDIDATE_KEYS)
        (tmp_path / rel).write_text(text)
    (tmp_path / "evaluation" / steps.EVALUATED).write_text(  # what `evaluate` records beside the metrics
        json.dumps(steps._candidate(load_params(), Paths(tmp_path))))
    line = _one_line_failure(_invoke("gate", data_dir=tmp_path).stderr)
    assert "the gate refused the candidate" in line and "click/auc >= 0.6 (0.5)" in line
    assert "NOT BLESSED" in (tmp_path / "gate" / "blessing.md").read_text()


def test_the_gate_refuses_a_champion_record_older_than_the_registry(tmp_path):
    """A promotion (or rollback) after `score-champion`: the recorded "no champion" is stale."""
    test_a_refused_gate_is_one_line_naming_the_failed_check(tmp_path)
    version = tmp_path / "registry" / "versions" / "v0001"
    version.mkdir(parents=True)
    (version / "release.json").write_text(json.dumps({"model_sha256": "another model"}))
    (tmp_path / "registry" / "champion.json").write_text(json.dumps({"version": "v0001"}))
    blessing = (tmp_path / "gate" / "blessing.md").read_text()
    line = _one_line_failure(_invoke("gate", data_dir=tmp_path).stderr)
    assert "scored champion none, but the registry's champion to beat is v0001" in line
    assert "run `funnelflow score-champion`" in line
    assert (tmp_path / "gate" / "blessing.md").read_text() == blessing  # no decision on stale metrics
    (tmp_path / "registry" / "champion.json").write_text("{not json")
    assert "champion.json is corrupt" in _one_line_failure(_invoke("gate", data_dir=tmp_path).stderr)


def test_a_relative_params_path_is_the_callers(tmp_path, monkeypatch):
    (tmp_path / "mine.yaml").write_text("data: [generate\n")
    monkeypatch.chdir(tmp_path)
    line = _one_line_failure(_invoke("--params", "mine.yaml", "gate", data_dir=tmp_path).stderr)
    assert "mine.yaml: not valid YAML" in line  # the caller's file was read (not "no such file" in the repo)


def test_temps_of_a_killed_step_are_removed_by_the_next_one(tmp_path):
    """kill -9 inside each kind of atomic write (a folder swap cut between its renames included) and in a
    scratch folder (an adapter's conversion): the next step's start removes the temps and puts the old
    folder back."""
    crash = """
import os, signal, sys
from pathlib import Path
from models.atomic import OLD, atomic_dir, atomic_file, scratch_dir
root = Path(sys.argv[1])
(root / "registry" / "versions").mkdir(parents=True)
aside = root / f".features{OLD}{os.getpid()}"  # a swap cut between its renames: features/ moved aside
aside.mkdir()
(aside / "kept.parquet").write_text("old")
with atomic_file(root / "model" / "model.pt") as f, atomic_dir(root / "raw") as d, \\
        atomic_dir(root / "registry" / "versions" / "v0002") as v, scratch_dir(root / "raw"):
    f.write_text("half"); (d / "dt=2026-09-01").mkdir(); (v / "model.onnx").write_text("half")
    os.kill(os.getpid(), signal.SIGKILL)
"""
    res = subprocess.run([sys.executable, "-c", crash, str(tmp_path)], cwd=REPO, capture_output=True, timeout=60)
    assert res.returncode == -9
    left = sorted(p.name for p in tmp_path.rglob(".*"))
    assert len(left) == 5 and all(".tmp-" in n or ".old-" in n for n in left), left
    assert _cli("generate", "--rows", "300", "--days", "1", data_dir=tmp_path).returncode == 0
    assert not [p for p in tmp_path.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]
    assert (tmp_path / "features" / "kept.parquet").read_text() == "old"


def test_registry_and_validation_failures_are_one_line(tmp_path, monkeypatch):
    assert "no champion to roll back from" in _one_line_failure(_invoke("rollback", data_dir=tmp_path).stderr)
    (tmp_path / "in.parquet").write_bytes(b"")
    line = _one_line_failure(_invoke("predict", "--input", str(tmp_path / "in.parquet"), "--output",
                                     str(tmp_path / "out.parquet"), data_dir=tmp_path).stderr)
    assert line == f"error: no champion in {tmp_path / 'registry'}: run `funnelflow run` (or `dvc repro`) first"

    def failed(params, paths):
        raise ValidationFailed("## Training-set validation FAILED: 4/5 expectations met\n\n| a | b |\n\n"
                               "Data Docs: /x/index.html")

    monkeypatch.setattr(steps, "validate", failed)
    line = _one_line_failure(_invoke("validate", data_dir=tmp_path).stderr)
    assert line == ("error: Training-set validation FAILED: 4/5 expectations met (Data Docs: /x/index.html); "
                    "fix the data, then rerun from `funnelflow ingest`")


@pytest.mark.parametrize(("text", "expected"), [
    (None, "nope.yaml: no such file (pass another one with --params)"),
    ("data: [generate\n", "params.yaml: not valid YAML: line 2, column 1: expected ',' or ']', but got '<stream end>'"),
    ("bad-dropout", "params.yaml: model.dropout: Input should be less than 1"),
])
def test_a_bad_params_file_is_one_line(tmp_path, text, expected):
    path = tmp_path / ("nope.yaml" if text is None else "params.yaml")
    if text == "bad-dropout":
        raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
        raw["model"]["dropout"] = 1.5
        text = yaml.safe_dump(raw)
    if text is not None:
        path.write_text(text)
    line = _one_line_failure(_invoke("--params", str(path), "gate", data_dir=tmp_path).stderr)
    assert line == f"error: {path.parent / expected}"


def test_verbose_shows_the_traceback(tmp_path):
    res = _invoke("-v", "rollback", data_dir=tmp_path)
    assert "Traceback" in res.stderr and res.stderr.strip().splitlines()[-1].startswith("error: no champion")


def test_help_and_a_failing_step_are_quiet_outside_make(tmp_path):
    """A clean environment (no Makefile exports): nothing but the help, and the one error line."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    res = subprocess.run([sys.executable, "-m", "flows.cli", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env=env)
    assert res.returncode == 0 and res.stderr == "" and "score-champion" in res.stdout
    res = _cli("evaluate", data_dir=tmp_path, env=env)
    assert res.returncode == 1 and "run `funnelflow train` first" in _one_line_failure(res.stderr)
