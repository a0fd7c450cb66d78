"""Training on several processes (CPU cores or GPUs): torch.distributed DDP launched by torchrun.

``launch`` runs ``torch.distributed.run --standalone`` (a rendezvous on loopback) with ``nproc`` workers,
each running this module's ``main``: gloo on CPU, NCCL on CUDA with one GPU per local rank. The
model directory ends up with the files of a one-process ``models.train.train_model`` run.

* Data: rank r reads only its shard of train.parquet and validation.parquet: a contiguous range of
  row groups balanced by row count (``plan_shards``, from the Parquet footer), read with
  ``ParquetFile.read_row_groups``; no rank reads the whole file.
* Preprocessor: fitted from global statistics, gathered to rank 0 and broadcast as JSON, so every rank
  holds the same one. Id counts are summed exactly (the vocabularies equal a one-process fit); numeric
  means and stds merge per-shard (count, mean, M2) (Chan et al.), equal to ``np.nanmean``/``nanstd``
  on the whole column up to float rounding (~1e-15 relative); quantile buckets, when asked for, gather
  one numeric column at a time to rank 0 (exact).
* Steps: the one-process epoch has S = ceil(rows / global batch) steps; every rank makes S steps over
  a fresh permutation of its shard, ~global batch / N rows each. Each rank's loss is weighted by its
  share of the step's rows and DDP averages the gradients, so a mean loss gets the gradient of the
  global batch's mean. The frequency L2 (``models.losses.frequency_l2``) uses the global id counts and
  divides each embedding row by the number of ranks whose batch used it: the sum over ranks is the
  global batch's penalty, exactly. The cosine learning rates are those of the one-process run.
* Randomness: the initial weights come from ``train.seed`` as in one process (DDP also broadcasts rank
  0's); the permutation, dropout and Gumbel noise of epoch e on rank r come from (seed, e, r), so a
  resumed run repeats an uninterrupted one without per-rank RNG state in the checkpoint.
* Validation: each rank scores its validation shard; the predictions and labels are gathered to rank
  0 in file order and evaluated there (the one-process metrics of the same weights); rank 0
  broadcasts the metrics, so early stopping is decided identically on every rank.
* Writes: rank 0 alone (model.pt, checkpoint.pt, curves, preprocess.json, config.json); on --resume
  every rank loads rank 0's checkpoint.
"""
from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from models.config import TrainConfig
from models.digest import ArtifactRefused
from models.losses import frequency_l2, funnel_loss
from models.metrics import evaluate_predictions
from models.networks import FunnelNet, ModelConfig, build_model, parse_model_config
from models.preprocess import FeatureColumns, Preprocessor, _quantile_edges, infer_feature_columns
from models.strict import Strict
from models.tasks import TaskGraph
from models.train import (
    CHECKPOINT_FILE,
    MODEL_FILE,
    TrainResult,
    _Best,
    _load_checkpoint,
    _log_epoch,
    _save_checkpoint,
    _save_torch,
    _write_run_inputs,
    amp_context,
    batch_size_for,
    epoch_row,
    label_matrix,
    make_optimizer,
    monitor_score,
    predict_arrays,
    step_lrs,
    to_device,
    update_best,
    write_curves,
)

SPEC_FILE, RESULT_FILE, ERROR_FILE = "spec.json", "result.json", "error.txt"
log = logging.getLogger("funnelflow.train")


class TooFewRowGroups(ValueError):
    """A split has fewer row groups than ranks: some rank would get no training rows."""


class RunSpec(Strict):
    """What every worker trains: the launcher writes it as JSON, each rank reads it."""

    train: Path
    validation: Path
    out_dir: Path
    tasks: TaskGraph
    model: dict[str, Any]          # the model's config (``parse_model_config``: a union of models)
    train_cfg: TrainConfig
    resume: bool = False
    progress: bool = False
    result: Path                   # rank 0 writes the TrainResult here (outside the model dir)


@dataclass
class Shard:
    """What one rank read of one Parquet file."""

    path: Path
    row_groups: list[int]
    rows: int


