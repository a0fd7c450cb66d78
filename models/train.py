"""Training loop: in-memory tensors, permutation batches, early stopping on validation, atomic
checkpoints with resume, AMP on CUDA, learning curves (PNG + DVC-plottable CSV), one log line per
epoch on the ``funnelflow.train`` logger.

Why no Dataset/DataLoader: a per-row ``__getitem__`` costs more than the model step at 100k+
samples/s on 2 cores; slicing a permutation of tensors already in memory (or on the GPU) is free.
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from models.atomic import atomic_file, write_json, write_text
from models.config import TrainConfig
from models.digest import ArtifactRefused
from models.losses import frequency_l2, funnel_loss
from models.metrics import evaluate_predictions, mean_auc
from models.networks import FunnelNet, ModelConfig, build_model, parse_model_config, prediction_columns
from models.plots import save_csv, save_png
from models.preprocess import FeatureColumns, Preprocessor, infer_feature_columns
from models.tasks import TaskGraph

MODEL_FILE, PREPROCESS_FILE, CONFIG_FILE = "model.pt", "preprocess.json", "config.json"
CHECKPOINT_FILE = "checkpoint.pt"

log = logging.getLogger("funnelflow.train")


@dataclass
class TrainResult:
    """What ``train_model`` reports; the model itself is in ``out_dir``."""

    out_dir: Path
    best_epoch: int
    best_score: float
    valid_metrics: dict[str, float]            # metrics of the best epoch on the validation split
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0                 # time inside training epochs (no eval), this call
    samples_per_sec: float = 0.0


@dataclass
class TrainedModel:
    """A loaded model directory: the network (eval mode), its preprocessor and configs."""

    net: FunnelNet
    preprocessor: Preprocessor
    tasks: TaskGraph
    model_cfg: ModelConfig


@dataclass
class _Best:
    """Early-stopping state: the best epoch so far and how many epochs since it did not improve."""

    score: float = float("nan")
    epoch: int = -1
    bad_epochs: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------- helpers
def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; any other name as is."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def label_matrix(df: pd.DataFrame, tasks: TaskGraph) -> np.ndarray:
    """[N, T] float32 labels in task order (regression NaN -> 0)."""
    return np.nan_to_num(np.stack([df[t.column].to_numpy(np.float32) for t in tasks.tasks], 1))


def to_device(arr: np.ndarray, device: torch.device) -> torch.Tensor:
    """A tensor on ``device`` sharing ``arr``'s memory on CPU (pinned + async copy on CUDA)."""
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


def amp_context(device: torch.device, enabled: bool,
                cpu_bf16: bool = False) -> tuple[AbstractContextManager[Any], torch.dtype | None]:
    """(autocast context, dtype): bf16 (fp16 + GradScaler where bf16 is missing) on CUDA; on CPU
    bf16 only when asked (``cpu_bf16``: worth it on CPUs with avx512_bf16/AMX), else fp32."""
    if device.type == "cuda" and enabled:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype), dtype
    if device.type == "cpu" and enabled and cpu_bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16), torch.bfloat16
    return torch.autocast("cpu", enabled=False), None


@torch.inference_mode()
def predict_arrays(net: FunnelNet, cat: torch.Tensor, num: torch.Tensor, tasks: TaskGraph, batch_size: int,
                   device: torch.device | None = None, amp: bool = False) -> dict[str, np.ndarray]:
    """Layout columns as numpy arrays, computed in eval-mode batches."""
    device = device or next(net.parameters()).device
    cols = prediction_columns(tasks)
    was_training = net.training
    net.eval()
    parts: dict[str, list[np.ndarray]] = {c: [] for c in cols}
    ctx, _ = amp_context(device, amp)
    for i in range(0, len(cat), batch_size):
        with ctx:
            out = net(cat[i:i + batch_size].to(device, non_blocking=True),
                      num[i:i + batch_size].to(device, non_blocking=True))
        for c in cols:
            parts[c].append(out[c].float().cpu().numpy())
    net.train(was_training)
    return {c: np.concatenate(v) if v else np.zeros(0, np.float32) for c, v in parts.items()}


