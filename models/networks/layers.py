"""Building blocks shared by the networks: MLPs, batched experts and towers, the input layer, and
AITM's attention unit (also HTLNet's fusion unit).

Why batched: a Python loop over experts or per-task towers costs more than the GEMMs themselves at
these sizes on 2 CPU cores, so ``n`` same-shaped members run as one matmul.
"""
from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
    (one input per member: ``baddbmm``). Output [n, N, out].
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
    """``BatchedNorm(n, d)`` when ``on``, else the identity."""
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
        self.n = n

    def forward(self, x: Tensor) -> Tensor:
        for layer, norm in zip(self.layers, self.norms, strict=True):
            x = self.dropout(F.relu(norm(layer(x))))
        return x

    def wide(self, x: Tensor) -> Tensor:
        """[N, in] shared input -> [N, n, dims[-1]], every layer in ``BatchedLinear.wide``'s layout:
        BatchNorm needs no permute copy, and the result feeds a ``bmm`` over members directly."""
        for k, (layer, norm) in enumerate(zip(self.layers, self.norms, strict=True)):
            linear = cast(BatchedLinear, layer)
            z = linear.wide(x) if k == 0 else linear.wide_grouped(list(x.view(x.shape[0], self.n, -1).unbind(1)))
            x = self.dropout(F.relu(norm(z)))
        return x.view(x.shape[0], self.n, -1)


class FeatureInput(nn.Module):
    """One embedding table for all categorical columns (offsets per column) + numeric passthrough."""

    offsets: Tensor

    def __init__(self, cardinalities: list[int], n_numeric: int, dim: int):
        super().__init__()
        offsets = (torch.tensor([0, *cardinalities[:-1]], dtype=torch.long).cumsum(0) if cardinalities
                   else torch.zeros(0, dtype=torch.long))
        self.register_buffer("offsets", offsets, persistent=False)
        self.embedding = nn.Embedding(max(1, sum(cardinalities)), dim)
        nn.init.normal_(self.embedding.weight, std=0.05)
        self.n_fields, self.dim, self.n_numeric = len(cardinalities), dim, n_numeric
        self.out_dim = len(cardinalities) * dim + n_numeric

    def rows(self, cat: Tensor) -> Tensor:
        """The embedding-table rows of categorical codes [N, C], flattened."""
        return (cat + self.offsets).flatten()

    def forward(self, cat: Tensor, num: Tensor) -> Tensor:
        # index_select rather than nn.Embedding's lookup: its backward (index_add) is ~1.6x faster on CPU
        flat = self.embedding.weight.index_select(0, self.rows(cat))
        emb = flat.view(cat.shape[0], self.n_fields * self.dim)
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
