"""Schedules for real: a Prefect server on a free loopback port, a process worker, the deployment of
infra/prefect.yaml, a triggered run to completion, a blessed champion; the server started and stopped
with Prefect's own commands, the worker by PID; nothing left running."""
import json
import os
import subprocess
import sys

import pytest
import yaml

pytestmark = pytest.mark.e2e


def test_deploy_trigger_and_stop(tmp_path, fast_params, monkeypatch):
    from infra import local_prefect as lp

    monkeypatch.setenv("FUNNELFLOW_PREFECT_RUN_DIR", str(tmp_path / "run"))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(fast_params.model_dump(mode="json"), sort_keys=False))
    lp.start(port=lp.free_port())
    try:
        out = lp.deploy()
        assert "daily-retrain" in out
        inspected = lp._prefect("deployment", "inspect", lp.DEPLOYMENT).stdout
        assert "'daily-retrain'" in inspected and "funnelflow-process" in inspected
        assert "0 3 * * *" in inspected  # the daily cron schedule
        # Trigger from a separate process (as a user would), so this process's Prefect settings stay put.
        res = subprocess.run([sys.executable, "-m", "infra.local_prefect", "trigger",
                              "--param", f"params_path={params}", "--param", f"data_dir={tmp_path / 'data'}"],
                             env=lp.env(), cwd=lp.REPO, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stdout + res.stderr[-3000:]
        assert json.loads(res.stdout.strip().splitlines()[-1])["state"] == "COMPLETED"
        pointer = json.loads((tmp_path / "data" / "registry" / "champion.json").read_text())
        assert pointer["version"] == "v0001"
    finally:
        stopped = lp.stop()
    for pid in (stopped["server_pid"], stopped["worker_pid"]):
        assert not lp._alive(pid)
    with pytest.raises(ProcessLookupError):
        os.killpg(stopped["server_pid"], 0)  # nothing of the server's process group is left
