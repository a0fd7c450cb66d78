"""PLE (Tang et al., RecSys 2020): a stack of CGC levels, one per entry of ``hidden``."""
from __future__ import annotations

from typing import Literal, cast

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from models.config import ModelConfigBase
from models.networks.base import FunnelNet
from models.networks.layers import BatchedLinear, batched_norm
from models.tasks import TaskGraph


class PLEConfig(ModelConfigBase):
    """params.yaml ``model`` with ``name: ple``."""

    name: Literal["ple"] = "ple"
    experts: int = Field(4, ge=1)  # k = max(1, experts // 2) task-specific experts per task, and k shared


class PLE(FunnelNet):
    """Each level has k task-specific experts per task and k shared experts (k = max(1, experts // 2):
    our choice), each a Linear+ReLU of width hidden[l]; task gates mix own + shared experts, and a
    shared gate (all experts) feeds the next level's shared input (not at the last level)."""

    config_class = PLEConfig
    spread_index: Tensor

    def __init__(self, tasks: TaskGraph, cardinalities: list[int], n_numeric: int, cfg: PLEConfig):
        super().__init__(tasks, cardinalities, n_numeric, cfg)
        self.T, self.k = len(tasks.tasks), max(1, cfg.experts // 2)
        self.n_exp = (self.T + 1) * self.k  # experts ordered: task 0's k, ..., task T-1's k, shared k
        self.levels, self.level_norms = nn.ModuleList(), nn.ModuleList()
        self.task_gates, self.task_gate_norms = nn.ModuleList(), nn.ModuleList()
        self.shared_gates = nn.ModuleList()
        bn = cfg.batch_norm
        in_dim = self.in_dim
        for lvl, width in enumerate(cfg.hidden):
            self.levels.append(BatchedLinear(self.n_exp, in_dim, width))
            self.level_norms.append(batched_norm(self.n_exp, width, bn))
            self.task_gates.append(BatchedLinear(self.T, in_dim, 2 * self.k))
            self.task_gate_norms.append(batched_norm(self.T, 2 * self.k, bn))
            last = lvl == len(cfg.hidden) - 1
            # built at the last level too (then unused): its init draws fix the RNG state of every
            # later layer's init. A bare Linear without BatchNorm keeps older checkpoints' keys.
            gate = nn.Linear(in_dim, self.n_exp)
            shared_gate = nn.Sequential(gate, nn.BatchNorm1d(self.n_exp)) if bn else gate
            self.shared_gates.append(nn.Identity() if last else shared_gate)
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

    def task_reps(self, x: Tensor) -> dict[str, Tensor]:
        T, k, rows = self.T, self.k, x.shape[0]
        task_in: list[Tensor] | None = None  # level 0: every expert and gate reads x
        shared_in = x
        for lvl, level in enumerate(self.levels):
            experts, gates = cast(BatchedLinear, level), cast(BatchedLinear, self.task_gates[lvl])
            # experts in the wide layout [N, (T+1)k * w]: BatchNorm runs on it as is, and viewed as
            # [N, experts, w] one bmm mixes them for every task (and the shared gate) at once
            z = experts.wide(x) if task_in is None else experts.wide_grouped([*task_in, shared_in])
            e = self.drop(F.relu(self.level_norms[lvl](z))).view(rows, self.n_exp, -1)
            gate_logits = gates.wide(x) if task_in is None else gates.wide_grouped(task_in)
            mix = self._spread(torch.softmax(self.task_gate_norms[lvl](gate_logits).view(rows, T, 2 * k), -1))
            last = isinstance(self.shared_gates[lvl], nn.Identity)
            if not last:  # the shared gate weighs all experts
                mix = torch.cat([mix, torch.softmax(self.shared_gates[lvl](shared_in), dim=-1).unsqueeze(1)], 1)
            out = torch.bmm(mix, e).unbind(1)  # [N, T(+1), w] -> per task (then shared)
            task_in, shared_in = list(out[:T]), (out[T] if not last else shared_in)
        assert task_in is not None
        return dict(zip(self.tasks.names, task_in, strict=True))

    def _spread(self, gates: Tensor) -> Tensor:
        """[N, T, 2k] task gates (own k experts, then the shared k) -> [N, T, experts] weights with
        zeros on other tasks' experts: one Gather from the flattened gates plus a zero column."""
        flat = F.pad(gates.reshape(gates.shape[0], -1), (0, 1))
        return flat.index_select(1, self.spread_index).view(gates.shape[0], self.T, -1)


NETWORK = PLE
