"""AITM (Xi et al., KDD 2021): per-task encoders and an attention unit that transfers information
from each task's parent to it."""
from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from models.config import LossName, ModelConfigBase
from models.networks.base import FunnelNet
from models.networks.layers import AttentionFusion, BatchedMLP
from models.tasks import TaskGraph


class AITMConfig(ModelConfigBase):
    """params.yaml ``model`` with ``name: aitm``."""

    paper_loss: ClassVar[LossName] = "calibrated"
    name: Literal["aitm"] = "aitm"
    calibrator: float = Field(0.6, ge=0.0)  # w of the behavioural expectation calibrator (official code: 0.6)

    @property
    def penalty_weight(self) -> float:
        """The calibrator weighs the ``calibrated`` loss's penalty (``dependence_penalty`` is TAFE's)."""
        return self.calibrator


class AITM(FunnelNet):
    """Per-task encoders q_t; the Adaptive Information Transfer unit fuses the parent's transferred
    info p_{t-1} = g(z_{t-1}) with q_t by attention: z_t = AIT([g_t(z_parent), q_t]). The paper
    transfers from task t-1; we use the graph parent (identical for a chain; root/independent tasks
    get no transfer). Its behavioural expectation calibrator w * mean(max(p_t - p_{t-1}, 0)) is the
    penalty of the ``calibrated`` loss (``ctcvr`` plus the penalty), weighted by ``calibrator``."""

    config_class = AITMConfig

    def __init__(self, tasks: TaskGraph, cardinalities: list[int], n_numeric: int, cfg: AITMConfig):
        super().__init__(tasks, cardinalities, n_numeric, cfg)
        d = cfg.hidden[-1]
        self.encoders = BatchedMLP(len(tasks.tasks), self.in_dim, cfg.hidden, cfg.dropout, cfg.batch_norm)
        children = [t.name for t in tasks.tasks if t.parent]
        self.transfer = nn.ModuleDict({t: nn.Sequential(nn.Linear(d, d), nn.ReLU()) for t in children})
        self.ait = nn.ModuleDict({t: AttentionFusion(d) for t in children})
        self._build_heads(d)

    def task_reps(self, x: Tensor) -> dict[str, Tensor]:
        q = self.encoders(x)
        z: dict[str, Tensor] = {}
        for i, t in enumerate(self.tasks.tasks):
            if t.parent is None:
                z[t.name] = q[i]
            else:
                u = torch.stack([self.transfer[t.name](z[t.parent]), q[i]], dim=1)
                z[t.name] = self.ait[t.name](u)
        return z


NETWORK = AITM
