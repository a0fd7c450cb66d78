"""The multi-task networks, one registry keyed by name.

Every network maps (categorical codes [N, C] int64, standardised numeric [N, F] float32) to raw heads
(a conditional logit per binary task; mu, and log sigma for the lognormal head, per regression task)
and then ``chain_outputs`` turns those into the predictions layout (contract funnel-dataset.md):

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

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import ModelConfig
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


# ----------------------------------------------------------------------------- building blocks
def mlp(in_dim: int, dims: list[int], dropout: float, batch_norm: bool = False) -> nn.Sequential:
    """Linear [-> BatchNorm1d] -> ReLU [-> Dropout] per entry of ``dims`` (torch-rechub's MLP order)."""
    layers: list[nn.Module] = []
    for d in dims:
        layers += [nn.Linear(in_dim, d), *([nn.BatchNorm1d(d)] if batch_norm else []), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_dim = d
    return nn.Sequential(*layers)


class BatchedLinear(nn.Module):
    """``n`` independent Linear layers run as one matmul (experts, per-task towers).

    Input [N, in] (shared by all members: one GEMM against the [in, n*out] weight) or [n, N, in]
    (one input per member: ``baddbmm``). Output [n, N, out]. Why: a Python loop over experts costs
    more than the GEMMs themselves at these sizes on 2 CPU cores.
    """

    def __init__(self, n: int, in_dim: int, out_dim: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default init range
        self.weight = nn.Parameter(torch.empty(n, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:  # one GEMM against the [in, n*out] weight
            return self.wide(x).view(x.shape[0], self.weight.shape[0], -1).permute(1, 0, 2)
        return torch.baddbmm(self.bias, x, self.weight)

    def wide(self, x: Tensor) -> Tensor:
        """[N, in] shared input -> [N, n*out], member m's unit j in column m*out + j: the layout
        BatchNorm and a later ``bmm`` over members want, with no permute copy."""
        n, i, o = self.weight.shape
        return torch.addmm(self.bias.reshape(n * o), x, self.weight.permute(1, 0, 2).reshape(i, n * o))

    def wide_grouped(self, xs: list[Tensor]) -> Tensor:
        """One [N, in] input per group of n/len(xs) consecutive members -> [N, n*out] (as ``wide``):
        one addmm per group instead of copying each input once per member for a ``baddbmm``."""
        n, i, o = self.weight.shape
        g = len(xs)
        w = self.weight.view(g, n // g, i, o).permute(0, 2, 1, 3).reshape(g, i, n // g * o)
        b = self.bias.view(g, n // g * o)
        return torch.cat([torch.addmm(b[j], x, w[j]) for j, x in enumerate(xs)], 1)


class BatchedNorm(nn.Module):
    """BatchNorm1d for each of ``n`` members of a [n, N, d] batch: statistics per member and unit,
    exactly as ``n`` separate BatchNorm1d(d) (one BatchNorm1d over the n*d columns)."""

    def __init__(self, n: int, d: int):
        super().__init__()
        self.n, self.d = n, d
        self.norm = nn.BatchNorm1d(n * d)

    def forward(self, x: Tensor) -> Tensor:
        """[n, N, d], or [N, n*d] in ``BatchedLinear.wide``'s layout (normalised as is)."""
        if x.dim() == 2:
            return self.norm(x)
        rows = x.shape[1]
        # contiguous: CPU BatchNorm backward on a strided view (as this permute gives) took 18 ms
        # instead of 1.5 ms per [4096, 512] call
        y = self.norm(x.permute(1, 0, 2).reshape(rows, self.n * self.d).contiguous())
        return y.reshape(rows, self.n, self.d).permute(1, 0, 2)


def batched_norm(n: int, d: int, on: bool) -> nn.Module:
    return BatchedNorm(n, d) if on else nn.Identity()


class BatchedMLP(nn.Module):
    """``n`` MLPs of the same shape, evaluated together; output [n, N, dims[-1]]."""

    def __init__(self, n: int, in_dim: int, dims: list[int], dropout: float, batch_norm: bool = False):
        super().__init__()
        self.layers, self.norms = nn.ModuleList(), nn.ModuleList()
        for d in dims:
            self.layers.append(BatchedLinear(n, in_dim, d))
            self.norms.append(batched_norm(n, d, batch_norm))
            in_dim = d
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        for layer, norm in zip(self.layers, self.norms):
            x = self.dropout(F.relu(norm(layer(x))))
        return x

    def wide(self, x: Tensor) -> Tensor:
        """[N, in] shared input -> [N, n, dims[-1]], every layer in ``BatchedLinear.wide``'s layout:
        BatchNorm needs no permute copy, and the result feeds a ``bmm`` over members directly."""
        n = self.layers[0].weight.shape[0]
        for k, (layer, norm) in enumerate(zip(self.layers, self.norms)):
            z = layer.wide(x) if k == 0 else layer.wide_grouped(list(x.view(x.shape[0], n, -1).unbind(1)))
            x = self.dropout(F.relu(norm(z)))
        return x.view(x.shape[0], n, -1)


class FeatureInput(nn.Module):
    """One embedding table for all categorical columns (offsets per column) + numeric passthrough."""

    offsets: Tensor

    def __init__(self, cardinalities: list[int], n_numeric: int, dim: int):
        super().__init__()
        offsets = torch.tensor([0] + cardinalities[:-1], dtype=torch.long).cumsum(0) if cardinalities else torch.zeros(0, dtype=torch.long)
        self.register_buffer("offsets", offsets, persistent=False)
        self.embedding = nn.Embedding(max(1, sum(cardinalities)), dim)
        nn.init.normal_(self.embedding.weight, std=0.05)
        self.n_fields, self.dim, self.n_numeric = len(cardinalities), dim, n_numeric
        self.out_dim = len(cardinalities) * dim + n_numeric

    def forward(self, cat: Tensor, num: Tensor) -> Tensor:
        # index_select rather than nn.Embedding's lookup: its backward (index_add) is ~1.6x faster on CPU
        emb = self.embedding.weight.index_select(0, (cat + self.offsets).flatten()).view(cat.shape[0], self.n_fields * self.dim)
        return torch.cat([emb, num.to(emb.dtype)], dim=1)


class AttentionFusion(nn.Module):
    """AITM's attention unit (Xi et al., KDD 2021): w_j = softmax_j(<W2 u_j, W3 u_j>/sqrt(d)),
    out = sum_j w_j W1 u_j over the stacked inputs u [N, J, d]. Reused by HTLNet's IFU."""

    def __init__(self, dim: int):
        super().__init__()
        self.w1, self.w2, self.w3 = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, u: Tensor) -> Tensor:
        w = torch.softmax((self.w2(u) * self.w3(u)).sum(-1) * self.scale, dim=1)  # [N, J]
        return (w.unsqueeze(-1) * self.w1(u)).sum(1)


# ----------------------------------------------------------------------------- base
class FunnelNet(nn.Module):
    """Shared parts: the input layer, one tower + head per task, the chain assembly.

    Subclasses implement ``task_reps(x) -> {task: [N, rep_dim]}`` (or override ``raw_outputs``).
    """

    paper_loss = "bce"

    def __init__(self, tasks: TaskGraph, cardinalities: list[int], n_numeric: int, cfg: ModelConfig):
        super().__init__()
        self.tasks, self.cfg = tasks, cfg
        self.input = FeatureInput(cardinalities, n_numeric, cfg.embedding_dim)
        self.in_dim = self.input.out_dim

    def _build_heads(self, rep_dim: int) -> None:
        self.towers = nn.ModuleDict({t.name: mlp(rep_dim, self.cfg.tower, self.cfg.dropout, self.cfg.batch_norm) for t in self.tasks.tasks})
        last = self.cfg.tower[-1] if self.cfg.tower else rep_dim
        n_reg_out = 2 if self.cfg.value_loss == "lognormal" else 1
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


# ----------------------------------------------------------------------------- families
class SharedBottom(FunnelNet):
    """Shared-Bottom (Caruana 1997): one shared MLP, one tower per task."""

    def __init__(self, tasks, cardinalities, n_numeric, cfg):
        super().__init__(tasks, cardinalities, n_numeric, cfg)
        self.bottom = mlp(self.in_dim, cfg.hidden, cfg.dropout, cfg.batch_norm)
        self._build_heads(cfg.hidden[-1])

    def task_reps(self, x):
        h = self.bottom(x)
        return {t: h for t in self.tasks.names}


class MMoE(FunnelNet):
    """MMoE (Ma et al., KDD 2018): f_t(x) = sum_e softmax(W_t x)_e * expert_e(x).

    ``experts`` MLP experts of shape ``hidden``, one softmax gate per task on the input."""

    def __init__(self, tasks, cardinalities, n_numeric, cfg):
        super().__init__(tasks, cardinalities, n_numeric, cfg)
        self.n_tasks, self.n_experts = len(tasks.tasks), cfg.experts
        self.experts = BatchedMLP(cfg.experts, self.in_dim, cfg.hidden, cfg.dropout, cfg.batch_norm)
        self.gates = nn.Linear(self.in_dim, self.n_tasks * cfg.experts)  # all task gates in one GEMM
        self.gate_norm = nn.BatchNorm1d(self.n_tasks * cfg.experts) if cfg.batch_norm else nn.Identity()
        self._build_heads(cfg.hidden[-1])

    def task_reps(self, x):
        e = self.experts.wide(x)  # [N, E, d]
        g = torch.softmax(self.gate_norm(self.gates(x)).view(-1, self.n_tasks, self.n_experts), dim=-1)  # [N, T, E]
        return dict(zip(self.tasks.names, torch.bmm(g, e).unbind(1)))  # every task's mixture in one bmm


class PLE(FunnelNet):
    """PLE (Tang et al., RecSys 2020): a stack of CGC levels, one per entry of ``hidden``.

    Each level has k task-specific experts per task and k shared experts (k = max(1, experts // 2):
    our choice), each a Linear+ReLU of width hidden[l]; task gates mix own + shared experts, and a
    shared gate (all experts) feeds the next level's shared input (not at the last level)."""

    def __init__(self, tasks, cardinalities, n_numeric, cfg):
        super().__init__(tasks, cardinalities, n_numeric, cfg)
        self.T, self.k = len(tasks.tasks), max(1, cfg.experts // 2)
        n_exp = (self.T + 1) * self.k  # experts ordered: task 0's k, ..., task T-1's k, shared k
        self.levels, self.level_norms = nn.ModuleList(), nn.ModuleList()
        self.task_gates, self.task_gate_norms = nn.ModuleList(), nn.ModuleList()
        self.shared_gates = nn.ModuleList()
        bn = cfg.batch_norm
        in_dim = self.in_dim
        for lvl, width in enumerate(cfg.hidden):
            self.levels.append(BatchedLinear(n_exp, in_dim, width))
            self.level_norms.append(batched_norm(n_exp, width, bn))
            self.task_gates.append(BatchedLinear(self.T, in_dim, 2 * self.k))
            self.task_gate_norms.append(batched_norm(self.T, 2 * self.k, bn))
            last = lvl == len(cfg.hidden) - 1
            gate = nn.Linear(in_dim, n_exp)  # a bare Linear without BatchNorm keeps older checkpoints' keys
            self.shared_gates.append(nn.Identity() if last else nn.Sequential(gate, nn.BatchNorm1d(n_exp)) if bn else gate)
            in_dim = width
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.register_buffer("spread_index", self._spread_index(self.T, self.k), persistent=False)
        self._build_heads(cfg.hidden[-1])

    @staticmethod
    def _spread_index(T: int, k: int) -> Tensor:
        """For task t and expert e: e's position in t's flattened gate row (t*2k + j), or T*2k (the
        zero column) when t's gate does not see e."""
        zero, idx = T * 2 * k, []
        for t in range(T):
            pos = {t * k + j: j for j in range(k)} | {T * k + j: k + j for j in range(k)}
            idx += [t * 2 * k + pos[e] if e in pos else zero for e in range((T + 1) * k)]
        return torch.tensor(idx, dtype=torch.long)

    def task_reps(self, x):
        T, k, rows = self.T, self.k, x.shape[0]
        task_in: list[Tensor] | None = None  # level 0: every expert and gate reads x
        shared_in = x
        for lvl, experts in enumerate(self.levels):
            # experts in the wide layout [N, (T+1)k * w]: BatchNorm runs on it as is, and viewed as
            # [N, experts, w] one bmm mixes them for every task (and the shared gate) at once
            z = experts.wide(x) if task_in is None else experts.wide_grouped(task_in + [shared_in])
            e = self.drop(F.relu(self.level_norms[lvl](z))).view(rows, experts.weight.shape[0], -1)
            gates = self.task_gates[lvl]
            gate_logits = gates.wide(x) if task_in is None else gates.wide_grouped(task_in)
            mix = self._spread(torch.softmax(self.task_gate_norms[lvl](gate_logits).view(rows, T, 2 * k), -1))
            last = isinstance(self.shared_gates[lvl], nn.Identity)
            if not last:  # the shared gate weighs all experts
                mix = torch.cat([mix, torch.softmax(self.shared_gates[lvl](shared_in), dim=-1).unsqueeze(1)], 1)
            out = torch.bmm(mix, e).unbind(1)  # [N, T(+1), w] -> per task (then shared)
            task_in, shared_in = list(out[:T]), (out[T] if not last else shared_in)
        assert task_in is not None
        return dict(zip(self.tasks.names, task_in))

    def _spread(self, gates: Tensor) -> Tensor:
        """[N, T, 2k] task gates (own k experts, then the shared k) -> [N, T, experts] weights with
        zeros on other tasks' experts: one Gather from the flattened gates plus a zero column."""
        flat = F.pad(gates.reshape(gates.shape[0], -1), (0, 1))
        return flat.index_select(1, self.spread_index).view(gates.shape[0], self.T, -1)


class ESMM(FunnelNet):
    """ESMM (Ma et al., SIGIR 2018): independent towers on a shared embedding; CTR and CVR heads,
    pCTCVR = pCTR * pCVR, trained on CTR and CTCVR over all impressions (loss ``ctcvr``).
    Generalised to N steps: one tower per task, joint = product along the chain."""

    paper_loss = "ctcvr"

    def __init__(self, tasks, cardinalities, n_numeric, cfg):
        super().__init__(tasks, cardinalities, n_numeric, cfg)
        self.nets = BatchedMLP(len(tasks.tasks), self.in_dim, cfg.hidden, cfg.dropout, cfg.batch_norm)
        self._build_heads(cfg.hidden[-1])

    def task_reps(self, x):
        h = self.nets(x)
        return {t: h[i] for i, t in enumerate(self.tasks.names)}


class AITM(FunnelNet):
    """AITM (Xi et al., KDD 2021): per-task encoders q_t; the Adaptive Information Transfer unit
    fuses the parent's transferred info p_{t-1} = g(z_{t-1}) with q_t by attention:
    z_t = AIT([g_t(z_parent), q_t]). The paper transfers from task t-1; we use the graph parent
    (identical for a chain; root/independent tasks get no transfer). Its behavioural expectation
    calibrator w * mean(max(p_t - p_{t-1}, 0)) is the penalty of the ``dependence`` loss (w=0.6)."""

    paper_loss = "dependence"

    def __init__(self, tasks, cardinalities, n_numeric, cfg):
        super().__init__(tasks, cardinalities, n_numeric, cfg)
        d = cfg.hidden[-1]
        self.encoders = BatchedMLP(len(tasks.tasks), self.in_dim, cfg.hidden, cfg.dropout, cfg.batch_norm)
        children = [t.name for t in tasks.tasks if t.parent]
        self.transfer = nn.ModuleDict({t: nn.Sequential(nn.Linear(d, d), nn.ReLU()) for t in children})
        self.ait = nn.ModuleDict({t: AttentionFusion(d) for t in children})
        self._build_heads(d)

    def task_reps(self, x):
        q = self.encoders(x)
        z: dict[str, Tensor] = {}
        for i, t in enumerate(self.tasks.tasks):
            if t.parent is None:
                z[t.name] = q[i]
            else:
                u = torch.stack([self.transfer[t.name](z[t.parent]), q[i]], dim=1)
                z[t.name] = self.ait[t.name](u)
        return z


class TAFE(FunnelNet):
    """TAFE (Tao et al., arXiv 2301.02494): task-aware feature extraction + dependence loss.

    The paper's network is only known from its abstract ("reconstructs implicit shared information
    per sample and extracts explicit task-specific information"). Our reading: a shared MLP gives
    the implicit shared representation s(x); per task a sample-wise feature gate
    g_t(x) = 2 * sigmoid(W2_t relu(W1_t x)) re-weights every input element (SENet-style) and a
    task MLP extracts e_t(g_t(x) * x); tower input = [s(x), e_t]. Trained with the dependence loss."""

    paper_loss = "dependence"

    def __init__(self, tasks, cardinalities, n_numeric, cfg):
        super().__init__(tasks, cardinalities, n_numeric, cfg)
        T, bottleneck = len(tasks.tasks), max(8, 2 * cfg.embedding_dim)
        self.shared = mlp(self.in_dim, cfg.hidden, cfg.dropout, cfg.batch_norm)
        self.gate_in = BatchedLinear(T, self.in_dim, bottleneck)
        self.gate_out = BatchedLinear(T, bottleneck, self.in_dim)
        self.extract = BatchedMLP(T, self.in_dim, cfg.hidden, cfg.dropout, cfg.batch_norm)
        self._build_heads(2 * cfg.hidden[-1])

    def task_reps(self, x):
        s = self.shared(x)
        gate = 2.0 * torch.sigmoid(self.gate_out(F.relu(self.gate_in(x))))  # [T, N, D]
        e = self.extract(gate * x.unsqueeze(0))
        return {t: torch.cat([s, e[i]], 1) for i, t in enumerate(self.tasks.names)}


class HTLNet(FunnelNet):
    """HTLNet (Tang et al., RecSys 2024, arXiv 2403.17442), per PAPERS.md's secondary sources.

    * Towers: tower_t(shared emb) for roots; later tasks read concat(IFU rep, IFU label emb, emb).
    * Label Embedding Unit: le_t = GumbelSoftmax([log p_t, log(1-p_t)], tau) @ E_t (E_t: 2 x d_le),
      p_t the PREDICTED probability. Gumbel noise in training only; at inference the noise-free
      softmax (= [p, 1-p] at tau=1). tau fixed (``htl_tau``), not annealed: our choice.
    * Information Fusion Unit: AITM-style attention over the ancestors' tower representations, and
      separately over their label embeddings ("preceding tasks" = graph ancestors: our choice, so
      independent tasks get none). Stop-gradient: ancestors' representations and p enter the IFU
      detached, so a later task's loss does not move earlier towers (E_t and the IFU still learn).
    * Gradient adjustment (``backward``) on the shared-embedding output gradients, whole batch
      flattened: for each classification task G_t, if cos(G_t, G_core) < 0 project G_t off G_core,
      then G_t <- gamma * min(|G_core|/|G_t|, C) * G_t + (1 - gamma) * G_t. G_core = the last
      regression task's gradient; without a regression task it is plain backprop.
    """

    def __init__(self, tasks, cardinalities, n_numeric, cfg):
        super().__init__(tasks, cardinalities, n_numeric, cfg)
        d, dl = cfg.hidden[-1], cfg.htl_label_dim
        self.towers_h = nn.ModuleDict()
        self.label_emb = nn.ParameterDict()
        self.ifu_rep, self.ifu_label = nn.ModuleDict(), nn.ModuleDict()
        self.feeds = {a for t in tasks.tasks for a in tasks.ancestors(t.name)}  # tasks with a later task
        for t in tasks.tasks:
            has_anc = bool(tasks.ancestors(t.name))
            in_dim = self.in_dim + (d + dl if has_anc else 0)
            self.towers_h[t.name] = mlp(in_dim, cfg.hidden, cfg.dropout, cfg.batch_norm)
            if t.name in self.feeds:
                self.label_emb[t.name] = nn.Parameter(torch.randn(2, dl) * 0.1)
            if has_anc:
                self.ifu_rep[t.name], self.ifu_label[t.name] = AttentionFusion(d), AttentionFusion(dl)
        self._build_heads(d)
        regs = [t.name for t in tasks.tasks if t.kind == "regression"]
        self.core = regs[-1] if regs else None
        self._emb: Tensor | None = None
        self._emb_leaf: Tensor | None = None

    def _label_embedding(self, name: str, logit: Tensor) -> Tensor:
        logits2 = torch.stack([F.logsigmoid(logit), F.logsigmoid(-logit)], dim=1).detach()
        if self.training:
            w = F.gumbel_softmax(logits2, tau=self.cfg.htl_tau, hard=False)
        else:
            w = torch.softmax(logits2 / self.cfg.htl_tau, dim=1)
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
            if anc:
                u_rep = torch.stack([reps[a].detach() for a in anc], 1)
                u_le = torch.stack([les[a] for a in anc], 1)
                tower_in = torch.cat([self.ifu_rep[t.name](u_rep), self.ifu_label[t.name](u_le), x], 1)
            else:
                tower_in = x
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
            g = g - g_t + adjust_gradient(g_t, g_core, self.cfg.htl_gamma, self.cfg.htl_clip)
        emb.backward(g.to(emb.dtype))


def adjust_gradient(g_t: Tensor, g_core: Tensor, gamma: float, clip: float, eps: float = 1e-12) -> Tensor:
    """HTLNet's gradient adjustment of one classification gradient against the core gradient
    (direction: PCGrad projection when conflicting; magnitude: blend towards |G_core| scale)."""
    dot = (g_t * g_core).sum()
    core_sq = (g_core * g_core).sum()
    g_t = torch.where(dot < 0, g_t - dot / (core_sq + eps) * g_core, g_t)
    ratio = torch.clamp(core_sq.sqrt() / (g_t.norm() + eps), max=clip)
    return gamma * ratio * g_t + (1.0 - gamma) * g_t


MODELS: dict[str, type[FunnelNet]] = {
    "shared_bottom": SharedBottom,
    "mmoe": MMoE,
    "ple": PLE,
    "esmm": ESMM,
    "aitm": AITM,
    "tafe": TAFE,
    "htlnet": HTLNet,
}


def build_model(tasks: TaskGraph, cardinalities: list[int], n_numeric: int, cfg: ModelConfig) -> FunnelNet:
    """Instantiate ``cfg.name`` from the registry."""
    return MODELS[cfg.name](tasks, cardinalities, n_numeric, cfg)
