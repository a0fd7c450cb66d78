"""ESMM (Ma et al., SIGIR 2018): independent towers on a shared embedding; CTR and CVR heads,
pCTCVR = pCTR * pCVR, trained on CTR and CTCVR over all impressions (loss ``ctcvr``).
Generalised to N steps: one tower per task, joint = product along the chain."""
from __future__ import annotations

from typing import ClassVar, Literal

from torch import Tensor

from models.config import LossName, ModelConfigBase
from models.networks.base import FunnelNet
from models.networks.layers import BatchedMLP
from models.tasks import TaskGraph


class ESMMConfig(ModelConfigBase):
    """params.yaml ``model`` with ``name: esmm``: the shared knobs only."""

    paper_loss: ClassVar[LossName] = "ctcvr"
    name: Literal["esmm"] = "esmm"


class ESMM(FunnelNet):
    """One ``hidden`` MLP per task (run batched), each feeding its task's tower."""

    config_class = ESMMConfig

    def __init__(self, tasks: TaskGraph, cardinalities: list[int], n_numeric: int, cfg: ESMMConfig):
        super().__init__(tasks, cardinalities, n_numeric, cfg)
        self.nets = BatchedMLP(len(tasks.tasks), self.in_dim, cfg.hidden, cfg.dropout, cfg.batch_norm)
        self._build_heads(cfg.hidden[-1])

    def task_reps(self, x: Tensor) -> dict[str, Tensor]:
        h = self.nets(x)
        return {t: h[i] for i, t in enumerate(self.tasks.names)}


NETWORK = ESMM
