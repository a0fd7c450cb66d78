"""Gradient-boosted-trees baseline for ``funnelflow compare`` (LightGBM; never trained by ``train``,
never promoted).

One LightGBM model per task on the zoo's training set and features, minus the raw id columns
(``user_id``/``item_id``: high-cardinality ids a tree splits on noise; the id-level signal reaches it
through the Feast aggregates). Other integer columns are LightGBM categoricals (codes fitted on train,
an id unseen on train is missing), float columns numeric as they are (trees need no scaling; NaN is
LightGBM's missing). Early stopping watches the validation split only; test is only scored.

Two layouts, both in the predictions layout of ``models.train.predict_frame``:

* ``gbdt-chained``: ``p_<task>_given_<parent>`` from a model trained on rows where the parent is 1,
  ``p_<task>`` = p_<parent> x p_<task>_given_<parent> (the zoo's chain).
* ``gbdt-direct``: ``p_<task>`` of a binary task with a parent from a model trained on all rows; the
  conditional column is the same conditional model's. Only made when a binary task has a parent
  (otherwise it equals the chained one); the single layout is then named ``gbdt``.

Regression: a regressor on log1p(value) on parent rows, ``<task>_given_<parent>`` = expm1(prediction)
(the zoo's ``mse_log1p`` definition, clipped at 0) and ``<task>_expected`` = p_<parent> of the layout x
that value.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np
import pandas as pd

from models.networks import prediction_columns
from models.preprocess import FeatureColumns, Preprocessor, infer_feature_columns
from models.tasks import TaskGraph, TaskSpec

ID_COLUMNS = ("user_id", "item_id")
MAX_ROUNDS = 2000
EARLY_STOPPING_ROUNDS = 50
BASE_PARAMS: dict[str, object] = {
    "learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 50,
    "deterministic": True, "force_row_wise": True,  # identical trees for one seed, run after run
    "verbosity": -1,
}


@dataclass
class GbdtInfo:
    """What the baseline reports beside its predictions.

    ``best_iteration`` and ``fit_seconds`` are keyed by model: ``<task>`` (all rows),
    ``<task>_given_<parent>`` (parent rows) and ``<task>_direct`` (a child trained on all rows).
    ``seconds`` is the fit time of each layout's models (the models two layouts share count in both).
    """

    features: list[str]
    categorical: list[str]
    best_iteration: dict[str, int] = field(default_factory=dict)
    fit_seconds: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


class _Matrix:
    """Splits as LightGBM inputs: categorical codes (train vocabulary, unseen -> missing) then numeric."""

    def __init__(self, train_df: pd.DataFrame, tasks: TaskGraph) -> None:
        cols = infer_feature_columns(train_df, tasks)
        self.columns = FeatureColumns(categorical=[c for c in cols.categorical if c not in ID_COLUMNS],
                                      numeric=cols.numeric)
        self._codes = Preprocessor.fit(train_df, self.columns.model_copy(update={"numeric": []}), min_count=1)

    @property
    def names(self) -> list[str]:
        return self.columns.categorical + self.columns.numeric

    def __call__(self, df: pd.DataFrame) -> np.ndarray:
        """[N, C + F] float64; Preprocessor's OOV code 0 becomes NaN, codes start at 0."""
        codes = self._codes.encode_categorical(df).astype(np.float64) - 1.0
        codes[codes < 0] = np.nan
        return np.hstack([codes, df[self.columns.numeric].to_numpy(np.float64, na_value=np.nan)])


@dataclass
class _Splits:
    """Features and frames of train/valid/test, and the fitting settings every model shares."""

    x: dict[str, np.ndarray]
    frames: dict[str, pd.DataFrame]
    matrix: _Matrix
    params: dict[str, object]

    def rows(self, split: str, parent: str | None) -> np.ndarray:
        """Row mask of ``split``: all rows, or those where ``parent`` is 1."""
        df = self.frames[split]
        return np.ones(len(df), dtype=bool) if parent is None else df[parent].to_numpy() > 0.5


