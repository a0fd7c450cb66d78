"""Adapters on the real public-data samples: contract, counts, labels, streaming, malformed input, e2e."""
from __future__ import annotations

import gzip
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from features.adapters import ADAPTERS, convert, default_tasks, stable_hash
from features.contract import TABLES, ContractError, FunnelDataset, check_dataset, read_raw
from models.tasks import DEFAULT_FUNNEL, TaskGraph, TaskSpec

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
ALI = DATA / "aliexpress_sample"
CCP = DATA / "ali_ccp_sample"
CENSUS = DATA / "census_income_kdd" / "census-income-1994.csv.gz"
ALI_ORDER = ["aliexpress_train_sample.csv", "fuxictr_train.csv", "aliexpress_test_sample.csv", "fuxictr_test.csv"]
CCP_ORDER = ["ali_ccp_train_sample.csv", "ali_ccp_val_sample.csv", "ali_ccp_test_sample.csv"]

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared samples not found at {DATA}")


def _convert(fmt, src, raw, tasks, **kwargs):
    return convert(fmt, src, raw, tasks, quarantine_dir=Path(raw).parent / "quarantine", **kwargs)


def _raw(raw) -> FunnelDataset:
    """Every table of the raw store, all days."""
    return FunnelDataset(**{name: read_raw(raw, name) for name in TABLES})


def _census_source(n: int | None = None) -> pd.DataFrame:
    df = pd.read_csv(CENSUS, header=None, dtype=str, keep_default_na=False, skipinitialspace=True)
    return df if n is None else df.head(n)


def _expected(fmt: str) -> pd.DataFrame:
    """Source labels in the adapter's row order, read independently of the adapter."""
    if fmt == "aliexpress":
        src = pd.concat([pd.read_csv(ALI / f) for f in ALI_ORDER], ignore_index=True)
        return src[["click", "conversion"]]
    if fmt == "ali-ccp":
        src = pd.concat([pd.read_csv(CCP / f) for f in CCP_ORDER], ignore_index=True)
        return src[["click", "purchase"]]
    src = _census_source()
    return pd.DataFrame({"income": (src[41] == "50000+.").astype(int),
                         "never_married": (src[7] == "Never married").astype(int),
                         "weeks_worked": src[39].astype(float)})


SOURCES = {"aliexpress": ALI, "ali-ccp": CCP, "census-kdd": CENSUS}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = {}
    for fmt, src in SOURCES.items():
        raw = tmp_path_factory.mktemp(fmt) / "raw"
        summary = _convert(fmt, src, raw, default_tasks(fmt))
        out[fmt] = (raw, summary)
    return out


@pytest.mark.parametrize("fmt", list(SOURCES))
def test_contract_counts_and_labels(converted, fmt):
    raw, summary = converted[fmt]
    tasks = default_tasks(fmt)
    ds = check_dataset(_raw(raw), tasks, source=str(raw))  # re-check the stored days
    imps = ds.impressions.sort_values("impression_id").reset_index(drop=True)
    expected = _expected(fmt)
    assert len(imps) == len(expected) == summary["tables"]["impressions"]["rows"]
    for col in expected.columns:
        np.testing.assert_array_equal(imps[col].to_numpy(), expected[col].to_numpy(), err_msg=col)
    for t in tasks.tasks:  # funnel rule
        if t.parent:
            assert not ((imps[t.column] > 0) & (imps[t.parent] == 0)).any()
    assert imps["event_timestamp"].is_monotonic_increasing and imps["event_timestamp"].is_unique
    assert len(ds.users) >= 1 and len(ds.items) >= 1
    # labels never leak into features
    feature_cols = set(imps.columns) | set(ds.users.columns) | set(ds.items.columns)
    assert not feature_cols & {"marital_stat", "weeks_worked_in_year", "instance_weight", "search_id"}


