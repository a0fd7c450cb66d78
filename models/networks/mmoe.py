"""MMoE (Ma et al., KDD 2018): f_t(x) = sum_e softmax(W_t x)_e * expert_e(x)."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from models.config import ModelConfigBase
from models.networks.base import FunnelNet
from models.networks.layers import BatchedMLP
from models.tasks import TaskGraph


class MMoEConfig(ModelConfigBase):
    """params.yaml ``model`` with ``name: mmoe``."""

    name: Literal["mmoe"] = "mmoe"
    experts: int = Field(4, ge=1)  # MLP experts, each of shape ``hidden``


class MMoE(FunnelNet):
    """``experts`` MLP experts of shape ``hidden``, one softmax gate per task on the input."""

    config_class = MMoEConfig
    cfg: MMoEConfig

    def __init__(self, tasks: TaskGraph, cardinalities: list[int], n_numeric: int, cfg: MMoEConfig):
        super().__init__(tasks, cardinalities, n_numeric, cfg)
        self.n_tasks, self.n_experts = len(tasks.tasks), cfg.experts
        self.experts = BatchedMLP(cfg.experts, self.in_dim, cfg.hidden, cfg.dropout, cfg.batch_norm)
        self.gates = nn.Linear(self.in_dim, self.n_tasks * cfg.experts)  # all task gates in one GEMM
        self.gate_norm = nn.BatchNorm1d(self.n_tasks * cfg.experts) if cfg.batch_norm else nn.Identity()
        self._build_heads(cfg.hidden[-1])

    def task_reps(self, x: Tensor) -> dict[str, Tensor]:
        e = self.experts.wide(x)  # [N, E, d]
        g = torch.softmax(self.gate_norm(self.gates(x)).view(-1, self.n_tasks, self.n_experts), dim=-1)  # [N, T, E]
        return dict(zip(self.tasks.names, torch.bmm(g, e).unbind(1), strict=True))  # all mixtures in one bmm


NETWORK = MMoE
