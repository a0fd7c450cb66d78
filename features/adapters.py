"""Adapters: public multi-task datasets -> the funnel dataset contract (docs/funnel-dataset.md).

``convert(fmt, source, raw_dir, tasks, quarantine_dir=...)`` streams the source CSV file(s) in chunks
(``pandas.read_csv(chunksize=...)``), checks every chunk with ``features.contract.check_dataset``
(plus the adapter's own layout checks, which name the *source CSV*), appends it to day-partitioned
Parquet files (``dt=YYYY-MM-DD/``, one ``pyarrow.parquet.ParquetWriter`` per day and table) in a
staging folder beside the raw store, then adds those days to the raw store through
``features.contract.ingest`` (partition-wise: one day at a time, unchanged days kept, bad days
quarantined). A source that fails to convert leaves the raw store untouched. Peak memory = one chunk
+ the per-entity snapshot state (one 8-byte hash per user/item key; none for census, whose user key is
the row itself), then one day at a time while ingesting.

Layouts and registry ``ADAPTERS`` (``default_tasks(fmt)`` gives each one's task graph):

* ``aliexpress`` (AliExpress/Tianchi: search_id, categorical_1..16, numerical_1..63, click,
  conversion; the fuxictr_* and aliexpress_* samples share this exact column set). Tasks
  click -> conversion; the source's ``conversion`` is already click-and-buy over all impressions,
  so it *is* the contract's joint ``conversion`` (a conversion without a click is rejected).
  ``source``: one CSV or a folder of CSVs.
* ``ali-ccp`` (Ali-CCP, torch-rechub preprocessed: click, purchase, sparse field ids 101..853,
  109_14.., dense D*). Tasks click -> purchase.
* ``census-kdd`` (UCI Census-Income KDD, 42 columns, no header, UCI order; the MMoE benchmark).
  Independent tasks (parent None): ``income`` (column 41 == '50000+.'), ``never_married`` (column 7
  == 'Never married'), ``weeks_worked`` (regression, column 39). Label columns 7, 39, 41 are dropped
  from the features, as are 24 (instance weight: UCI says not to use it as a feature) and 40 (year).
  Kept on purpose, as in the MMoE setup: 22/23 (household status, a proxy of marital status) and
  15/30 (employment, correlated with weeks worked); they are attributes, not labels.

Files of a folder are processed in the order train*, val*, test*, then any other, each name-sorted
(so held-out files come later in time, matching the pipeline's time split).

What is synthesised (none of these layouts has timestamps; only Ali-CCP has user/item keys):

* ``impression_id`` = global row number (0, 1, ...) in file order, then row order within a file.
* ``event_timestamp`` = ``EPOCH`` (2020-01-01T00:00:00Z) + impression_id * step: 1 s for aliexpress
  and ali-ccp, 60 s for census (49,816 sample rows span ~35 days, so the 1/7/30-day activity
  windows hold history). Time is strictly increasing in row order, so "earlier row" == "earlier time".
* Profile snapshots (users.parquet / items.parquet): an entity's attributes are written as a snapshot
  row stamped ``step / 2`` *before* the first impression that carries them, and a new snapshot only
  when an impression carries values that differ from the entity's last snapshot (the state is one
  hash per key). So an impression at t sees (strictly before t, per the contract) only attribute
  values carried by itself or by earlier rows: no row can see a later row's data, and
  ``features.engineering`` (1 us visibility offset, day-boundary aggregates of strictly earlier
  events) keeps the point-in-time joins honest.
* Keys and attribute placement, per layout:
  - aliexpress: user = the search request, ``user_id = file_no * 10**12 + search_id`` (search ids
    restart per file); its profile = numerical_58..60 (constant within every search in the samples;
    should they vary, the snapshot rule just writes a new row). No item key exists:
    ``item_id`` = stable hash (below) of the 16 categorical fields, i.e. an "item class" of
    impressions sharing all categorical attributes; its profile = those 16 fields (constant per key
    by construction). Impression context = the other 60 numerical fields.
  - ali-ccp: ``user_id`` = field 101, profile = 121, 122, 124..129; ``item_id`` = field 205, profile
    = 206, 207, 210, 216 (the Ali-CCP field semantics). Context = 301, 508, 509, 702, 853,
    109_14, 110_14, 127_14, 150_14 (int64) and D* (float64).
  - census-kdd: one person = one user = one row, ``user_id = impression_id``; its profile = every
    kept person attribute (one snapshot per row, stamped 30 s before its impression).
    ``item_id`` = detailed industry recode (column 2), its profile = major industry code (column 8),
    so item_activity is the rolling per-industry label rate of *earlier* rows. No context columns.
* Categorical strings (census) -> int64 by a stable hash: the first 8 bytes (little endian) of
  ``blake2b(value.strip(), digest_size=8)``, masked to 63 bits (non-negative). Chunk- and
  file-independent, so the same value always gets the same id (collisions ~ n^2 / 2^64). Numeric
  nominal codes (census 2, 3, 36, 38; every id column of the other layouts) stay as their int64 value.

Errors: a missing/unexpected column, wrong column count, non-numeric value in a numeric or id
column, a null id or label, or a label outside 0/1 raises ``ContractError(file, column, rule)`` naming
the source CSV, with a few offending rows (line numbers in the index where known). Every CSV read goes
through ``csv_chunks``: an empty, truncated or corrupt (gzip) file, a plain file named ``.gz`` or one that
is not text raises ``ContractError(file, "-", rule)`` with what to do, never pandas'/gzip's own error. The
pipeline's task graph must be the layout's own (``check_tasks``, before any row is read): the error names
the layout's tasks as a ``tasks:`` value for params.yaml.
"""
from __future__ import annotations

