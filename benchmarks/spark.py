"""The training-set step on Spark against the embedded DuckDB ASOF store, same data, same code.

    python -m benchmarks.spark --rows 1000000 [--driver-memory 4g] [--work-dir DIR]

Per size, one generated dataset (prepared with the pipeline's own steps by benchmarks.retrieval,
reused when ``--work-dir`` already holds it) and a second data dir whose raw store and feature tables
are links to it, applied with params.yaml ``features.offline_store: {kind: spark, master: local[2]}``.
Then `funnelflow training-set` once per engine, each in its own process from an empty retrieval
cache, watched (benchmarks/proc.py): wall time, peak RSS of the whole process tree (the Spark JVM is
a child of the Python process), rows written, and whether the two training sets are identical (the
manifests' data hashes). A run is killed at ``--max-gb`` or ``--max-seconds``. Prints a markdown table
with the load average around each run: on a shared machine the times are only as good as that.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import psutil
import yaml

from benchmarks.pipeline import REPO, run_step
from benchmarks.proc import watched
from benchmarks.retrieval import prepare


def spark_dir(rows: int, data_dir: Path, master: str, driver_memory: str) -> tuple[Path, Path]:
    """(data dir, params file) for Spark: links to ``data_dir``'s raw store and tables, applied on Spark."""
    spark = data_dir.parent / f"{data_dir.name}-spark"
    params = data_dir.parent / f"params-{rows}-spark.yaml"
    p = yaml.safe_load((data_dir.parent / f"params-{rows}.yaml").read_text())
    p["features"]["offline_store"] = {"kind": "spark", "master": master, "driver_memory": driver_memory}
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    spark.mkdir(exist_ok=True)
    for name in ("raw", "features"):
        if not (spark / name).exists():
            (spark / name).symlink_to((data_dir / name).resolve(), target_is_directory=True)
    run_step("features apply", spark, params)
    return spark, params


def training_set(data_dir: Path, params: Path, max_gb: float, max_seconds: float) -> dict:
    """`funnelflow training-set` from an empty retrieval cache, watched."""
    shutil.rmtree(data_dir / "retrieved", ignore_errors=True)
    shutil.rmtree(data_dir / "training_set", ignore_errors=True)
    load = os.getloadavg()[0]
    r = watched([sys.executable, "-m", "flows.cli", "--params", str(params), "--data-dir", str(data_dir),
                 "training-set"], max_gb, max_seconds)
    r["load"] = (load, os.getloadavg()[0])
    if not r["killed"]:
        manifest = json.loads((data_dir / "training_set" / "manifest.json").read_text())
        r["rows"] = sum(s["rows"] for s in manifest["splits"].values())
        r["data_hash"] = manifest["data_hash"]
    return r


def _cell(r: dict) -> str:
    if r["killed"]:
        return f"{r['killed']} ({r['seconds']:.0f} s)"
    load = f"load {r['load'][0]:.1f}→{r['load'][1]:.1f}"
    return f"{r['seconds']:.1f} s / {r['peak_gb']:.2f} GB / {r['rows']:,} rows ({load})"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--driver-memory", default="4g")
    ap.add_argument("--max-gb", type=float, default=16.0, help="kill a run above this RSS")
    ap.add_argument("--max-seconds", type=float, default=1200.0, help="kill a run after this long")
    ap.add_argument("--work-dir", type=Path, default=None)
    a = ap.parse_args(argv)
    work = a.work_dir or Path(tempfile.mkdtemp(prefix="funnelflow-spark-"))
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    table = {}
    for rows in a.rows:
        duck_dir = prepare(rows, work)
        spark, spark_params = spark_dir(rows, duck_dir, a.master, a.driver_memory)
        duck = training_set(duck_dir, work / f"params-{rows}.yaml", a.max_gb, a.max_seconds)
        print(f"{rows:>11,} duckdb {_cell(duck)}", flush=True)
        on_spark = training_set(spark, spark_params, a.max_gb, a.max_seconds)
        print(f"{rows:>11,} spark  {_cell(on_spark)}", flush=True)
        same = "—" if duck["killed"] or on_spark["killed"] else str(duck["data_hash"] == on_spark["data_hash"]).lower()
        table[rows] = (duck, on_spark, same)
    print(f"\n| impressions | DuckDB ASOF (s / peak GB / rows) | Spark {a.master}, driver {a.driver_memory} "
          "(s / peak GB / rows) | identical training sets |")
    print("|---|---|---|---|")
    for rows, (duck, on_spark, same) in table.items():
        print(f"| {rows:,} | {_cell(duck)} | {_cell(on_spark)} | {same} |")
    print(f"\n(machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; data under {work}; "
          f"repo {REPO})")


if __name__ == "__main__":
    main()
