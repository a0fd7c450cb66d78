import numpy as np
from conftest import INDEPENDENT, make_independent

from models.compare import compare_models
from models.tasks import DEFAULT_FUNNEL


def test_compare_rows_per_model_and_loss(funnel_splits, small_cfgs):
    train, valid, test, oracle = funnel_splits
    mc, tc = small_cfgs
    df = compare_models(train, valid, test, DEFAULT_FUNNEL, mc, tc.model_copy(update={"epochs": 1, "batch_size": 256}),
                        oracle_df=oracle, models=["esmm", "tafe"])
    assert df[["model", "loss"]].values.tolist() == [
        ["esmm", "ctcvr"], ["esmm", "bce"], ["esmm", "dependence"], ["esmm", "ctcvr+pwiser"],
        ["tafe", "dependence"], ["tafe", "bce"], ["tafe", "ctcvr"],
        ["lightgbm", "gbdt-chained"], ["lightgbm", "gbdt-direct"]]
    assert df.paper_loss.tolist() == [True, False, False, True, True, False, False, False, False]
    assert np.isfinite(df["conversion/oracle_gap"]).all() and (df["samples_per_sec"] > 0).all()
    assert (df["click/auc"] > 0.6).all()
    gbdt = df[df.model == "lightgbm"]
    assert (gbdt.best_epoch > 0).all() and gbdt["conversion/auc"].nunique() == 2  # chained != direct


def test_compare_independent_graph_skips_joint_losses(small_cfgs):
    mc, tc = small_cfgs
    tr, va = make_independent(1500, 1), make_independent(500, 2)
    df = compare_models(tr, va, va, INDEPENDENT, mc, tc.model_copy(update={"epochs": 1}), models=["mmoe"])
    assert df.loss.tolist() == ["bce", "bce+pwiser", "gbdt"]
    off = compare_models(tr, va, va, INDEPENDENT, mc, tc.model_copy(update={"epochs": 1}), models=["mmoe"],
                         pwiser_models=(), gbdt=False)
    assert off.loss.tolist() == ["bce"]
