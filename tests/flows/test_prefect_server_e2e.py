"""Schedules for real: a Prefect server on a free loopback port, a process worker, the deployment of
infra/prefect.yaml with its typed parameters, a run triggered on a landing folder of day partitions with
typed overrides, to completion and a blessed champion; the server started and stopped with Prefect's own
commands, the worker by PID; nothing left running."""
import json
import os
import subprocess
import sys

import pytest
import yaml

pytestmark = pytest.mark.e2e


def test_deploy_trigger_and_stop(tmp_path, fast_params, monkeypatch):
    from flows import steps
    from flows.params import Paths
    from infra import local_prefect as lp

    monkeypatch.setenv("FUNNELFLOW_PREFECT_RUN_DIR", str(tmp_path / "run"))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(fast_params.model_dump(mode="json"), sort_keys=False))
    landing = tmp_path / "landing"  # where the day partitions land (dt=YYYY-MM-DD/)
    steps.generate(fast_params, Paths(tmp_path / "generator"), out=landing)
    lp.start(port=lp.free_port())
    try:
        out = lp.deploy()
        assert "daily-retrain" in out
        inspected = lp._prefect("deployment", "inspect", lp.DEPLOYMENT).stdout
        assert "'daily-retrain'" in inspected and "funnelflow-process" in inspected
        assert "0 3 * * *" in inspected  # the daily cron schedule
        assert "'source': 'landing'" in inspected and "ModelOverrides" in inspected  # typed parameters
        # Typed overrides of training and the gate (one quick epoch, a bound it passes).
        overrides = {"train": {"epochs": 1}, "gate": {"absolute": [{"metric": "click/auc", "op": ">=", "value": 0.5}]}}
        # Trigger from a separate process (as a user would), so this process's Prefect settings stay put.
        res = subprocess.run([sys.executable, "-m", "infra.local_prefect", "trigger",
                              "--param", f"params_path={params}", "--param", f"data_dir={tmp_path / 'data'}",
                              "--param", f"source={landing}", "--param", f"overrides={json.dumps(overrides)}"],
                             env=lp.env(), cwd=lp.REPO, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stdout + res.stderr[-3000:]
        assert json.loads(res.stdout.strip().splitlines()[-1])["state"] == "COMPLETED"
        pointer = json.loads((tmp_path / "data" / "registry" / "champion.json").read_text())
        assert pointer["version"] == "v0001"
        used = yaml.safe_load((tmp_path / "data" / "registry" / "versions" / "v0001" / "params.yaml").read_text())
        assert used["train"]["epochs"] == 1  # the overrides reached the run
        assert used["gate"]["absolute"] == overrides["gate"]["absolute"] and used["gate"]["change"]
        raw = json.loads((tmp_path / "data" / "raw" / "partitions.json").read_text())
        assert sorted(raw["partitions"]) == sorted(p.name.removeprefix("dt=") for p in landing.glob("dt=*"))
    finally:
        stopped = lp.stop()
    for pid in (stopped["server_pid"], stopped["worker_pid"]):
        assert not lp._alive(pid)
    with pytest.raises(ProcessLookupError):
        os.killpg(stopped["server_pid"], 0)  # nothing of the server's process group is left
