import numpy as np
import pandas as pd
import pytest
from conftest import make_funnel

from models import preprocess
from models.preprocess import FeatureColumns, Preprocessor, infer_feature_columns
from models.tasks import DEFAULT_FUNNEL


def test_infer_feature_columns_excludes_ids_time_and_labels():
    df, _ = make_funnel(50)
    cols = infer_feature_columns(df, DEFAULT_FUNNEL)
    assert cols.categorical == ["user_id", "item_id", "ctx__device"]
    assert cols.numeric == ["user_activity__x1", "item_stats__x2", "noise__n0", "noise__n1"]


def test_oov_rare_and_unseen_ids_share_slot_zero(tmp_path):
    # x has a negative value on train, so it is only standardised (no log1p)
    train = pd.DataFrame({"c": np.array([1, 1, 2, 3, 3, 3], dtype=np.int64), "x": [-1.0, 0, 1, 2, 3, np.nan]})
    pre = Preprocessor.fit(train, FeatureColumns(categorical=["c"], numeric=["x"]), min_count=2)
    assert pre.vocab["c"] == [1, 3] and pre.cardinalities == [3]
    test = pd.DataFrame({"c": np.array([1, 2, 3, 4, -5, 10**12], dtype=np.int64), "x": [1.0, np.nan, -1, 3, 1, 1]})
    cat, num = pre.encode(test)
    assert cat[:, 0].tolist() == [1, 0, 2, 0, 0, 0]  # 2: rare on train; 4, -5, 1e12: unseen
    # standardised with train stats (mean 1, std sqrt(2)); NaN -> 0 after standardising
    np.testing.assert_allclose(num[:, 0], [0, 0, -2 / np.sqrt(2), 2 / np.sqrt(2), 0, 0], atol=1e-6)
    pre.save(tmp_path / "p.json")
    cat2, num2 = Preprocessor.load(tmp_path / "p.json").encode(test)
    assert np.array_equal(cat, cat2) and np.array_equal(num, num2)


def test_chunked_encoding_equals_one_block(monkeypatch):
    """Frames longer than ENCODE_CHUNK_ROWS are encoded slice by slice (bounded memory); the codes
    and values are those of encoding the frame in one piece, nullable ids and NaN included."""
    rng = np.random.default_rng(0)
    n = 1003
    df = pd.DataFrame({"user_id": pd.array(rng.integers(0, 300, n), dtype="Int64"),
                       "item_id": rng.integers(0, 50, n), "x": rng.exponential(size=n), "z": rng.normal(size=n)})
    df.loc[[3, 500, 1002], "user_id"] = pd.NA
    df.loc[[7, 999], "z"] = np.nan
    pre = Preprocessor.fit(df, FeatureColumns(categorical=["user_id", "item_id"], numeric=["x", "z"]), 2)
    whole_cat, whole_num = pre.encode(df)
    monkeypatch.setattr(preprocess, "ENCODE_CHUNK_ROWS", 100)
    cat, num = pre.encode(df)
    np.testing.assert_array_equal(cat, whole_cat)
    np.testing.assert_array_equal(num, whole_num)
    assert (cat[[3, 500, 1002], 0] == 0).all() and (num[[7, 999], 1] == 0).all()  # NA -> OOV, NaN -> mean
    assert pre.log1p == ["x"] and num.dtype == np.float32


def test_a_few_rows_encode_cell_by_cell_as_many_rows_do():
    """Up to CELL_ROWS rows (a live request's user row) ids are looked up cell by cell, past it column by
    column in numpy: each row alone encodes as it does among many, at and around the vocabulary's ends,
    missing (NA), at the int64 limits, with an empty vocabulary, and with +-inf numeric values (-> 0)."""
    train = pd.DataFrame({"a": np.array([5, 5, 9, 9, 20, 20], np.int64), "b": np.array([1, 2, 3, 4, 5, 6], np.int64),
                          "x": [-1.0, 0.0, 1.0, 2.0, 3.0, 4.0]})
    pre = Preprocessor.fit(train, FeatureColumns(categorical=["a", "b"], numeric=["x"]), min_count=2)
    assert pre.vocab == {"a": [5, 9, 20], "b": []}
    a = [4, 5, 6, 9, 19, 20, 21, -(2**63), 2**63 - 1, None]
    rows = {"a": pd.array(a, dtype="Int64"), "b": np.arange(len(a), dtype=np.int64),
            "x": np.array([np.inf, -np.inf, np.nan, 1.0, 2.0, 0.0, -1.0, 4.0, 3.0, 0.5])}
    whole_cat, whole_num = pre.encode(rows)
    assert whole_cat[:, 0].tolist() == [0, 1, 0, 2, 0, 3, 0, 0, 0, 0] and not whole_cat[:, 1].any()
    assert whole_num[:3, 0].tolist() == [0.0, 0.0, 0.0]
    for r in range(len(a)):
        cat, num = pre.encode({c: v[r:r + 1] for c, v in rows.items()})
        np.testing.assert_array_equal(cat, whole_cat[r:r + 1])
        np.testing.assert_array_equal(num, whole_num[r:r + 1])
    assert len(a) > preprocess.CELL_ROWS  # the whole went through numpy


