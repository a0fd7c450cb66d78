"""benchmarks/serving.py: its statistics, its same-model checks, and one tiny run through main().
No timing assertions: only that the numbers come from the right model on the right inputs."""
import numpy as np
import pytest

from benchmarks import serving
from benchmarks.train_throughput import synthetic_frame
from flows.registry import Registry
from models.config import ExportConfig, TrainConfig
from models.export import export_onnx
from models.networks import parse_model_config
from models.tasks import DEFAULT_FUNNEL
from models.train import train_model

TINY = parse_model_config({"name": "mmoe", "embedding_dim": 4, "hidden": [16, 8], "tower": [8], "experts": 2})


def test_latency_summary_percentiles_in_microseconds():
    s = serving.latency_summary(np.arange(1, 101) * 1e-6)  # 1..100 µs
    assert s["n"] == 100
    assert s["p50"] == pytest.approx(50.5) and s["mean"] == pytest.approx(50.5)
    assert s["p99"] == pytest.approx(99.01)  # linear interpolation between 99 and 100
    assert serving.latency_summary([2e-3] * 7)["p99"] == pytest.approx(2000.0)


def _train(df, out):
    train_model(df.iloc[:2000], df.iloc[2000:], DEFAULT_FUNNEL, TINY,
                TrainConfig(epochs=1, batch_size=512, lr=0.01, num_threads=1), out, progress=False)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A data dir laid out as the pipeline leaves it: model/, training_set/test.parquet, a champion."""
    root = tmp_path_factory.mktemp("serving") / "data"
    df = synthetic_frame(2600, seed=1)
    _train(df, root / "model")
    export_onnx(root / "model", root / "bundle", df.iloc[:256], ExportConfig())
    (root / "training_set").mkdir()
    df.iloc[2000:].to_parquet(root / "training_set" / "test.parquet")
    Registry(root / "registry").promote(root / "bundle", {}, {})
    return root


def test_torch_and_ort_agree_on_the_benchmark_input_path(data_dir):
    champ = serving.find_champion(data_dir)
    m = serving.load_torch(champ, serving.torch.device("cpu"))
    names = serving.json.loads((champ.version_dir / "bundle.json").read_text())["outputs"]
    cat, num = m.preprocessor.encode(serving.pd.read_parquet(champ.test_path))
    assert cat.dtype == np.int64 and num.dtype == np.float32
    torch_run = serving.torch_runner(m.net, names, serving.torch.device("cpu"))
    ort_run = serving.ort_runner(serving.ort_session(champ.version_dir / "model.onnx", 1), names)
    assert serving.check_parity(torch_run, ort_run, names, cat, num) < 1e-5
    one_t, one_o = torch_run(cat[7:8], num[7:8]), ort_run(cat[7:8], num[7:8])
    assert [a.shape for a in one_t] == [a.shape for a in one_o] == [(1,)] * len(names)


def test_a_model_dir_that_is_not_the_champion_is_refused(data_dir, tmp_path):
    other = tmp_path / "model"
    _train(synthetic_frame(2600, seed=2), other)  # other rows: another vocabulary
    champ = serving.find_champion(data_dir)
    champ.model_dir = other
    with pytest.raises(SystemExit, match="not the champion"):
        serving.load_torch(champ, serving.torch.device("cpu"))


def test_no_champion_says_what_to_run(tmp_path):
    with pytest.raises(SystemExit, match=r"make run.*--fresh"):
        serving.find_champion(tmp_path)


def test_tiny_run_prints_the_table(data_dir, capsys):
    serving.main(["--data-dir", str(data_dir), "--calls", "20", "--warmup", "5", "--batch", "64",
                  "--repeats", "2", "--rounds", "1", "--threads", "1"])
    out = capsys.readouterr().out
    for label in ("torch eager (cpu)", "onnxruntime", "OnnxScorer.predict", "target batch-1 p99", "session.run"):
        assert label in out
