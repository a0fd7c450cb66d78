"""Shared-Bottom (Caruana 1997): one shared MLP, one tower per task."""
from __future__ import annotations

from typing import Literal

from torch import Tensor

from models.config import ModelConfigBase
from models.networks.base import FunnelNet
from models.networks.layers import mlp
from models.tasks import TaskGraph


class SharedBottomConfig(ModelConfigBase):
    """params.yaml ``model`` with ``name: shared_bottom``: the shared knobs only."""

    name: Literal["shared_bottom"] = "shared_bottom"


class SharedBottom(FunnelNet):
    """The bottom MLP (``hidden``) feeds every task's tower."""

    config_class = SharedBottomConfig

    def __init__(self, tasks: TaskGraph, cardinalities: list[int], n_numeric: int, cfg: SharedBottomConfig):
        super().__init__(tasks, cardinalities, n_numeric, cfg)
        self.bottom = mlp(self.in_dim, cfg.hidden, cfg.dropout, cfg.batch_norm)
        self._build_heads(cfg.hidden[-1])

    def task_reps(self, x: Tensor) -> dict[str, Tensor]:
        h = self.bottom(x)
        return {t: h for t in self.tasks.names}


NETWORK = SharedBottom