import gzip
import hashlib
import lzma
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.contract import DAY_PREFIX, ContractError, FunnelDataset, check_dataset, ingest, split_days
from models.atomic import scratch_dir
from models.tasks import TaskGraph, TaskSpec

EPOCH = pd.Timestamp("2020-01-01T00:00:00Z")
DEFAULT_CHUNK_ROWS = 200_000
ID_BITS = np.uint64((1 << 63) - 1)


# ----------------------------------------------------------------------------- helpers
def stable_hash(values: pd.Series) -> np.ndarray:
    """String values as int64 ids (blake2b, 8 bytes, 63 bits); computed once per distinct value."""
    codes, uniques = pd.factorize(values.astype(str).str.strip(), use_na_sentinel=False)
    ids = np.fromiter((int.from_bytes(hashlib.blake2b(u.encode("utf-8"), digest_size=8).digest(), "little")
                       & int(ID_BITS) for u in uniques), dtype=np.int64, count=len(uniques))
    return ids[codes]


def _row_hash(df: pd.DataFrame) -> np.ndarray:
    return pd.util.hash_pandas_object(df, index=False).to_numpy(np.uint64)


def _bad_rows(df: pd.DataFrame, mask, cols: list[str]) -> pd.DataFrame:
    return df.loc[np.asarray(mask, dtype=bool), [c for c in cols if c in df.columns]]


def _numeric(df: pd.DataFrame, col: str, file: str, rule: str) -> pd.Series:
    s = df[col]
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        return s
    num = pd.to_numeric(s, errors="coerce")
    bad = num.isna() & s.notna() & (s.astype(str).str.strip() != "")
    if bad.any():
        raise ContractError(file, col, rule, _bad_rows(df, bad, [col]))
    return num


def as_int(df: pd.DataFrame, col: str, file: str) -> np.ndarray:
    """An id column as int64: numeric, non-null, integral."""
    s = _numeric(df, col, file, "non-numeric value in an integer id column")
    if s.isna().any():
        raise ContractError(file, col, "id must not be null (missing field or wrong column count)",
                            _bad_rows(df, s.isna(), [col]))
    if pd.api.types.is_float_dtype(s) and (s != np.floor(s)).any():
        raise ContractError(file, col, "id must be an integer", _bad_rows(df, s != np.floor(s), [col]))
    return s.to_numpy().astype(np.int64)


def as_float(df: pd.DataFrame, col: str, file: str) -> np.ndarray:
    """A numeric column as float64 (nulls stay NaN)."""
    return _numeric(df, col, file, "non-numeric value in a numeric column").to_numpy().astype(np.float64)


