"""Feast stores built from explicit folders: independent in one process, equal to the CLI's yaml, and
the `feast` CLI on the repo with one-line errors."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from features import store
from features.contract import read_raw
from features.engineering import build_feature_tables, table_glob
from features.store import FeastPaths
from features.views import VIEWS

REPO = Path(__file__).resolve().parents[2]
FEATURE_REPO = REPO / "features" / "feature_repo"
pytestmark = pytest.mark.e2e


def test_the_clis_feature_store_yaml_equals_the_code_config(tmp_path, monkeypatch):
    from feast.repo_config import load_repo_config

    monkeypatch.setenv("FUNNELFLOW_DATA_DIR", str(tmp_path))
    cli = load_repo_config(FEATURE_REPO, FEATURE_REPO / "feature_store.yaml")
    code = store.repo_config(FeastPaths(tmp_path / "feast", tmp_path / "features"))
    assert cli.model_dump(exclude={"repo_path"}) == code.model_dump(exclude={"repo_path"})
    assert cli.offline_store == code.offline_store and cli.online_store == code.online_store
    assert cli.registry == code.registry


def test_the_yamls_commented_redis_store_equals_the_code_config(tmp_path, monkeypatch):
    from feast.repo_config import load_repo_config

    from features.engineering import RedisOnline

    text = (FEATURE_REPO / "feature_store.yaml").read_text()
    raw = yaml.safe_load(text)
    commented = text[text.index("# online_store:"):text.index("offline_store:")]  # the yaml's Redis alternative
    raw.update(yaml.safe_load("\n".join(line.removeprefix("# ") for line in commented.splitlines())))
    (tmp_path / "feature_store.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("FUNNELFLOW_DATA_DIR", str(tmp_path))
    cli = load_repo_config(FEATURE_REPO, tmp_path / "feature_store.yaml")
    online = RedisOnline(kind="redis", connection="127.0.0.1:6379")
    code = store.repo_config(FeastPaths(tmp_path / "feast", tmp_path / "features", online))
    assert cli.online_store.type == "redis" and cli.online_store == code.online_store
    assert cli.model_dump(exclude={"repo_path"}) == code.model_dump(exclude={"repo_path"})


def _store_on(root, raw, params, windows):
    paths = FeastPaths(root / "feast", root / "features")
    cfg = params.features.model_copy(update={"windows_days": windows})
    build_feature_tables(raw, paths.tables, params.task_graph, cfg, VIEWS)
    store.apply(paths, cfg.feature_service, VIEWS)
    return paths


def _retrieved_columns(paths, entities, service):
    return set(next(store.historical_feature_batches(paths, entities, service)).columns)


def test_two_stores_on_two_data_dirs_in_one_process_do_not_interfere(pipeline_data, params, tmp_path):
    service = params.features.feature_service
    a = _store_on(tmp_path / "a", pipeline_data.raw, params, (1, 7))
    b = _store_on(tmp_path / "b", pipeline_data.raw, params, (3,))  # applied after a, same names
    entities = read_raw(pipeline_data.raw, "impressions").head(500)
    cols_a, cols_b = _retrieved_columns(a, entities, service), _retrieved_columns(b, entities, service)
    assert {"user_activity__clicks_1d", "user_activity__clicks_7d"} <= cols_a
    assert "user_activity__clicks_3d" not in cols_a
    assert "user_activity__clicks_3d" in cols_b and "user_activity__clicks_7d" not in cols_b
    for paths in (a, b):
        fs = store.open_store(paths)
        assert {v.batch_source.path for v in fs.list_feature_views()} == {
            str(table_glob(paths.tables, v.name)) for v in VIEWS}
        store.materialize(paths)
        assert paths.sqlite.exists() and paths.registry.exists()
    assert _retrieved_columns(a, entities, service) == cols_a  # still a's after b's materialize


def _feast_cli(*args, data_dir=None):
    env = {k: v for k, v in os.environ.items() if k not in ("FUNNELFLOW_DATA_DIR", "FUNNELFLOW_PARAMS")}
    if data_dir is not None:
        env["FUNNELFLOW_DATA_DIR"] = str(data_dir)
    feast = Path(sys.executable).parent / "feast"
    return subprocess.run([str(feast), "-c", "features/feature_repo", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", [["plan"], ["feature-views", "list"]], ids=["plan", "list"])
def test_feast_cli_without_its_setting_prints_one_line(command):
    run = _feast_cli(*command)
    assert run.returncode != 0
    assert "Traceback" not in run.stdout + run.stderr, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "FUNNELFLOW_DATA_DIR" in lines[0] and "feast -c features/feature_repo plan" in lines[0]


def test_feast_cli_before_features_build_prints_one_line(tmp_path):
    run = _feast_cli("plan", data_dir=tmp_path)
    assert run.returncode != 0 and "Traceback" not in run.stdout + run.stderr, run.stderr
    assert run.stderr.strip() == f"{tmp_path}/features/tables.json is missing: run `funnelflow features build` first"


def test_feast_cli_plan_on_the_pipelines_data_dir(pipeline_data):
    run = _feast_cli("plan", data_dir=pipeline_data.root)
    assert run.returncode == 0, run.stderr
    for view in VIEWS:
        assert f"feature view {view.name}" in run.stdout, run.stdout
