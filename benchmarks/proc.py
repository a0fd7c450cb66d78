"""Run a command in a child process and watch it: wall time, peak RSS (children included), a kill switch."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def _rss_gb(proc: psutil.Process) -> float:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 1e9


def watched(cmd: list[str], max_gb: float = 20.0, max_seconds: float = 3600.0) -> dict:
    """Run ``cmd``; wall seconds, peak GB, stdout, and why it was killed (if it was)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps, peak, killed = psutil.Process(proc.pid), 0.0, None
    while proc.poll() is None:
        peak = max(peak, _rss_gb(ps))
        elapsed = time.perf_counter() - t0
        if peak > max_gb or elapsed > max_seconds:
            killed = f"killed at {peak:.1f} GB" if peak > max_gb else f"killed after {elapsed:.0f} s"
            for p in [*ps.children(recursive=True), ps]:
                p.kill()
            break
        time.sleep(0.2)
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    if proc.returncode != 0 and not killed:
        killed = f"failed: {err.strip().splitlines()[-1][:120] if err.strip() else proc.returncode}"
    return {"seconds": seconds, "peak_gb": peak, "stdout": out, "killed": killed}


