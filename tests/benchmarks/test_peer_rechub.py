"""benchmarks/peer_rechub.py: the ModelConfig -> torch-rechub mapping and a tiny end-to-end run.

Needs the `bench` extra (torch-rechub, `make bench-setup`); skipped without it, so `make test` (and
CI, which does not install the extra) skips this module.
"""
import pytest
import torch

pytest.importorskip("torch_rechub")

from benchmarks import peer_rechub as pr  # noqa: E402


@pytest.fixture(scope="module")
def data():
    return pr.encode(pr.funnel_frame(3000, seed=1), min_count=2)


@pytest.mark.parametrize("name", pr.MODELS)
def test_same_sizes_up_to_batchnorm(name, data):
    """Identical embedding tables; the dense parts differ exactly by torch-rechub's BatchNorm1d
    (after every Linear of its MLPs), so the architectures match layer for layer."""
    args = pr.parse_args([])
    view = pr.esmm_view(data) if name == "esmm" else data
    cfg = pr.model_config(name, args)
    ff, rh = pr.funnelflow_model(cfg, view), pr.rechub_model(cfg, view)
    (ff_emb, ff_dense), (rh_emb, rh_dense) = pr.param_counts(ff), pr.param_counts(rh)
    bn = sum(p.numel() for m in rh.modules() if isinstance(m, torch.nn.BatchNorm1d) for p in m.parameters())
    assert ff_emb == rh_emb > 0
    assert rh_dense - bn == ff_dense
    assert abs(rh_dense - ff_dense) / ff_dense < 0.03


def test_end_to_end_tiny(capsys):
    pr.main(["--rows", "3000", "--repeats", "1", "--epochs", "1", "--batch-size", "512", "--models", "shared_bottom,esmm"])
    out = capsys.readouterr().out
    for needle in ("| shared_bottom", "| esmm", "ff/rechub", "conv AUC"):
        assert needle in out
