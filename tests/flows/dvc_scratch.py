"""A scratch git repository holding a copy of this repo (its tracked and untracked-but-not-ignored files,
without tests/ and dvc.lock), for running `dvc` and infra/ci_retrain.sh end to end."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def sh(cmd: str, cwd: Path, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``cmd`` in a shell; with ``check``, fail showing the ends of its output."""
    res = subprocess.run(cmd, cwd=cwd, shell=True, capture_output=True, text=True, env=env, timeout=900)
    if check and res.returncode != 0:
        raise AssertionError(f"{cmd} -> {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def make_repo(dst: Path, params: dict) -> tuple[Path, dict[str, str]]:
    """The scratch repo at ``dst`` with ``params`` as its params.yaml, committed; and the env to run in
    (the venv's ``dvc``/``gto``/``python`` first on PATH, a git identity, the repo's own data dir)."""
    files = sh("git ls-files --cached --others --exclude-standard", REPO).stdout.split()
    for f in files:
        if f.startswith("tests/") or f == "dvc.lock" or not (REPO / f).is_file():
            continue
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dst / f)
    write_params(dst, params)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("FUNNELFLOW_DATA_DIR", None)
    env.pop("GITHUB_STEP_SUMMARY", None)
    sh("git init -q -b main && git add -A && git commit -qm init", dst, env=env)
    return dst, env


def write_params(repo: Path, params: dict) -> None:
    """Write ``params`` as the repo's params.yaml."""
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def tiny_params(params) -> dict:
    """``params`` (the test session's) on a tiny generated dataset, one epoch, and a gate that blesses."""
    p = params.model_dump(mode="json")
    p["generate"].update(rows=3000, days=10)
    p["train"].update(epochs=1, batch_size=256, lr=0.002)
    p["model"].update(hidden=[32], tower=[16])
    p["gate"] = {"absolute": [{"metric": "click/auc", "op": ">=", "value": 0.0}], "change": []}
    return p


def ran(output: str) -> list[str]:
    """The stages a `dvc repro`/`dvc exp run` ran, in order."""
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


@dataclass(frozen=True)
class CiRun:
    """A scratch repo after a run of infra/ci_retrain.sh, with its bare git remote and DVC remote."""

    repo: Path
    env: dict[str, str]
    origin: Path
    dvc_remote: Path
    summary: Path
    result: subprocess.CompletedProcess


def first_ci_run(base: Path, params) -> CiRun:
    """A scratch repo on tiny data pushed to a bare ``origin``, then the CI script run once in it."""
    repo, env = make_repo(base / "repo", tiny_params(params))
    origin, dvc_remote = base / "origin.git", base / "dvc-remote"
    sh(f"git init -q --bare -b main {origin}", base, env=env)
    sh(f"git remote add origin {origin} && git push -q origin main", repo, env=env)
    return run_ci(repo, env, origin, dvc_remote, base / "summary-1.md")


def run_ci(repo: Path, env: dict[str, str], origin: Path, dvc_remote: Path, summary: Path) -> CiRun:
    """infra/ci_retrain.sh in ``repo`` against the DVC remote folder ``dvc_remote``."""
    sh(f"dvc remote add -d -f --local ci {dvc_remote}", repo, env=env)
    env = {**env, "GITHUB_STEP_SUMMARY": str(summary)}
    return CiRun(repo, env, origin, dvc_remote, summary, sh("infra/ci_retrain.sh", repo, env=env, check=False))


def clone(run: CiRun, dst: Path) -> Path:
    """A fresh clone of ``run``'s origin, as a CI job starts: no data, the DVC remote configured."""
    sh(f"git clone -q {run.origin} {dst}", dst.parent, env=run.env)
    sh(f"dvc remote add -d -f --local ci {run.dvc_remote}", dst, env=run.env)
    return dst


def tree(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its size: a remote's content, to compare before and after."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
