"""benchmarks/ablation.py on a small synthetic training set: test-split metrics per variant and seed,
and the mean ± std table."""
import pandas as pd
import pytest

from benchmarks import ablation
from benchmarks.train_throughput import synthetic_frame
from models.metrics import roc_auc
from models.train import predict_frame

VARIANT = "htlnet, no label embedding"


@pytest.fixture
def data_dir(tmp_path):
    frame = synthetic_frame(5000, seed=1)
    (tmp_path / "training_set").mkdir()
    for name, part in (("train", frame.iloc[:3000]), ("validation", frame.iloc[3000:4000]),
                       ("test", frame.iloc[4000:])):
        part.to_parquet(tmp_path / "training_set" / f"{name}.parquet")
    return tmp_path


def test_one_variant_one_seed_prints_its_row(data_dir, capsys):
    ablation.main(["--data-dir", str(data_dir), "--seeds", "3", "--epochs", "1", "--only", VARIANT])
    out = capsys.readouterr().out
    assert out.count("\n| ") == 2  # header and one variant
    row = next(line for line in out.splitlines() if line.startswith(f"| {VARIANT} |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[-1] == "0"  # the one seed's best epoch of one
    assert all(0 < float(c.split(" ± ")[0]) < 1 for c in cells[1:3]) and all(c.endswith("± 0.0000") for c in cells[1:4])


def test_metrics_are_the_test_splits(data_dir):
    df = ablation.run(data_dir, [3], [VARIANT], data_dir / "work", epochs=1)
    split = {s: pd.read_parquet(data_dir / "training_set" / f"{s}.parquet") for s in ("validation", "test")}
    model = data_dir / "work" / f"{VARIANT.replace(' ', '_')}-3"
    auc = {s: roc_auc(d["click"].to_numpy(), predict_frame(model, d)["p_click"].to_numpy()) for s, d in split.items()}
    assert df["click AUC"].iloc[0] == pytest.approx(auc["test"], abs=1e-12) and auc["test"] != auc["validation"]


def test_table_is_mean_and_sample_std_over_seeds():
    df = pd.DataFrame({"variant": ["a", "a", "b"], "seed": [1, 2, 1], "best_epoch": [3, 1, 0],
                       "click AUC": [0.6, 0.7, 0.5], "conversion AUC (chained)": [0.7, 0.7, 0.6],
                       "value Gini": [0.2, 0.4, 0.3]})
    lines = ablation.table(df).splitlines()
    assert lines[2] == "| a | 0.6500 ± 0.0707 | 0.7000 ± 0.0000 | 0.3000 ± 0.1414 | 3,1 |"
    assert lines[3] == "| b | 0.5000 ± 0.0000 | 0.6000 ± 0.0000 | 0.3000 ± 0.0000 | 0 |"