# ----------------------------------------------------------------------------- shards
def plan_shards(path: Path, world: int, need_rows: bool = True) -> list[list[int]]:
    """Contiguous row-group ranges, one per rank, balanced by row count: group g goes to the rank whose
    slice [r, r+1) * rows / world holds the group's middle row. ``need_rows``: every rank must get at
    least one group (the training split; a rank without validation rows just scores none)."""
    meta = pq.ParquetFile(path).metadata
    sizes = np.array([meta.row_group(g).num_rows for g in range(meta.num_row_groups)], dtype=np.int64)
    if need_rows and len(sizes) < world:
        raise TooFewRowGroups(f"{path} has {len(sizes)} row groups for {world} processes: each needs one; "
                              f"lower train.nproc to at most {len(sizes)}")
    mid = np.cumsum(sizes) - sizes / 2.0
    owner = np.minimum((mid * world / max(1, sizes.sum())).astype(int), world - 1)
    if need_rows:
        owner = _each_rank_one(owner, world)
    return [np.flatnonzero(owner == r).tolist() for r in range(world)]


def _each_rank_one(owner: np.ndarray, world: int) -> np.ndarray:
    """``owner`` changed where a tiny group beside a huge one would leave a rank empty: kept contiguous
    (each group's rank at most one above the previous group's) and leaving enough groups for the
    ranks after it (needs at least ``world`` groups)."""
    out, last = owner.copy(), -1
    for g in range(len(out)):
        out[g] = last = min(max(out[g], last, world - (len(out) - g)), last + 1)
    return out


def read_shard(path: Path, row_groups: list[int]) -> tuple[pd.DataFrame, Shard]:
    """The rows of ``row_groups`` of ``path`` (only those are read) and what was read."""
    table = pq.ParquetFile(path).read_row_groups(row_groups)
    shard = Shard(path, row_groups, table.num_rows)  # before self_destruct frees the table
    return table.to_pandas(self_destruct=True, split_blocks=True), shard


# ----------------------------------------------------------------------------- preprocessor
def _moments(x: np.ndarray) -> tuple[int, float, float]:
    """(count, mean, M2) of the non-NaN values, as np.nanmean/np.nanstd see them."""
    x = x[~np.isnan(x)]
    if not len(x):
        return 0, 0.0, 0.0
    m = float(np.mean(x))
    return len(x), m, float(np.sum((x - m) ** 2))


def _merge_moments(parts: list[tuple[int, float, float]]) -> tuple[int, float, float]:
    """Chan et al.'s pairwise merge of (count, mean, M2)."""
    n, mean, m2 = 0, 0.0, 0.0
    for nb, mb, m2b in parts:
        if nb:
            delta, total = mb - mean, n + nb
            mean, m2, n = mean + delta * nb / total, m2 + m2b + delta * delta * n * nb / total, total
    return n, mean, m2


def _local_stats(df: pd.DataFrame, columns: FeatureColumns) -> dict[str, Any]:
    """This shard's id counts per categorical column and, per numeric column, its finite minimum and
    the moments of the raw and the log1p'd values (the log decision needs the global minimum)."""
    cat = {}
    for c in columns.categorical:
        ids, counts = np.unique(df[c].dropna().to_numpy(np.int64), return_counts=True)
        cat[c] = (ids, counts)
    num = {}
    for c in columns.numeric:
        x = df[c].to_numpy(np.float64, na_value=np.nan)
        any_finite = bool(np.isfinite(x).any())
        with np.errstate(invalid="ignore", divide="ignore"):
            logged = np.log1p(np.maximum(x, 0.0))  # used only when the global minimum is >= 0
        num[c] = {"any": any_finite, "min": float(np.nanmin(x)) if any_finite else math.inf,
                  "raw": _moments(x), "log": _moments(logged)}
    return {"cat": cat, "num": num}


def _merge_stats(parts: list[dict[str, Any]], columns: FeatureColumns, min_count: int) -> dict[str, Any]:
    """Preprocessor fields (without buckets) from the shards' statistics, as ``Preprocessor.fit``."""
    vocab = {}
    for c in columns.categorical:
        ids = np.concatenate([p["cat"][c][0] for p in parts])
        counts = np.concatenate([p["cat"][c][1] for p in parts])
        uniq, inverse = np.unique(ids, return_inverse=True)
        vocab[c] = uniq[np.bincount(inverse, weights=counts, minlength=len(uniq)) >= min_count].tolist()
    mean, std, logged = {}, {}, []
    for c in columns.numeric:
        any_finite = any(p["num"][c]["any"] for p in parts)
        use_log = any_finite and min(p["num"][c]["min"] for p in parts) >= 0
        if use_log:
            logged.append(c)
        n, m, m2 = _merge_moments([p["num"][c]["log" if use_log else "raw"] for p in parts])
        s = math.sqrt(m2 / n) if any_finite and n else 1.0
        mean[c], std[c] = (m if any_finite else 0.0), (s if s > 1e-12 else 1.0)
    return {"vocab": vocab, "mean": mean, "std": std, "log1p": logged}


