import pandas as pd

from benchmarks.targets import verdicts
from flows.params import load_params


def _runs(rows):
    return pd.DataFrame(rows, columns=["model", "loss", "valid_score", "click/auc", "conversion/auc"])


def test_verdicts_compare_with_the_better_baseline_layout_and_pick_the_best_model_on_validation():
    params = load_params()
    params = params.model_copy(update={"model": params.model.model_copy(update={"name": "mmoe"})})  # the default
    runs = _runs([
        ["mmoe", "bce", 0.70, 0.700, 0.760], ["mmoe", "bce", 0.70, 0.702, 0.762],   # two seeds
        ["tafe", "dependence", 0.72, 0.706, 0.772], ["tafe", "dependence", 0.72, 0.706, 0.772],
        ["esmm", "ctcvr", 0.69, 0.800, 0.800], ["esmm", "ctcvr", 0.69, 0.800, 0.800],  # best on test, not on validation
        ["lightgbm", "gbdt-chained", None, 0.700, 0.755], ["lightgbm", "gbdt-direct", None, 0.700, 0.766],
    ])
    default, best = verdicts(runs, params)
    # conversion's baseline is the better layout (direct, 0.766): mmoe's 0.761 fails it
    assert default.startswith("FAIL: default mmoe") and "conversion/auc 0.7610 vs 0.7660 (-0.0050)" in default
    # the best zoo model is chosen on validation (tafe), not on test (esmm); +0.006 / +0.006 passes the 0.005 margin
    assert best.startswith("pass: best zoo (by validation) tafe >= baseline + 0.005"), best
