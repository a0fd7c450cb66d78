import pytest
import torch
from conftest import INDEPENDENT, make_funnel, make_independent, model_config

from models.losses import funnel_loss
from models.networks import MODELS, build_model, chain_outputs, prediction_columns
from models.networks.layers import BatchedNorm
from models.preprocess import Preprocessor, infer_feature_columns
from models.tasks import DEFAULT_FUNNEL
from models.train import label_matrix


def _batch(df, tasks):
    pre = Preprocessor.fit(df, infer_feature_columns(df, tasks), 1)
    cat, num = pre.encode(df)
    return pre, torch.from_numpy(cat), torch.from_numpy(num), torch.from_numpy(label_matrix(df, tasks))


@pytest.mark.parametrize("graph", ["chain", "independent"])
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("value_loss", ["mse_log1p", "lognormal"])
def test_forward_backward_ranges_and_chaining(name, graph, value_loss):
    tasks = DEFAULT_FUNNEL if graph == "chain" else INDEPENDENT
    df = make_funnel(256, seed=5)[0] if graph == "chain" else make_independent(256)
    pre, cat, num, y = _batch(df, tasks)
    torch.manual_seed(0)
    cfg = model_config(name, embedding_dim=4, hidden=[16, 8], tower=[8], experts=2, value_loss=value_loss,
                      pwiser_weight=0.5, dropout=0.1)
    net = build_model(tasks, pre.cardinalities, num.shape[1], cfg)
    out = net(cat, num)
    assert set(prediction_columns(tasks)) <= set(out)
    for t in tasks.binary:
        p = out[f"p_{t.name}"]
        assert p.shape == (256,) and torch.all((p > 0) & (p < 1))
        if t.parent:
            assert torch.all(p <= out[f"p_{t.parent}"] + 1e-7)  # chaining rule
            torch.testing.assert_close(p, out[f"p_{t.parent}"] * out[f"p_{t.name}_given_{t.parent}"])
    for t in tasks.regression:
        assert torch.all(out[f"{t.name}_expected"] >= 0)
    total, terms = funnel_loss(out, y, tasks, cfg)
    assert torch.isfinite(total) and set(terms) == set(tasks.names)
    net.backward(terms, total)
    no_grad = [n for n, p in net.named_parameters() if p.grad is None]
    # Every parameter learns (HTLNet's custom backward must still reach the embedding table).
    assert not no_grad, no_grad
    assert net.input.embedding.weight.grad.abs().sum() > 0


def test_chain_outputs_value_expectations():
    cfg_tasks = DEFAULT_FUNNEL
    raw = {"logit_click": torch.tensor([0.0]), "logit_conversion": torch.tensor([0.0]),
           "mu_value": torch.tensor([1.0]), "logsigma_value": torch.log(torch.tensor([0.5]))}
    ln = chain_outputs(raw, cfg_tasks, "lognormal")
    torch.testing.assert_close(ln["p_conversion"], torch.tensor([0.25]))
    torch.testing.assert_close(ln["value_given_conversion"], torch.exp(torch.tensor([1.0 + 0.125])) - 1)
    torch.testing.assert_close(ln["value_expected"], 0.25 * (torch.exp(torch.tensor([1.125])) - 1))
    mse = chain_outputs(raw, cfg_tasks, "mse_log1p")
    torch.testing.assert_close(mse["value_given_conversion"], torch.expm1(torch.tensor([1.0])))


def test_htlnet_label_embedding_is_deterministic_in_eval():
    df = make_funnel(64, seed=1)[0]
    pre, cat, num, _ = _batch(df, DEFAULT_FUNNEL)
    net = build_model(DEFAULT_FUNNEL, pre.cardinalities, num.shape[1], model_config("htlnet", hidden=[8], tower=[4]))
    net.eval()
    a, b = net(cat, num)["p_conversion"], net(cat, num)["p_conversion"]
    assert torch.equal(a, b)
    net.train()  # Gumbel noise: two training passes differ
    assert not torch.equal(net(cat, num)["p_conversion"], net(cat, num)["p_conversion"])


