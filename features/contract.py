"""The funnel dataset contract: load a user's dataset, check every rule, store it as the raw snapshot.

The layout is documented in docs/funnel-dataset.md (the public interface). Any rule broken stops ingestion with a
``ContractError`` that names the file, the column, the rule and a few offending rows; the raw snapshot
is written to a temporary folder and swapped in only once complete, so nothing partial is left behind.

``MissingInput`` is the error of every loader in ``features/`` whose input an earlier step writes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from models.atomic import atomic_dir
from models.tasks import TaskGraph

TABLES = {"impressions": "impression_id", "users": "user_id", "items": "item_id"}
MAX_SHOWN_ROWS = 5


class ContractError(ValueError):
    """Bad input: which file, column and rule, with a sample of the rows at fault."""

    def __init__(self, file: str, column: str, rule: str, rows: pd.DataFrame | None = None):
        self.file, self.column, self.rule = file, column, rule
        self.n_rows = 0 if rows is None else len(rows)
        msg = f"{file}: column '{column}': {rule}"
        if rows is not None and len(rows):
            msg += f" ({len(rows)} rows); first offending rows:\n{rows.head(MAX_SHOWN_ROWS).to_string()}"
        super().__init__(msg)
        self._args = (file, column, rule, rows)

    def __reduce__(self) -> tuple[type, tuple]:
        # Prefect may persist a failed task's exception: rebuild it from the constructor's arguments.
        return (type(self), self._args)


class MissingInput(FileNotFoundError):
    """An input that an earlier step writes is missing; the message names it and the command that makes it."""

    def __init__(self, path: Path | str, command: str):
        self.path, self.command = Path(path), command
        super().__init__(f"{path} is missing: run `funnelflow {command}` first")

    def __reduce__(self) -> tuple[type, tuple]:
        return (type(self), (self.path, self.command))


def require_input(path: Path | str, command: str) -> Path:
    """``path`` if it exists, else ``MissingInput`` naming ``command`` (the step that writes it)."""
    path = Path(path)
    if not path.exists():
        raise MissingInput(path, command)
    return path


def raw_table(raw_dir: Path | str, name: str) -> Path:
    """The Parquet file of table ``name`` (impressions, users, items) in the raw snapshot ``raw_dir``."""
    return require_input(Path(raw_dir) / f"{name}.parquet", "ingest")


@dataclass
class FunnelDataset:
    """The three tables of a dataset in the contract layout."""

    impressions: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"impressions": self.impressions, "users": self.users, "items": self.items}


def _table_path(root: Path, name: str) -> Path:
    for cand in (root / f"{name}.parquet", root / name):
        if cand.exists():
            return cand
    raise ContractError(str(root / f"{name}.parquet"), "-", "file (or folder of Parquet parts) is missing")


def read_dataset(root: Path | str) -> FunnelDataset:
    """Read the three tables of a dataset folder (each a Parquet file or a folder of parts)."""
    root = Path(root)
    if not root.is_dir():
        raise ContractError(str(root), "-", "dataset folder does not exist")
    frames = {}
    for name in TABLES:
        path = _table_path(root, name)
        try:
            frames[name] = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises many types for corrupt files
            raise ContractError(str(path), "-", f"not a readable Parquet file or folder ({exc})") from exc
    return FunnelDataset(**frames)


def _fail_if(mask: np.ndarray | pd.Series, df: pd.DataFrame, file: str, column: str, rule: str,
             show: list[str]) -> None:
    mask = np.asarray(mask, dtype=bool)
    if mask.any():
        raise ContractError(file, column, rule, df.loc[mask, [c for c in show if c in df.columns]])


def _check_key_and_time(df: pd.DataFrame, file: str, key: str) -> None:
    for col in (key, "event_timestamp"):
        if col not in df.columns:
            raise ContractError(file, col, "required column is missing")
    if not pd.api.types.is_integer_dtype(df[key]):
        raise ContractError(file, key, f"must be int64, found {df[key].dtype}")
    _fail_if(df[key].isna(), df, file, key, "must not be null", [key])
    ts = df["event_timestamp"]
    if not isinstance(ts.dtype, pd.DatetimeTZDtype) or str(ts.dtype.tz) not in ("UTC", "utc"):
        raise ContractError(file, "event_timestamp", f"must be a UTC timestamp (tz-aware), found {ts.dtype}")
    _fail_if(ts.isna(), df, file, "event_timestamp", "must not be null", [key, "event_timestamp"])


def _check_feature_columns(df: pd.DataFrame, file: str, reserved: set[str]) -> pd.DataFrame:
    """Other columns: int64 = categorical id, float64 = numeric. Narrower ints/floats are widened."""
    out = {}
    for col in df.columns:
        if col in reserved:
            continue
        dtype = df[col].dtype
        if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_integer_dtype(dtype):
            _fail_if(df[col].isna(), df, file, col, "categorical id must not be null", [col])
            out[col] = df[col].astype(np.int64)
        elif pd.api.types.is_float_dtype(dtype):
            out[col] = df[col].astype(np.float64)
        else:
            raise ContractError(file, col, f"must be int64 (categorical) or float64 (numeric), found {dtype}")
    return df.assign(**out) if out else df


def _check_labels(df: pd.DataFrame, file: str, tasks: TaskGraph) -> pd.DataFrame:
    out = {}
    for t in tasks.tasks:
        if t.column not in df.columns:
            raise ContractError(file, t.column, f"label column of task '{t.name}' is missing")
        y = df[t.column]
        _fail_if(y.isna(), df, file, t.column, "label must not be null", ["impression_id", t.column])
        if t.kind == "binary":
            if not (pd.api.types.is_integer_dtype(y) or pd.api.types.is_bool_dtype(y)):
                raise ContractError(file, t.column, f"binary label must be int8 0/1, found {y.dtype}")
            _fail_if(~y.isin([0, 1]), df, file, t.column, "binary label must be 0 or 1",
                     ["impression_id", t.column])
            out[t.column] = y.astype(np.int8)
        else:
            if not pd.api.types.is_numeric_dtype(y):
                raise ContractError(file, t.column, f"regression label must be float64, found {y.dtype}")
            _fail_if(y < 0, df, file, t.column, "value must not be negative", ["impression_id", t.column])
            out[t.column] = y.astype(np.float64)
    df = df.assign(**out)
    for t in tasks.tasks:
        if t.parent is None:
            continue
        rule = ("positive value without its parent step" if t.kind == "regression"
                else "positive step without its parent step")
        _fail_if((df[t.column] > 0) & (df[t.parent] == 0), df, file, t.column,
                 f"funnel rule: {rule} '{t.parent}'", ["impression_id", t.parent, t.column])
    return df


def check_dataset(ds: FunnelDataset, tasks: TaskGraph, source: str = "") -> FunnelDataset:
    """Every contract rule; returns the dataset with dtypes normalised (int64 ids, int8 labels...)."""
    checked = {}
    labels = set(tasks.names)
    for name, key in TABLES.items():
        df, file = ds.tables()[name], f"{source}/{name}.parquet" if source else f"{name}.parquet"
        keys = {key} | ({"user_id", "item_id"} if name == "impressions" else set())
        for k in sorted(keys - {key}):
            if k not in df.columns:
                raise ContractError(file, k, "required column is missing")
            if not pd.api.types.is_integer_dtype(df[k]):
                raise ContractError(file, k, f"must be int64, found {df[k].dtype}")
            _fail_if(df[k].isna(), df, file, k, "must not be null", [key, k])
        _check_key_and_time(df, file, key)
        if name == "impressions":
            dup = df[key].duplicated(keep=False)
            _fail_if(dup, df, file, key, "impression_id must be unique", [key, "event_timestamp"])
            df = _check_labels(df, file, tasks)
        else:
            dup = df.duplicated([key, "event_timestamp"], keep=False)
            _fail_if(dup, df, file, key, "one row per (key, event_timestamp)", [key, "event_timestamp"])
        reserved = keys | {"event_timestamp"} | (labels if name == "impressions" else set())
        df = _check_feature_columns(df, file, reserved)
        df = df.astype({k: np.int64 for k in keys}).astype({"event_timestamp": "datetime64[us, UTC]"})
        checked[name] = df.reset_index(drop=True)
    return FunnelDataset(**checked)


def write_dataset(ds: FunnelDataset, out_dir: Path | str, extra: dict | None = None) -> dict:
    """Write atomically: build in a sibling temp folder, then swap it in (old snapshot removed last)."""
    summary: dict = {"tables": {}, **(extra or {})}
    with atomic_dir(out_dir) as tmp:
        for name, df in ds.tables().items():
            df.to_parquet(tmp / f"{name}.parquet", index=False, coerce_timestamps="us",
                          allow_truncated_timestamps=False)
            summary["tables"][name] = {"rows": len(df), "columns": list(map(str, df.columns))}
        ts = ds.impressions["event_timestamp"]
        summary["time_range"] = [ts.min().isoformat(), ts.max().isoformat()]
        (tmp / "snapshot.json").write_text(json.dumps(summary, indent=2))
    return summary


def ingest(source: Path | str, raw_dir: Path | str, tasks: TaskGraph) -> dict:
    """Read a dataset in the contract layout, check it, and store it as the pipeline's raw snapshot."""
    ds = check_dataset(read_dataset(source), tasks, source=str(source))
    return write_dataset(ds, raw_dir, extra={"source": str(source)})
