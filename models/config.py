"""Typed run configuration of ``models/``: params.yaml's ``model``, ``train`` and ``export`` sections.

``ModelConfigBase`` holds the knobs every model has; each model's own config (in its module under
``models/networks/``) adds ``name`` and its own knobs, and ``models.networks.ModelConfig`` is their
union. Every default here equals params.yaml (tests/models/test_config.py checks it). Besides the
keys params.yaml lists, a few fields have defaults that hold choices the papers leave open, so a run
can change them without code edits.
"""
from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from models.strict import Strict

LossName = Literal["auto", "bce", "ctcvr", "calibrated", "dependence"]
Margin = Annotated[float, Field(ge=0.0, le=1.0)]  # a gap between two probabilities


class ModelConfigBase(Strict):
    """params.yaml ``model``: the knobs every model shares (any model can use any loss)."""

    paper_loss: ClassVar[LossName] = "bce"  # what ``loss: auto`` means for this model

    name: str
    embedding_dim: int = Field(16, ge=1)
    hidden: list[int] = Field(default_factory=lambda: [128, 64], min_length=1)
    tower: list[int] = Field(default_factory=lambda: [64])
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    loss: LossName = "auto"
    value_loss: Literal["mse_log1p", "lognormal"] = "mse_log1p"
    pwiser_weight: float = Field(0.0, ge=0.0)
    regression_weight: float = Field(0.1, ge=0.0)  # weight of each regression task's loss in the total
    min_count: int = Field(2, ge=1)
    # > 0: each numeric feature also enters as the embedding of its train quantile bucket (at most this
    # many buckets), beside its standardised value (models/preprocess.py says why).
    numeric_buckets: int = Field(0, ge=0)
    # Frequency-aware L2 on the embedding rows each batch uses (DIN's mini-batch aware regularisation):
    # without it, user/item id embeddings memorise the few positives per id within one epoch and
    # every model peaks at epoch 0 (docs/benchmarks.md, "Why models stopped after one epoch").
    embedding_l2: float = Field(0.1, ge=0.0)
    # BatchNorm1d after every hidden Linear and gate (towers, bottoms, experts; torch-rechub's MLP
    # does this). Off by default: measured +0.012 AUC after 2 epochs at batch 4096 (shared_bottom,
    # benchmarks/peer_rechub.py) for ~9% throughput; a training batch needs >= 2 rows.
    batch_norm: bool = False
    # --- open choices of the papers, not in params.yaml ---
    # PWiseR (m1: converted over clicked-only, m2: converted over unclicked) on the CTR probability;
    # why these values: models.losses.pwiser_loss.
    pwiser_margins: tuple[Margin, Margin] = (0.05, 0.1)
    dependence_penalty: float = Field(1.0, ge=0.0)    # TAFE: weight of mean(relu(p_t - p_parent))

    @property
    def penalty_weight(self) -> float:
        """Weight of the monotonicity penalty of the ``calibrated`` and ``dependence`` losses (AITM's config
        overrides it)."""
        return self.dependence_penalty


class TrainConfig(Strict):
    """params.yaml ``train``."""

    epochs: int = Field(6, ge=1)
    batch_size: int = Field(4096, ge=1)
    # A smaller training split gets smaller batches, so that an epoch has at least this many optimizer
    # steps: at 4096 rows a batch, the census sample's 35k training rows made 9 steps an epoch and every
    # model was still improving at its last epoch (docs/benchmarks.md, same section).
    min_steps_per_epoch: int = Field(32, ge=1)
    lr: float = Field(0.01, gt=0.0)
    lr_schedule: Literal["constant", "cosine"] = "cosine"  # cosine: decays to 0 over ``epochs``, per step
    weight_decay: float = Field(0.0, ge=0.0)
    patience: int = Field(2, ge=0)
    seed: int = 7
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # > 1: the `train` step runs this many DDP processes under torchrun (models/distributed.py): CPU
    # processes with gloo, or one GPU each with NCCL; 1: this process (models/train.py).
    nproc: int = Field(1, ge=1)
    # --- not in params.yaml; defaults are what the pipeline wants ---
    monitor: str = "mean_auc"          # "mean_auc" (chained output, binary tasks) or any "task/metric"
    monitor_mode: Literal["max", "min"] = "max"
    amp: bool = True                   # bf16 (or fp16 + scaler) autocast on CUDA
    cpu_bf16: bool = False             # bf16 autocast on CPU too (opt-in: ~1.4x on avx512_bf16 CPUs)
    num_threads: int | None = None     # CPU intra-op threads; None = all visible cores
    eval_batch_size: int = Field(65536, ge=1)


class ExportConfig(Strict):
    """params.yaml ``export``."""

    parity_atol: float = Field(1e-5, gt=0.0)
    opset: int = Field(18, ge=17)
