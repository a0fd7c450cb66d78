"""Training throughput (samples/s) per model on a synthetic funnel frame with ~30 feature columns.

    python -m benchmarks.train_throughput --rows 200000 --batch-size 4096 --device auto

Each model: build, one warm-up epoch on a slice (allocator, kernels, autotune), then ``--repeats``
timed epochs over all rows; reports the median. Timing covers the training loop only (batch slicing,
forward, loss, backward, optimizer step), not preprocessing or validation.
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np
import pandas as pd
import torch

from models.config import TrainConfig
from models.networks import MODEL_NAMES, build_model, parse_model_config
from models.preprocess import Preprocessor, infer_feature_columns
from models.tasks import DEFAULT_FUNNEL
from models.train import amp_context, id_counts, label_matrix, make_optimizer, resolve_device, run_epoch, to_device


def synthetic_frame(rows: int, n_cat: int = 12, n_num: int = 18, seed: int = 0) -> pd.DataFrame:
    """user_id (50k ids), item_id (10k), 10 small categorical contexts, 18 numeric; funnel labels."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"impression_id": np.arange(rows, dtype=np.int64),
                       "user_id": rng.integers(0, 50_000, rows), "item_id": rng.integers(0, 10_000, rows)})
    for k in range(n_cat - 2):
        df[f"ctx__c{k}"] = rng.integers(0, 20 + 30 * k, rows)
    x = rng.normal(size=(rows, n_num))
    for k in range(n_num):
        df[f"user_activity__n{k}"] = x[:, k]
    logit = -1.5 + x[:, 0] + 0.5 * x[:, 1]
    click = rng.random(rows) < 1 / (1 + np.exp(-logit))
    conv = click & (rng.random(rows) < 0.2)
    df["click"], df["conversion"] = click.astype(np.int8), conv.astype(np.int8)
    df["value"] = np.where(conv, rng.lognormal(2, 0.5, rows), 0.0)
    return df


def measure(name: str, df: pd.DataFrame, batch_size: int, device: torch.device, repeats: int,
            cpu_bf16: bool = False) -> float:
    tasks = DEFAULT_FUNNEL
    mc, tc = parse_model_config({"name": name}), TrainConfig(batch_size=batch_size, cpu_bf16=cpu_bf16)
    pre = Preprocessor.fit(df, infer_feature_columns(df, tasks), mc.min_count)
    cat_np, num_np = pre.encode(df)
    cat, num, y = (to_device(a, device) for a in (cat_np, num_np, label_matrix(df, tasks)))
    torch.manual_seed(0)
    net = build_model(tasks, pre.cardinalities, num.shape[1], mc).to(device)
    opt = make_optimizer(net, tc, device)
    amp_ctx, amp_dtype = amp_context(device, tc.amp, tc.cpu_bf16)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    gen = torch.Generator().manual_seed(0)
    counts = id_counts(net, cat) if mc.embedding_l2 > 0 else None  # the default regulariser is timed too
    warm = min(len(cat), 10 * batch_size)
    run_epoch(net, opt, cat[:warm], num[:warm], y[:warm], tasks, mc, batch_size, gen, amp_ctx, scaler, counts=counts)
    rates = []
    for _ in range(repeats):
        _, sec = run_epoch(net, opt, cat, num, y, tasks, mc, batch_size, gen, amp_ctx, scaler, counts=counts)
        rates.append(len(cat) / sec)
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    ap.add_argument("--cpu-bf16", action="store_true", help="bf16 autocast on CPU (TrainConfig.cpu_bf16)")
    ap.add_argument("--models", default=",".join(MODEL_NAMES), help="comma-separated model names")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    df = synthetic_frame(args.rows)
    n_features = df.shape[1] - 4
    print(f"device={device} rows={args.rows} batch={args.batch_size} features={n_features} "
          f"threads={torch.get_num_threads()} cpu_bf16={args.cpu_bf16}")
    print(f"{'model':<14}{'samples/s':>14}")
    for name in args.models.split(","):
        rate = measure(name, df, args.batch_size, device, args.repeats, args.cpu_bf16)
        print(f"{name:<14}{rate:>14,.0f}", flush=True)


if __name__ == "__main__":
    main()