def fit_preprocessor(df: pd.DataFrame, columns: FeatureColumns, min_count: int, numeric_buckets: int) -> Preprocessor:
    """A collective: every rank passes its training shard and gets the same Preprocessor, the one
    ``Preprocessor.fit`` would fit on all shards together (module docstring: how exactly)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    parts: list[Any] = [None] * world if rank == 0 else []
    dist.gather_object(_local_stats(df, columns), parts if rank == 0 else None, dst=0)
    buckets: dict[str, list[float]] = {}
    for c in columns.numeric if numeric_buckets else []:  # one column at a time: memory of one column
        cols: list[Any] = [None] * world if rank == 0 else []
        x = df[c].to_numpy(np.float64, na_value=np.nan)
        dist.gather_object(x[np.isfinite(x)], cols if rank == 0 else None, dst=0)
        if rank == 0:
            buckets[c] = _quantile_edges(np.concatenate(cols), numeric_buckets)
    box: list[Any] = [None]
    if rank == 0:
        fields = _merge_stats(parts, columns, min_count)
        box[0] = Preprocessor(columns=columns, min_count=min_count, buckets=buckets, **fields).model_dump_json()
    dist.broadcast_object_list(box, src=0)
    return Preprocessor.model_validate_json(box[0])


# ----------------------------------------------------------------------------- one epoch
def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of rank ``rank``'s permutation and noise in ``epoch``: a function of those alone, so a
    resumed run draws what the uninterrupted one drew."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def step_sizes(shard_rows: list[int], steps: int) -> np.ndarray:
    """[steps, ranks] rows of each rank's batch at each step: each shard cut into ``steps`` near-equal
    batches (every row once an epoch; the same step count on every rank, as DDP needs)."""
    cuts = np.array([[k * n // steps for k in range(steps + 1)] for n in shard_rows]).T  # [steps + 1, ranks]
    return np.diff(cuts, axis=0)


@dataclass
class _Step:
    """What every step of an epoch needs besides the batch."""

    ddp: DistributedDataParallel
    net: FunnelNet
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_ctx: AbstractContextManager[Any]
    tasks: TaskGraph
    model_cfg: ModelConfig
    counts: torch.Tensor | None     # global training count of every embedding row (frequency L2)


def _frequency_l2(s: _Step, rows: torch.Tensor, world: int) -> torch.Tensor:
    """This rank's share of the global batch's frequency L2: each used row divided by how many ranks use
    it (an all-reduce of the rows in use), times ``world`` against DDP's averaging."""
    assert s.counts is not None
    used = torch.zeros_like(s.counts)
    used[torch.unique(rows)] = 1.0
    dist.all_reduce(used)
    return world * frequency_l2(s.net.input.embedding.weight, rows, s.counts * used.clamp(min=1.0))


def _all_reduce_grads(net: FunnelNet, world: int) -> None:
    """Average the gradients over the ranks in one flat all-reduce: what DDP does, for a network that
    runs its own backward passes (HTLNet's gradient adjustment back-propagates into the embedding in a
    second pass, after DDP's reducer has finished)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in net.parameters() if p.requires_grad]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    for p, g in zip([p for p in net.parameters() if p.requires_grad], flat.split([g.numel() for g in grads]),
                    strict=True):
        p.grad = g.view_as(p)


def _train_step(s: _Step, cat: torch.Tensor, num: torch.Tensor, y: torch.Tensor, share: float,
                lr: float | None) -> torch.Tensor:
    """One optimizer step on this rank's batch, the gradients averaged over the ranks; returns the loss."""
    world = dist.get_world_size()
    own_backward = type(s.net).backward is not FunnelNet.backward
    with s.ddp.no_sync() if own_backward else nullcontext():
        with s.amp_ctx:
            out = s.ddp(cat, num)
        total, terms = funnel_loss(out, y, s.tasks, s.model_cfg)
        total, terms = total * share, {k: v * share for k, v in terms.items()}
        if s.counts is not None:
            total = total + s.model_cfg.embedding_l2 * _frequency_l2(s, s.net.input.rows(cat), world)
        if lr is not None:
            for group in s.opt.param_groups:
                group["lr"] = lr
        s.opt.zero_grad(set_to_none=True)
        scale = s.scaler.scale if s.scaler.is_enabled() else (lambda t: t)
        s.net.backward({k: scale(v) for k, v in terms.items()}, scale(total))
    if own_backward:
        _all_reduce_grads(s.net, world)
    if s.scaler.is_enabled():
        s.scaler.step(s.opt)
        s.scaler.update()
    else:
        s.opt.step()
    return total.detach()


