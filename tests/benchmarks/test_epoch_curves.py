"""benchmarks/epoch_curves.py on a small synthetic training set: one row per variant and epoch, validation
metrics only, the table the README's finding quotes."""
from benchmarks import epoch_curves
from benchmarks.train_throughput import synthetic_frame


def test_curves_per_variant_and_epoch_from_validation_only(tmp_path, capsys):
    frame = synthetic_frame(6000, seed=1)
    (tmp_path / "training_set").mkdir()
    frame.iloc[:4000].to_parquet(tmp_path / "training_set" / "train.parquet")
    frame.iloc[4000:].to_parquet(tmp_path / "training_set" / "validation.parquet")  # no test split needed
    df = epoch_curves.curves(tmp_path, 2, ["params.yaml", "esmm"], tmp_path / "work")
    assert list(df.variant) == ["params.yaml"] * 2 + ["esmm"] * 2 and list(df.epoch) == [0, 1, 0, 1]
    assert df[["click_auc", "conversion_auc"]].apply(lambda s: s.between(0, 1)).all().all()
    assert set(df.best_epoch) <= {0, 1}
    epoch_curves.main(["--data-dir", str(tmp_path), "--epochs", "1", "--only", "lr 0.002"])
    out = capsys.readouterr().out
    assert "| lr 0.002 | 0 | " in out and out.count("\n| ") == 2  # header and one variant
