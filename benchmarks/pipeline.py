"""Wall time and peak memory of every pipeline step at one or more sizes of generated data.

    python -m benchmarks.pipeline --rows 100000 1000000 [--epochs 1] [--steps ...]

Each step runs as its own process (`python -m flows.cli <step>`, what DVC runs), in a fresh data dir
per size, so peak RSS is per step. Prints a markdown table (seconds and peak GB per step and size)
and the time ratio between consecutive sizes next to the row ratio (linear growth = equal ratios).
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
STEPS = ["generate", "ingest", "features build", "features apply", "features materialize", "training-set",
         "validate", "train --no-progress", "evaluate", "gate", "export", "promote"]


def _peak_child_gb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6


def run_step(step: str, data_dir: Path, params: Path) -> tuple[float, float]:
    """(seconds, peak GB) of one step in a child process."""
    code = ("import resource, runpy, sys; sys.argv = ['funnelflow'] + sys.argv[1:]\n"
            "try:\n    runpy.run_module('flows.cli', run_name='__main__')\n"
            "finally:\n    print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)")
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code, "--params", str(params), "--data-dir", str(data_dir),
                          *step.split()], cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    peak = [line for line in res.stderr.splitlines() if line.startswith("PEAK_KB")]
    if res.returncode not in (0,) or not peak:
        raise RuntimeError(f"step {step!r} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return seconds, int(peak[-1].split()[1]) / 1e6


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--steps", nargs="*", default=STEPS)
    ap.add_argument("--work-dir", type=Path, default=None)
    a = ap.parse_args(argv)
    work = a.work_dir or Path(tempfile.mkdtemp(prefix="funnelflow-bench-"))
    results: dict[int, dict[str, tuple[float, float]]] = {}
    for rows in a.rows:
        p = yaml.safe_load((REPO / "params.yaml").read_text())
        p["generate"]["rows"] = rows
        p["train"]["epochs"] = a.epochs
        p["gate"] = {"absolute": [], "change": []}  # this measures cost, not quality: always promote
        params = work / f"params-{rows}.yaml"
        params.parent.mkdir(parents=True, exist_ok=True)
        params.write_text(yaml.safe_dump(p, sort_keys=False))
        results[rows] = {}
        for step in a.steps:
            results[rows][step] = run_step(step, work / f"data-{rows}", params)
            s, gb = results[rows][step]
            print(f"{rows:>10,} rows  {step:<22} {s:8.1f} s  {gb:5.2f} GB", flush=True)
    sizes = a.rows
    print("\n| step | " + " | ".join(f"{r:,} rows: s / peak GB" for r in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for step in a.steps:
        cells = [f"{results[r][step][0]:.1f} / {results[r][step][1]:.2f}" for r in sizes]
        print(f"| {step.split(' --')[0]} | " + " | ".join(cells) + " |")
    totals = [sum(v[0] for v in results[r].values()) for r in sizes]
    print("| **total** | " + " | ".join(f"**{t:.1f}** s" for t in totals) + " |")
    for (r0, t0), (r1, t1) in zip(zip(sizes, totals), zip(sizes[1:], totals[1:])):
        print(f"\n{r0:,} -> {r1:,} rows: x{r1 / r0:.1f} rows, x{t1 / t0:.2f} time")
    print(f"\n(machine: {os.cpu_count()} cores; data under {work})")


if __name__ == "__main__":
    main()
