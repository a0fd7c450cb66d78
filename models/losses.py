"""Losses over the task graph, selectable per run (``model.loss``: auto | bce | ctcvr | calibrated | dependence).

* ``bce``        -- conditional BCE per binary task on the rows where its parent is reached
                    (roots: all rows). The classic MTL objective (Shared-Bottom/MMoE/PLE/HTLNet).
* ``ctcvr``      -- ESMM (Ma et al., SIGIR 2018): BCE of each step's JOINT probability
                    prod_{k<=t} p_k against the joint label over all impressions (for 2 steps:
                    BCE(click, pCTR) + BCE(click*conv, pCTR*pCVR); generalised to N steps).
* ``calibrated`` -- AITM (Xi et al., KDD 2021): ``ctcvr`` + w * sum_t mean(relu(p_t - p_parent)) on joint
                    probabilities, the behavioural expectation calibrator (w: ``calibrator``, 0.6).
* ``dependence`` -- TAFE's dependence task learning loss (Tao et al. 2301.02494). The paper does not
                    give its exact form; our reading of "unbiased": the chain's exact negative
                    log-likelihood per impression, sum_t mean_all_rows(reached_t * BCE(y_t, p_t|parent)),
                    plus lambda * the same monotonicity penalty. Each impression's observed outcome
                    counts once over the whole impression space: ``bce`` averages a step over the rows
                    that reached its parent (a rare step weighs N / n_reached times more), ``ctcvr``
                    counts the click evidence twice. The value term is scaled the same way.
Our networks chain conditional heads, so in-model joints satisfy p_t <= p_parent exactly and the
penalty is 0 there; it bites for joint probabilities produced any other way (tested on such inputs).
* PWiseR add-on  -- Durmus et al. 2406.02163: + w * a pairwise hinge on the CTR task's probability,
                    converted impressions over clicked-only and over unclicked ones (``pwiser_loss``).
* Embedding L2   -- ``frequency_l2``, DIN's mini-batch aware regularisation, added by the training loop.
* Regression     -- on log1p(value), only on rows where the parent is reached: MSE (``mse_log1p``)
                    or the Gaussian NLL of log1p(value) (``lognormal``).
``auto`` is the model's paper loss (its config's ``paper_loss``). The per-task terms are returned
separately (HTLNet's gradient adjustment needs them).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from models.config import ModelConfigBase
from models.tasks import TaskGraph


def resolve_loss(cfg: ModelConfigBase) -> str:
    """``auto`` -> the model's paper loss."""
    return cfg.paper_loss if cfg.loss == "auto" else cfg.loss


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, stable at both ends (Maechler 2012)."""
    x = x.clamp(max=-1e-7)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def joint_bce(logp: Tensor, y: Tensor) -> Tensor:
    """Mean BCE of a probability given as its log (the joint along the chain) vs labels y."""
    return -(y * logp + (1.0 - y) * log1mexp(logp)).mean()


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over the rows where ``mask`` is 1 (0 when there are none)."""
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def monotonicity_penalty(p_child: Tensor, p_parent: Tensor) -> Tensor:
    """mean(relu(p_child - p_parent)): a later funnel step may not be likelier than its parent."""
    return F.relu(p_child - p_parent).mean()


def pwiser_loss(score: Tensor, pos: Tensor, mid: Tensor, neg: Tensor, m1: float, m2: float) -> Tensor:
    """PWiseR (Durmus et al., arXiv 2406.02163): a pairwise ranking loss between the model's
    predictions, added to the task loss (Loss = BCE + lambda * PWiseR). All pairs within the batch,
    vectorised:

    mean_{i in P, j in C} relu(m1 - (s_i - s_j)) + mean_{i in P, j in N} relu(m2 - (s_i - s_j)).

    ``score`` is the CTR task's predicted probability; P/C/N are boolean masks (``pwiser_groups``).
    An empty group contributes 0. Memory O(|P| * |N|): at batch 4096 and our rates ~25 x 3,900 pairs.

    Margins (``model.pwiser_margins``; the paper publishes none), on the probability scale:
    m2 = 0.1 (P over N): below 1 so a pair can leave the hinge (at m >= 1 every pair stays active and
    the term is a plain linear push), a tenth of the range as the gap that reads as "ranked apart" at
    any CTR level. m1 = 0.05 (P over C): C exposures are clicks too (the order is P > C > N), so P need
    stand out from them by less than from N. At CTRs of a few percent (ours: 5%) nearly every pair is
    inside both margins: the term then pushes the groups' mean CTRs apart, each group weighing lambda
    in total whatever its size, i.e. it up-weights the rare converted clicks.
    """
    s_p = score[pos]
    total = score.new_zeros(())
    for group, margin in ((mid, m1), (neg, m2)):
        s_g = score[group]
        if s_p.numel() and s_g.numel():
            total = total + F.relu(margin - (s_p[:, None] - s_g[None, :])).mean()
    return total