@pytest.mark.parametrize("fmt", list(SOURCES))
def test_every_impression_sees_a_profile_strictly_before_it(converted, fmt):
    raw, _ = converted[fmt]
    ds = _raw(raw)
    imps = ds.impressions.sort_values("event_timestamp")
    for key, table in (("user_id", ds.users), ("item_id", ds.items)):
        first_seen = imps.groupby(key)["event_timestamp"].min()
        first_snap = table.groupby(key)["event_timestamp"].min()
        assert set(first_snap.index) == set(first_seen.index)
        assert (first_snap.loc[first_seen.index] < first_seen).all()
        # no snapshot is stamped at or after the last impression carrying its values: every snapshot row
        # precedes some impression of its key at most half a step later
        snap_next = pd.merge_asof(table.sort_values("event_timestamp"), imps[[key, "event_timestamp"]]
                                  .rename(columns={"event_timestamp": "imp_ts"}).sort_values("imp_ts"),
                                  left_on="event_timestamp", right_on="imp_ts", by=key, direction="forward")
        gap = snap_next["imp_ts"] - snap_next["event_timestamp"]
        assert (gap > pd.Timedelta(0)).all() and (gap <= ADAPTERS[fmt].step / 2).all()


def test_census_features_exclude_labels(converted):
    raw, _ = converted["census-kdd"]
    ds = _raw(raw)
    src = _census_source()
    assert "marital_stat" not in ds.users.columns and "weeks_worked_in_year" not in ds.users.columns
    assert set(ds.impressions.columns) == {"impression_id", "event_timestamp", "user_id", "item_id",
                                           "income", "never_married", "weeks_worked"}
    users = ds.users.sort_values("user_id").reset_index(drop=True)
    np.testing.assert_array_equal(users["age"].to_numpy(), src[0].astype(float).to_numpy())
    np.testing.assert_array_equal(users["sex"].to_numpy(), stable_hash(src[12]))
    assert users.select_dtypes("int64").shape[1] + users.select_dtypes("float64").shape[1] == users.shape[1] - 1


def test_stable_hash_is_deterministic_and_distinct():
    a = stable_hash(pd.Series([" Never married", "Married-civilian spouse present", "Never married"]))
    assert a[0] == a[2] != a[1] and (a >= 0).all() and a.dtype == np.int64
    # pinned: blake2b-8 of the stripped value, masked to 63 bits (a change would remap every stored id)
    assert a[0] == 1308880251159446788


@pytest.mark.parametrize("fmt", list(SOURCES))
def test_streaming_in_tiny_chunks_matches_one_chunk(tmp_path, fmt):
    src = SOURCES[fmt]
    if fmt == "census-kdd":  # 600 rows (86 chunks) keep the tiny-chunk run fast
        src = tmp_path / "census.csv"
        with gzip.open(CENSUS, "rt") as f:
            src.write_text("".join(next(f) for _ in range(600)))
    _convert(fmt, src, tmp_path / "one", default_tasks(fmt), chunk_rows=10**7)
    _convert(fmt, src, tmp_path / "tiny", default_tasks(fmt), chunk_rows=7)
    for table in ("impressions", "users", "items"):
        one, tiny = read_raw(tmp_path / "one", table), read_raw(tmp_path / "tiny", table)
        assert len(one) > 0
        pd.testing.assert_frame_equal(one, tiny, check_exact=True)


# ----------------------------------------------------------------------------- malformed input
def _ali_frame() -> pd.DataFrame:
    return pd.read_csv(ALI / "aliexpress_test_sample.csv")


def _expect_error(fmt, src, tmp_path, column, rule_part):
    raw = tmp_path / "raw"
    with pytest.raises(ContractError) as exc:
        _convert(fmt, src, raw, default_tasks(fmt), chunk_rows=8)
    err = exc.value
    assert Path(err.file.split(" (as ")[0]).name == Path(src).name, err.file
    assert err.column == column, str(err)
    assert rule_part in err.rule, str(err)
    return err


def test_aliexpress_missing_label_column(tmp_path):
    src = tmp_path / "bad.csv"
    _ali_frame().drop(columns="conversion").to_csv(src, index=False)
    _expect_error("aliexpress", src, tmp_path, "conversion", "missing")


def test_aliexpress_non_numeric(tmp_path):
    src = tmp_path / "bad.csv"
    df = _ali_frame().astype({"numerical_5": object})
    df.loc[13, "numerical_5"] = "abc"
    df.to_csv(src, index=False)
    err = _expect_error("aliexpress", src, tmp_path, "numerical_5", "non-numeric")
    assert err.n_rows == 1 and "abc" in str(err) and "15" in str(err)  # CSV line 15 = row 13


