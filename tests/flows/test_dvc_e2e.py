"""DVC on a clone of the state CI leaves (tests/flows/conftest.py ``ci_blessed``): `dvc pull` restores
every stage, `dvc exp run` records a refused candidate as an experiment and never promotes even a
blessed one, and `dvc metrics diff` / `dvc plots diff` / `dvc exp show` read the git-tracked reports."""
import json

import pytest
import yaml

from tests.flows.dvc_scratch import clone, ran, sh

pytestmark = pytest.mark.e2e


def _set_params(repo, **sections):
    p = yaml.safe_load((repo / "params.yaml").read_text())
    for name, fields in sections.items():
        p[name].update(fields)
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def _registry(repo):
    registry = repo / "data" / "registry"
    return json.loads((registry / "champion.json").read_text())["version"], sorted(registry.rglob("*"))


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
