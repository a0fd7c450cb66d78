"""TAFE (Tao et al., arXiv 2301.02494): task-aware feature extraction, trained with the dependence loss."""
from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from models.config import LossName, ModelConfigBase
from models.networks.base import FunnelNet
from models.networks.layers import BatchedLinear, BatchedMLP, mlp
from models.tasks import TaskGraph


class TAFEConfig(ModelConfigBase):
    """params.yaml ``model`` with ``name: tafe``: the shared knobs (its loss weight is the shared
    ``dependence_penalty``)."""

    paper_loss: ClassVar[LossName] = "dependence"
    name: Literal["tafe"] = "tafe"


class TAFE(FunnelNet):
    """The paper's network is only known from its abstract ("reconstructs implicit shared information
    per sample and extracts explicit task-specific information"). Our reading: a shared MLP gives
    the implicit shared representation s(x); per task a sample-wise feature gate
    g_t(x) = 2 * sigmoid(W2_t relu(W1_t x)) re-weights every input element (SENet-style) and a
    task MLP extracts e_t(g_t(x) * x); tower input = [s(x), e_t]."""

    config_class = TAFEConfig

    def __init__(self, tasks: TaskGraph, cardinalities: list[int], n_numeric: int, cfg: TAFEConfig):
        super().__init__(tasks, cardinalities, n_numeric, cfg)
        T, bottleneck = len(tasks.tasks), max(8, 2 * cfg.embedding_dim)
        self.shared = mlp(self.in_dim, cfg.hidden, cfg.dropout, cfg.batch_norm)
        self.gate_in = BatchedLinear(T, self.in_dim, bottleneck)
        self.gate_out = BatchedLinear(T, bottleneck, self.in_dim)
        self.extract = BatchedMLP(T, self.in_dim, cfg.hidden, cfg.dropout, cfg.batch_norm)
        self._build_heads(2 * cfg.hidden[-1])

    def task_reps(self, x: Tensor) -> dict[str, Tensor]:
        s = self.shared(x)
        gate = 2.0 * torch.sigmoid(self.gate_out(F.relu(self.gate_in(x))))  # [T, N, D]
        e = self.extract(gate * x.unsqueeze(0))
        return {t: torch.cat([s, e[i]], 1) for i, t in enumerate(self.tasks.names)}


NETWORK = TAFE