def test_aliexpress_label_outside_0_1(tmp_path):
    src = tmp_path / "bad.csv"
    df = _ali_frame()
    df.loc[[3, 17], "click"] = 2
    df.to_csv(src, index=False)
    err = _expect_error("aliexpress", src, tmp_path, "click", "0 or 1")
    assert err.n_rows == 1  # chunk of 8 rows: the first bad row's chunk fails first


def test_aliexpress_conversion_without_click(tmp_path):
    src = tmp_path / "bad.csv"
    df = _ali_frame()
    row = df.index[df["click"] == 0][0]
    df.loc[row, "conversion"] = 1
    df.to_csv(src, index=False)
    err = _expect_error("aliexpress", src, tmp_path, "conversion", "funnel rule")
    assert err.n_rows == 1 and "bad.csv" in str(err)


def test_ali_ccp_wrong_column_set(tmp_path):
    src = tmp_path / "bad.csv"
    pd.read_csv(CCP / "ali_ccp_test_sample.csv").assign(extra=1).to_csv(src, index=False)
    _expect_error("ali-ccp", src, tmp_path, "extra", "unexpected column")


def test_ali_ccp_ragged_row(tmp_path):
    src = tmp_path / "bad.csv"
    lines = (CCP / "ali_ccp_test_sample.csv").read_text().splitlines()
    lines[20] += ",5"
    src.write_text("\n".join(lines) + "\n")
    _expect_error("ali-ccp", src, tmp_path, "-", "wrong column count")


def test_census_wrong_column_count(tmp_path):
    src = tmp_path / "bad.csv"
    src.write_text("\n".join(",".join(r) for r in _census_source(20).iloc[:, :41].to_numpy()) + "\n")
    _expect_error("census-kdd", src, tmp_path, "-", "wrong column count")


def test_census_short_row(tmp_path):
    src = tmp_path / "bad.csv"
    rows = [",".join(r) for r in _census_source(20).to_numpy()]
    rows[12] = ",".join(rows[12].split(",")[:30])
    src.write_text("\n".join(rows) + "\n")
    _expect_error("census-kdd", src, tmp_path, "income", "wrong column count")


def test_census_non_numeric_and_bad_label(tmp_path):
    df = _census_source(20)
    bad = df.copy()
    bad.loc[5, 0] = "forty"
    src = tmp_path / "bad.csv"
    bad.to_csv(src, header=False, index=False)
    _expect_error("census-kdd", src, tmp_path, "age", "non-numeric")
    bad = df.copy()
    bad.loc[5, 41] = "maybe"
    bad.to_csv(src, header=False, index=False)
    _expect_error("census-kdd", src, tmp_path, "income", "label must be one of")


def test_failure_leaves_previous_snapshot_untouched(tmp_path):
    raw = tmp_path / "raw"
    _convert("ali-ccp", CCP, raw, default_tasks("ali-ccp"))
    before = read_raw(raw, "impressions")
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    df = pd.read_csv(CCP / "ali_ccp_train_sample.csv")
    df.to_csv(bad_dir / "a_train.csv", index=False)          # a good first file...
    df.assign(purchase=3).to_csv(bad_dir / "b_test.csv", index=False)  # ...then a bad one
    with pytest.raises(ContractError):
        _convert("ali-ccp", bad_dir, raw, default_tasks("ali-ccp"), chunk_rows=10)
    pd.testing.assert_frame_equal(read_raw(raw, "impressions"), before)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_wrong_task_graph_is_rejected(tmp_path):
    with pytest.raises(ContractError) as exc:
        _convert("aliexpress", ALI, tmp_path / "raw", default_tasks("ali-ccp"))
    assert exc.value.column == "purchase"


ONLY_CLICK = TaskGraph(tasks=[TaskSpec(name="click", kind="binary")])
NO_PARENT = TaskGraph(tasks=[TaskSpec(name="click", kind="binary"), TaskSpec(name="conversion", kind="binary")])


