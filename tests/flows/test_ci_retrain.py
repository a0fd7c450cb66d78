"""infra/ci_retrain.sh end to end in a temporary git repository with a bare ``origin`` and a local DVC
remote: a blessing pushes the data and commits and pushes dvc.lock, the reports and the registry's GTO
tags; a refusal in a fresh clone (as a CI job starts) gates against the pulled champion and changes
nothing. On a clone of that state, `dvc pull` restores every stage, `dvc exp run` records a refused
candidate as an experiment and never promotes even a blessed one, and `dvc metrics diff` / `dvc plots
diff` / `dvc exp show` read the git-tracked reports. First, fast: the options of the DVC stages that make
this possible. Every user of the session fixture ``ci_blessed`` (one `dvc repro`) is in this file, so
`pytest -n 2 --dist loadfile` builds it once."""
import json
import re

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from tests.flows.dvc_scratch import clone, ran, run_ci, sh, tree


def _cli(data_dir, *args):
    return CliRunner().invoke(app, ["--data-dir", str(data_dir), *args])


def test_a_refused_candidate_leaves_no_bundle_and_an_experiment_never_promotes(tmp_path, monkeypatch):
    (tmp_path / "gate").mkdir()
    blessing = tmp_path / "gate" / "blessing.json"
    blessing.write_text(json.dumps({"blessed": False, "checks": []}))
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "model.onnx").write_text("the last blessed run's bundle")
    res = _cli(tmp_path, "export", "--if-blessed")
    assert res.exit_code == 0, res.output
    assert [p.name for p in (tmp_path / "bundle").iterdir()] == ["skipped.json"]  # no stale bundle
    res = _cli(tmp_path, "promote", "--if-blessed")
    assert res.exit_code == 0 and '"promoted": false' in res.output, res.output
    assert not any((tmp_path / "registry").iterdir())
    # Inside `dvc exp run`, not even a blessed candidate is promoted (nor is it an error).
    blessing.write_text(json.dumps({"blessed": True, "checks": []}))
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")
    res = _cli(tmp_path, "promote")
    assert res.exit_code == 0 and "experiment 'exp-1' (dvc exp run)" in res.output, res.output
    assert not any((tmp_path / "registry").iterdir())


@pytest.mark.e2e
def test_a_blessing_pushes_the_data_and_commits_lock_reports_and_registry_tags(ci_blessed):
    run = ci_blessed
    assert run.result.returncode == 0, run.result.stdout[-3000:] + run.result.stderr[-3000:]
    assert "Blessed: champion v0001" in run.summary.read_text()
    head = sh("git log -1 --format=%s HEAD", run.repo).stdout.strip()
    assert head == "retrain: champion v0001 (blessed by the gate)"
    committed = set(sh("git show --name-only --format= HEAD", run.repo).stdout.split())
    assert {"dvc.lock", "reports/gate/gate.json", "reports/evaluation/metrics.json"} <= committed
    assert not any(f.startswith("data/") for f in committed)
    assert json.loads((run.repo / "reports" / "gate" / "gate.json").read_text())["blessed"] == 1
    # The commit and the GTO tags reached origin; every cached out reached the DVC remote.
    remote_refs = sh("git ls-remote origin", run.repo).stdout
    assert sh("git rev-parse HEAD", run.repo).stdout.strip() + "\trefs/heads/main" in remote_refs
    assert "refs/tags/funnel-model@v1.0.0" in remote_refs and "refs/tags/funnel-model#prod#1" in remote_refs
    assert "v1.0.0" in sh("gto show funnel-model#prod", run.repo, env=run.env).stdout
    assert "in sync" in sh("dvc status --cloud", run.repo, env=run.env).stdout


