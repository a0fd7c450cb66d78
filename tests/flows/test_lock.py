"""One writer per data dir, with real processes contending for the lock."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.lock import DataDirLocked, data_dir_lock

REPO = Path(__file__).resolve().parents[2]
HOLD = ("import sys, time\n"
        "from pathlib import Path\n"
        "from flows.lock import data_dir_lock\n"
        "with data_dir_lock(Path(sys.argv[1]), 'funnelflow train'):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(float(sys.argv[2]))\n")


def _holder(root: Path, seconds: float) -> subprocess.Popen:
    """Another process holding the data dir's lock for ``seconds``; returns once it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root), str(seconds)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_holder_fails_with_one_line_naming_the_first(tmp_path):
    proc = _holder(tmp_path, 60)
    try:
        with pytest.raises(DataDirLocked) as err, data_dir_lock(tmp_path, "funnelflow train"):
            pytest.fail("entered a held lock")
        msg = str(err.value)
        assert msg.startswith(f"data dir {tmp_path.resolve()} is in use by pid {proc.pid} (`funnelflow train`, "
                              f"host {socket.gethostname()}, since 20")
        assert msg.endswith("wait for it to finish or pass --wait SECONDS") and "\n" not in msg
    finally:
        proc.kill()
        proc.wait()


def test_a_waiting_holder_gets_the_lock_when_the_first_finishes(tmp_path):
    proc = _holder(tmp_path, 1.0)
    t0 = time.monotonic()
    with data_dir_lock(tmp_path, "second", wait_s=30):
        assert 0.8 < time.monotonic() - t0 < 20  # it waited for the first to finish
    assert proc.wait(timeout=10) == 0


def test_a_killed_holder_leaves_no_lock_behind(tmp_path):
    proc = _holder(tmp_path, 60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with data_dir_lock(tmp_path, "after a crash"):
        pass


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    """`funnelflow run` holds it and the Prefect flow it calls takes it again."""
    with data_dir_lock(tmp_path, "funnelflow run"), data_dir_lock(tmp_path, "flow"):
        pass
    proc = _holder(tmp_path, 0)  # released: another process gets it
    proc.wait()


def test_the_cli_refuses_a_busy_data_dir_and_waits_with_wait(tmp_path):
    """Two commands on one data dir: the second exits 1 with the holder's line; with --wait it runs
    once the first is done (here: rollback, which then says there is no champion)."""
    from typer.testing import CliRunner

    from flows.cli import app

    def cli(*args):
        return CliRunner().invoke(app, ["--data-dir", str(tmp_path), *args])

    proc = _holder(tmp_path, 60)
    try:
        busy = cli("rollback")
    finally:
        proc.kill()
        proc.wait()
    assert busy.exit_code == 1
    assert busy.output.startswith(f"error: data dir {tmp_path.resolve()} is in use by pid {proc.pid} "
                                  "(`funnelflow train`") and len(busy.output.splitlines()) == 1
    proc = _holder(tmp_path, 2)
    t0 = time.monotonic()
    waited = cli("--wait", "60", "rollback")
    assert time.monotonic() - t0 > 1.5 and proc.wait(timeout=10) == 0  # it ran once the holder was done
    assert waited.exit_code == 1 and waited.output.startswith("error: no champion to roll back from")