def run_epoch(s: _Step, cat: torch.Tensor, num: torch.Tensor, y: torch.Tensor, sizes: np.ndarray,
              gen: torch.Generator, lrs: list[float] | None, bar: tqdm) -> float:
    """One pass over a permutation of this rank's rows in ``sizes[:, rank]``-row batches; returns the
    global mean training loss (all ranks)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    s.ddp.train()
    perm = torch.randperm(len(cat), generator=gen).to(cat.device)
    starts = np.concatenate([[0], np.cumsum(sizes[:, rank])])
    loss_sum = torch.zeros((), device=cat.device)
    for step, row in enumerate(sizes):
        if s.model_cfg.batch_norm and row.min() < 2:  # BatchNorm cannot train on one row: all ranks skip
            continue
        idx = perm[starts[step]:starts[step + 1]]
        share = world * len(idx) / row.sum()  # DDP averages: weight each rank by its rows in the step
        total = _train_step(s, cat[idx], num[idx], y[idx], share, lrs[step] if lrs is not None else None)
        loss_sum += total * float(row.sum()) / world
        bar.update(int(row.sum()))
    dist.all_reduce(loss_sum)
    return float(loss_sum.item()) / max(1, int(sizes.sum()))


# ----------------------------------------------------------------------------- validation
def evaluate_shards(net: FunnelNet, v_cat: torch.Tensor, v_num: torch.Tensor, labels: pd.DataFrame,
                    tasks: TaskGraph, cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    """Metrics of the whole validation split: each rank scores its shard, rank 0 evaluates the gathered
    predictions in file order and broadcasts the metrics ({} without validation rows)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    preds = predict_arrays(net, v_cat, v_num, tasks, cfg.eval_batch_size, device, cfg.amp)
    parts: list[Any] = [None] * world if rank == 0 else []
    dist.gather_object((preds, labels), parts if rank == 0 else None, dst=0)
    box: list[Any] = [None]
    if rank == 0:
        all_labels = pd.concat([p[1] for p in parts], ignore_index=True)
        all_preds = pd.DataFrame({c: np.concatenate([p[0][c] for p in parts]) for c in preds})
        box[0] = evaluate_predictions(all_labels, all_preds, tasks) if len(all_labels) else {}
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ----------------------------------------------------------------------------- the workers' loop
def _device(cfg: TrainConfig) -> torch.device:
    """This rank's device: cuda:<local rank> (NCCL) when CUDA is asked for or ``auto`` finds it, else CPU."""
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def _global_counts(net: FunnelNet, cat: torch.Tensor) -> torch.Tensor:
    """The training count of every embedding row over all shards (at least 1), for the frequency L2."""
    counts = torch.bincount(net.input.rows(cat), minlength=net.input.embedding.weight.shape[0]).float()
    dist.all_reduce(counts)
    return counts.clamp(min=1.0)


def _read_inputs(spec: RunSpec, world: int, rank: int) -> tuple[pd.DataFrame, pd.DataFrame, list[Shard], int]:
    """This rank's training and validation shards, what it read, and the global training row count."""
    train_df, train_shard = read_shard(spec.train, plan_shards(spec.train, world)[rank])
    valid_df, valid_shard = read_shard(spec.validation, plan_shards(spec.validation, world, need_rows=False)[rank])
    rows = pq.ParquetFile(spec.train).metadata.num_rows
    return train_df, valid_df, [train_shard, valid_shard], rows


