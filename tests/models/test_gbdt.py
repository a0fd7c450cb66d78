"""The LightGBM baseline: layout, chaining, validation-only early stopping, signal, determinism.

One thread: on a busy 2-core machine two OpenMP threads run ~20x slower."""
import numpy as np
import pytest
from conftest import INDEPENDENT, make_independent

from models.gbdt import train_gbdt_baseline
from models.metrics import evaluate_predictions, roc_auc
from models.networks import prediction_columns
from models.tasks import DEFAULT_FUNNEL


@pytest.fixture(scope="module")
def baseline(funnel_splits):
    train, valid, test, _ = funnel_splits
    return train_gbdt_baseline(train, valid, test, DEFAULT_FUNNEL, seed=5, num_threads=1)


def test_layouts_match_predict_frame_and_chain(baseline, funnel_splits):
    layouts, info = baseline
    test = funnel_splits[2]
    assert list(layouts) == ["gbdt-chained", "gbdt-direct"]
    for preds in layouts.values():
        assert list(preds.columns) == ["impression_id", *prediction_columns(DEFAULT_FUNNEL)]
        assert np.array_equal(preds.impression_id, test.impression_id)
        probs = preds[[c for c in preds.columns if c.startswith("p_")]].to_numpy()
        assert ((probs >= 0) & (probs <= 1)).all()
        assert (preds.value_given_conversion >= 0).all()
        assert np.allclose(preds.value_expected, preds.p_conversion * preds.value_given_conversion)
    chained, direct = layouts["gbdt-chained"], layouts["gbdt-direct"]
    assert (chained.p_conversion <= chained.p_click).all()
    assert np.allclose(chained.p_conversion, chained.p_click * chained.p_conversion_given_click)
    assert not np.allclose(direct.p_conversion, chained.p_conversion)  # its own model, trained on all rows
    assert "user_id" not in info.features and "item_id" not in info.features
    assert info.categorical == ["ctx__device"]
    assert set(info.best_iteration) == {"click", "conversion_given_click", "conversion_direct",
                                        "value_given_conversion"}


def test_beats_a_constant_predictor(baseline, funnel_splits):
    test, oracle = funnel_splits[2], funnel_splits[3]
    for preds in baseline[0].values():
        m = evaluate_predictions(test, preds, DEFAULT_FUNNEL, oracle)
        assert m["click/auc"] > 0.6 and m["conversion/auc"] > 0.6  # a constant scores 0.5
        assert m["conversion/auc_given_click"] > 0.55 and m["value/gini"] > 0.2


def test_early_stopping_reads_validation_never_test(baseline, funnel_splits):
    train, valid, test, _ = funnel_splits
    flipped_test = test.assign(click=1 - test.click, conversion=0, value=0.0)
    again, _ = train_gbdt_baseline(train, valid, flipped_test, DEFAULT_FUNNEL, seed=5, num_threads=1)
    for name, preds in baseline[0].items():  # same seed, test labels changed: identical predictions
        assert preds.equals(again[name])
    shuffled = valid.assign(click=np.random.default_rng(0).permutation(valid.click.to_numpy()))
    moved, info = train_gbdt_baseline(train, shuffled, test, DEFAULT_FUNNEL, seed=5, num_threads=1)
    assert info.best_iteration["click"] < baseline[1].best_iteration["click"]
    assert not np.allclose(moved["gbdt-chained"].p_click, baseline[0]["gbdt-chained"].p_click)


def test_graph_without_chain_gives_one_layout():
    tr, va = make_independent(1500, 1), make_independent(500, 2)
    layouts, info = train_gbdt_baseline(tr, va, va, INDEPENDENT, seed=1, num_threads=1)
    assert list(layouts) == ["gbdt"]
    preds = layouts["gbdt"]
    assert list(preds.columns) == ["impression_id", *prediction_columns(INDEPENDENT)]
    assert roc_auc(va.income.to_numpy(), preds.p_income.to_numpy()) > 0.65
    assert set(info.seconds) == {"chained", "direct"} and info.seconds["chained"] > 0


def test_no_parent_rows_in_validation_is_a_named_error(funnel_splits):
    train, valid, test, _ = funnel_splits
    with pytest.raises(ValueError, match="task value: no valid rows with a label where conversion = 1"):
        train_gbdt_baseline(train, valid.assign(conversion=0), test, DEFAULT_FUNNEL, seed=5, num_threads=1)