@pytest.mark.e2e
def test_a_refusal_in_a_fresh_clone_gates_against_the_pulled_champion_and_changes_nothing(ci_blessed, tmp_path):
    repo = clone(ci_blessed, tmp_path / "clone")
    env = ci_blessed.env
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["gate"]["absolute"] = [{"metric": "click/auc", "op": ">=", "value": 0.999}]  # the pushed params change
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    sh("git commit -qam 'stricter gate' && git push -q origin main", repo, env=env)
    before = (sh("git rev-parse HEAD", repo).stdout, sh("git ls-remote origin", repo).stdout,
              tree(ci_blessed.dvc_remote))

    run = run_ci(repo, env, ci_blessed.origin, ci_blessed.dvc_remote, tmp_path / "summary.md")

    assert run.result.returncode == 1, run.result.stdout[-3000:] + run.result.stderr[-3000:]
    text = run.summary.read_text()
    assert "NOT BLESSED" in text and "Not committed, nothing pushed:** the gate refused the candidate" in text
    assert re.search(r"\| reports/gate/gate.json \| blessed +\| 1 +\| 0 ", text)  # the metrics diff vs HEAD
    blessing = json.loads((repo / "data" / "gate" / "blessing.json").read_text())
    assert not blessing["blessed"]
    # The champion it was gated against came from the DVC remote, and stays the champion.
    assert json.loads((repo / "data" / "registry" / "champion.json").read_text())["version"] == "v0001"
    after = (sh("git rev-parse HEAD", repo).stdout, sh("git ls-remote origin", repo).stdout,
             tree(ci_blessed.dvc_remote))
    assert after == before
    assert sh("git tag --points-at HEAD", repo).stdout == ""


def _set_params(repo, **sections):
    p = yaml.safe_load((repo / "params.yaml").read_text())
    for name, fields in sections.items():
        p[name].update(fields)
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def _registry(repo):
    registry = repo / "data" / "registry"
    return json.loads((registry / "champion.json").read_text())["version"], sorted(registry.rglob("*"))


@pytest.mark.e2e
def test_experiments_are_recorded_refused_or_not_and_never_promote(ci_blessed, tmp_path):
    repo, env = clone(ci_blessed, tmp_path / "clone"), ci_blessed.env
    sh("dvc pull", repo, env=env)
    champion = _registry(repo)
    assert champion[0] == "v0001"

    # A refused candidate: the gate records it, the experiment finishes. Everything pulled is up to
    # date: only the gate and below ran (and the Feast stages, whose stores a fresh clone lacks).
    _set_params(repo, gate={"absolute": [{"metric": "click/auc", "op": ">=", "value": 0.999}]})
    refused = sh("dvc exp run -n refused", repo, env=env)
    assert ran(refused.stdout) == ["features_apply", "materialize", "score_champion", "gate", "export", "promote"], \
        refused.stdout[-2000:]
    assert '"reason": "the gate refused the candidate' in refused.stdout
    assert json.loads((repo / "data" / "bundle" / "skipped.json").read_text())["exported"] is False
    assert _registry(repo) == champion

    # A blessed candidate of a training-param change: train and below rerun, nothing is promoted.
    _set_params(repo, gate={"absolute": [{"metric": "click/auc", "op": ">=", "value": 0.0}]},
                train={"lr": 0.003})
    blessed = sh("dvc exp run -n blessed", repo, env=env)
    assert ran(blessed.stdout)[0] == "train", blessed.stdout[-2000:]
    assert not {"generate", "ingest", "features", "training_set", "validate"} & set(ran(blessed.stdout))
    assert '"promoted": false' in blessed.stdout and "experiment 'blessed' (dvc exp run)" in blessed.stdout
    assert _registry(repo) == champion

    # Both recorded, with the gate's decision as a metric.
    exps = {e["name"]: e for e in _experiments(sh("dvc exp show --json", repo, env=env).stdout)}
    assert _gate_metric(exps["refused"]) == 0 and _gate_metric(exps["blessed"]) == 1

    # The workspace (the blessed experiment applied) against HEAD, from the git-tracked reports.
    diff = json.loads(sh("dvc metrics diff --json HEAD", repo, env=env).stdout)
    assert "click/auc" in diff["reports/evaluation/metrics.json"]
    plots = json.loads(sh("dvc plots diff --json HEAD", repo, env=env).stdout)["data"]
    for name, (x, y) in {"ROC": ("fpr", "tpr"), "Gate checks": ("value", "check")}.items():
        spec = plots[name][0]
        assert set(spec["revisions"]) == {"workspace", "HEAD"}, name
        row = spec["content"]["data"]["values"][0]
        assert x in row and y in row, (name, row)


def _experiments(show_json: str) -> list[dict]:
    """The experiments of `dvc exp show --json`, each with its name and its metrics by file."""
    out = []
    for baseline in json.loads(show_json):
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                out.append({"name": rev.get("name") or exp.get("name"), "metrics": rev["data"]["metrics"]})
    return out


def _gate_metric(exp: dict) -> int:
    return exp["metrics"]["reports/gate/gate.json"]["data"]["blessed"]
