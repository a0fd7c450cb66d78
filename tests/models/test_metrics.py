import numpy as np
import pandas as pd
import pytest
from conftest import make_funnel

from models.metrics import evaluate_predictions, gini, logloss, roc_auc
from models.plots import calibration_bins, roc_points, write_eval_plots
from models.tasks import DEFAULT_FUNNEL


def test_auc_with_ties_hand_computed():
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.4, 0.4, 0.8, 0.8, 0.3])
    # positive-negative pairs: (.4: 1 + .5 + 0) + (.8: 1 + 1 + .5) + (.3: 1 + 0 + 0) = 5 of 9
    assert roc_auc(y, s) == pytest.approx(5 / 9)
    assert roc_auc(y, -s) == pytest.approx(4 / 9)
    assert np.isnan(roc_auc(np.ones(3), np.arange(3)))


def test_gini_and_logloss():
    a = np.array([0.0, 0.0, 5.0, 10.0])
    assert gini(a, a) == pytest.approx(1.0)
    assert gini(a, np.array([4.0, 3.0, 2.0, 1.0])) < 0  # reversed ranking
    assert logloss(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(np.log(2))


def test_evaluate_predictions_oracle_and_keys(tmp_path):
    df, oracle = make_funnel(4000, seed=9)
    m = evaluate_predictions(df, oracle, DEFAULT_FUNNEL, oracle_df=oracle)
    assert m["click/oracle_gap"] == pytest.approx(0.0) and m["click/auc"] > 0.7
    for k in ["conversion/auc_given_click", "value/rmse", "value/mae", "value/gini", "value/rmse_given_conversion"]:
        assert np.isfinite(m[k]), k
    shuffled = oracle.sample(frac=1.0, random_state=0)  # rows joined on impression_id, not position
    assert evaluate_predictions(df, shuffled, DEFAULT_FUNNEL)["click/auc"] == pytest.approx(m["click/auc"])
    half = oracle.iloc[::2]  # an oracle for half of the rows: oracle metrics on those rows only
    mh = evaluate_predictions(df, oracle, DEFAULT_FUNNEL, oracle_df=half)
    assert mh["click/oracle_gap"] == pytest.approx(0.0) and mh["click/auc"] == pytest.approx(m["click/auc"])
    assert mh["click/oracle_auc"] == pytest.approx(roc_auc(df.click.iloc[::2], half.p_click))
    const = oracle.assign(p_click=df.click.mean())
    assert evaluate_predictions(df, const, DEFAULT_FUNNEL)["click/auc"] == pytest.approx(0.5)


def test_plots_csv(tmp_path):
    y = np.array([0, 1, 0, 1])
    roc = roc_points(y, np.array([0.1, 0.9, 0.2, 0.8]))
    assert roc.iloc[-1].tolist() == [1.0, 1.0] and (roc.tpr.diff().dropna() >= 0).all()
    cal = calibration_bins(np.array([0, 0, 1, 1.0]), np.array([0.1, 0.2, 0.7, 0.9]), n_bins=2)
    assert cal.observed.tolist() == [0.0, 1.0]
    df, oracle = make_funnel(500, seed=2)
    files = write_eval_plots(df, oracle, DEFAULT_FUNNEL, tmp_path)
    assert len(files) == 8 and all(f.exists() for f in files) and (tmp_path / "roc_conversion.png").exists()
    assert list(pd.read_csv(tmp_path / "calibration_click.csv").columns) == ["bin", "predicted", "observed", "count"]


def test_diverged_predictions_score_nan_not_a_number_that_could_win():
    """NaN predictions (a diverged model) give NaN AUC and logloss, never a finite AUC that early
    stopping could pick as the best epoch, and never an exception from scikit-learn."""
    df, oracle = make_funnel(500, seed=4)
    m = evaluate_predictions(df, oracle.assign(p_click=np.nan), DEFAULT_FUNNEL)
    assert np.isnan(m["click/auc"]) and np.isnan(m["click/logloss"])
    assert np.isfinite(m["conversion/auc"])


def test_calibration_counts_match_the_bins():
    rng = np.random.default_rng(0)
    p = np.r_[np.zeros(300), rng.beta(1, 20, 700)]  # a tied block, as a funnel's rare rates give
    y = (rng.random(1000) < p).astype(float)
    cal = calibration_bins(y, p, n_bins=10)
    assert cal["count"].sum() == 1000 and (cal["count"] > 0).all()
    # count-weighted bin means give back the overall means: every row sits in exactly one bin
    assert np.dot(cal["count"], cal.predicted) / 1000 == pytest.approx(p.mean())
    assert np.dot(cal["count"], cal.observed) / 1000 == pytest.approx(y.mean())
