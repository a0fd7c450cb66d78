import itertools
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import INDEPENDENT, make_funnel, make_independent

from models.digest import ArtifactRefused
from models.metrics import evaluate_predictions, logloss
from models.networks import switch_model
from models.tasks import DEFAULT_FUNNEL
from models.train import CHECKPOINT_FILE, MODEL_FILE, load_model, predict_frame, train_model


def test_training_beats_constant_predictor(funnel_splits, small_cfgs, tmp_path):
    train, valid, test, oracle = funnel_splits
    mc, tc = small_cfgs
    res = train_model(train, valid, DEFAULT_FUNNEL, mc, tc, tmp_path, progress=False)
    for f in ["model.pt", "preprocess.json", "config.json", "curves.csv", "curves.png", "checkpoint.pt"]:
        assert (tmp_path / f).exists(), f
    curves = pd.read_csv(tmp_path / "curves.csv")
    assert {"epoch", "train_loss", "valid_mean_auc", "valid_click_auc"} <= set(curves.columns)
    assert len(curves) == tc.epochs and res.best_epoch == int(curves.valid_mean_auc.idxmax())
    preds = predict_frame(tmp_path, test)
    assert list(preds.columns) == ["impression_id", "p_click", "p_conversion", "p_conversion_given_click",
                                   "value_given_conversion", "value_expected"]
    m = evaluate_predictions(test, preds, DEFAULT_FUNNEL, oracle)
    for task in ["click", "conversion"]:
        rate = train[task].mean()
        const_ll = logloss(test[task].to_numpy(), np.full(len(test), rate))
        assert m[f"{task}/auc"] > 0.6 and m[f"{task}/logloss"] < const_ll, (task, m)
    assert m["value/gini"] > 0.3


def test_best_checkpoint_is_chosen_on_validation(funnel_splits, small_cfgs, tmp_path):
    train, valid, _, _ = funnel_splits
    mc, tc = small_cfgs
    res = train_model(train, valid, DEFAULT_FUNNEL, mc, tc.model_copy(update={"epochs": 3}), tmp_path, progress=False)
    best = load_model(tmp_path)
    m = evaluate_predictions(valid, predict_frame(best, valid), DEFAULT_FUNNEL)
    assert m["click/auc"] == pytest.approx(res.history[res.best_epoch]["valid_click_auc"], abs=1e-9)


def test_same_seed_same_metrics(funnel_splits, small_cfgs, tmp_path):
    train, valid, _, _ = funnel_splits
    mc, tc = small_cfgs
    mc = switch_model(mc, "htlnet").model_copy(update={"dropout": 0.1})  # Gumbel + dropout: RNG-dependent
    tc = tc.model_copy(update={"epochs": 1})
    a = train_model(train, valid, DEFAULT_FUNNEL, mc, tc, tmp_path / "a", progress=False)
    b = train_model(train, valid, DEFAULT_FUNNEL, mc, tc, tmp_path / "b", progress=False)
    c = train_model(train, valid, DEFAULT_FUNNEL, mc, tc.model_copy(update={"seed": 99}), tmp_path / "c",
                    progress=False)
    assert a.valid_metrics == b.valid_metrics
    assert a.valid_metrics != c.valid_metrics


class _Crash(Exception):
    pass


def test_resume_after_crash_matches_uninterrupted(funnel_splits, small_cfgs, tmp_path):
    train, valid, _, _ = funnel_splits
    mc, tc = small_cfgs
    mc = switch_model(mc, "htlnet").model_copy(update={"dropout": 0.1})
    tc = tc.model_copy(update={"epochs": 3, "patience": 5})
    full = train_model(train, valid, DEFAULT_FUNNEL, mc, tc, tmp_path / "full", progress=False)

    def crash(epoch, row):
        if epoch == 1:
            raise _Crash

    with pytest.raises(_Crash):
        train_model(train, valid, DEFAULT_FUNNEL, mc, tc, tmp_path / "resumed", progress=False, on_epoch_end=crash)
    assert torch.load(tmp_path / "resumed" / CHECKPOINT_FILE, weights_only=True)["epoch"] == 1  # no pickle
    resumed = train_model(train, valid, DEFAULT_FUNNEL, mc, tc, tmp_path / "resumed", resume=True, progress=False)
    drop = lambda h: [{k: v for k, v in r.items() if k != "samples_per_sec"} for r in h]  # noqa: E731
    assert drop(resumed.history) == drop(full.history)
    sa = torch.load(tmp_path / "full" / MODEL_FILE, weights_only=True)
    sb = torch.load(tmp_path / "resumed" / MODEL_FILE, weights_only=True)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not [p.name for p in (tmp_path / "resumed").iterdir() if ".tmp" in p.name]  # no temps left


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused(funnel_splits, small_cfgs, tmp_path):
    train, valid, _, _ = funnel_splits
    mc, tc = small_cfgs
    marker = tmp_path / "code-ran"
    (tmp_path / "run").mkdir()
    torch.save({"model": _RunsCode(marker), "epoch": 0}, tmp_path / "run" / CHECKPOINT_FILE)
    with pytest.raises(ArtifactRefused, match="pickled objects"):
        train_model(train, valid, DEFAULT_FUNNEL, mc, tc, tmp_path / "run", resume=True, progress=False)
    assert not marker.exists()
    (tmp_path / "run" / CHECKPOINT_FILE).write_bytes(b"truncated")
    with pytest.raises(ArtifactRefused, match="not a readable checkpoint"):
        train_model(train, valid, DEFAULT_FUNNEL, mc, tc, tmp_path / "run", resume=True, progress=False)