def _fit(s: _Splits, t: TaskSpec, parent: str | None, info: GbdtInfo, key: str) -> np.ndarray:
    """Fit ``t`` on the train rows where ``parent`` is 1 (all rows for None), stop early on the same
    rows of validation; return its test predictions (probability, or log1p(value) for regression)."""
    data = {}
    for split in ("train", "valid"):
        rows = s.rows(split, parent)
        y = s.frames[split][t.column].to_numpy(np.float64)[rows]
        x = s.x[split][rows]
        if t.kind == "regression":  # log1p target; a missing value is no label
            x, y = x[np.isfinite(y)], np.log1p(y[np.isfinite(y)])
        if len(y) == 0:
            raise ValueError(f"gbdt baseline, task {t.name}: no {split} rows with a label"
                             f"{f' where {parent} = 1' if parent else ''}; give the {split} split such rows")
        data[split] = (x, y)
    objective = "binary" if t.kind == "binary" else "regression"
    start = time.perf_counter()
    train = lgb.Dataset(data["train"][0], data["train"][1], feature_name=s.matrix.names,
                        categorical_feature=s.matrix.columns.categorical, free_raw_data=True)
    valid = lgb.Dataset(data["valid"][0], data["valid"][1], reference=train)
    booster = lgb.train({**s.params, "objective": objective}, train, MAX_ROUNDS, valid_sets=[valid],
                        callbacks=[lgb.early_stopping(EARLY_STOPPING_ROUNDS, first_metric_only=True, verbose=False)])
    info.fit_seconds[key] = time.perf_counter() - start
    info.best_iteration[key] = booster.best_iteration
    return np.asarray(booster.predict(s.x["test"], num_iteration=booster.best_iteration), dtype=np.float64)


def _layouts(s: _Splits, tasks: TaskGraph, info: GbdtInfo) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(chained, direct) outputs on test, task by task (parents come first in a TaskGraph)."""
    chained: dict[str, np.ndarray] = {}
    direct: dict[str, np.ndarray] = {}
    for t in tasks.tasks:
        if t.parent is None:
            pred = _fit(s, t, None, info, t.name)
            out = pred if t.kind == "binary" else np.maximum(np.expm1(pred), 0.0)
            key = f"p_{t.name}" if t.kind == "binary" else f"{t.name}_expected"
            chained[key] = direct[key] = out
            continue
        cond = _fit(s, t, t.parent, info, f"{t.name}_given_{t.parent}")
        if t.kind == "binary":
            chained[f"p_{t.name}_given_{t.parent}"] = direct[f"p_{t.name}_given_{t.parent}"] = cond
            chained[f"p_{t.name}"] = chained[f"p_{t.parent}"] * cond
            direct[f"p_{t.name}"] = _fit(s, t, None, info, f"{t.name}_direct")
        else:
            value = np.maximum(np.expm1(cond), 0.0)
            for layout in (chained, direct):
                layout[f"{t.name}_given_{t.parent}"] = value
                layout[f"{t.name}_expected"] = layout[f"p_{t.parent}"] * value
    return chained, direct


def _frame(test_df: pd.DataFrame, outputs: dict[str, np.ndarray], tasks: TaskGraph) -> pd.DataFrame:
    """The predictions layout: impression_id, then ``prediction_columns(tasks)`` in order."""
    out = pd.DataFrame({"impression_id": test_df["impression_id"].to_numpy()} if "impression_id" in test_df else {})
    for c in prediction_columns(tasks):
        out[c] = outputs[c]
    return out


def _layout_seconds(info: GbdtInfo, tasks: TaskGraph) -> dict[str, float]:
    """Fit seconds per layout: the chained one skips the ``_direct`` models, the direct one the
    conditionals of binary children (it still needs the regression conditionals)."""
    binary_cond = {f"{t.name}_given_{t.parent}" for t in tasks.binary if t.parent}
    return {"chained": sum(v for k, v in info.fit_seconds.items() if not k.endswith("_direct")),
            "direct": sum(v for k, v in info.fit_seconds.items() if k not in binary_cond)}


def train_gbdt_baseline(
    train_df: pd.DataFrame, valid_df: pd.DataFrame, test_df: pd.DataFrame, tasks: TaskGraph,
    seed: int, num_threads: int = 2,
) -> tuple[dict[str, pd.DataFrame], GbdtInfo]:
    """Fit the baseline on train (early stopping on valid) and score test.

    Returns the test predictions per layout name (``gbdt-chained`` and ``gbdt-direct``, or ``gbdt``
    alone when no binary task has a parent; see the module docstring) and the fit report.
    """
    matrix = _Matrix(train_df, tasks)
    frames = {"train": train_df, "valid": valid_df, "test": test_df}
    splits = _Splits(x={k: matrix(v) for k, v in frames.items()}, frames=frames, matrix=matrix,
                     params={**BASE_PARAMS, "seed": seed, "num_threads": num_threads})
    info = GbdtInfo(features=matrix.names, categorical=matrix.columns.categorical)
    chained, direct = _layouts(splits, tasks, info)
    info.seconds.update(_layout_seconds(info, tasks))
    if not any(t.parent for t in tasks.binary):
        return {"gbdt": _frame(test_df, chained, tasks)}, info
    return {"gbdt-chained": _frame(test_df, chained, tasks), "gbdt-direct": _frame(test_df, direct, tasks)}, info
