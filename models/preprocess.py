"""Feature inputs: column inference, categorical vocabularies and numeric standardisation.

Fitted on the train split only and saved beside the model as JSON. Encoding is vectorised
(``np.searchsorted`` on sorted vocabularies), so 1M rows encode in well under a second.
Categorical code 0 is the OOV slot: ids seen fewer than ``min_count`` times on train, and ids
never seen, share it (so the model learns one "rare/new" embedding per column).

With ``numeric_buckets`` > 0 each numeric column is also a categorical one: its train quantile bucket
(code 1..k; 0 for a missing value), embedded beside the standardised value. Trees split a numeric
feature at any threshold; an MLP on one standardised input has to build each step (a capital-gain
cut-off, a price band) out of ReLUs, so the bucket embedding gives it those steps directly.
"""
from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel

from models.atomic import write_text
from models.tasks import TaskGraph

NON_FEATURE_COLUMNS = ("impression_id", "event_timestamp")


class FeatureColumns(BaseModel):
    """The model's input columns, in encoding order."""

    categorical: list[str]
    numeric: list[str]


def infer_feature_columns(df: pd.DataFrame, tasks: TaskGraph) -> FeatureColumns:
    """Integer columns are categorical (user_id and item_id included), float columns numeric.

    impression_id, event_timestamp and the task label columns are excluded; bool/other dtypes are
    ignored. Order follows the frame, so the same frame always gives the same layout.
    """
    skip = set(NON_FEATURE_COLUMNS) | {t.column for t in tasks.tasks}
    cat, num = [], []
    for name, dtype in df.dtypes.items():
        if name in skip or pd.api.types.is_bool_dtype(dtype):
            continue
        if pd.api.types.is_integer_dtype(dtype):
            cat.append(str(name))
        elif pd.api.types.is_float_dtype(dtype):
            num.append(str(name))
    return FeatureColumns(categorical=cat, numeric=num)


ENCODE_CHUNK_ROWS = 65_536
# Up to this many rows, ids are looked up cell by cell (~2 µs each) rather than column by column in numpy
# (~6 array operations, ~8 µs, per column): a live request's user row, 17 vs 82 µs over 9 columns.
CELL_ROWS = 4

Columns = Mapping[str, Any]
"""A live request's input columns by name, without a frame: numpy arrays or pandas (nullable) arrays,
all of one length. Encoded in one piece (a request is bounded); building a frame and selecting its
columns costs more than the model at a hundred rows."""


def column_values(x: Any, dtype: type, na: float | int) -> np.ndarray:
    """A Series, a pandas extension array or a numpy array as numpy ``dtype``, missing values as ``na``."""
    return x.to_numpy(dtype, na_value=na) if hasattr(x, "to_numpy") else np.asarray(x, dtype)


def _length(data: pd.DataFrame | Columns) -> int:
    return len(data) if isinstance(data, pd.DataFrame) else len(next(iter(data.values())))


def _row_chunks(data: pd.DataFrame | Columns) -> Iterator[tuple[int, pd.DataFrame | Columns]]:
    """(start, rows) slices of a frame. Encoding goes chunk by chunk: a float64 [N, F] block and its
    temporaries would peak at ~4x the float32 output (10 GB at 7M training rows). Columns are one chunk."""
    if not isinstance(data, pd.DataFrame) or len(data) <= ENCODE_CHUNK_ROWS:
        yield 0, data
        return
    for a in range(0, len(data), ENCODE_CHUNK_ROWS):
        yield a, data.iloc[a:a + ENCODE_CHUNK_ROWS]


def _block(data: pd.DataFrame | Columns, names: list[str], dtype: type, na: float | int) -> np.ndarray:
    """``names`` as one [N, len(names)] ``dtype`` array, missing values as ``na``: one block conversion
    per dtype for a frame (column by column costs ~30 µs per column there), a copy per column otherwise."""
    if isinstance(data, pd.DataFrame):
        # copy=True: under pandas 3's copy-on-write the block may be a read-only view (encode writes into it)
        return data[names].to_numpy(dtype, na_value=na, copy=True)
    out: np.ndarray = np.empty((_length(data), len(names)), dtype)
    for j, c in enumerate(names):
        out[:, j] = column_values(data[c], dtype, na)
    return out


