"""benchmarks/peer_rechub.py: the ModelConfig -> torch-rechub mapping and a tiny end-to-end run.

Needs the `bench` extra (torch-rechub, `make bench-setup`); `make test` (and so CI) installs it first.
Skipped only in an environment set up without it.
"""
import pytest
import torch

pytest.importorskip("torch_rechub")

from benchmarks import peer_rechub as pr


@pytest.fixture(scope="module")
def data():
    return pr.encode(pr.funnel_frame(3000, seed=1), min_count=2)


@pytest.mark.parametrize("name", pr.MODELS)
def test_same_architecture_sizes(name, data):
    """Identical embedding tables; with batch_norm (the benchmark's default) identical dense parameter
    counts too; without it, the dense parts differ by exactly torch-rechub's BatchNorm1d parameters."""
    view = pr.esmm_view(data) if name == "esmm" else data
    rh = pr.rechub_model(pr.model_config(name, pr.parse_args([])), view)
    ff = pr.funnelflow_model(pr.model_config(name, pr.parse_args([])), view)
    ff_plain = pr.funnelflow_model(pr.model_config(name, pr.parse_args(["--no-batch-norm"])), view)
    (ff_emb, ff_dense), (rh_emb, rh_dense) = pr.param_counts(ff), pr.param_counts(rh)
    bn = sum(p.numel() for m in rh.modules() if isinstance(m, torch.nn.BatchNorm1d) for p in m.parameters())
    assert ff_emb == rh_emb > 0
    assert ff_dense == rh_dense
    assert pr.param_counts(ff_plain)[1] == rh_dense - bn > 0


def test_end_to_end_tiny(capsys):
    pr.main(["--rows", "3000", "--repeats", "1", "--epochs", "1", "--batch-size", "512",
             "--models", "shared_bottom,esmm", "--device", "cpu", "--cpu-bf16"])
    out = capsys.readouterr().out
    for needle in ("| shared_bottom ", "| shared_bottom (bf16)", "| esmm ", "| esmm (bf16)", "ff/rechub", "conv AUC"):
        assert needle in out


def test_bf16_runner_trains_under_cpu_autocast(data):
    """--cpu-bf16 adds a funnelflow contender whose forward runs in bf16 (its GEMMs), weights fp32."""
    args = pr.parse_args(["--cpu-bf16", "--batch-size", "512"])
    keys = dict(pr.runners(args, torch.device("cpu")))
    assert list(keys) == ["funnelflow", "funnelflow bf16", "rechub"]
    for key, dtype in (("funnelflow bf16", torch.bfloat16), ("funnelflow", torch.float32)):
        run = keys[key](pr.model_config("mmoe", args), data, args, torch.device("cpu"), 0)
        seen: list[torch.dtype] = []
        run.net.towers["click"][0].register_forward_hook(lambda mod, inp, out, seen=seen: seen.append(out.dtype))
        run.train_epoch()
        assert seen and set(seen) == {dtype}
        assert all(p.dtype == torch.float32 for p in run.net.parameters())