@pytest.mark.parametrize(("fmt", "tasks", "column", "rule_part"), [
    ("aliexpress", DEFAULT_FUNNEL, "value", "label column of task 'value' is missing: the layout has no such"),
    ("aliexpress", default_tasks("ali-ccp"), "purchase", "label column of task 'purchase' is missing"),
    ("census-kdd", DEFAULT_FUNNEL, "click", "label column of task 'click' is missing"),
    ("aliexpress", ONLY_CLICK, "conversion", "no task of the pipeline (it would be stored as a feature)"),
    ("aliexpress", NO_PARENT, "conversion", "(binary, no parent) in the pipeline but (binary, parent click)"),
])
def test_task_graph_not_of_the_layout_names_the_fix_before_reading(tmp_path, fmt, tasks, column, rule_part):
    src = tmp_path / "unreadable.csv"  # were a row read first, the error would be "not text"
    src.write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(ContractError) as exc:
        _convert(fmt, src, tmp_path / "raw", tasks)
    err = exc.value
    assert (err.file, err.column) == (str(src), column) and rule_part in err.rule, str(err)
    assert "\n" not in str(err) and f"`--format {fmt}` has the tasks" in err.rule
    assert not (tmp_path / "raw").exists()
    # the fix is a `tasks:` value that params.yaml can take as it is: the layout's own graph
    fix = re.search(r"`tasks:` to (\[.*?\]) \(features\.adapters\.default_tasks\('([a-z-]+)'\)\)", err.rule)
    assert fix is not None and fix.group(2) == fmt, err.rule
    assert TaskGraph(tasks=yaml.safe_load(fix.group(1))) == default_tasks(fmt)


@pytest.mark.parametrize("fmt", list(SOURCES))
def test_layout_task_chain_is_named(tmp_path, fmt):
    with pytest.raises(ContractError) as exc:
        _convert(fmt, tmp_path / "missing.csv", tmp_path / "raw", ONLY_CLICK if fmt == "census-kdd" else NO_PARENT)
    chain = {"aliexpress": "click -> conversion", "ali-ccp": "click -> purchase",
             "census-kdd": "income, never_married, weeks_worked"}[fmt]
    assert f"`--format {fmt}` has the tasks {chain}: set params.yaml" in exc.value.rule


# ----------------------------------------------------------------------------- unreadable files
def _first_lines(fmt: str, n: int) -> bytes:
    """The first ``n`` lines of a sample source of layout ``fmt`` (header included), uncompressed."""
    if fmt == "census-kdd":
        with gzip.open(CENSUS, "rb") as f:
            return b"".join(next(f) for _ in range(n))
    src = ALI / "aliexpress_test_sample.csv" if fmt == "aliexpress" else CCP / "ali_ccp_test_sample.csv"
    return b"".join(src.read_bytes().splitlines(keepends=True)[:n])


def _corrupt_deflate(data: bytes) -> bytes:
    gz = bytearray(gzip.compress(data))
    mid = len(gz) // 2
    gz[mid:mid + 16] = bytes(b ^ 0xFF for b in gz[mid:mid + 16])
    return bytes(gz)


