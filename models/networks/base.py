"""What every network shares: the input layer, one tower + head per task, and the chain from raw
heads to the predictions layout.

Every network maps (categorical codes [N, C] int64, standardised numeric [N, F] float32) to raw heads
(a conditional logit per binary task; mu, and log sigma for the lognormal head, per regression task)
and then ``chain_outputs`` turns those into the predictions layout (docs/funnel-dataset.md):

* ``p_<task>_given_<parent>`` = sigmoid(logit_task)  -- p(task | parent reached)
* ``p_<task>``                = prod of the conditionals along the chain (the joint; root: itself)
* ``<task>_given_<parent>``   = E[value | parent], ``<task>_expected`` = p_<parent> * E[value | parent]

Choice: every family is parametrised with conditional heads and a product chain (the ESMM form), so
the chaining rule p_child <= p_parent holds exactly for every model; the papers that supervise joint
probabilities directly (AITM, TAFE) differ only in their loss (see losses.py).
Regression heads model y = log1p(value): ``mse_log1p`` -> E[value|parent] := expm1(mu) (the
back-transformed conditional mean of log1p, biased low by Jensen; chosen for stability), ``lognormal``
-> log1p(value) ~ N(mu, sigma^2), E := exp(mu + sigma^2/2) - 1. mu = softplus(.) >= 0 so E >= 0.
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import ModelConfigBase
from models.networks.layers import FeatureInput, mlp
from models.tasks import TaskGraph


def prediction_columns(tasks: TaskGraph) -> list[str]:
    """Output names of the predictions layout, in task order (impression_id excluded)."""
    cols: list[str] = []
    for t in tasks.tasks:
        if t.kind == "binary":
            cols.append(f"p_{t.name}")
            if t.parent:
                cols.append(f"p_{t.name}_given_{t.parent}")
        else:
            if t.parent:
                cols.append(f"{t.name}_given_{t.parent}")
            cols.append(f"{t.name}_expected")
    return cols


def chain_outputs(raw: dict[str, Tensor], tasks: TaskGraph, value_loss: str) -> dict[str, Tensor]:
    """Raw heads -> conditional and chained outputs (plus log p_joint, used by the losses)."""
    out: dict[str, Tensor] = dict(raw)
    for t in tasks.tasks:
        if t.kind == "binary":
            logit = raw[f"logit_{t.name}"].float()
            logp = F.logsigmoid(logit)
            if t.parent:
                logp = logp + out[f"logp_{t.parent}"]
                out[f"p_{t.name}_given_{t.parent}"] = torch.sigmoid(logit)
            out[f"logp_{t.name}"] = logp
            out[f"p_{t.name}"] = torch.exp(logp)
        else:
            mu = raw[f"mu_{t.name}"].float()
            if value_loss == "lognormal":
                sigma2 = torch.exp(2.0 * raw[f"logsigma_{t.name}"].float())
                cond = torch.exp(mu + 0.5 * sigma2) - 1.0  # exp - 1, not expm1: the legacy ONNX
            else:                                           # exporter (fallback) has no expm1
                cond = torch.exp(mu) - 1.0
            if t.parent:
                out[f"{t.name}_given_{t.parent}"] = cond
                out[f"{t.name}_expected"] = out[f"p_{t.parent}"] * cond
            else:
                out[f"{t.name}_expected"] = cond
    return out


class FunnelNet(nn.Module):
    """Shared parts: the input layer, one tower + head per task, the chain assembly.

    Subclasses set ``config_class`` (their config, whose ``name`` keys the registry) and implement
    ``task_reps(x) -> {task: [N, rep_dim]}`` (or override ``raw_outputs``).
    """

    config_class: ClassVar[type[ModelConfigBase]]

    def __init__(self, tasks: TaskGraph, cardinalities: list[int], n_numeric: int, cfg: ModelConfigBase):
        super().__init__()
        self.tasks, self.cfg = tasks, cfg
        self.input = FeatureInput(cardinalities, n_numeric, cfg.embedding_dim)
        self.in_dim = self.input.out_dim

    def _build_heads(self, rep_dim: int) -> None:
        cfg = self.cfg
        self.towers = nn.ModuleDict(
            {t.name: mlp(rep_dim, cfg.tower, cfg.dropout, cfg.batch_norm) for t in self.tasks.tasks}
        )
        last = cfg.tower[-1] if cfg.tower else rep_dim
        n_reg_out = 2 if cfg.value_loss == "lognormal" else 1
        self.heads = nn.ModuleDict(
            {t.name: nn.Linear(last, 1 if t.kind == "binary" else n_reg_out) for t in self.tasks.tasks}
        )

    def head(self, name: str, rep: Tensor) -> dict[str, Tensor]:
        z = self.heads[name](self.towers[name](rep))
        if self.tasks.get(name).kind == "binary":
            return {f"logit_{name}": z[:, 0]}
        raw = {f"mu_{name}": F.softplus(z[:, 0])}
        if z.shape[1] == 2:
            raw[f"logsigma_{name}"] = z[:, 1].clamp(-5.0, 3.0)
        return raw

    def task_reps(self, x: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def raw_outputs(self, x: Tensor) -> dict[str, Tensor]:
        raw: dict[str, Tensor] = {}
        for name, rep in self.task_reps(x).items():
            raw.update(self.head(name, rep))
        return raw

    def forward(self, cat: Tensor, num: Tensor) -> dict[str, Tensor]:
        return chain_outputs(self.raw_outputs(self.input(cat, num)), self.tasks, self.cfg.value_loss)

    def backward(self, task_losses: dict[str, Tensor], total: Tensor) -> None:
        """Plain backprop; HTLNet overrides this with its gradient adjustment."""
        total.backward()