def test_non_negative_columns_are_log1p_then_standardised():
    train = pd.DataFrame({"x": [0.0, 9.0, 99.0, 999.0], "y": [-1.0, 0.0, 1.0, 2.0]})
    pre = Preprocessor.fit(train, FeatureColumns(categorical=[], numeric=["x", "y"]))
    assert pre.log1p == ["x"]
    logs = np.log1p(train["x"].to_numpy())
    _, num = pre.encode(pd.DataFrame({"x": [99.0, -5.0], "y": [0.5, 0.5]}))
    np.testing.assert_allclose(num[0, 0], (np.log(100) - logs.mean()) / logs.std(), atol=1e-5)
    # a negative value never seen on train is clipped to 0 before log1p, not turned into NaN
    np.testing.assert_allclose(num[1, 0], (0 - logs.mean()) / logs.std(), atol=1e-5)
    np.testing.assert_allclose(num[:, 1], [0.0, 0.0], atol=1e-6)


def test_numeric_buckets_are_train_quantiles_after_the_categorical_codes(tmp_path):
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"c": rng.integers(0, 3, 1000), "x": rng.exponential(size=1000),
                          "flag": rng.integers(0, 2, 1000).astype(np.float64)})
    cols = FeatureColumns(categorical=["c"], numeric=["x", "flag"])
    pre = Preprocessor.fit(train, cols, min_count=1, numeric_buckets=4)
    # x: 3 inner quartile edges -> 4 buckets + the missing slot; flag: its quartiles are only {0, 1}
    assert len(pre.buckets["x"]) == 3 and pre.buckets["flag"] == [0.0, 1.0]
    assert pre.cardinalities == [4, 5, 4]
    cat, num = pre.encode(train)
    assert cat.shape == (1000, 3) and num.shape == (1000, 2)  # the numeric values stay as they were
    assert np.bincount(cat[:, 1]).tolist() == [0, 250, 250, 250, 250]  # quartiles: equal shares on train
    assert set(cat[:, 2]) == {2, 3}  # 0.0 and 1.0 land on either side of the edge at 0
    edges = pre.buckets["x"]
    new = pd.DataFrame({"c": [0, 0, 0, 0], "x": [np.nan, -5.0, edges[1], 1e9], "flag": [0.0, 1.0, 0.0, 1.0]})
    codes = pre.encode_categorical(new)[:, 1]
    assert codes.tolist() == [0, 1, 3, 4]  # missing -> 0; beyond train's range -> the end buckets
    pre.save(tmp_path / "p.json")
    assert np.array_equal(Preprocessor.load(tmp_path / "p.json").encode_categorical(new), pre.encode_categorical(new))
    assert Preprocessor.fit(train, cols, min_count=1).cardinalities == [4]  # off by default


def test_parts_encode_as_the_whole_and_join_back_to_its_layout():
    """Preprocessor.split: each part encodes its columns as the whole does (buckets and log1p included),
    so a part's one row (a request's user) broadcast, and another's rows taken, join to the whole's
    encoding of the full rows; a column in no part is refused."""
    rng = np.random.default_rng(1)
    n = 400
    df = pd.DataFrame({"user_id": rng.integers(0, 40, n), "u": rng.exponential(size=n),
                       "item_id": rng.integers(0, 30, n), "brand": pd.array(rng.integers(0, 5, n), dtype="Int64"),
                       "price": rng.normal(size=n),
                       "hour": rng.integers(0, 24, n)})
    df.loc[[5, 9], "price"] = np.nan
    df.loc[[2], "brand"] = pd.NA
    cols = FeatureColumns(categorical=["user_id", "item_id", "brand", "hour"], numeric=["u", "price"])
    pre = Preprocessor.fit(df, cols, min_count=2, numeric_buckets=3)
    user, item = pre.split([["user_id", "u", "hour"], ["item_id", "brand", "price", "user_id"]])
    assert user.categorical.tolist() == [0, 3, 4] and user.numeric.tolist() == [0]  # u's bucket after the codes
    assert item.categorical.tolist() == [1, 2, 5] and item.numeric.tolist() == [1]  # user_id: the first part's

    rows = df[df["user_id"] == df["user_id"].iloc[0]].iloc[[0, 0, 0]].copy()  # one user's request
    rows["item_id"], rows["price"] = [3, 99, 3], [0.5, np.nan, 0.5]
    rows["brand"] = pd.array([1, pd.NA, 1], dtype="Int64")
    distinct = rows.iloc[[0, 1]]
    user_cat, user_num = user.encoder.encode(rows.iloc[:1])
    item_cat, item_num = item.encoder.encode(distinct)
    take = np.array([0, 1, 0])
    cat, num = pre.join(3, [(user, user_cat, user_num), (item, item_cat[take], item_num[take])])
    whole_cat, whole_num = pre.encode(rows)
    np.testing.assert_array_equal(cat, whole_cat)
    np.testing.assert_array_equal(num, whole_num)
    with pytest.raises(ValueError, match=r"\['brand', 'price'\]"):
        pre.split([["user_id", "u", "hour"], ["item_id"]])


def test_frames_encode_under_copy_on_write():
    """pandas 3 makes copy-on-write the default: a frame's block may come back read-only, and encoding
    writes into it (log1p in place). Seen on the GPU machine's pandas 3.0.6; here pandas 2 is told to."""
    df = pd.DataFrame({"x": [0.0, 9.0, 99.0], "y": [-1.0, 0.0, 1.0]})
    with pd.option_context("mode.copy_on_write", True):
        pre = Preprocessor.fit(df, FeatureColumns(categorical=[], numeric=["x", "y"]))
        _, num = pre.encode(df)
    assert pre.log1p == ["x"] and np.isfinite(num).all()
    assert df["x"].tolist() == [0.0, 9.0, 99.0]  # the frame is left as it was
