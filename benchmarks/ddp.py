"""DDP training (models/distributed.py) on N processes against one process: samples/s and validation metrics.

    python -m benchmarks.ddp --rows 200000 --nproc 2 --model mmoe --epochs 2

Writes a synthetic funnel frame (benchmarks.train_throughput.synthetic_frame) as train/validation
Parquet files of 20 row groups each (the training set's split files hold one per day), then trains
the same model, global batch and seed with ``train_model`` in this process (on all cores, and on a
worker's share of them) and with ``launch`` on ``--nproc`` torchrun workers (the cores shared out).
samples/s is the training loop's (the epochs without validation, as ``TrainResult`` reports it);
wall is the whole call, with torchrun's start, the imports and the reads of every worker.
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.train_throughput import synthetic_frame
from models.config import TrainConfig
from models.distributed import launch
from models.networks import parse_model_config
from models.tasks import DEFAULT_FUNNEL
from models.train import TrainResult, train_model

ROW_GROUPS = 20
METRICS = ("click/auc", "conversion/auc", "value/gini")


def write_splits(rows: int, folder: Path) -> tuple[Path, Path]:
    """train.parquet (85% of ``rows``) and validation.parquet, ROW_GROUPS row groups each."""
    df = synthetic_frame(rows)
    cut = int(rows * 0.85)
    paths = folder / "train.parquet", folder / "validation.parquet"
    for part, path in zip((df.iloc[:cut], df.iloc[cut:]), paths, strict=True):
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), path,
                       row_group_size=math.ceil(len(part) / ROW_GROUPS))
    return paths


def _line(label: str, res: TrainResult, wall: float) -> str:
    metrics = "".join(f"{res.valid_metrics.get(m, float('nan')):>16.4f}" for m in METRICS)
    return f"{label:<18}{res.samples_per_sec:>12,.0f}{wall:>9.1f}{metrics}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--model", default="mmoe")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    args = ap.parse_args(argv)
    cores = os.cpu_count() or 1
    mc = parse_model_config({"name": args.model})
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, patience=args.epochs, device=args.device)
    with tempfile.TemporaryDirectory(prefix="ddp-bench-") as tmp:
        train, valid = write_splits(args.rows, Path(tmp))
        print(f"rows={args.rows} model={args.model} epochs={args.epochs} global batch={args.batch_size} "
              f"cores={cores} device={args.device}")
        print(f"{'run':<18}{'samples/s':>12}{'wall s':>9}" + "".join(f"{m:>16}" for m in METRICS))
        for threads in sorted({cores, max(1, cores // args.nproc)}, reverse=True):
            t0 = time.perf_counter()
            one = train_model(pq.read_table(train).to_pandas(), pq.read_table(valid).to_pandas(), DEFAULT_FUNNEL,
                              mc, cfg.model_copy(update={"num_threads": threads}), Path(tmp) / f"one{threads}",
                              progress=False)
            print(_line(f"1 proc x {threads} thr", one, time.perf_counter() - t0), flush=True)
        t0 = time.perf_counter()
        many, _ = launch(train, valid, DEFAULT_FUNNEL, mc, cfg, Path(tmp) / "ddp", args.nproc)
        print(_line(f"{args.nproc} proc x {max(1, cores // args.nproc)} thr", many, time.perf_counter() - t0),
              flush=True)


if __name__ == "__main__":
    main()
