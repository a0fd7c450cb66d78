import math

import pytest
import torch
from conftest import model_config

from models.losses import funnel_loss, joint_bce, pwiser_groups, pwiser_loss
from models.networks import chain_outputs
from models.networks.htlnet import adjust_gradient
from models.tasks import DEFAULT_FUNNEL, TaskGraph, TaskSpec

TWO = TaskGraph(tasks=[TaskSpec(name="click", kind="binary"),
                       TaskSpec(name="conversion", kind="binary", parent="click")])


def _joint_out(p_click, p_conv):
    p_click, p_conv = torch.tensor(p_click), torch.tensor(p_conv)
    return {"p_click": p_click, "p_conversion": p_conv, "logp_click": p_click.log(), "logp_conversion": p_conv.log(),
            "logit_click": torch.logit(p_click), "logit_conversion": torch.logit(p_conv / p_click)}


def test_pwiser_hand_computed():
    p = torch.tensor([0.30, 0.26, 0.25, 0.10])  # CTR probabilities
    pos, mid, neg = (torch.tensor(m).bool() for m in ([1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]))
    # P-C: relu(.05 - .04) = .01 ; P-N: mean(relu(.1 - .05), relu(.1 - .2)) = .025
    assert pwiser_loss(p, pos, mid, neg, 0.05, 0.1).item() == pytest.approx(0.035)
    p = torch.tensor([0.30, 0.12, 0.20, 0.05])  # two positives: P-C mean(0, .08) = .04 ; P-N mean(0, .03) = .015
    got = pwiser_loss(p, torch.tensor([1, 1, 0, 0]).bool(), torch.tensor([0, 0, 1, 0]).bool(),
                      torch.tensor([0, 0, 0, 1]).bool(), 0.0, 0.1)
    assert got.item() == pytest.approx(0.055)
    empty = torch.zeros(4, dtype=torch.bool)
    assert pwiser_loss(p, empty, ~empty, ~empty, 0.05, 0.1).item() == 0.0


