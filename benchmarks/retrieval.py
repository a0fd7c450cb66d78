"""Point-in-time retrieval: the training-set step beside Feast's own offline stores, same feature repo.

    python -m benchmarks.retrieval --rows 100000 1000000 10000000 [--work-dir DIR]

Per size, on one generated dataset (prepared with the pipeline's own steps, reused when ``--work-dir``
already holds it):
- ``training-set step``: `funnelflow training-set` (retrieve in 1M-row chunks through the repo's ASOF
  offline store, fill, split, write Parquet);
- ``asof``, ``duckdb``, ``file``: one `get_historical_features(all impressions).to_df()` call through
  the repo's store, Feast's stock DuckDB store and Feast's `file` (dask) store.
- ``startup``: a process that only imports Feast and opens the store (part of every figure).
Each runs in its own process, watched: wall time, peak RSS (sampled every 0.2 s, children included),
rows returned vs impressions asked for. A run is killed at ``--max-gb`` or ``--max-seconds`` and the
table says so. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import psutil
import yaml

from benchmarks.pipeline import REPO, run_step
from benchmarks.proc import watched

PREPARE = ["generate", "ingest", "features build", "features apply"]
STORES = {"asof": "features.asof_offline_store.AsofDuckDBOfflineStore", "duckdb": "duckdb", "file": "file"}
RETRIEVE = """
import sys
from pathlib import Path
from features import store
from features.contract import read_raw
data_dir, kind = Path(sys.argv[1]), sys.argv[2]
imps = read_raw(data_dir / "raw", "impressions")
fs = store.open_store(store.FeastPaths(data_dir / "feast", data_dir / "features"), kind)
job = fs.get_historical_features(entity_df=imps, features=fs.get_feature_service("funnel_model_v1"),
                                 full_feature_names=True)
df = job.to_df()
print("ROWS", len(imps), len(df), df["impression_id"].nunique())
"""
# What every run above pays before any work: Python, `import feast` (which imports torch), the registry.
STARTUP = """
import sys
from pathlib import Path
from features import store
d = Path(sys.argv[1])
store.open_store(store.FeastPaths(d / "feast", d / "features")).get_feature_service("funnel_model_v1")
"""


def prepare(rows: int, work: Path) -> Path:
    data_dir = work / f"data-{rows}"
    if (data_dir / "feast" / "applied.json").exists():
        return data_dir
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["generate"]["rows"] = rows
    params = work / f"params-{rows}.yaml"
    params.parent.mkdir(parents=True, exist_ok=True)
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    for step in PREPARE:
        run_step(step, data_dir, params)
    return data_dir


def measure(rows: int, data_dir: Path, stores: list[str], max_gb: float, max_seconds: float) -> dict[str, str]:
    r = watched([sys.executable, "-c", STARTUP, str(data_dir)], max_gb, max_seconds)
    cells = {"startup": f"{r['seconds']:.1f} s / {r['peak_gb']:.2f} GB"}
    params = data_dir.parent / f"params-{rows}.yaml"
    r = watched([sys.executable, "-m", "flows.cli", "--params", str(params), "--data-dir", str(data_dir),
                 "training-set"], max_gb, max_seconds)
    cells["training-set step"] = r["killed"] or f"{r['seconds']:.1f} s / {r['peak_gb']:.2f} GB"
    for name in stores:
        r = watched([sys.executable, "-c", RETRIEVE, str(data_dir), STORES[name]], max_gb, max_seconds)
        if r["killed"]:
            cells[name] = f"{r['killed']} ({r['seconds']:.0f} s)"
            continue
        line = next(x for x in r["stdout"].splitlines() if x.startswith("ROWS"))
        asked, got, _unique = (int(x) for x in line.split()[1:])
        dropped = f", **{asked - got:,} rows dropped ({(asked - got) / asked:.1%})**" if got != asked else ""
        cells[name] = f"{r['seconds']:.1f} s / {r['peak_gb']:.2f} GB{dropped}"
        print(f"{rows:>11,} {name:<8} {cells[name]}", flush=True)
    return cells


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--stores", nargs="*", default=list(STORES), choices=list(STORES))
    ap.add_argument("--max-gb", type=float, default=16.0, help="kill a run above this RSS")
    ap.add_argument("--max-seconds", type=float, default=900.0, help="kill a run after this long")
    ap.add_argument("--work-dir", type=Path, default=None)
    a = ap.parse_args(argv)
    work = a.work_dir or Path(tempfile.mkdtemp(prefix="funnelflow-retrieval-"))
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    table = {}
    for rows in a.rows:
        table[rows] = measure(rows, prepare(rows, work), a.stores, a.max_gb, a.max_seconds)
        print(f"{rows:>11,} training-set step {table[rows]['training-set step']}", flush=True)
    cols = ["startup", "training-set step", *a.stores]
    print("\n| impressions | " + " | ".join(f"{c} (s / peak GB)" for c in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for rows, cells in table.items():
        print(f"| {rows:,} | " + " | ".join(cells.get(c, "") for c in cols) + " |")
    print(f"\n(machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; data under {work})")


if __name__ == "__main__":
    main()