def predict_frame(model_dir_or_model: str | Path | TrainedModel, df: pd.DataFrame,
                  batch_size: int = 65536) -> pd.DataFrame:
    """Score ``df`` with torch; returns the predictions layout (impression_id + layout columns)."""
    m = model_dir_or_model if isinstance(model_dir_or_model, TrainedModel) else load_model(model_dir_or_model)
    cat, num = m.preprocessor.encode(df)
    preds = predict_arrays(m.net, torch.from_numpy(cat), torch.from_numpy(num), m.tasks, batch_size)
    out = pd.DataFrame({"impression_id": df["impression_id"].to_numpy()} if "impression_id" in df else {})
    for c, v in preds.items():
        out[c] = v.astype(np.float64)
    return out


def load_model(out_dir: str | Path, device: str = "cpu") -> TrainedModel:
    """Load model.pt (best epoch) + preprocess.json + config.json written by ``train_model``."""
    out_dir = Path(out_dir)
    cfg = json.loads((out_dir / CONFIG_FILE).read_text())
    tasks, model_cfg = TaskGraph(**cfg["tasks"]), parse_model_config(cfg["model"])
    pre = Preprocessor.load(out_dir / PREPROCESS_FILE)
    net = build_model(tasks, pre.cardinalities, len(pre.columns.numeric), model_cfg)
    state = torch.load(out_dir / MODEL_FILE, map_location=device, weights_only=True)
    net.load_state_dict(state)
    return TrainedModel(net.to(device).eval(), pre, tasks, model_cfg)


def write_curves(history: list[dict[str, float]], out_dir: Path, monitor: str, png: bool = True) -> None:
    """curves.csv (DVC plots: epoch, train_loss, valid_<metric>...) and, if ``png``, curves.png."""
    df = pd.DataFrame(history)
    save_csv(df, out_dir / "curves.csv")
    if not png:
        return
    fig = Figure(figsize=(9, 3.5))
    ax = fig.subplots(1, 2)
    ax[0].plot(df.epoch, df.train_loss, "o-")
    ax[0].set(xlabel="epoch", ylabel="train loss")
    key = "valid_" + monitor.replace("/", "_")
    if key in df:
        ax[1].plot(df.epoch, df[key], "o-")
        ax[1].set(xlabel="epoch", ylabel=key)
    save_png(fig, out_dir / "curves.png")


def _save_torch(obj: Any, path: Path) -> None:
    with atomic_file(path) as tmp:
        torch.save(obj, tmp)


def monitor_score(metrics: dict[str, float], tasks: TaskGraph, monitor: str, train_loss: float) -> float:
    """The early-stopping score: ``monitor`` on validation, or -train_loss without validation rows."""
    if not metrics:
        return -train_loss
    return mean_auc(metrics, tasks) if monitor == "mean_auc" else metrics[monitor]


def epoch_row(epoch: int, train_loss: float, samples_per_sec: float, metrics: dict[str, float],
              tasks: TaskGraph) -> dict[str, float]:
    """An epoch's line of the history (curves.csv)."""
    row = {"epoch": epoch, "train_loss": train_loss, "samples_per_sec": samples_per_sec,
           "valid_mean_auc": mean_auc(metrics, tasks)}
    row.update({"valid_" + k.replace("/", "_"): v for k, v in metrics.items()})
    return row


def update_best(best: _Best, score: float, epoch: int, metrics: dict[str, float],
                cfg: TrainConfig) -> tuple[_Best, bool, bool]:
    """(best, improved, stop now) after an epoch scoring ``score`` (Keras patience semantics)."""
    better = score > best.score if cfg.monitor_mode == "max" else score < best.score
    improved = best.epoch < 0 or (bool(np.isfinite(score)) and (not np.isfinite(best.score) or better))
    if improved:
        best = _Best(score, epoch, 0, metrics)
    else:
        best.bad_epochs += 1
    return best, improved, best.bad_epochs > 0 and best.bad_epochs >= cfg.patience


