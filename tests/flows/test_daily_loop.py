"""Days of operation through the scheduled deployment (benchmarks/daily_loop.py, short): a real local Prefect
server and process worker, the deployment of infra/prefect.yaml, data landing day by day and each day's run
triggered on the landing folder; a day delivered with flipped labels is refused and the champion stays; its
re-delivery the next day replaces that day only; an empty day is quarantined and the champion stays; a
rollback moves the pointer back; the server and worker are stopped by PID, nothing left running."""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pandas as pd
import pytest

from features.contract import read_raw
from flows.params import REPO_ROOT

pytestmark = pytest.mark.e2e


def test_days_of_operation(tmp_path):
    from flows.registry import Registry

    # Its own process: the simulation points its process's Prefect settings at the server it starts.
    res = subprocess.run([sys.executable, "-m", "benchmarks.daily_loop", "--days", "6", "--history-days", "3",
                          "--drift-from-day", "0", "--frozen-day", "3", "--bad-day", "4", "--empty-day", "5",
                          "--rows-per-day", "2500", "--window-days", "6", "--epochs", "1", "--min-click-auc", "0.0",
                          "--no-change-bounds", "--work-dir", str(tmp_path)],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    days = {d["day"]: SimpleNamespace(**d) for d in json.loads((tmp_path / "days.json").read_text())}
    data = tmp_path / "data"

    assert days[3].state == "COMPLETED" and days[3].champion == "v0001"
    assert days[3].auc_champion == days[3].auc_frozen  # the frozen model is day 3's champion
    # Flipped labels: refused (validation or gate), the champion stays.
    assert days[4].state != "COMPLETED" and days[4].champion == "v0001"
    # Re-delivered the next day: that day, and only it, replaced with the good data.
    bad_date = days[4].date
    stored = read_raw(data / "raw", "impressions", days=[bad_date]).sort_values("impression_id")
    good = pd.read_parquet(tmp_path / "future" / f"dt={bad_date}" / "impressions.parquet").sort_values("impression_id")
    assert stored["click"].tolist() == good["click"].tolist()
    raw = json.loads((data / "raw" / "partitions.json").read_text())
    # The empty day: quarantined with its reason, the run refused, the champion kept.
    assert days[5].state != "COMPLETED" and days[5].champion == days[4].champion
    assert "no impressions" in (data / "quarantine" / f"dt={days[5].date}" / "reason.txt").read_text()
    assert days[5].date not in raw["partitions"]
    # The next good day is trained on and promoted; its champion and the frozen model score it.
    assert days[6].state == "COMPLETED" and days[6].champion not in (None, "v0001")
    assert days[6].auc_champion is not None and days[6].auc_frozen is not None
    # The deployment of infra/prefect.yaml ran it; what was started is stopped.
    deployed = (tmp_path / "deployed.txt").read_text()
    assert "daily-retrain" in deployed
    stopped = json.loads((tmp_path / "stopped.json").read_text())
    for pid in (stopped["server_pid"], stopped["worker_pid"]):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(ProcessLookupError):
        os.killpg(stopped["server_pid"], 0)  # nothing of the server's process group is left
    # The operator's rollback at the end.
    registry = Registry(data / "registry")
    assert registry.history()[-1]["event"] == "rollback"
    assert registry.champion()["version"] < days[6].champion