def test_pwiser_groups_follow_the_root_task_and_the_deepest_step():
    labels = torch.tensor([[1.0, 1.0, 5.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    name, pos, mid, neg = pwiser_groups(labels, DEFAULT_FUNNEL)
    assert name == "click"  # the CTR task is scored, not the joint CTCVR
    assert pos.tolist() == [True, False, False, False]  # a conversion label without a click is not reached
    assert mid.tolist() == [False, True, False, False] and neg.tolist() == [False, False, True, True]
    three = TaskGraph(tasks=[*TWO.tasks, TaskSpec(name="repeat", kind="binary", parent="conversion")])
    labels3 = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    name, pos, mid, neg = pwiser_groups(labels3, three)  # P: reached the last step; converted-only is in C
    assert (name, pos.tolist(), mid.tolist(), neg.tolist()) == (
        "click", [True, False, False], [False, True, False], [False, False, True])
    one = TaskGraph(tasks=[TaskSpec(name="income", kind="binary"), TaskSpec(name="weeks", kind="regression")])
    name, pos, mid, neg = pwiser_groups(torch.tensor([[1.0, 3.0], [0.0, 2.0]]), one)
    assert (name, pos.tolist(), mid.tolist(), neg.tolist()) == ("income", [True, False], [False, False], [False, True])


def test_pwiser_gradient_raises_a_converted_rows_ctr_over_a_clicked_only_row():
    """On the CTR task's probability only: a P row's logit_click goes up, C and N rows' go down, and
    the conversion head gets no gradient from it. One SGD step on the PWiseR term widens P - C."""
    labels = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])  # P, C, N
    click = torch.tensor([0.0, 0.5, -0.1])  # CTRs .50, .62, .48: every pair inside both margins

    def grads(weight):
        raw = {"logit_click": click.clone().requires_grad_(True),
               "logit_conversion": torch.tensor([0.2, -0.3, 0.1], requires_grad=True)}
        cfg = model_config("mmoe", loss="bce", pwiser_weight=weight)
        funnel_loss(chain_outputs(raw, TWO, "mse_log1p"), labels, TWO, cfg)[0].backward()
        return raw["logit_click"].grad, raw["logit_conversion"].grad

    (with_click, with_conv), (bce_click, bce_conv) = grads(1.0), grads(0.0)
    g_click, g_conv = with_click - bce_click, with_conv - bce_conv
    assert g_click[0] < 0 < g_click[1] and g_click[2] > 0
    assert torch.equal(g_conv, torch.zeros(3))
    before, after = torch.sigmoid(click), torch.sigmoid(click - 0.1 * g_click)
    assert after[0] - after[1] > before[0] - before[1]


@pytest.mark.parametrize("name,lam", [("tafe", 1.0), ("aitm", 0.6)])
def test_calibrated_loss_hand_computed(name, lam):
    out = _joint_out([0.5, 0.8], [0.6, 0.2])  # row 0 violates p_conv <= p_click by 0.1
    labels = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    total, terms = funnel_loss(out, labels, TWO, model_config(name, loss="calibrated"))
    bce_click = -(math.log(0.5) + math.log(0.2)) / 2
    bce_ctcvr = -(math.log(0.6) + math.log(0.8)) / 2
    assert terms["click"].item() == pytest.approx(bce_click, rel=1e-5)
    assert terms["conversion"].item() == pytest.approx(bce_ctcvr, rel=1e-5)
    assert total.item() == pytest.approx(bce_click + bce_ctcvr + lam * 0.05, rel=1e-5)
    total_ctcvr, _ = funnel_loss(out, labels, TWO, model_config(name, loss="ctcvr"))
    assert total_ctcvr.item() == pytest.approx(bce_click + bce_ctcvr, rel=1e-5)  # ESMM: no penalty


def test_dependence_loss_is_the_chains_likelihood_per_impression():
    """TAFE's reading: each step's conditional BCE where its parent was reached, averaged over ALL
    impressions (bce averages over the reached rows), plus the monotonicity penalty on joints."""
    p_click = torch.tensor([0.5, 0.8])
    out = {"logit_click": torch.logit(p_click), "p_click": p_click,
           "logit_conversion": torch.logit(torch.tensor([0.4, 0.25])),  # p(conv | click)
           "p_conversion": torch.tensor([0.6, 0.2])}  # joints made elsewhere: row 0 breaks p_conv <= p_click
    labels = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    total, terms = funnel_loss(out, labels, TWO, model_config("tafe", loss="dependence"))
    nll_click = -(math.log(0.5) + math.log(0.2)) / 2
    nll_conv = -math.log(0.4) / 2  # one reached row of two impressions
    assert terms["click"].item() == pytest.approx(nll_click, rel=1e-5)
    assert terms["conversion"].item() == pytest.approx(nll_conv, rel=1e-5)
    assert total.item() == pytest.approx(nll_click + nll_conv + 1.0 * 0.05, rel=1e-5)
    _, bce_terms = funnel_loss(out, labels, TWO, model_config("tafe", loss="bce"))
    assert bce_terms["conversion"].item() == pytest.approx(2 * nll_conv, rel=1e-5)  # N / n_reached = 2


def test_bce_is_conditional_on_parent_rows():
    out = _joint_out([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])  # p(conv | click) = 0.5
    labels = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    _, terms = funnel_loss(out, labels, TWO, model_config("mmoe", loss="bce"))
    assert terms["conversion"].item() == pytest.approx(math.log(2), rel=1e-6)  # 2 clicked rows only
    labels_no_click = torch.tensor([[0.0, 0.0]] * 3)
    _, terms = funnel_loss(out, labels_no_click, TWO, model_config("mmoe", loss="bce"))
    assert terms["conversion"].item() == 0.0


def test_joint_bce_stable_for_tiny_probabilities():
    logp = torch.tensor([-40.0, -1e-9])
    val = joint_bce(logp, torch.tensor([0.0, 1.0]))
    assert torch.isfinite(val) and val.item() < 1e-6


def test_regression_loss_only_on_parent_rows():
    tasks = TaskGraph(tasks=[TaskSpec(name="conversion", kind="binary"),
                             TaskSpec(name="value", kind="regression", parent="conversion")])
    out = {"logit_conversion": torch.zeros(2), "logp_conversion": torch.full((2,), math.log(0.5)),
           "mu_value": torch.tensor([math.log1p(3.0), 5.0])}
    labels = torch.tensor([[1.0, 3.0], [0.0, 0.0]])  # row 1 (not converted) must be ignored
    _, terms = funnel_loss(out, labels, tasks, model_config("mmoe"))
    assert terms["value"].item() == pytest.approx(0.0, abs=1e-10)


def test_htlnet_gradient_adjustment_hand_computed():
    g = adjust_gradient(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0]), gamma=0.1, clip=10.0)
    # conflict -> projected to [.5, .5]; ratio |G_core|/|G_t| = 2; 0.1*2*g + 0.9*g = 1.1*g
    torch.testing.assert_close(g, torch.tensor([0.55, 0.55]))
    g = adjust_gradient(torch.tensor([1.0, 0.0]), torch.tensor([100.0, 0.0]), gamma=0.5, clip=10.0)
    torch.testing.assert_close(g, torch.tensor([5.5, 0.0]))  # no conflict; ratio clipped at 10


def test_frequency_l2_hand_computed():
    from models.losses import frequency_l2
    w = torch.tensor([[1.0, 0.0], [2.0, 2.0], [0.0, 3.0]], requires_grad=True)
    counts = torch.tensor([100.0, 4.0, 1.0])
    # rows 1 and 2 used (1 twice in the batch, counted once): 8/4 + 9/1; row 0 untouched
    got = frequency_l2(w, torch.tensor([1, 2, 1]), counts)
    assert got.item() == pytest.approx(11.0)
    got.backward()
    assert w.grad is not None and w.grad[0].abs().sum() == 0 and torch.allclose(w.grad[2], torch.tensor([0.0, 6.0]))