def train_ranks(spec: RunSpec, on_epoch_end: Callable[[int, dict[str, float]], None] | None = None
                ) -> tuple[TrainResult, list[Shard]]:
    """This rank's part of the run (inside an initialised process group); returns the run's result
    (the same on every rank) and the shards this rank read. ``on_epoch_end`` as in ``train_model``."""
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg, tasks, model_cfg = spec.train_cfg, spec.tasks, parse_model_config(spec.model)
    device = _device(cfg)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))  # torchrun's: the processes on this host
    torch.set_num_threads(cfg.num_threads or max(1, (os.cpu_count() or 1) // local_world))  # share the cores
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)

    train_df, valid_df, shards, n = _read_inputs(spec, world, rank)
    columns = infer_feature_columns(train_df, tasks)
    pre = fit_preprocessor(train_df, columns, model_cfg.min_count, model_cfg.numeric_buckets)
    if rank == 0:
        _write_run_inputs(spec.out_dir, pre, model_cfg, cfg, tasks, columns)

    torch.manual_seed(cfg.seed)  # the initial weights of one process
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    net = build_model(tasks, pre.cardinalities, len(columns.numeric), model_cfg).to(device)
    opt = make_optimizer(net, cfg, device)
    amp_ctx, amp_dtype = amp_context(device, cfg.amp, cfg.cpu_bf16)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    history: list[dict[str, float]] = []
    start_epoch, best = 0, _Best()
    if spec.resume and (spec.out_dir / CHECKPOINT_FILE).exists():  # every rank: the optimizer state too
        history, start_epoch, best = _load_checkpoint(spec.out_dir / CHECKPOINT_FILE, net, opt, scaler, gen, device)

    cat, num, y = (to_device(a, device) for a in (*pre.encode(train_df), label_matrix(train_df, tasks)))
    v_cat, v_num = (torch.from_numpy(a) for a in pre.encode(valid_df))
    labels = valid_df[[c for c in ["impression_id"] if c in valid_df] + [t.column for t in tasks.tasks]]
    del train_df, valid_df
    ddp = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    step = _Step(ddp, net, opt, scaler, amp_ctx, tasks, model_cfg,
                 _global_counts(net, cat) if model_cfg.embedding_l2 > 0 else None)
    steps = math.ceil(n / batch_size_for(cfg, n))  # one process's steps an epoch
    shard_rows: list[int] = [0] * world
    dist.all_gather_object(shard_rows, len(cat))
    sizes = step_sizes(shard_rows, steps)
    train_seconds, samples = 0.0, 0
    stopped = best.bad_epochs > 0 and best.bad_epochs >= cfg.patience
    for epoch in range(start_epoch, cfg.epochs):
        if stopped:
            break
        seed = epoch_seed(cfg.seed, epoch, rank)
        gen.manual_seed(seed)
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        with tqdm(total=n, disable=not (spec.progress and rank == 0), desc=f"{model_cfg.name} epoch {epoch}",
                  unit="row", leave=False) as bar:
            train_loss = run_epoch(step, cat, num, y, sizes, gen, step_lrs(cfg, epoch, steps), bar)
        seconds = time.perf_counter() - t0
        train_seconds, samples = train_seconds + seconds, samples + n

        t_eval = time.perf_counter()
        metrics = evaluate_shards(net, v_cat, v_num, labels, tasks, cfg, device)
        score = monitor_score(metrics, tasks, cfg.monitor, train_loss)
        row = epoch_row(epoch, train_loss, n / seconds, metrics, tasks)
        history.append(row)
        best, improved, stopped = update_best(best, score, epoch, metrics, cfg)
        if rank == 0:
            if improved:
                _save_torch(net.state_dict(), spec.out_dir / MODEL_FILE)
            _save_checkpoint(spec.out_dir / CHECKPOINT_FILE, net, opt, scaler, gen, device, epoch, history, best)
            write_curves(history, spec.out_dir, cfg.monitor, png=False)
            _log_epoch(model_cfg.name, epoch, cfg.epochs, row | {"train_seconds": seconds},
                       cfg.monitor if metrics else "-train_loss", score, best, time.perf_counter() - t_eval)
        dist.barrier()  # the checkpoint is on disk before any rank goes on (or stops)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)

    if history and rank == 0:
        write_curves(history, spec.out_dir, cfg.monitor)
    result = TrainResult(out_dir=spec.out_dir, best_epoch=best.epoch, best_score=float(best.score),
                         valid_metrics=best.metrics, history=history, train_seconds=train_seconds,
                         samples_per_sec=samples / train_seconds if train_seconds else 0.0)
    return result, shards


# ----------------------------------------------------------------------------- processes
def _result_json(result: TrainResult, shards: list[list[Shard]]) -> dict[str, Any]:
    return {"best_epoch": result.best_epoch, "best_score": result.best_score, "valid_metrics": result.valid_metrics,
            "history": result.history, "train_seconds": result.train_seconds,
            "samples_per_sec": result.samples_per_sec,
            "ranks": [{"rank": r, **{Path(s.path).stem: {"row_groups": s.row_groups, "rows": s.rows} for s in ss}}
                      for r, ss in enumerate(shards)]}


def main(argv: list[str] | None = None,
         on_epoch_end: Callable[[int, dict[str, float]], None] | None = None) -> int:
    """A worker (started by torchrun): ``python -m models.distributed SPEC_JSON``. Rank 0 writes the
    result next to the spec; an ArtifactRefused (a garbled checkpoint) goes to error.txt there, for
    the launcher to raise as the one line it is."""
    spec_path = Path((argv if argv is not None else sys.argv[1:])[0])
    spec = RunSpec.model_validate_json(spec_path.read_text())
    backend = "nccl" if spec.train_cfg.device != "cpu" and torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, timeout=timedelta(minutes=30))
    rank = dist.get_rank()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        result, shards = train_ranks(spec, on_epoch_end)
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, shards)
        if rank == 0:
            spec.result.write_text(json.dumps(_result_json(result, gathered), default=str))
        return 0
    except ArtifactRefused as exc:  # every rank loads the same checkpoint: rank 0 reports
        if rank == 0:
            (spec_path.parent / ERROR_FILE).write_text(str(exc))
        return 1
    finally:
        dist.destroy_process_group()


