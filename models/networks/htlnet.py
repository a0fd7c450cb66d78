"""HTLNet (Tang et al., RecSys 2024, arXiv 2403.17442): "touch the core" -- classification steps
followed by a core regression target, with label embeddings and a gradient adjustment.

The paper's abstract gives the units; their exact form follows a third-party re-implementation
(dlwlsrnjs/ember, ``ember/htlnet.py``), whose defaults (``label_dim`` 10, ``gamma`` 0.1, ``clip`` 10)
this config keeps. What neither fixes is marked "our choice" below.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from models.config import ModelConfigBase
from models.networks.base import FunnelNet
from models.networks.layers import AttentionFusion, mlp
from models.tasks import TaskGraph


class HTLNetConfig(ModelConfigBase):
    """params.yaml ``model`` with ``name: htlnet``."""

    name: Literal["htlnet"] = "htlnet"
    label_dim: int = Field(10, ge=1)            # Label Embedding Unit width
    tau: float = Field(1.0, gt=0.0)             # Gumbel-softmax temperature (fixed, no annealing)
    gamma: float = Field(0.1, ge=0.0, le=1.0)   # gradient-magnitude blend
    clip: float = Field(10.0, gt=0.0)           # clip of |G_core| / |G_t|
    # Ablation switches (benchmarks/ablation.py), the paper's two units:
    label_embedding: bool = True                # false: no Label Embedding Unit, no label fusion branch
    gradient_adjustment: bool = True            # false: plain backprop into the shared embedding


class HTLNet(FunnelNet):
    """The network and its gradient adjustment.

    * Towers: tower_t(shared emb) for roots; later tasks read concat(IFU rep, IFU label emb, emb),
      or concat(IFU rep, emb) with ``label_embedding`` off (no label tables, no label fusion).
    * Label Embedding Unit: le_t = GumbelSoftmax([log p_t, log(1-p_t)], tau) @ E_t (E_t: 2 x d_le),
      p_t the PREDICTED probability. Gumbel noise in training only; at inference the noise-free
      softmax (= [p, 1-p] at tau=1). tau fixed (``tau``), not annealed: our choice.
    * Information Fusion Unit: AITM-style attention over the ancestors' tower representations, and
      separately over their label embeddings ("preceding tasks" = graph ancestors: our choice, so
      independent tasks get none). Stop-gradient: ancestors' representations and p enter the IFU
      detached, so a later task's loss does not move earlier towers (E_t and the IFU still learn).
    * Gradient adjustment (``backward``) on the shared-embedding output gradients, whole batch
      flattened: for each classification task G_t, if cos(G_t, G_core) < 0 project G_t off G_core,
      then G_t <- gamma * min(|G_core|/|G_t|, C) * G_t + (1 - gamma) * G_t. G_core = the last
      regression task's gradient; without a regression task, or with ``gradient_adjustment`` off,
      it is plain backprop.
    """

    config_class = HTLNetConfig
    cfg: HTLNetConfig

    def __init__(self, tasks: TaskGraph, cardinalities: list[int], n_numeric: int, cfg: HTLNetConfig):
        super().__init__(tasks, cardinalities, n_numeric, cfg)
        d, dl = cfg.hidden[-1], cfg.label_dim if cfg.label_embedding else 0
        self.towers_h = nn.ModuleDict()
        self.label_emb = nn.ParameterDict()
        self.ifu_rep, self.ifu_label = nn.ModuleDict(), nn.ModuleDict()
        # tasks whose label embedding a later task reads
        self.feeds = {a for t in tasks.tasks for a in tasks.ancestors(t.name)} if dl else set()
        for t in tasks.tasks:
            has_anc = bool(tasks.ancestors(t.name))
            in_dim = self.in_dim + (d + dl if has_anc else 0)
            self.towers_h[t.name] = mlp(in_dim, cfg.hidden, cfg.dropout, cfg.batch_norm)
            if t.name in self.feeds:
                self.label_emb[t.name] = nn.Parameter(torch.randn(2, dl) * 0.1)
            if has_anc:
                self.ifu_rep[t.name] = AttentionFusion(d)
                if dl:
                    self.ifu_label[t.name] = AttentionFusion(dl)
        self._build_heads(d)
        regs = [t.name for t in tasks.tasks if t.kind == "regression"]
        self.core = regs[-1] if regs and cfg.gradient_adjustment else None
        self._emb: Tensor | None = None
        self._emb_leaf: Tensor | None = None

    def _label_embedding(self, name: str, logit: Tensor) -> Tensor:
        logits2 = torch.stack([F.logsigmoid(logit), F.logsigmoid(-logit)], dim=1).detach()
        if self.training:
            w = F.gumbel_softmax(logits2, tau=self.cfg.tau, hard=False)
        else:
            w = torch.softmax(logits2 / self.cfg.tau, dim=1)
        return w.to(self.label_emb[name].dtype) @ self.label_emb[name]

    def raw_outputs(self, x: Tensor) -> dict[str, Tensor]:
        if self.training and torch.is_grad_enabled() and self.core is not None:
            self._emb, x = x, x.detach().requires_grad_(True)  # leaf: per-task gradients land here
            self._emb_leaf = x
        reps: dict[str, Tensor] = {}
        les: dict[str, Tensor] = {}
        raw: dict[str, Tensor] = {}
        for t in self.tasks.tasks:
            anc = self.tasks.ancestors(t.name)
            tower_in = x
            if anc:
                fused = [self.ifu_rep[t.name](torch.stack([reps[a].detach() for a in anc], 1))]
                if t.name in self.ifu_label:
                    fused.append(self.ifu_label[t.name](torch.stack([les[a] for a in anc], 1)))
                tower_in = torch.cat([*fused, x], 1)
            reps[t.name] = self.towers_h[t.name](tower_in)
            raw.update(self.head(t.name, reps[t.name]))
            if t.name in self.feeds:
                les[t.name] = self._label_embedding(t.name, raw[f"logit_{t.name}"])
        return raw

    def backward(self, task_losses: dict[str, Tensor], total: Tensor) -> None:
        emb, leaf = self._emb, self._emb_leaf
        self._emb = self._emb_leaf = None
        if emb is None or leaf is None or self.core not in task_losses:
            total.backward()
            return
        g_core = torch.autograd.grad(task_losses[self.core], leaf, retain_graph=True)[0].float()
        cls = [t.name for t in self.tasks.binary if t.name in task_losses and task_losses[t.name].requires_grad]
        g_cls = [torch.autograd.grad(task_losses[n], leaf, retain_graph=True)[0].float() for n in cls]
        total.backward()  # all parameters above the embedding; leaf.grad = sum of all gradients
        assert leaf.grad is not None
        g = leaf.grad.float()
        for g_t in g_cls:
            g = g - g_t + adjust_gradient(g_t, g_core, self.cfg.gamma, self.cfg.clip)
        emb.backward(g.to(emb.dtype))


def adjust_gradient(g_t: Tensor, g_core: Tensor, gamma: float, clip: float, eps: float = 1e-12) -> Tensor:
    """HTLNet's gradient adjustment of one classification gradient against the core gradient
    (direction: PCGrad projection when conflicting; magnitude: blend towards |G_core| scale)."""
    dot = (g_t * g_core).sum()
    core_sq = (g_core * g_core).sum()
    g_t = torch.where(dot < 0, g_t - dot / (core_sq + eps) * g_core, g_t)
    ratio = torch.clamp(core_sq.sqrt() / (g_t.norm() + eps), max=clip)
    return gamma * ratio * g_t + (1.0 - gamma) * g_t


NETWORK = HTLNet