def frequency_l2(weight: Tensor, rows: Tensor, counts: Tensor) -> Tensor:
    """DIN's mini-batch aware regularisation (Zhou et al., KDD 2018): sum_j ||w_j||^2 / n_j over the
    embedding rows j the batch uses, n_j = row j's count on the training split. Only rows in the
    batch are touched (an L2 on the whole table would cost a pass over it every step), and a rare id
    is held back more than a frequent one relative to the evidence it gets: the rare ids are the ones
    that memorise their few positives."""
    used = torch.unique(rows)
    w = weight.index_select(0, used).float()
    return ((w * w).sum(1) / counts.index_select(0, used)).sum()


def regression_loss(out: dict[str, Tensor], name: str, y: Tensor, mask: Tensor, kind: str) -> Tensor:
    """Loss of regression task ``name`` on log1p(y) over the ``mask`` rows: MSE or, for ``lognormal``,
    the Gaussian NLL."""
    target = torch.log1p(y.clamp(min=0.0))
    mu = out[f"mu_{name}"].float()
    if kind == "lognormal":
        log_sigma = out[f"logsigma_{name}"].float()
        nll = 0.5 * ((target - mu) * torch.exp(-log_sigma)) ** 2 + log_sigma
        return masked_mean(nll, mask)
    return masked_mean((target - mu) ** 2, mask)


def joint_labels(labels: Tensor, tasks: TaskGraph) -> dict[str, Tensor]:
    """Label that the step was reached from the impression: y_t * y_parent_joint (binary tasks)."""
    joint: dict[str, Tensor] = {}
    for i, t in enumerate(tasks.tasks):
        if t.kind == "binary":
            y = labels[:, i]
            joint[t.name] = y * joint[t.parent] if t.parent else y
    return joint


def pwiser_groups(labels: Tensor, tasks: TaskGraph) -> tuple[str, Tensor, Tensor, Tensor] | None:
    """PWiseR's scored task and its (P, C, N) masks; None without a binary task.

    The scored task is the first binary root (the CTR task). P: impressions that reached the deepest
    binary step below it (the conversion: the paper's "definitive" positives); C: its positives that
    did not (clicked only, the noisy ones); N: its negatives. Without a binary step below the root
    (one binary task, independent tasks) there is no C group: P = its positives, N = its negatives.
    A tie in depth goes to the step listed first.
    """
    if not tasks.binary:
        return None
    root = tasks.binary[0].name  # a parent is listed before its child: the first binary task is a root
    below = [t.name for t in tasks.binary if tasks.ancestors(t.name)[:1] == [root]]
    joint = joint_labels(labels, tasks)
    clicked = joint[root] > 0.5
    if not below:
        return root, clicked, torch.zeros_like(clicked), ~clicked
    deepest = max(below, key=lambda n: len(tasks.ancestors(n)))  # max keeps the first of equals
    converted = joint[deepest] > 0.5
    return root, converted, clicked & ~converted, ~clicked


def funnel_loss(
    out: dict[str, Tensor], labels: Tensor, tasks: TaskGraph, cfg: ModelConfigBase
) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss and its per-task terms. ``labels`` is [N, T] float in task order (value for regression)."""
    loss_name = resolve_loss(cfg)
    joint = joint_labels(labels, tasks)
    terms: dict[str, Tensor] = {}
    extra = labels.new_zeros(())
    for i, t in enumerate(tasks.tasks):
        reached = joint[t.parent] if t.parent else torch.ones_like(labels[:, i])
        per_impression = reached.mean() if loss_name == "dependence" else 1.0  # mean over reached -> over all
        if t.kind == "regression":
            # Down-weighted: a log-scale MSE on a few percent of rows is ~10x the classifiers' BCE and
            # otherwise swamps the shared layers (the imbalance HTLNet's gradient adjustment targets).
            terms[t.name] = cfg.regression_weight * per_impression * regression_loss(
                out, t.name, labels[:, i], reached, cfg.value_loss)
            continue
        if loss_name in ("bce", "dependence"):
            bce = F.binary_cross_entropy_with_logits(out[f"logit_{t.name}"].float(), labels[:, i], reduction="none")
            terms[t.name] = per_impression * masked_mean(bce, reached)
        else:  # ctcvr / calibrated: the joint over all impressions
            terms[t.name] = joint_bce(out[f"logp_{t.name}"], joint[t.name])
        if loss_name in ("calibrated", "dependence") and t.parent:
            extra = extra + cfg.penalty_weight * monotonicity_penalty(out[f"p_{t.name}"], out[f"p_{t.parent}"])
    if cfg.pwiser_weight > 0:
        groups = pwiser_groups(labels, tasks)
        if groups is not None:
            name, pos, mid, neg = groups
            m1, m2 = cfg.pwiser_margins
            extra = extra + cfg.pwiser_weight * pwiser_loss(out[f"p_{name}"].float(), pos, mid, neg, m1, m2)
    total = sum(terms.values()) + extra
    return total, terms
