"""A daily run's data path, incremental beside a full rebuild, on the same days.

    python -m benchmarks.incremental --rows 1000000 --new-rows 50000 [--work-dir DIR]

One generated dataset of ``rows`` impressions of history (``rows / new_rows`` days) plus one new day
of ``new_rows`` impressions. The history is landed and taken through the data steps first (untimed:
yesterday's run). Then, timed step by step with the pipeline's own functions (flows/steps.py):

- ``incremental``: the new day lands in the same data dir; ingest (adds the day), features build
  (computes what the day affects), features apply, materialize (Feast ``materialize_incremental``),
  training set (joins only the new day, reuses the retrieval cache);
- ``full``: a fresh data dir gets every day at once; the same steps build everything.

Both end with the same training set (the data hashes are printed and must match). Prints a markdown
table and the ratio incremental / full (target: at most 0.25).
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

STEPS = ("ingest", "features build", "features apply", "materialize", "training set")


def _params(rows: int, days: int):
    from flows.params import load_params

    p = load_params()
    return p.model_copy(update={"generate": p.generate.model_copy(update={"rows": rows, "days": days})})


def _timed(params, paths, source: Path) -> tuple[dict[str, float], str]:
    """Seconds per data step on ``paths`` after landing ``source``; the training set's data hash."""
    from flows import steps

    calls: dict[str, Callable[[], dict]] = {
        "ingest": lambda: steps.ingest(params, paths, source=source),
        "features build": lambda: steps.build_features(params, paths),
        "features apply": lambda: steps.features_apply(params, paths),
        "materialize": lambda: steps.features_materialize(params, paths),
        "training set": lambda: steps.training_set(params, paths),
    }
    seconds, out = {}, {}
    for name in STEPS:
        start = time.perf_counter()
        out = calls[name]()
        seconds[name] = time.perf_counter() - start
    return seconds, out["data_hash"]


def _land(source: Path, landing: Path, days: list[str]) -> None:
    for d in days:
        if not (landing / f"dt={d}").exists():
            shutil.copytree(source / f"dt={d}", landing / f"dt={d}")


def run(rows: int, new_rows: int, work: Path) -> dict[str, dict[str, float]]:
    """Generate, land the history, then time the incremental day and the full rebuild."""
    from flows import steps
    from flows.params import Paths

    days = max(rows // new_rows, 1) + 1
    params = _params(rows + new_rows, days)
    gen = Paths(work / "gen")
    steps.generate(params, gen)
    all_days = sorted(p.name.removeprefix("dt=") for p in gen.generated.glob("dt=*"))
    landing = work / "landing"
    _land(gen.generated, landing, all_days[:-1])
    daily = Paths(work / "daily")
    _timed(params, daily, landing)  # yesterday's run: the state a daily run starts from
    _land(gen.generated, landing, all_days)
    incremental, hash_inc = _timed(params, daily, landing)
    full, hash_full = _timed(params, Paths(work / "full"), landing)
    if hash_inc != hash_full:
        raise SystemExit(f"the training sets differ: incremental {hash_inc[:12]} vs full {hash_full[:12]}")
    return {"incremental": incremental, "full": full}


def table(result: dict[str, dict[str, float]], rows: int, new_rows: int) -> str:
    """The figures side by side, as markdown."""
    inc, full = result["incremental"], result["full"]
    lines = [f"history {rows:,} impressions + one new day of {new_rows:,}", "",
             "| step | incremental s | full rebuild s |", "|---|---:|---:|"]
    lines += [f"| {s} | {inc[s]:.1f} | {full[s]:.1f} |" for s in STEPS]
    total_inc, total_full = sum(inc.values()), sum(full.values())
    lines += [f"| **total** | **{total_inc:.1f}** | **{total_full:.1f}** |", "",
              f"incremental / full = {total_inc / total_full:.2f} (target <= 0.25)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse the options, run, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="impressions of history")
    ap.add_argument("--new-rows", type=int, default=50_000, help="impressions of the new day")
    ap.add_argument("--work-dir", type=Path, default=None, help="kept afterwards (default: a temp dir)")
    args = ap.parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="incremental-"))
    try:
        print(table(run(args.rows, args.new_rows, work), args.rows, args.new_rows))
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
