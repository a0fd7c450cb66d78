import json

import numpy as np
import pytest
from conftest import make_funnel, model_config

from models.config import ExportConfig
from models.digest import sha256_file
from models.export import BundleError, OnnxScorer, export_onnx, read_bundle
from models.tasks import DEFAULT_FUNNEL
from models.train import predict_frame, train_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from models.config import TrainConfig

    train, _ = make_funnel(4000, seed=1)
    valid, _ = make_funnel(1000, seed=2)
    root = tmp_path_factory.mktemp("export_models")
    tc = TrainConfig(epochs=1, batch_size=512, lr=0.01, num_threads=1)
    for name in ["mmoe", "esmm", "aitm", "htlnet"]:
        value_loss = "lognormal" if name == "htlnet" else "mse_log1p"
        buckets = 8 if name == "esmm" else 0  # the bucket codes' path through export, parity and scoring
        mc = model_config(name, embedding_dim=8, hidden=[32, 16], tower=[16], experts=2, value_loss=value_loss,
                          numeric_buckets=buckets)
        train_model(train, valid, DEFAULT_FUNNEL, mc, tc, root / name, progress=False)
    return root


@pytest.mark.parametrize("name", ["mmoe", "esmm", "aitm", "htlnet"])
def test_onnx_parity_and_bundle(trained, tmp_path, name):
    sample, _ = make_funnel(256, seed=4)
    score_df, _ = make_funnel(777, seed=5)  # another batch size than the traced one
    score_df.loc[:10, "user_id"] = 10**9  # unseen ids -> OOV slot on both paths
    path = export_onnx(trained / name, tmp_path / "bundle", sample, ExportConfig())
    meta = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert path.exists() and meta["model"] == name and meta["exporter"] == "dynamo"
    assert meta["outputs"] == ["p_click", "p_conversion", "p_conversion_given_click", "value_given_conversion",
                               "value_expected"]
    onnx_preds = OnnxScorer(tmp_path / "bundle").predict(score_df)
    torch_preds = predict_frame(trained / name, score_df)
    assert list(onnx_preds.columns) == list(torch_preds.columns)
    for c in meta["outputs"]:
        diff = np.abs(onnx_preds[c].to_numpy() - torch_preds[c].to_numpy())
        scale = np.maximum(1.0, np.abs(torch_preds[c].to_numpy()))  # values: relative, probabilities: absolute
        assert (diff / scale).max() < 1e-5, (c, diff.max())
    one = OnnxScorer(tmp_path / "bundle").predict(score_df.iloc[:1])  # batch of one: dynamic axis
    assert one.shape == (1, 6)


def test_failed_parity_leaves_no_bundle(trained, tmp_path):
    sample, _ = make_funnel(64, seed=4)
    with pytest.raises(ValueError, match="parity"):
        export_onnx(trained / "mmoe", tmp_path / "bundle", sample, ExportConfig(parity_atol=1e-30))
    assert not (tmp_path / "bundle").exists() and list(tmp_path.iterdir()) == []


def test_tampered_onnx_is_rejected(trained, tmp_path):
    sample, _ = make_funnel(64, seed=4)
    export_onnx(trained / "esmm", tmp_path / "b", sample, ExportConfig())
    with open(tmp_path / "b" / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=r"model\.onnx does not match the sha256 in bundle\.json"):
        OnnxScorer(tmp_path / "b")


def test_every_bundle_file_is_checksummed_and_the_source_model_recorded(trained, tmp_path):
    """bundle.json names the model.pt it came from and the sha256 of each other file; a changed
    preprocess.json (vocabularies, standardisation) is refused like a changed ONNX graph."""
    sample, _ = make_funnel(64, seed=4)
    export_onnx(trained / "esmm", tmp_path / "b", sample, ExportConfig())
    meta = read_bundle(tmp_path / "b")
    assert meta["model_sha256"] == sha256_file(trained / "esmm" / "model.pt")
    assert sorted(meta["files"]) == ["model.onnx", "preprocess.json"]
    pre = tmp_path / "b" / "preprocess.json"
    pre.write_text(pre.read_text().replace("0", "1", 1))
    with pytest.raises(BundleError, match=r"preprocess\.json does not match"):
        OnnxScorer(tmp_path / "b")
    pre.unlink()
    with pytest.raises(BundleError, match=r"listed in bundle\.json but missing"):
        OnnxScorer(tmp_path / "b")