def test_htlnet_backward_composes_gradients(monkeypatch):
    """With the adjustment replaced by the identity, HTLNet's custom backward must equal plain
    backprop (no gradient lost or counted twice); with the real adjustment the embedding gradient
    changes while the towers' gradients do not."""
    import models.networks.htlnet as nw

    df = make_funnel(512, seed=3)[0]
    pre, cat, num, y = _batch(df, DEFAULT_FUNNEL)
    cfg = model_config("htlnet", embedding_dim=4, hidden=[16, 8], tower=[8], gamma=0.5)
    torch.manual_seed(0)
    net = build_model(DEFAULT_FUNNEL, pre.cardinalities, num.shape[1], cfg)

    def grads(custom: bool):
        net.zero_grad(set_to_none=True)
        net.core = "value" if custom else None  # core None: no leaf split, plain autograd
        torch.manual_seed(1)  # same Gumbel noise in every pass
        total, terms = funnel_loss(net(cat, num), y, DEFAULT_FUNNEL, cfg)
        net.backward(terms, total)
        return {n: p.grad.clone() for n, p in net.named_parameters()}

    plain = grads(custom=False)
    adjusted = grads(custom=True)
    emb = "input.embedding.weight"
    assert not torch.allclose(adjusted[emb], plain[emb])
    assert all(torch.allclose(adjusted[n], plain[n]) for n in plain if n != emb)
    monkeypatch.setattr(nw, "adjust_gradient", lambda g_t, g_core, gamma, clip: g_t)
    identity = grads(custom=True)
    assert all(torch.allclose(identity[n], plain[n], atol=1e-6) for n in plain)


@pytest.mark.parametrize("name", list(MODELS))
def test_batch_norm_option_trains_every_parameter(name):
    """batch_norm=True: BatchNorm layers exist, every parameter (BatchNorm's included) gets a gradient."""
    df = make_funnel(256, seed=5)[0]
    pre, cat, num, y = _batch(df, DEFAULT_FUNNEL)
    cfg = model_config(name, embedding_dim=4, hidden=[16, 8], tower=[8], experts=2, batch_norm=True)
    net = build_model(DEFAULT_FUNNEL, pre.cardinalities, num.shape[1], cfg)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in net.modules())
    total, terms = funnel_loss(net(cat, num), y, DEFAULT_FUNNEL, cfg)
    net.backward(terms, total)
    assert not [n for n, p in net.named_parameters() if p.grad is None]
    net.eval()  # eval: running statistics, and a single row scores
    assert torch.isfinite(net(cat[:1], num[:1])["p_conversion"]).all()


def test_batched_norm_is_one_batchnorm_per_member():
    torch.manual_seed(0)
    x = torch.randn(3, 50, 4) * torch.tensor([1.0, 5.0, 0.1])[:, None, None] + 2.0
    bn = BatchedNorm(3, 4).train()
    got = bn(x)
    for k in range(3):  # member k alone through its own BatchNorm1d(4) (same fresh init)
        torch.testing.assert_close(got[k], torch.nn.BatchNorm1d(4).train()(x[k]))
    torch.testing.assert_close(bn.norm.running_mean.view(3, 4), 0.1 * x.mean(1))


def test_batch_norm_off_keeps_parameter_names():
    """Off (the default): no BatchNorm, and the names older checkpoints were saved under."""
    net = build_model(DEFAULT_FUNNEL, [5, 5], 2, model_config("ple", hidden=[8, 8], tower=[4], experts=2))
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in net.modules())
    assert "shared_gates.0.weight" in net.state_dict()


def _randomise(net):
    """Non-trivial weights and biases, so a wrong member/group pairing shows."""
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.5)