def torchrun_command(nproc: int, *entry: str) -> list[str]:
    """The torchrun command on one host: a standalone rendezvous on loopback, ``nproc`` workers running ``entry``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *entry]


def worker_env(nproc: int) -> dict[str, str]:
    """The workers' environment: gloo on the loopback interface (Linux) and each worker's share of the
    cores for OpenMP (torchrun would set 1 and print a banner about it); values already set are kept."""
    env = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}
    if sys.platform == "linux":
        env["GLOO_SOCKET_IFNAME"] = "lo"
    return env | dict(os.environ)


def launch(train: Path, validation: Path, tasks: TaskGraph, model_cfg: ModelConfig, train_cfg: TrainConfig,
           out_dir: Path, nproc: int, resume: bool = False, progress: bool = False) -> tuple[TrainResult, list[dict]]:
    """Train with ``nproc`` torchrun workers; returns the run's result and what each rank read
    ([{rank, train: {row_groups, rows}, validation: {...}}]). Raises TooFewRowGroups before starting
    when the training split cannot give every rank a row group."""
    plan_shards(train, nproc)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="funnelflow-ddp-") as tmp:
        spec = RunSpec(train=train, validation=validation, out_dir=out_dir, tasks=tasks, model=model_cfg.model_dump(),
                       train_cfg=train_cfg, resume=resume, progress=progress, result=Path(tmp) / RESULT_FILE)
        (Path(tmp) / SPEC_FILE).write_text(spec.model_dump_json())
        proc = subprocess.run(torchrun_command(nproc, "-m", "models.distributed", str(Path(tmp) / SPEC_FILE)),
                              env=worker_env(nproc))
        return read_result(Path(tmp), out_dir, proc.returncode)


def read_result(spec_dir: Path, out_dir: Path, returncode: int) -> tuple[TrainResult, list[dict]]:
    """The result rank 0 left in ``spec_dir``; the workers' ArtifactRefused as itself, any other failure
    as a RuntimeError (torchrun printed the workers' tracebacks)."""
    if (spec_dir / ERROR_FILE).exists():
        raise ArtifactRefused((spec_dir / ERROR_FILE).read_text())
    if returncode != 0 or not (spec_dir / RESULT_FILE).exists():
        raise RuntimeError(f"torchrun exited with status {returncode}: the workers' errors are printed above")
    r = json.loads((spec_dir / RESULT_FILE).read_text())
    result = TrainResult(out_dir=out_dir, best_epoch=r["best_epoch"], best_score=r["best_score"],
                         valid_metrics=r["valid_metrics"], history=r["history"], train_seconds=r["train_seconds"],
                         samples_per_sec=r["samples_per_sec"])
    return result, r["ranks"]


if __name__ == "__main__":
    sys.exit(main())