def as_binary(df: pd.DataFrame, col: str, file: str) -> np.ndarray:
    """A 0/1 label column as int8."""
    s = df[col]
    num = pd.to_numeric(s, errors="coerce")
    bad = ~num.isin([0, 1])
    if bad.any():
        raise ContractError(file, col, "binary label must be 0 or 1", _bad_rows(df, bad, [col]))
    return num.to_numpy().astype(np.int8)


def _file_order(p: Path) -> tuple[int, str]:
    name = p.name.lower()
    rank = 0 if "train" in name else 1 if "val" in name else 2 if "test" in name else 3
    return rank, name


def source_files(source: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """``source`` itself, or the files of folder ``source`` with these suffixes in time order."""
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise ContractError(str(source), "-", "source file or folder does not exist")
    files = sorted((p for p in source.iterdir() if p.is_file() and p.name.lower().endswith(suffixes)),
                   key=_file_order)
    if not files:
        raise ContractError(str(source), "-", f"no source files ({', '.join(suffixes)}) in the folder")
    return files


# ----------------------------------------------------------------------------- reading CSVs
GZIP_MAGIC = b"\x1f\x8b"
_CORRUPT = (EOFError, zlib.error, zipfile.BadZipFile, lzma.LZMAError)
_REDOWNLOAD = "download the file again"


def _short(exc: BaseException) -> str:
    kind = type(exc).__name__ if type(exc).__module__ == "builtins" else f"{type(exc).__module__}.{type(exc).__name__}"
    return f"{kind}: {' '.join(str(exc).split())}"


def _unreadable_rule(path: Path, exc: Exception) -> str:
    """The rule a read/decompress/decode failure breaks, and what to do (one line)."""
    if isinstance(exc, pd.errors.EmptyDataError):
        return "empty file: no header or rows: pass a CSV of this layout with data rows"
    if isinstance(exc, pd.errors.ParserError):
        if "Expected" in str(exc) and "fields" in str(exc):
            return f"wrong column count: {' '.join(str(exc).split())}"
        return f"not a readable CSV ({_short(exc)}): pass a CSV of this layout"
    if isinstance(exc, gzip.BadGzipFile) and str(exc).startswith("Not a gzipped file"):
        return "not gzip-compressed though named .gz: rename it without .gz or compress it"
    if isinstance(exc, (*_CORRUPT, gzip.BadGzipFile)):
        return f"not a readable CSV: truncated or corrupt compressed file ({_short(exc)}): {_REDOWNLOAD}"
    if isinstance(exc, UnicodeDecodeError):
        with open(path, "rb") as f:
            if f.read(2) == GZIP_MAGIC:
                return f"gzip-compressed though not named .gz ({_short(exc)}): rename it to end with .gz"
        return f"not text ({_short(exc)}): not a CSV of this layout"
    return f"cannot read the file ({_short(exc)}): check that it exists and is readable"


def csv_chunks(path: Path, **read_csv: Any) -> Iterator[pd.DataFrame]:
    """``pd.read_csv(path, **read_csv)`` as an iterator of frames (one frame unless ``chunksize`` is given).

    A file that cannot be read, decompressed, decoded or tokenised raises ``ContractError(path, "-", rule)``
    with one line saying what to do, instead of pandas'/gzip's/zlib's own exception (a click CLI would
    even turn gzip's ``EOFError`` into a bare "Aborted."). Only the reading is wrapped: errors of the
    caller's code between yields are the caller's.
    """
    try:
        if "chunksize" not in read_csv:
            yield pd.read_csv(path, **read_csv)
            return
        with pd.read_csv(path, **read_csv) as reader:  # closes the file also when the caller stops early
            yield from reader
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError, *_CORRUPT) as exc:
        raise ContractError(str(path), "-", _unreadable_rule(Path(path), exc)) from exc


# ----------------------------------------------------------------------------- adapter interface
@dataclass
class Converted:
    """One source chunk in contract terms (before ids/timestamps are assigned)."""

    labels: dict[str, np.ndarray]
    context: pd.DataFrame                # impression context columns (int64 / float64)
    user_key: np.ndarray | None          # None: one user per row (user_id = impression_id)
    user_attrs: pd.DataFrame
    item_key: np.ndarray
    item_attrs: pd.DataFrame


