"""Typed run configuration of ``models/``: one pydantic model per params.yaml section.

``ModelConfig`` / ``TrainConfig`` / ``ExportConfig`` accept exactly the keys of params.yaml's
``model`` / ``train`` / ``export`` sections (extra="forbid": a typo is an error). The few extra fields
below have defaults and hold the choices the papers leave open (see /work/shared/PAPERS.md), so a run
can change them without code edits.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

ModelName = Literal["shared_bottom", "mmoe", "ple", "esmm", "aitm", "tafe", "htlnet"]
LossName = Literal["auto", "bce", "ctcvr", "dependence"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Strict):
    """params.yaml ``model``."""

    name: ModelName = "mmoe"
    embedding_dim: int = Field(16, ge=1)
    hidden: list[int] = Field(default_factory=lambda: [128, 64], min_length=1)
    tower: list[int] = Field(default_factory=lambda: [64])
    experts: int = Field(4, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    loss: LossName = "auto"
    value_loss: Literal["mse_log1p", "lognormal"] = "mse_log1p"
    pwiser_weight: float = Field(0.0, ge=0.0)
    regression_weight: float = Field(0.1, ge=0.0)  # weight of each regression task's loss in the total
    min_count: int = Field(2, ge=1)
    # BatchNorm1d after every hidden Linear and gate (towers, bottoms, experts; torch-rechub's MLP
    # does this). Off by default: measured +0.012 AUC after 2 epochs at batch 4096 (shared_bottom,
    # benchmarks/peer_rechub.py) for ~9% throughput; a training batch needs >= 2 rows.
    batch_norm: bool = False
    # --- open choices of the papers (defaults documented where used) ---
    pwiser_margins: tuple[float, float] = (1.0, 1.0)  # (m1: P over C, m2: P over N), log-prob scale
    dependence_penalty: float = Field(1.0, ge=0.0)    # TAFE: weight of mean(relu(p_t - p_parent))
    aitm_calibrator: float = Field(0.6, ge=0.0)       # AITM official code's w
    htl_label_dim: int = Field(10, ge=1)              # HTLNet LEU dim (re-implementation default)
    htl_tau: float = Field(1.0, gt=0.0)               # Gumbel-softmax temperature (fixed, no annealing)
    htl_gamma: float = Field(0.1, ge=0.0, le=1.0)     # gradient-magnitude blend
    htl_clip: float = Field(10.0, gt=0.0)             # clip of |G_core| / |G_t|


class TrainConfig(_Strict):
    """params.yaml ``train``."""

    epochs: int = Field(4, ge=1)
    batch_size: int = Field(4096, ge=1)
    lr: float = Field(0.002, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    patience: int = Field(2, ge=0)
    seed: int = 7
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # --- not in params.yaml; defaults are what the pipeline wants ---
    monitor: str = "mean_auc"          # "mean_auc" (chained output, binary tasks) or any "task/metric"
    monitor_mode: Literal["max", "min"] = "max"
    amp: bool = True                   # bf16 (or fp16 + scaler) autocast on CUDA
    cpu_bf16: bool = False             # bf16 autocast on CPU too (opt-in: ~1.4x on avx512_bf16 CPUs)
    num_threads: int | None = None     # CPU intra-op threads; None = all visible cores
    eval_batch_size: int = Field(65536, ge=1)


class ExportConfig(_Strict):
    """params.yaml ``export``."""

    parity_atol: float = Field(1e-5, gt=0.0)
    opset: int = Field(18, ge=17)


def load_params(path: str | Path) -> tuple[ModelConfig, TrainConfig, ExportConfig]:
    """Parse the ``model``, ``train`` and ``export`` sections of params.yaml."""
    raw = yaml.safe_load(Path(path).read_text())
    return ModelConfig(**raw["model"]), TrainConfig(**raw["train"]), ExportConfig(**raw.get("export", {}))