def test_independent_tasks_train_and_predict(small_cfgs, tmp_path):
    mc, tc = small_cfgs
    train, valid = make_independent(3000, seed=1), make_independent(1000, seed=2)
    res = train_model(train, valid, INDEPENDENT, switch_model(mc, "esmm"), tc, tmp_path, progress=False)
    preds = predict_frame(tmp_path, valid)
    assert list(preds.columns) == ["impression_id", "p_income", "p_never_married", "weeks_expected"]
    assert res.valid_metrics["income/auc"] > 0.6
    assert json.loads((tmp_path / "config.json").read_text())["tasks"]["tasks"][2]["parent"] is None


def test_early_stopping_on_configured_monitor(funnel_splits, small_cfgs, tmp_path):
    train, valid, _, _ = funnel_splits
    mc, tc = small_cfgs
    # AUC rises epoch over epoch on the planted signal, so with mode "min" epoch 0 stays best and
    # training must stop after `patience` epochs without improvement.
    tc = tc.model_copy(update={"epochs": 6, "patience": 1, "monitor": "click/auc", "monitor_mode": "min"})
    res = train_model(train, valid, DEFAULT_FUNNEL, mc, tc, tmp_path, progress=False)
    assert res.best_epoch == 0 and len(res.history) == 2
    assert res.history[1]["valid_click_auc"] > res.history[0]["valid_click_auc"]


def test_one_log_line_per_epoch_without_progress_bar(caplog, small_cfgs, tmp_path):
    """The flow and the DVC stage train with progress off: each epoch still logs one INFO line."""
    mc, tc = small_cfgs
    train, valid = make_funnel(1500, seed=1)[0], make_funnel(500, seed=2)[0]
    with caplog.at_level(logging.INFO, logger="funnelflow.train"):
        train_model(train, valid, DEFAULT_FUNNEL, mc, tc, tmp_path, progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "funnelflow.train"]
    # 1500 rows at batch 512 are 3 steps: first a line on the smaller batch, then one per epoch
    assert lines.pop(0) == "mmoe: batch size 47, not 512: 1500 training rows make at least 32 steps an epoch"
    assert len(lines) == tc.epochs
    assert lines[0].startswith("mmoe epoch 1/2: train loss ") and "valid mean_auc 0." in lines[0]
    assert all(k in lines[1] for k in ("epoch 2/2", "best ", "samples/s"))


def test_cosine_schedule_decays_over_all_epochs():
    from models.config import TrainConfig
    from models.train import step_lrs
    tc = TrainConfig(epochs=3, lr=0.01)
    lrs = [lr for e in range(3) for lr in step_lrs(tc, e, 4) or []]
    assert len(lrs) == 12 and lrs[0] == pytest.approx(0.01) and all(a > b for a, b in itertools.pairwise(lrs))
    assert lrs[6] == pytest.approx(0.005) and 0 < lrs[-1] < 0.001  # half-way: lr/2; the last step near 0
    assert step_lrs(tc.model_copy(update={"lr_schedule": "constant"}), 1, 4) is None


def test_embedding_l2_holds_rare_ids_back(small_cfgs, tmp_path):
    """3000 users with ~4 training rows each: without the regulariser their embeddings grow to fit those
    few rows; with it, they stay several times smaller (the one-epoch overfitting's mechanism)."""
    train, _ = make_funnel(12000, seed=1, n_users=3000)
    valid, _ = make_funnel(2000, seed=2, n_users=3000)
    mc, tc = small_cfgs
    tc = tc.model_copy(update={"epochs": 3})
    norms = []
    for l2 in (0.0, 1.0):
        res = train_model(train, valid, DEFAULT_FUNNEL, mc.model_copy(update={"embedding_l2": l2}), tc,
                          tmp_path / str(l2), progress=False)
        m = load_model(res.out_dir)
        users = len(m.preprocessor.vocab["user_id"]) + 1  # user_id is the first categorical column
        norms.append(float((m.net.input.embedding.weight.detach()[1:users] ** 2).sum(1).mean()))
    assert norms[1] < 0.5 * norms[0], norms


def test_a_small_training_split_gets_smaller_batches():
    from models.config import TrainConfig
    from models.train import batch_size_for
    tc = TrainConfig(batch_size=4096, min_steps_per_epoch=32)
    assert batch_size_for(tc, 140_000) == 4096              # 35 steps: as configured
    assert batch_size_for(tc, 35_000) == 1094               # census: 9 steps at 4096 -> 32 at 1094
    assert batch_size_for(tc, 10) == 1 and batch_size_for(tc, 0) == 1