@dataclass
class Adapter:
    """One public layout: its task graph, time step between rows, file suffixes, reader and transform."""

    name: str
    tasks: TaskGraph
    step: pd.Timedelta
    suffixes: tuple[str, ...]
    read: Callable[[Path, int], Iterator[pd.DataFrame]]
    transform: Callable[[pd.DataFrame, str, int], Converted]  # (chunk, file name, file number)


def _read_header_csv(columns: list[str]) -> Callable[[Path, int], Iterator[pd.DataFrame]]:
    """CSV with a header that must hold exactly ``columns`` (any order)."""

    def read(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
        header = list(next(csv_chunks(path, nrows=0)).columns)
        missing = [c for c in columns if c not in header]
        extra = [c for c in header if c not in columns]
        if missing:
            raise ContractError(str(path), missing[0], f"required column is missing (missing: {missing})")
        if extra:
            raise ContractError(str(path), extra[0], f"unexpected column: wrong layout (extra: {extra})")
        start = 2  # file line of the first data row (header is line 1)
        for chunk in csv_chunks(path, chunksize=chunk_rows, low_memory=False):
            chunk.index = pd.RangeIndex(start, start + len(chunk), name="line")
            start += len(chunk)
            yield chunk

    return read


# ----------------------------------------------------------------------------- aliexpress
ALI_CATS = [f"categorical_{i}" for i in range(1, 17)]
ALI_NUMS = [f"numerical_{i}" for i in range(1, 64)]
ALI_USER_NUMS = ["numerical_58", "numerical_59", "numerical_60"]
ALI_COLUMNS = ["search_id", *ALI_CATS, *ALI_NUMS, "click", "conversion"]
SEARCH_FILE_STRIDE = 10**12


def _aliexpress(df: pd.DataFrame, file: str, file_no: int) -> Converted:
    labels = {"click": as_binary(df, "click", file), "conversion": as_binary(df, "conversion", file)}
    search = as_int(df, "search_id", file)
    if (search < 0).any() or (search >= SEARCH_FILE_STRIDE).any():
        raise ContractError(file, "search_id", f"must be in [0, {SEARCH_FILE_STRIDE})",
                            _bad_rows(df, (search < 0) | (search >= SEARCH_FILE_STRIDE), ["search_id"]))
    cats = pd.DataFrame({c: as_int(df, c, file) for c in ALI_CATS})
    nums = {c: as_float(df, c, file) for c in ALI_NUMS}
    item_key = pd.util.hash_pandas_object(cats, index=False).to_numpy(np.uint64) & ID_BITS
    return Converted(
        labels=labels,
        context=pd.DataFrame({c: v for c, v in nums.items() if c not in ALI_USER_NUMS}),
        user_key=search + file_no * SEARCH_FILE_STRIDE,
        user_attrs=pd.DataFrame({c: nums[c] for c in ALI_USER_NUMS}),
        item_key=item_key.astype(np.int64),
        item_attrs=cats,
    )


# ----------------------------------------------------------------------------- ali-ccp
CCP_USER = ["121", "122", "124", "125", "126", "127", "128", "129"]
CCP_ITEM = ["206", "207", "210", "216"]
CCP_CTX_INT = ["301", "508", "509", "702", "853", "109_14", "110_14", "127_14", "150_14"]
CCP_CTX_FLOAT = ["D109_14", "D110_14", "D127_14", "D150_14", "D508", "D509", "D702", "D853"]
CCP_COLUMNS = ["click", "purchase", "101", *CCP_USER, "205", *CCP_ITEM, *CCP_CTX_INT, *CCP_CTX_FLOAT]


def _ali_ccp(df: pd.DataFrame, file: str, file_no: int) -> Converted:
    labels = {"click": as_binary(df, "click", file), "purchase": as_binary(df, "purchase", file)}
    ctx = {c: as_int(df, c, file) for c in CCP_CTX_INT}
    ctx.update({c: as_float(df, c, file) for c in CCP_CTX_FLOAT})
    return Converted(
        labels=labels,
        context=pd.DataFrame(ctx),
        user_key=as_int(df, "101", file),
        user_attrs=pd.DataFrame({f"f{c}": as_int(df, c, file) for c in CCP_USER}),
        item_key=as_int(df, "205", file),
        item_attrs=pd.DataFrame({f"f{c}": as_int(df, c, file) for c in CCP_ITEM}),
    )


# ----------------------------------------------------------------------------- census-kdd
CENSUS_COLUMNS = [
    "age", "class_of_worker", "detailed_industry_recode", "detailed_occupation_recode", "education",
    "wage_per_hour", "enroll_in_edu_inst_last_wk", "marital_stat", "major_industry_code",
    "major_occupation_code", "race", "hispanic_origin", "sex", "member_of_a_labor_union",
    "reason_for_unemployment", "full_or_part_time_employment_stat", "capital_gains", "capital_losses",
    "dividends_from_stocks", "tax_filer_stat", "region_of_previous_residence",
    "state_of_previous_residence", "detailed_household_and_family_stat",
    "detailed_household_summary_in_household", "instance_weight", "migration_code_change_in_msa",
    "migration_code_change_in_reg", "migration_code_move_within_reg", "live_in_this_house_1_year_ago",
    "migration_prev_res_in_sunbelt", "num_persons_worked_for_employer", "family_members_under_18",
    "country_of_birth_father", "country_of_birth_mother", "country_of_birth_self", "citizenship",
    "own_business_or_self_employed", "fill_inc_questionnaire_for_veterans_admin", "veterans_benefits",
    "weeks_worked_in_year", "year", "income",
]
CENSUS_CONTINUOUS = ["age", "wage_per_hour", "capital_gains", "capital_losses", "dividends_from_stocks",
                     "num_persons_worked_for_employer"]
CENSUS_CODES = ["detailed_occupation_recode", "own_business_or_self_employed", "veterans_benefits"]
CENSUS_DROPPED = ["marital_stat", "income", "weeks_worked_in_year", "instance_weight", "year",
                  "detailed_industry_recode", "major_industry_code"]  # labels, non-features, item key/attr
CENSUS_STRINGS = [c for c in CENSUS_COLUMNS if c not in CENSUS_CONTINUOUS + CENSUS_CODES + CENSUS_DROPPED]
INCOME_VALUES = {"- 50000.": 0, "50000+.": 1}


def _read_census(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    n = len(CENSUS_COLUMNS)
    start = 1
    for chunk in csv_chunks(path, header=None, chunksize=chunk_rows, skipinitialspace=True, dtype=str,
                            keep_default_na=False, na_values=[""]):
        chunk.index = pd.RangeIndex(start, start + len(chunk), name="line")
        start += len(chunk)
        if chunk.shape[1] != n:
            raise ContractError(str(path), "-", f"wrong column count: expected {n} (UCI census-income "
                                f"layout, no header), found {chunk.shape[1]}", chunk.iloc[:, :3])
        chunk.columns = CENSUS_COLUMNS
        short = chunk["income"].isna()
        if short.any():
            raise ContractError(str(path), "income", f"wrong column count: rows with fewer than {n} fields",
                                _bad_rows(chunk, short, ["age", "year", "income"]))
        yield chunk


def _census(df: pd.DataFrame, file: str, file_no: int) -> Converted:
    num = {}
    for c in [*CENSUS_CONTINUOUS, "weeks_worked_in_year"]:
        v = pd.to_numeric(df[c], errors="coerce")
        if v.isna().any():
            raise ContractError(file, c, "non-numeric value in a continuous column", _bad_rows(df, v.isna(), [c]))
        num[c] = v.to_numpy(np.float64)
    income = df["income"].str.strip().map(INCOME_VALUES)
    if income.isna().any():
        raise ContractError(file, "income", f"label must be one of {sorted(INCOME_VALUES)}",
                            _bad_rows(df, income.isna(), ["income"]))
    weeks = num.pop("weeks_worked_in_year")
    if ((weeks < 0) | (weeks > 52)).any():
        raise ContractError(file, "weeks_worked_in_year", "must be in [0, 52]",
                            _bad_rows(df, (weeks < 0) | (weeks > 52), ["weeks_worked_in_year"]))
    attrs = {"age": num["age"]}
    for c in CENSUS_COLUMNS:
        if c in CENSUS_STRINGS:
            attrs[c] = stable_hash(df[c])
        elif c in CENSUS_CODES:
            attrs[c] = as_int(df, c, file)
        elif c in CENSUS_CONTINUOUS:
            attrs[c] = num[c]
    return Converted(
        labels={"income": income.to_numpy(np.int8),
                "never_married": (df["marital_stat"].str.strip() == "Never married").to_numpy(np.int8),
                "weeks_worked": weeks},
        context=pd.DataFrame(index=range(len(df))),
        user_key=None,
        user_attrs=pd.DataFrame(attrs),
        item_key=as_int(df, "detailed_industry_recode", file),
        item_attrs=pd.DataFrame({"major_industry_code": stable_hash(df["major_industry_code"])}),
    )


ADAPTERS: dict[str, Adapter] = {
    "aliexpress": Adapter(
        "aliexpress",
        TaskGraph(tasks=[TaskSpec(name="click", kind="binary"),
                         TaskSpec(name="conversion", kind="binary", parent="click")]),
        pd.Timedelta(seconds=1), (".csv", ".csv.gz"), _read_header_csv(ALI_COLUMNS), _aliexpress),
    "ali-ccp": Adapter(
        "ali-ccp",
        TaskGraph(tasks=[TaskSpec(name="click", kind="binary"),
                         TaskSpec(name="purchase", kind="binary", parent="click")]),
        pd.Timedelta(seconds=1), (".csv", ".csv.gz"), _read_header_csv(CCP_COLUMNS), _ali_ccp),
    "census-kdd": Adapter(
        "census-kdd",
        TaskGraph(tasks=[TaskSpec(name="income", kind="binary"),
                         TaskSpec(name="never_married", kind="binary"),
                         TaskSpec(name="weeks_worked", kind="regression")]),
        pd.Timedelta(seconds=60), (".csv", ".csv.gz", ".data", ".data.gz", ".test", ".test.gz"),
        _read_census, _census),
}


def default_tasks(fmt: str) -> TaskGraph:
    """The task graph of layout ``fmt`` (a copy)."""
    return _adapter(fmt).tasks.model_copy(deep=True)


def _adapter(fmt: str) -> Adapter:
    if fmt not in ADAPTERS:
        raise ValueError(f"unknown format {fmt!r}; known: {sorted(ADAPTERS)} (or 'funnel')")
    return ADAPTERS[fmt]


def _chain(graph: TaskGraph) -> str:
    """Tasks as ``click -> conversion`` (a child right after its parent) or ``a, b`` (otherwise)."""
    out = ""
    for i, t in enumerate(graph.tasks):
        joint = "" if i == 0 else " -> " if t.parent == graph.tasks[i - 1].name else ", "
        out += joint + t.name
    return out or "(none)"


def _yaml(graph: TaskGraph) -> str:
    """The task graph as a one-line ``tasks:`` value of params.yaml."""
    return "[" + ", ".join(f"{{name: {t.name}, kind: {t.kind}" + (f", parent: {t.parent}}}" if t.parent else "}")
                           for t in graph.tasks) + "]"


def _spec(t: TaskSpec) -> str:
    return f"{t.kind}, " + (f"parent {t.parent}" if t.parent else "no parent")


def check_tasks(fmt: str, tasks: TaskGraph, source: str) -> None:
    """``tasks`` must be layout ``fmt``'s own task graph: a task without a label column in the layout cannot
    train, and a label column that is no task would be stored as a feature (a label leak).

    Raises ``ContractError(source, task or label, rule)`` naming the layout's tasks and how to set them.
    """
    own = _adapter(fmt).tasks
    fix = (f"`--format {fmt}` has the tasks {_chain(own)}: set params.yaml `tasks:` to {_yaml(own)} "
           f"(features.adapters.default_tasks('{fmt}')) or pass `funnelflow --params FILE` with them")
    want = {t.name: t for t in own.tasks}
    got = {t.name: t for t in tasks.tasks}
    for t in tasks.tasks:
        if t.name not in want:
            raise ContractError(source, t.column, f"label column of task '{t.name}' is missing: the layout has "
                                f"no such label; {fix}")
        if t != want[t.name]:
            raise ContractError(source, t.column, f"task '{t.name}' is ({_spec(t)}) in the pipeline but "
                                f"({_spec(want[t.name])}) in the layout; {fix}")
    for name in want:
        if name not in got:
            raise ContractError(source, name, f"label of the layout is no task of the pipeline (it would be "
                                f"stored as a feature); {fix}")


# ----------------------------------------------------------------------------- the streaming driver
class _Snapshots:
    """Emit an entity's profile row when the entity is new or its attributes changed (see docstring)."""

    def __init__(self):
        self.last: dict[int, int] = {}

    def emit_mask(self, keys: np.ndarray, attrs: pd.DataFrame) -> np.ndarray:
        h = _row_hash(attrs) if attrs.shape[1] else np.zeros(len(keys), np.uint64)
        order = np.argsort(keys, kind="stable")
        ks, hs = keys[order], h[order]
        same_prev = np.r_[False, ks[1:] == ks[:-1]]
        emit_sorted = same_prev & (hs != np.r_[np.uint64(0), hs[:-1]])
        first = np.flatnonzero(~same_prev)
        last = self.last
        emit_sorted[first] = [last.get(int(k)) != int(v) for k, v in zip(ks[first], hs[first], strict=True)]
        is_last = np.r_[ks[1:] != ks[:-1], True]
        last.update(zip(ks[is_last].tolist(), hs[is_last].tolist(), strict=True))
        mask = np.empty(len(keys), bool)
        mask[order] = emit_sorted
        return mask


class _Writer:
    """Append checked frames to one Parquet file per table (fixed schema from the first chunk)."""

    def __init__(self, path: Path):
        self.path, self.rows = path, 0
        self.writer: pq.ParquetWriter | None = None
        self.schema: pa.Schema | None = None
        self.columns: list[str] = []

    def write(self, df: pd.DataFrame) -> None:
        if self.writer is None:
            table = pa.Table.from_pandas(df, preserve_index=False)
            self.schema, self.columns = table.schema, list(df.columns)
            self.writer = pq.ParquetWriter(self.path, self.schema)
        elif not len(df):
            return
        else:
            table = pa.Table.from_pandas(df[self.columns], schema=self.schema, preserve_index=False)
        self.writer.write_table(table)
        self.rows += len(df)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _frames(conv: Converted, first_id: int, step: pd.Timedelta, user_snap: _Snapshots,
            item_snap: _Snapshots) -> FunnelDataset:
    n = len(conv.item_key)
    ids = np.arange(first_id, first_id + n, dtype=np.int64)
    step_us = int(step / pd.Timedelta(microseconds=1))
    ts = pd.to_datetime(EPOCH.value // 1000 + ids * step_us, unit="us", utc=True).astype("datetime64[us, UTC]")
    snap_ts = ts - pd.Timedelta(microseconds=step_us // 2)
    user_key = ids if conv.user_key is None else conv.user_key.astype(np.int64)
    imps = pd.DataFrame({"impression_id": ids, "event_timestamp": ts, "user_id": user_key,
                         "item_id": conv.item_key.astype(np.int64)})
    imps = pd.concat([imps, conv.context.reset_index(drop=True),
                      pd.DataFrame(conv.labels)], axis=1)
    umask = np.ones(n, bool) if conv.user_key is None else user_snap.emit_mask(user_key, conv.user_attrs)
    imask = item_snap.emit_mask(imps["item_id"].to_numpy(), conv.item_attrs)
    users = pd.concat([pd.DataFrame({"user_id": user_key[umask], "event_timestamp": snap_ts[umask]}),
                       conv.user_attrs.reset_index(drop=True)[umask].reset_index(drop=True)], axis=1)
    items = pd.concat([pd.DataFrame({"item_id": imps["item_id"].to_numpy()[imask],
                                     "event_timestamp": snap_ts[imask]}),
                       conv.item_attrs.reset_index(drop=True)[imask].reset_index(drop=True)], axis=1)
    return FunnelDataset(imps, users, items)


def _renamed(err: ContractError, file: str) -> ContractError:
    new = ContractError(file, err.column, err.rule)
    new.n_rows = err.n_rows
    new.args = (str(err).replace(err.file, file, 1),)
    return new


class _DayWriters:
    """One ``_Writer`` per (day, table) under a staging folder in the partitioned layout."""

    def __init__(self, root: Path):
        self.root = root
        self.writers: dict[tuple[str, str], _Writer] = {}

    def write(self, ds: FunnelDataset) -> None:
        for day, part in split_days(ds).items():
            for name, df in part.tables().items():
                if name == "impressions" or len(df):
                    if (day, name) not in self.writers:
                        (self.root / f"{DAY_PREFIX}{day}").mkdir(parents=True, exist_ok=True)
                        self.writers[day, name] = _Writer(self.root / f"{DAY_PREFIX}{day}" / f"{name}.parquet")
                    self.writers[day, name].write(df)

    def tables(self) -> dict[str, dict]:
        """Rows and columns of each table over all days."""
        out: dict[str, dict] = {}
        for (_, name), w in sorted(self.writers.items()):
            out.setdefault(name, {"rows": 0, "columns": w.columns})["rows"] += w.rows
        return out

    def close(self) -> None:
        for w in self.writers.values():
            w.close()


def _stream(adapter: Adapter, files: list[Path], tasks: TaskGraph, chunk_rows: int,
            writers: _DayWriters) -> dict[str, int]:
    """Convert, check and append every chunk of ``files``; returns the data rows per source file."""
    user_snap, item_snap = _Snapshots(), _Snapshots()
    rows_per_file: dict[str, int] = {}
    next_id = 0
    for file_no, path in enumerate(files):
        rows_per_file[str(path)] = 0
        for chunk in adapter.read(path, chunk_rows):
            if not len(chunk):
                continue
            conv = adapter.transform(chunk, str(path), file_no)
            ds = _frames(conv, next_id, adapter.step, user_snap, item_snap)
            try:
                ds = check_dataset(ds, tasks, source=str(path))
            except ContractError as err:  # name the source CSV, not the would-be Parquet table
                table = Path(err.file).stem
                raise _renamed(err, f"{path} (as {table})") from err
            writers.write(ds)
            next_id += len(chunk)
            rows_per_file[str(path)] += len(chunk)
    return rows_per_file


def convert(fmt: str, source: Path, raw_dir: Path, tasks: TaskGraph | None = None,
            chunk_rows: int = DEFAULT_CHUNK_ROWS, *, quarantine_dir: Path, new_lineage: str | None = None) -> dict:
    """Stream ``source`` (file or folder) of layout ``fmt`` into day partitions of the raw store ``raw_dir``.

    ``tasks`` is the pipeline's task graph (default: ``default_tasks(fmt)``); it must be the layout's own
    (``check_tasks``), and every chunk is checked against it with ``check_dataset``. The converted days go
    through ``features.contract.ingest`` (``quarantine_dir`` and ``new_lineage`` as there); a source that
    fails to convert stores nothing.
    """
    adapter = _adapter(fmt)
    tasks = adapter.tasks if tasks is None else tasks
    check_tasks(fmt, tasks, str(source))  # before any row is read
    files = source_files(Path(source), adapter.suffixes)
    t0 = time.perf_counter()
    with scratch_dir(raw_dir) as staging:  # removed on exit, and by the next step if this run dies
        writers = _DayWriters(staging)
        try:
            rows_per_file = _stream(adapter, files, tasks, chunk_rows, writers)
        finally:
            writers.close()
        rows = sum(rows_per_file.values())
        if rows == 0:
            raise ContractError(str(source), "-", "source has no data rows")
        seconds = time.perf_counter() - t0
        summary = {
            "tables": writers.tables(),
            "time_range": [EPOCH.isoformat(), (EPOCH + adapter.step * (rows - 1)).isoformat()],
            "source": str(source), "format": fmt, "files": rows_per_file,
            "synthesised": {"event_timestamp": f"{EPOCH.isoformat()} + impression_id * {adapter.step}",
                            "profile_snapshots": f"stamped {adapter.step / 2} before the first impression "
                                                 "carrying them"},
            "convert_seconds": round(seconds, 3), "rows_per_sec": round(rows / max(seconds, 1e-9)),
        }
        summary["ingest"] = ingest(staging, raw_dir, tasks, quarantine_dir, new_lineage, label=str(source))
    return summary