def _assert_same_function(net, x, got, want):
    """Equal outputs, and equal gradients for the input and every parameter."""
    for t in want:
        torch.testing.assert_close(got[t], want[t], rtol=1e-5, atol=1e-6)
    g_got = torch.autograd.grad(sum(v.sum() for v in got.values()), [x, *net.parameters()], allow_unused=True)
    g_want = torch.autograd.grad(sum(v.sum() for v in want.values()), [x, *net.parameters()], allow_unused=True)
    for a, b in zip(g_got, g_want, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _ple_reference(net, x):
    """PLE written out expert by expert, from the module's own parameters (batch_norm off)."""
    T, k = net.T, net.k
    task_in, shared_in = [x] * T, x
    for lvl, lin in enumerate(net.levels):
        groups = [*task_in, shared_in]  # expert e reads its group's input: task e // k, or shared
        experts = [torch.relu(groups[e // k] @ lin.weight[e] + lin.bias[e]) for e in range(lin.weight.shape[0])]
        shared = experts[T * k:]
        new_in = []
        for t in range(T):
            g = torch.softmax(task_in[t] @ net.task_gates[lvl].weight[t] + net.task_gates[lvl].bias[t], -1)
            new_in.append(sum(g[:, j:j + 1] * ex for j, ex in enumerate(experts[t * k:(t + 1) * k] + shared)))
        if lvl < len(net.levels) - 1:
            g = torch.softmax(net.shared_gates[lvl](shared_in), -1)
            shared_in = sum(g[:, j:j + 1] * ex for j, ex in enumerate(experts))
        task_in = new_in
    return dict(zip(net.tasks.names, task_in, strict=True))


def test_ple_matches_per_expert_reference():
    """The batched PLE (wide GEMMs, gates spread over all experts, one bmm) computes exactly the
    per-expert CGC stack: 3 tasks, 2 task experts each + 2 shared, levels of different widths."""
    torch.manual_seed(0)
    cfg = model_config("ple", embedding_dim=4, hidden=[8, 6, 5], tower=[4], experts=4, dropout=0.0)
    net = build_model(DEFAULT_FUNNEL, [7, 5], 3, cfg)
    _randomise(net)
    x = torch.randn(40, net.in_dim, requires_grad=True)
    got, want = net.task_reps(x), _ple_reference(net, x)
    _assert_same_function(net, x, got, want)


def test_mmoe_matches_per_expert_reference():
    """The wide-layout MMoE (experts as one GEMM per layer, all tasks mixed by one bmm) equals
    f_t(x) = sum_e softmax(W_t x)_e * expert_e(x) written out expert by expert."""
    torch.manual_seed(0)
    cfg = model_config("mmoe", embedding_dim=4, hidden=[8, 6, 5], tower=[4], experts=3, dropout=0.0)
    net = build_model(DEFAULT_FUNNEL, [7, 5], 3, cfg)
    _randomise(net)
    x = torch.randn(40, net.in_dim, requires_grad=True)
    experts = []
    for e in range(cfg.experts):
        h = x
        for layer in net.experts.layers:
            h = torch.relu(h @ layer.weight[e] + layer.bias[e])
        experts.append(h)
    gates = torch.softmax(net.gates(x).view(40, 3, cfg.experts), -1)
    want = {t: sum(gates[:, i, e:e + 1] * experts[e] for e in range(cfg.experts))
            for i, t in enumerate(net.tasks.names)}
    got = net.task_reps(x)
    _assert_same_function(net, x, got, want)


def test_htlnet_without_gradient_adjustment_is_plain_backprop():
    """``gradient_adjustment: false``: HTLNet's backward gives exactly autograd's gradients of the total
    loss; the same weights with the adjustment on give another embedding gradient."""
    df = make_funnel(512, seed=3)[0]
    pre, cat, num, y = _batch(df, DEFAULT_FUNNEL)

    def grads(adjust: bool, custom: bool):
        cfg = model_config("htlnet", embedding_dim=4, hidden=[16, 8], tower=[8], gamma=0.5, gradient_adjustment=adjust)
        torch.manual_seed(0)
        net = build_model(DEFAULT_FUNNEL, pre.cardinalities, num.shape[1], cfg)
        torch.manual_seed(1)  # same Gumbel noise in every pass
        total, terms = funnel_loss(net(cat, num), y, DEFAULT_FUNNEL, cfg)
        net.backward(terms, total) if custom else total.backward()
        return {n: p.grad.clone() for n, p in net.named_parameters()}

    plain, off, on = grads(False, custom=False), grads(False, custom=True), grads(True, custom=True)
    emb = "input.embedding.weight"
    assert all(torch.equal(off[n], plain[n]) for n in plain)
    assert not torch.allclose(on[emb], plain[emb])


def test_htlnet_without_label_embedding_builds_none_and_trains_and_exports(tmp_path):
    """``label_embedding: false``: no label tables or label fusion exist, the conversion tower reads the
    fused representation and the embedding only, and the model trains and exports to ONNX."""
    from models.config import ExportConfig, TrainConfig
    from models.export import OnnxScorer, export_onnx
    from models.train import load_model, train_model

    train, valid = make_funnel(1500, seed=1)[0], make_funnel(500, seed=2)[0]
    cfg = model_config("htlnet", embedding_dim=4, hidden=[16, 8], tower=[8], label_embedding=False)
    res = train_model(train, valid, DEFAULT_FUNNEL, cfg, TrainConfig(epochs=1, batch_size=256, num_threads=1),
                      tmp_path / "model", progress=False)
    assert res.best_epoch == 0 and 0 < res.valid_metrics["click/auc"] < 1 and res.history[0]["train_loss"] > 0
    net = load_model(tmp_path / "model").net
    names = [n for n, _ in net.named_parameters()]
    assert not [n for n in names if n.startswith(("label_emb", "ifu_label"))]
    assert "ifu_rep.conversion.w1.weight" in names
    first = next(m for m in net.towers_h["conversion"].modules() if isinstance(m, torch.nn.Linear))
    assert first.in_features == net.in_dim + 8  # fused representation + embedding, no label part
    with_le = build_model(DEFAULT_FUNNEL, [5, 5], 2, model_config("htlnet", hidden=[16, 8]))
    assert {"label_emb.click", "ifu_label.conversion.w1.weight"} <= dict(with_le.named_parameters()).keys()
    export_onnx(tmp_path / "model", tmp_path / "bundle", valid.iloc[:64], ExportConfig())  # raises on a parity miss
    assert OnnxScorer(tmp_path / "bundle").predict(valid.iloc[:10]).shape == (10, 6)