def test_a_bundle_without_checksums_is_refused(trained, tmp_path):
    sample, _ = make_funnel(64, seed=4)
    export_onnx(trained / "esmm", tmp_path / "b", sample, ExportConfig())
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    (tmp_path / "b" / "bundle.json").write_text(json.dumps({**meta, "format_version": 1, "files": {}}))
    with pytest.raises(BundleError, match=r"without file checksums.*export again"):
        OnnxScorer(tmp_path / "b")


def test_independent_graph_export(tmp_path):
    from conftest import INDEPENDENT, make_independent

    from models.config import TrainConfig

    tr, va = make_independent(1500, 1), make_independent(300, 2)
    mc = model_config("ple", embedding_dim=4, hidden=[16, 8], tower=[8], experts=2, value_loss="lognormal")
    tc = TrainConfig(epochs=1, batch_size=256, min_steps_per_epoch=1, num_threads=1)  # a barely trained net
    train_model(tr, va, INDEPENDENT, mc, tc, tmp_path / "m", progress=False)
    export_onnx(tmp_path / "m", tmp_path / "b", va.iloc[:50], ExportConfig())
    got = OnnxScorer(tmp_path / "b").predict(va)
    assert list(got.columns) == ["impression_id", "p_income", "p_never_married", "weeks_expected"]
    ref = predict_frame(tmp_path / "m", va)
    assert np.max(np.abs(got.p_income - ref.p_income)) < 1e-5
    assert np.max(np.abs(got.weeks_expected - ref.weeks_expected) / np.maximum(1, ref.weeks_expected)) < 1e-5


def test_fallback_to_legacy_exporter(trained, tmp_path, monkeypatch):
    import torch

    real = torch.onnx.export

    def dynamo_fails(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("simulated dynamo failure")
        return real(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_fails)
    sample, _ = make_funnel(64, seed=4)
    with pytest.warns(UserWarning, match="falling back"):
        export_onnx(trained / "aitm", tmp_path / "b", sample, ExportConfig())
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert meta["exporter"] == "torchscript" and "simulated" in meta["fallback_reason"]
    got = OnnxScorer(tmp_path / "b").predict(sample.iloc[:7])
    ref = predict_frame(trained / "aitm", sample.iloc[:7])
    assert np.max(np.abs(got.p_conversion - ref.p_conversion)) < 1e-5


@pytest.mark.parametrize("name", ["mmoe", "ple"])
def test_batch_norm_model_exports_with_parity(tmp_path, name):
    """BatchNorm (eval mode: running statistics) survives ONNX export; 1001 rows at batch 500 leave a
    one-row remainder, which training must skip rather than fail on."""
    from models.config import TrainConfig

    train, _ = make_funnel(1001, seed=3)
    valid, _ = make_funnel(300, seed=4)
    mc = model_config(name, embedding_dim=4, hidden=[16, 8], tower=[8], experts=2, batch_norm=True)
    train_model(train, valid, DEFAULT_FUNNEL, mc, TrainConfig(epochs=1, batch_size=500, num_threads=1),
                tmp_path / "m", progress=False)
    export_onnx(tmp_path / "m", tmp_path / "b", valid.iloc[:50], ExportConfig())
    got, ref = OnnxScorer(tmp_path / "b").predict(valid), predict_frame(tmp_path / "m", valid)
    assert np.max(np.abs(got.p_conversion - ref.p_conversion)) < 1e-5
    assert got.p_click.std() > 0


def test_a_failed_export_keeps_the_previous_bundle(trained, tmp_path):
    """The old bundle stays in place until a new one has passed its parity check; a successful export
    then replaces it whole, leaving no temp folder behind."""
    sample, _ = make_funnel(64, seed=4)
    export_onnx(trained / "esmm", tmp_path / "b", sample, ExportConfig())
    before = {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()}
    with pytest.raises(ValueError, match="parity"):
        export_onnx(trained / "mmoe", tmp_path / "b", sample, ExportConfig(parity_atol=1e-30))
    assert {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()} == before
    export_onnx(trained / "mmoe", tmp_path / "b", sample, ExportConfig())
    assert json.loads((tmp_path / "b" / "bundle.json").read_text())["model"] == "mmoe"
    assert [p.name for p in tmp_path.iterdir()] == ["b"]