def _rng_state(gen: torch.Generator, device: torch.device) -> dict[str, Any]:
    # numpy's state as tensors and plain numbers: a checkpoint loads with weights_only=True (no pickle).
    _, keys, pos, has_gauss, gauss = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
    state = {"torch": torch.get_rng_state(), "perm": gen.get_state(),
             "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], gen: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["perm"])
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def step_lrs(cfg: TrainConfig, epoch: int, steps: int) -> list[float] | None:
    """The learning rate of each of ``epoch``'s ``steps`` optimizer steps (None: leave it at ``lr``).
    ``cosine`` decays from ``lr`` towards 0 over all ``epochs``: the late steps refine instead of
    re-fitting single batches. A function of the epoch alone, so a resumed run gets the same rates."""
    if cfg.lr_schedule == "constant":
        return None
    total = cfg.epochs * steps
    return [cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch * steps + k) / total)) for k in range(steps)]


def batch_size_for(cfg: TrainConfig, rows: int) -> int:
    """``batch_size``, made smaller where ``rows`` would give fewer than ``min_steps_per_epoch`` steps."""
    return max(1, min(cfg.batch_size, math.ceil(rows / cfg.min_steps_per_epoch)))


def id_counts(net: FunnelNet, cat: torch.Tensor) -> torch.Tensor:
    """Training-split count of every embedding row (at least 1), for ``frequency_l2``."""
    rows = net.input.embedding.weight.shape[0]
    return torch.bincount(net.input.rows(cat), minlength=rows).clamp(min=1).float()


def run_epoch(net: FunnelNet, opt: torch.optim.Optimizer, cat: torch.Tensor, num: torch.Tensor, y: torch.Tensor,
              tasks: TaskGraph, model_cfg: ModelConfig, batch_size: int, gen: torch.Generator,
              amp_ctx: AbstractContextManager[Any], scaler: torch.amp.GradScaler,
              progress: bool = False, desc: str = "", lrs: list[float] | None = None,
              counts: torch.Tensor | None = None) -> tuple[float, float]:
    """One pass over a random permutation of the in-memory rows; returns (mean loss, seconds).
    ``lrs``: the learning rate of each step (``step_lrs``); ``counts``: the embedding rows' training
    counts, given when ``model_cfg.embedding_l2`` > 0."""
    net.train()
    t0 = time.perf_counter()
    n = len(cat)
    perm = torch.randperm(n, generator=gen).to(cat.device)
    loss_sum = torch.zeros((), device=cat.device)
    bar = tqdm(total=n, disable=not progress, desc=desc, unit="row", leave=False)
    for step, i in enumerate(range(0, n, batch_size)):
        idx = perm[i:i + batch_size]
        if len(idx) < 2 and model_cfg.batch_norm:  # BatchNorm cannot train on one row: skip that remainder
            continue
        with amp_ctx:
            out = net(cat[idx], num[idx])
        total, terms = funnel_loss(out, y[idx], tasks, model_cfg)
        if counts is not None:
            total = total + model_cfg.embedding_l2 * frequency_l2(net.input.embedding.weight,
                                                                  net.input.rows(cat[idx]), counts)
        if lrs is not None:
            for group in opt.param_groups:
                group["lr"] = lrs[step]
        opt.zero_grad(set_to_none=True)
        if scaler.is_enabled():
            net.backward({k: scaler.scale(v) for k, v in terms.items()}, scaler.scale(total))
            scaler.step(opt)
            scaler.update()
        else:
            net.backward(terms, total)
            opt.step()
        loss_sum += total.detach() * len(idx)
        if progress:
            bar.update(len(idx))
            if step % 20 == 0:  # .item() syncs the GPU: not every step
                rate = bar.n / max(1e-9, time.perf_counter() - t0)
                bar.set_postfix(loss=f"{total.item():.4f}", rows_s=f"{rate:,.0f}")
    bar.close()
    mean_loss = float(loss_sum.item()) / max(1, n)  # .item() also waits for the GPU before timing
    return mean_loss, time.perf_counter() - t0


