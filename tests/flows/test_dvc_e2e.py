"""`dvc repro` end to end in a scratch copy of the repo: full run, a no-op rerun, and a params change
that reruns only the stages below it. Also the CI retraining script against a local remote."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def _sh(cmd, cwd, check=True, env=None):
    res = subprocess.run(cmd, cwd=cwd, shell=True, capture_output=True, text=True, env=env, timeout=900)
    if check and res.returncode != 0:
        raise AssertionError(f"{cmd} -> {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


@pytest.fixture()
def scratch_repo(tmp_path, fast_params):
    files = _sh("git ls-files --cached --others --exclude-standard", REPO).stdout.split()
    dst = tmp_path / "repo"
    for f in files:
        if f.startswith("tests/") or not (REPO / f).is_file():
            continue
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dst / f)
    (dst / "dvc.lock").unlink(missing_ok=True)
    (dst / "params.yaml").write_text(yaml.safe_dump(fast_params.model_dump(mode="json"), sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("FUNNELFLOW_DATA_DIR", None)
    _sh("git init -q && git add -A && git commit -qm init", dst, env=env)
    return dst, env


def _ran(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def test_repro_noop_and_partial_rerun(scratch_repo):
    repo, env = scratch_repo
    first = _sh("dvc repro", repo, env=env)
    assert _ran(first.stdout)[-1] == "promote", first.stdout[-2000:]
    assert (repo / "data" / "registry" / "champion.json").exists()
    # A no-op rerun: only score_champion (always_changed: the registry is outside DVC) runs, and as the
    # champion to beat is unchanged, nothing below it does.
    assert _ran(_sh("dvc repro", repo, env=env).stdout) == ["score_champion"]
    # Change a training param: only train and the stages below it rerun.
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["train"]["lr"] = p["train"]["lr"] * 0.9
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    third = _sh("dvc repro", repo, env=env, check=False)
    assert _ran(third.stdout)[0] == "train", third.stdout[-2000:]
    assert not {"generate", "ingest", "features", "training_set", "validate"} & set(_ran(third.stdout))
    metrics = _sh("dvc metrics show --json", repo, env=env).stdout
    assert "click/auc" in metrics


def test_ci_retrain_script_pushes_only_when_blessed(scratch_repo, tmp_path):
    repo, env = scratch_repo
    remote = tmp_path / "remote"
    _sh(f"dvc remote add -d -f --local ci {remote}", repo, env=env)
    summary = tmp_path / "summary.md"
    env = {**env, "GITHUB_STEP_SUMMARY": str(summary)}
    # An impossible absolute bound: repro fails at the gate, nothing is pushed.
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["gate"]["absolute"] = [{"metric": "click/auc", "op": ">=", "value": 0.999}]
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    res = _sh("infra/ci_retrain.sh", repo, env=env, check=False)
    assert res.returncode == 1
    text = summary.read_text()
    assert "NOT BLESSED" in text and "not pushed" in text
    assert not remote.exists() or not any(remote.rglob("*"))
    # A reachable bound: blessed, promoted, pushed.
    p["gate"]["absolute"] = [{"metric": "click/auc", "op": ">=", "value": 0.55}]
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    res = _sh("infra/ci_retrain.sh", repo, env=env, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "pushed" in summary.read_text() and any(remote.rglob("*"))