def _code(vocab: np.ndarray, value: int) -> int:
    """One id's code in a sorted vocabulary: its position + 1, or 0 (OOV)."""
    pos = int(vocab.searchsorted(value))
    return pos + 1 if pos < len(vocab) and vocab[pos] == value else 0


def _quantile_edges(x: np.ndarray, k: int) -> list[float]:
    """The distinct inner quantile cut points splitting ``x``'s finite values into at most ``k`` buckets
    (a column with few distinct values, e.g. a 0/1 flag or mostly zeros, gets fewer)."""
    finite = x[np.isfinite(x)]
    if not len(finite):
        return []
    return np.unique(np.quantile(finite, np.linspace(0, 1, k + 1)[1:-1])).tolist()


@dataclass(frozen=True)
class Part:
    """Some of a preprocessor's columns (``Preprocessor.split``): their encoder, and where its outputs sit
    in the whole's: ``categorical`` (codes, then buckets) and ``numeric`` positions."""

    encoder: Preprocessor
    categorical: np.ndarray
    numeric: np.ndarray


class Preprocessor(BaseModel):
    """Fitted encoders. ``vocab[c]`` is the sorted array of kept ids; code = position + 1, OOV = 0."""

    columns: FeatureColumns
    min_count: int
    vocab: dict[str, list[int]]
    mean: dict[str, float]
    std: dict[str, float]
    # Non-negative columns on train (counts, sums, prices) are log1p'd before standardising: their
    # heavy tails otherwise give z-scores in the hundreds that dominate the first layer.
    log1p: list[str] = []
    # Quantile-bucket edges per numeric column (empty: not bucketed); codes follow the categorical ones.
    buckets: dict[str, list[float]] = {}

    @classmethod
    def fit(cls, df: pd.DataFrame, columns: FeatureColumns, min_count: int = 2,
            numeric_buckets: int = 0) -> Preprocessor:
        vocab: dict[str, list[int]] = {}
        for c in columns.categorical:
            x = df[c].dropna().to_numpy(np.int64)
            ids, counts = np.unique(x, return_counts=True)  # sorted ids
            vocab[c] = ids[counts >= min_count].tolist()
        mean, std, logged = {}, {}, []
        for c in columns.numeric:
            x = df[c].to_numpy(np.float64)
            if np.isfinite(x).any() and np.nanmin(x) >= 0:
                logged.append(c)
                x = np.log1p(x)
            m, s = np.nanmean(x) if np.isfinite(x).any() else 0.0, np.nanstd(x) if np.isfinite(x).any() else 1.0
            mean[c], std[c] = float(m), float(s) if s > 1e-12 else 1.0  # constant column -> scale 1
        buckets = {c: _quantile_edges(df[c].to_numpy(np.float64), numeric_buckets)
                   for c in columns.numeric} if numeric_buckets else {}
        return cls(columns=columns, min_count=min_count, vocab=vocab, mean=mean, std=std, log1p=logged,
                   buckets=buckets)

    @property
    def cardinalities(self) -> list[int]:
        """Embedding rows per categorical column (vocabulary + the OOV slot), then per bucketed numeric
        column (its buckets + the missing slot)."""
        return ([len(self.vocab[c]) + 1 for c in self.columns.categorical]
                + [len(e) + 2 for e in self.buckets.values()])

    @cached_property
    def _arrays(self) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
        """Vocabularies and normalisation as arrays, built once (not per call: at batch 1 that
        rebuild cost more than the model)."""
        num = self.columns.numeric
        return ([np.asarray(self.vocab[c], dtype=np.int64) for c in self.columns.categorical],
                np.array([self.mean[c] for c in num]), np.array([self.std[c] for c in num]),
                np.array([c in self.log1p for c in num], dtype=bool),
                [np.asarray(e, dtype=np.float64) for e in self.buckets.values()])

    def encode_categorical(self, data: pd.DataFrame | Columns) -> np.ndarray:
        """Codes [N, len(cardinalities)]: the categorical columns', then the numeric buckets'."""
        n_cat = len(self.columns.categorical)
        out = np.zeros((_length(data), n_cat + len(self.buckets)), dtype=np.int64)
        for a, chunk in _row_chunks(data):
            # a missing id (nullable Int64) -> a value no vocabulary holds -> OOV
            x = _block(chunk, self.columns.categorical, np.int64, -(2**62))
            if len(x) <= CELL_ROWS:
                for r, row in enumerate(x.tolist(), start=a):
                    out[r, :n_cat] = [_code(v, i) for v, i in zip(self._arrays[0], row, strict=True)]
            else:
                for j, v in enumerate(self._arrays[0]):
                    if len(v):
                        pos = np.minimum(np.searchsorted(v, x[:, j]), len(v) - 1)
                        out[a:a + len(x), j] = np.where(v[pos] == x[:, j], pos + 1, 0)
            for j, (c, edges) in enumerate(zip(self.buckets, self._arrays[4], strict=True), start=n_cat):
                x_num = column_values(chunk[c], np.float64, np.nan)
                code = np.searchsorted(edges, x_num, side="right") + 1
                out[a:a + len(x_num), j] = np.where(np.isnan(x_num), 0, code)
        return out

    def encode_numeric(self, data: pd.DataFrame | Columns) -> np.ndarray:
        _, mean, std, logged, _ = self._arrays
        out = np.empty((_length(data), len(self.columns.numeric)), dtype=np.float32)
        for a, chunk in _row_chunks(data):
            x = _block(chunk, self.columns.numeric, np.float64, np.nan)
            if logged.any():  # clip at 0 first: a negative value never seen on train must not give NaN
                x[:, logged] = np.log1p(np.maximum(x[:, logged], 0.0))
            z = (x - mean) / std
            np.copyto(z, 0.0, where=~np.isfinite(z))  # NaN -> the mean; +-inf too (nan_to_num: 10 µs more per call)
            out[a:a + len(x)] = z
        return out

    def encode(self, data: pd.DataFrame | Columns) -> tuple[np.ndarray, np.ndarray]:
        """(categorical codes int64 [N, C], standardised numeric float32 [N, F]) of a frame or of Columns."""
        return self.encode_categorical(data), self.encode_numeric(data)

    def split(self, groups: Sequence[Collection[str]]) -> list[Part]:
        """A Part per group of column names, every input column in exactly one (the first group naming it).

        Encoding goes column by column, so a part encodes its rows as the whole would: rows that share a
        part's values (a request's user and context, an item in many requests) are encoded once.

        Raises:
            ValueError: an input column in no group (one line naming them).
        """
        cols = self.columns
        left = [*cols.categorical, *cols.numeric]
        bucketed = list(self.buckets)
        parts = []
        for group in groups:
            mine = [c for c in left if c in group]
            left = [c for c in left if c not in group]
            cat, num = [c for c in cols.categorical if c in mine], [c for c in cols.numeric if c in mine]
            buckets = [c for c in bucketed if c in mine]
            encoder = Preprocessor(
                columns=FeatureColumns(categorical=cat, numeric=num), min_count=self.min_count,
                vocab={c: self.vocab[c] for c in cat}, mean={c: self.mean[c] for c in num},
                std={c: self.std[c] for c in num}, log1p=[c for c in self.log1p if c in mine],
                buckets={c: self.buckets[c] for c in buckets})
            positions = [cols.categorical.index(c) for c in cat] + [len(cols.categorical) + bucketed.index(c)
                                                                    for c in buckets]
            parts.append(Part(encoder, np.array(positions, np.intp), np.array([cols.numeric.index(c) for c in num],
                                                                               np.intp)))
        if left:
            raise ValueError(f"input columns in no part: {left}")
        return parts

    def join(self, n: int, encoded: Sequence[tuple[Part, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """The whole's (categorical, numeric) inputs of ``n`` rows from its parts' encodings (``split``),
        each of ``n`` rows or of one, the same for every row."""
        cat = np.empty((n, len(self.columns.categorical) + len(self.buckets)), np.int64)
        num = np.empty((n, len(self.columns.numeric)), np.float32)
        for part, part_cat, part_num in encoded:
            cat[:, part.categorical], num[:, part.numeric] = part_cat, part_num
        return cat, num

    def save(self, path: str | Path) -> None:
        write_text(path, self.model_dump_json())

    @classmethod
    def load(cls, path: str | Path) -> Preprocessor:
        return cls.model_validate(json.loads(Path(path).read_text()))