def make_optimizer(net: FunnelNet, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """Adam with the fused kernel (CUDA: one launch for all parameters; CPU: one vectorised pass,
    which matters because the dense embedding table is updated every step)."""
    return torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


def _save_checkpoint(path: Path, net: FunnelNet, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                     gen: torch.Generator, device: torch.device, epoch: int, history: list[dict[str, float]],
                     best: _Best) -> None:
    """Everything a resumed run needs to continue exactly as an uninterrupted one."""
    _save_torch({"model": net.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                 "epoch": epoch, "rng": _rng_state(gen, device), "history": history,
                 "best_score": best.score, "best_epoch": best.epoch, "bad_epochs": best.bad_epochs,
                 "best_metrics": best.metrics}, path)


def _load_checkpoint(path: Path, net: FunnelNet, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                     gen: torch.Generator, device: torch.device) -> tuple[list[dict[str, float]], int, _Best]:
    """Restore ``_save_checkpoint``'s state in place; returns (history, next epoch, best)."""
    try:  # weights_only: a checkpoint pulled from a remote must not run code (no pickled objects)
        ck = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a garbled file raises anything from IndexError to RuntimeError
        why = ("holds pickled objects, not only tensors and numbers (loading it could run code)"
               if "Weights only load failed" in str(exc) else
               f"is not a readable checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
        raise ArtifactRefused(f"{path} {why}: delete it and train without --resume") from None
    net.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    scaler.load_state_dict(ck["scaler"])
    _set_rng_state(ck["rng"], gen, device)
    best = _Best(ck["best_score"], ck["best_epoch"], ck["bad_epochs"], ck["best_metrics"])
    return ck["history"], ck["epoch"] + 1, best


def _write_run_inputs(out_dir: Path, pre: Preprocessor, model_cfg: ModelConfig, train_cfg: TrainConfig,
                      tasks: TaskGraph, columns: FeatureColumns) -> None:
    """preprocess.json and config.json: what ``load_model`` needs besides the weights."""
    write_text(out_dir / PREPROCESS_FILE, pre.model_dump_json())
    write_json(out_dir / CONFIG_FILE, {"model": model_cfg.model_dump(), "train": train_cfg.model_dump(),
                                       "tasks": tasks.model_dump(), "columns": columns.model_dump()})


def _log_epoch(model: str, epoch: int, epochs: int, row: dict[str, float], monitor: str, score: float,
               best: _Best, eval_seconds: float) -> None:
    log.info("%s epoch %d/%d: train loss %.4f, valid %s %.4f (best %.4f, epoch %d), %.1f s (%s samples/s) "
             "+ %.1f s eval", model, epoch + 1, epochs, row["train_loss"], monitor, score, best.score,
             best.epoch + 1, row["train_seconds"], f"{row['samples_per_sec']:,.0f}", eval_seconds)


# ----------------------------------------------------------------------------- entry point
def train_model(
    train_df: pd.DataFrame,
    valid_df: pd.DataFrame,
    tasks: TaskGraph,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    columns: FeatureColumns | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``model_cfg.name`` on ``train_df``; choose the best epoch / stop early on ``valid_df`` only.

    Writes out_dir/{model.pt (best weights), preprocess.json, config.json, curves.csv, curves.png,
    checkpoint.pt (last epoch: model, optimizer, epoch, RNG, history)}. ``resume=True`` continues
    from checkpoint.pt when present (a finished run is not retrained). ``on_epoch_end(epoch, row)``
    runs after each epoch's checkpoint is on disk (tests use it to simulate a crash). Logs one INFO
    line per epoch on ``funnelflow.train``, with or without the ``progress`` bar.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(train_cfg.device)
    if train_cfg.num_threads:
        torch.set_num_threads(train_cfg.num_threads)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)  # cheap on CPU; CUDA would need cuBLAS config

    columns = columns or infer_feature_columns(train_df, tasks)
    pre = Preprocessor.fit(train_df, columns, model_cfg.min_count, model_cfg.numeric_buckets)
    _write_run_inputs(out_dir, pre, model_cfg, train_cfg, tasks, columns)

    torch.manual_seed(train_cfg.seed)
    np.random.seed(train_cfg.seed)
    gen = torch.Generator(device="cpu").manual_seed(train_cfg.seed)
    net = build_model(tasks, pre.cardinalities, len(columns.numeric), model_cfg).to(device)
    opt = make_optimizer(net, train_cfg, device)
    amp_ctx, amp_dtype = amp_context(device, train_cfg.amp, train_cfg.cpu_bf16)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    cat_np, num_np = pre.encode(train_df)
    cat, num, y = (to_device(a, device) for a in (cat_np, num_np, label_matrix(train_df, tasks)))
    v_cat_np, v_num_np = pre.encode(valid_df)
    v_cat, v_num = torch.from_numpy(v_cat_np), torch.from_numpy(v_num_np)
    valid_labels = valid_df[[c for c in ["impression_id"] if c in valid_df] + [t.column for t in tasks.tasks]]

    history: list[dict[str, float]] = []
    start_epoch, best = 0, _Best()
    ckpt_path = out_dir / CHECKPOINT_FILE
    if resume and ckpt_path.exists():
        history, start_epoch, best = _load_checkpoint(ckpt_path, net, opt, scaler, gen, device)

    n, bs = len(cat), batch_size_for(train_cfg, len(cat))
    if bs < train_cfg.batch_size:
        log.info("%s: batch size %d, not %d: %d training rows make at least %d steps an epoch", model_cfg.name,
                 bs, train_cfg.batch_size, n, train_cfg.min_steps_per_epoch)
    counts = id_counts(net, cat) if model_cfg.embedding_l2 > 0 else None
    train_seconds, samples = 0.0, 0
    stopped = best.bad_epochs > 0 and best.bad_epochs >= train_cfg.patience
    for epoch in range(start_epoch, train_cfg.epochs):
        if stopped:
            break
        train_loss, epoch_seconds = run_epoch(net, opt, cat, num, y, tasks, model_cfg, bs, gen, amp_ctx, scaler,
                                              progress, f"{model_cfg.name} epoch {epoch}",
                                              step_lrs(train_cfg, epoch, math.ceil(n / bs)), counts)
        train_seconds += epoch_seconds
        samples += n

        t_eval = time.perf_counter()
        preds = predict_arrays(net, v_cat, v_num, tasks, train_cfg.eval_batch_size, device, train_cfg.amp)
        metrics = evaluate_predictions(valid_labels, pd.DataFrame(preds), tasks) if len(valid_df) else {}
        score = monitor_score(metrics, tasks, train_cfg.monitor, train_loss)
        row = epoch_row(epoch, train_loss, n / epoch_seconds, metrics, tasks)
        history.append(row)

        best, improved, stopped = update_best(best, score, epoch, metrics, train_cfg)
        if improved:
            _save_torch(net.state_dict(), out_dir / MODEL_FILE)
        _save_checkpoint(ckpt_path, net, opt, scaler, gen, device, epoch, history, best)
        write_curves(history, out_dir, train_cfg.monitor, png=False)  # PNG once at the end (~0.3 s each)
        _log_epoch(model_cfg.name, epoch, train_cfg.epochs, row | {"train_seconds": epoch_seconds},
                   train_cfg.monitor if metrics else "-train_loss", score, best, time.perf_counter() - t_eval)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)

    if history:
        write_curves(history, out_dir, train_cfg.monitor)
    return TrainResult(out_dir=out_dir, best_epoch=best.epoch, best_score=float(best.score),
                       valid_metrics=best.metrics, history=history, train_seconds=train_seconds,
                       samples_per_sec=samples / train_seconds if train_seconds else 0.0)