# name -> (file name, bytes from a good source, rule part)
UNREADABLE = {
    "empty": ("empty.csv", lambda good: b"", "empty file: no header or rows"),
    "truncated_gzip": ("truncated.csv.gz", lambda good: gzip.compress(good)[: len(gzip.compress(good)) // 2],
                       "not a readable CSV: truncated or corrupt compressed file (EOFError"),
    "corrupt_deflate": ("corrupt.csv.gz", _corrupt_deflate,
                        "not a readable CSV: truncated or corrupt compressed file"),
    "plain_named_gz": ("plain.csv.gz", lambda good: good,
                       "not gzip-compressed though named .gz: rename it without .gz or compress it"),
    "random_bytes": ("random.csv", lambda good: np.random.default_rng(0).bytes(4000),
                     "not text (UnicodeDecodeError"),
    "gzip_named_csv": ("gzipped.csv", gzip.compress, "gzip-compressed though not named .gz (UnicodeDecodeError"),
}


@pytest.mark.parametrize("case", list(UNREADABLE))
@pytest.mark.parametrize("fmt", ["census-kdd", "aliexpress", "ali-ccp"])
def test_unreadable_file_is_one_contract_error(tmp_path, fmt, case):
    name, make, rule_part = UNREADABLE[case]
    src = tmp_path / name
    src.write_bytes(make(_first_lines(fmt, 300)))
    err = _expect_error(fmt, src, tmp_path, "-", rule_part)
    assert err.file == str(src) and str(err).startswith(f"{src}: column '-': ") and "\n" not in str(err)
    if case in ("truncated_gzip", "corrupt_deflate"):
        assert err.rule.endswith(": download the file again")
    assert not (tmp_path / "raw").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_truncated_gzip_mid_stream_leaves_the_raw_store_unchanged(tmp_path):
    raw = tmp_path / "raw"
    (tmp_path / "good.csv").write_bytes(_first_lines("census-kdd", 200))
    _convert("census-kdd", tmp_path / "good.csv", raw, default_tasks("census-kdd"))
    before = _tree_hash(raw)
    src = tmp_path / "census.csv.gz"
    gz = gzip.compress(_first_lines("census-kdd", 3000))
    src.write_bytes(gz[: len(gz) * 4 // 5])
    assert len(next(pd.read_csv(src, header=None, chunksize=500))) == 500  # the first chunks do read
    with pytest.raises(ContractError) as exc:
        _convert("census-kdd", src, raw, default_tasks("census-kdd"), chunk_rows=500)
    assert (exc.value.file, exc.value.column) == (str(src), "-")
    assert exc.value.rule.startswith("not a readable CSV: truncated or corrupt compressed file (EOFError")
    assert exc.value.rule.endswith(": download the file again")
    assert _tree_hash(raw) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cli_unreadable_source_and_wrong_tasks_are_one_error_line(tmp_path):
    """Through the CLI: exit 1, one `error:` line naming the file and the rule, no traceback, raw store kept."""
    from flows.benchmark import census_params

    repo = Path(__file__).resolve().parents[2]
    data = tmp_path / "data"
    good = tmp_path / "good.csv"
    good.write_bytes(_first_lines("census-kdd", 200))
    _convert("census-kdd", good, data / "raw", default_tasks("census-kdd"))
    before = _tree_hash(data / "raw")
    params = tmp_path / "census.yaml"
    params.write_text(yaml.safe_dump(census_params().model_dump(mode="json")))
    truncated = tmp_path / "truncated.csv.gz"  # main printed only "Aborted." (click swallowed the EOFError)
    truncated.write_bytes(gzip.compress(_first_lines("census-kdd", 300))[:2000])
    cases = [  # (params, file, format, rule part); one CLI start each (~8 s), the other cases run in-process
        (params, truncated, "census-kdd", "truncated or corrupt compressed file (EOFError"),
        (None, ALI / "aliexpress_test_sample.csv", "aliexpress",
         "label column of task 'value' is missing: the layout has no such label; `--format aliexpress` has "
         "the tasks click -> conversion"),
    ]
    for params_file, src, fmt, rule_part in cases:
        cmd = [sys.executable, "-m", "flows.cli", *(["--params", str(params_file)] if params_file else []),
               "--data-dir", str(data), "ingest", str(src), "--format", fmt]
        proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=120)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 1, proc.stderr
        assert len(errors) == 1 and str(src) in errors[0] and rule_part in errors[0], proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout and "Aborted" not in proc.stderr + proc.stdout
        assert _tree_hash(data / "raw") == before


# ----------------------------------------------------------------------------- end to end
@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_census_end_to_end(tmp_path):
    """census sample (5,000 rows) -> ingest -> features -> Feast -> training set -> validate -> mmoe -> evaluate."""
    from flows import steps
    from flows.benchmark import census_params
    from flows.params import Paths

    src = tmp_path / "census.csv"
    _census_source().sample(n=5000, random_state=0).to_csv(src, header=False, index=False)
    params = census_params(model="mmoe", epochs=1, seed=0)
    # 3,500 train rows: small batches so one epoch is ~30 optimiser steps
    params = params.model_copy(update={"train": params.train.model_copy(update={"batch_size": 128})})
    assert params.data.format == "census-kdd"
    paths = Paths(tmp_path / "data")
    summary = steps.ingest(params, paths, source=src)
    assert summary["tables"]["impressions"]["rows"] == 5000
    for step in (steps.build_features, steps.features_apply, steps.features_materialize,
                 steps.training_set, steps.validate):
        step(params, paths)
    train = pd.read_parquet(paths.training_set / "train.parquet")
    assert train["user_profile__age"].notna().all()  # every person sees their own profile snapshot
    steps.train(params, paths, progress=False)
    metrics = steps.evaluate(params, paths)["metrics"]
    assert metrics["income/auc"] > 0.75, metrics
    assert metrics["never_married/auc"] > 0.75, metrics
    assert np.isfinite(metrics["weeks_worked/rmse"])
