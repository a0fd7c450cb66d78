"""Wall time and peak memory of every pipeline step at one or more sizes of generated data.

    python -m benchmarks.pipeline --rows 100000 1000000 [--epochs 1] [--steps ...]
    python -m benchmarks.pipeline --flow --rows 100000 1000000 10000000 --plot docs/img/pipeline_scaling.png

Default: each step runs as its own process (`python -m flows.cli <step>`, what DVC runs), in a fresh
data dir per size, so peak RSS is per step. ``--flow``: `funnelflow run` (the Prefect flow) once per
size, watched from outside: step seconds from the flow's result, peak RSS of the whole run. Prints a
markdown table (seconds and peak GB per step and size) and the time ratio between consecutive sizes
next to the row ratio (linear growth = equal ratios); ``--plot`` draws seconds against rows, log-log.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
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


FLOW_STEPS = ["generate", "ingest", "features", "features_apply", "materialize", "training_set", "validate",
              "train", "evaluate", "gate", "export", "promote"]


def run_flow(data_dir: Path, params: Path) -> tuple[dict[str, float], float, float]:
    """`funnelflow run` in a child process: (seconds per step, total seconds, peak GB)."""
    from benchmarks.proc import watched

    r = watched([sys.executable, "-m", "flows.cli", "--params", str(params), "--data-dir", str(data_dir), "run"])
    if r["killed"]:
        raise RuntimeError(f"funnelflow run at {data_dir}: {r['killed']}")
    result = json.loads(r["stdout"][r["stdout"].index("{\n"):])
    return result["steps"], r["seconds"], r["peak_gb"]


def plot(results: dict[int, dict[str, tuple[float, float]]], totals: dict[int, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(results)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    colors = plt.get_cmap("tab20")(range(20))  # 20 distinct colours: one per step, none repeated
    for i, step in enumerate(results[sizes[0]]):
        ax.plot(sizes, [max(results[r][step][0], 1e-2) for r in sizes], marker="os^D"[i % 4], lw=1,
                color=colors[i % len(colors)], label=step.split(" --")[0])
    ax.plot(sizes, [totals[r] for r in sizes], marker="s", lw=3, color="black", label="total (wall)")
    ref = [totals[sizes[0]] * r / sizes[0] for r in sizes]
    ax.plot(sizes, ref, ls="--", color="grey", label="linear from the smallest total")
    ax.set(xscale="log", yscale="log", xlabel="generated impressions", ylabel="seconds",
           title=f"funnelflow run, per step ({os.cpu_count()}-core CPU)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--steps", nargs="*", default=STEPS)
    ap.add_argument("--work-dir", type=Path, default=None)
    ap.add_argument("--flow", action="store_true", help="time `funnelflow run` (the Prefect flow) per size")
    ap.add_argument("--plot", type=Path, default=None, help="write a log-log PNG of seconds per step")
    ap.add_argument("--replot", action="store_true",
                    help="no runs: table and plot again from <work-dir>/results.json of an earlier run")
    a = ap.parse_args(argv)
    work = a.work_dir or Path(tempfile.mkdtemp(prefix="funnelflow-bench-"))
    results: dict[int, dict[str, tuple[float, float]]] = {}
    wall: dict[int, float] = {}
    if a.replot:
        saved = json.loads((work / "results.json").read_text())
        a.rows, a.flow = saved["rows"], saved["flow"]
        results = {int(r): {k: tuple(v) for k, v in d.items()} for r, d in saved["results"].items()}
        wall = {int(r): v for r, v in saved["wall"].items()}
    for rows in [] if a.replot else a.rows:
        p = yaml.safe_load((REPO / "params.yaml").read_text())
        p["generate"]["rows"] = rows
        p["train"]["epochs"] = a.epochs
        p["gate"] = {"absolute": [], "change": []}  # this measures cost, not quality: always promote
        params = work / f"params-{rows}.yaml"
        params.parent.mkdir(parents=True, exist_ok=True)
        params.write_text(yaml.safe_dump(p, sort_keys=False))
        results[rows] = {}
        if a.flow:
            seconds, wall[rows], peak = run_flow(work / f"data-{rows}", params)
            results[rows] = {step: (seconds[step], peak) for step in FLOW_STEPS}
            print(f"{rows:>10,} rows  funnelflow run {wall[rows]:8.1f} s  peak {peak:5.2f} GB  {seconds}", flush=True)
            continue
        for step in a.steps:
            results[rows][step] = run_step(step, work / f"data-{rows}", params)
            s, gb = results[rows][step]
            print(f"{rows:>10,} rows  {step:<22} {s:8.1f} s  {gb:5.2f} GB", flush=True)
        wall[rows] = sum(v[0] for v in results[rows].values())
    if not a.replot:
        (work / "results.json").write_text(json.dumps({"rows": a.rows, "flow": a.flow, "results": results,
                                                       "wall": wall}, indent=1))
    sizes = a.rows
    steps = FLOW_STEPS if a.flow else a.steps
    unit = "s" if a.flow else "s / peak GB"
    print("\n| step | " + " | ".join(f"{r:,} rows: {unit}" for r in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for step in steps:
        cells = [f"{results[r][step][0]:.1f}" if a.flow else f"{results[r][step][0]:.1f} / {results[r][step][1]:.2f}"
                 for r in sizes]
        print(f"| {step.split(' --')[0]} | " + " | ".join(cells) + " |")
    totals = [wall[r] for r in sizes]
    label = "**total** (wall, incl. Prefect start-up) / peak GB" if a.flow else "**total**"
    print(f"| {label} | " + " | ".join(f"**{wall[r]:.1f}** s" + (f" / {results[r][steps[0]][1]:.2f}" if a.flow else "")
                                    for r in sizes) + " |")
    if a.plot:
        plot(results, wall, a.plot)
        print(f"\nplot: {a.plot}")
    for (r0, t0), (r1, t1) in pairwise(zip(sizes, totals, strict=True)):
        print(f"\n{r0:,} -> {r1:,} rows: x{r1 / r0:.1f} rows, x{t1 / t0:.2f} time")
    print(f"\n(machine: {os.cpu_count()} cores; data under {work})")


if __name__ == "__main__":
    main()
