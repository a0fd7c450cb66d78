"""The funnel dataset contract: load a user's dataset, check every rule, store it as day partitions.

The layout is documented in docs/funnel-dataset.md (the public interface). A source is a flat dataset
(``impressions/users/items.parquet``, split into days by impression date on ingest) or day partitions
``dt=YYYY-MM-DD/{impressions,users,items}.parquet``. Any rule broken names the file, the column, the
rule and a few offending rows (``ContractError``).

The raw store (``data/raw``) holds one folder per day plus ``partitions.json`` (lineage, each day's
content hash and source, the quarantined days). ``ingest`` is partition-wise: an unchanged day is not
rewritten, a changed day replaces that day only, and a day that breaks the contract goes to the
quarantine folder with its reason while the stored day (the last good state) keeps serving.

``MissingInput`` is the error of every loader in ``features/`` whose input an earlier step writes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from models.atomic import atomic_dir, write_json, write_text
from models.tasks import TaskGraph

TABLES = {"impressions": "impression_id", "users": "user_id", "items": "item_id"}
PROFILES = ("users", "items")  # tables a day partition may leave out (no profile changes that day)
MAX_SHOWN_ROWS = 5
PARTITIONS = "partitions.json"
QUARANTINED = "quarantined.json"  # in the quarantine folder: each bad day's reason and content hash
# Plausible impression and profile times: 1970 is a null sentinel, a far-future time a unit or clock error.
EARLIEST = pd.Timestamp("2000-01-01", tz="UTC")
FUTURE_SLACK = pd.Timedelta(days=1)
# Letters, digits, single underscores: Feast names a feature <view>__<column>, so "__" would be ambiguous.
_NAME = re.compile(r"[A-Za-z0-9]+(_[A-Za-z0-9]+)*_?")
DAY_PREFIX = "dt="
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
log = logging.getLogger("funnelflow")


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


class PartitionsQuarantined(ValueError):
    """Some day partitions broke the contract and were quarantined (the good days were stored)."""

    def __init__(self, reasons: dict[str, str], quarantine_dir: Path | str):
        self.reasons, self.quarantine_dir = dict(reasons), Path(quarantine_dir)
        super().__init__("\n".join(f"day {day} quarantined in {self.quarantine_dir / (DAY_PREFIX + day)}: {why}"
                                   for day, why in sorted(self.reasons.items())))

    def __reduce__(self) -> tuple[type, tuple]:
        return (type(self), (self.reasons, self.quarantine_dir))


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
    raise ContractError(str(root / f"{name}.parquet"), "-", "file (or folder of Parquet parts) is missing: add it")


def read_table(path: Path) -> pd.DataFrame:
    """A Parquet file or folder of parts; ``ContractError`` if unreadable."""
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types for corrupt files
        raise ContractError(str(path), "-", f"not a readable Parquet file or folder ({exc})") from exc


def read_dataset(root: Path | str) -> FunnelDataset:
    """Read the three tables of a flat dataset folder (each a Parquet file or a folder of parts)."""
    root = Path(root)
    if not root.is_dir():
        raise ContractError(str(root), "-", "dataset folder does not exist")
    return FunnelDataset(**{name: read_table(_table_path(root, name)) for name in TABLES})


def _fail_if(mask: np.ndarray | pd.Series, df: pd.DataFrame, file: str, column: str, rule: str,
             show: list[str]) -> None:
    mask = np.asarray(mask, dtype=bool)
    if mask.any():
        raise ContractError(file, column, rule, df.loc[mask, [c for c in show if c in df.columns]])


def _check_names(df: pd.DataFrame, file: str) -> None:
    dup = df.columns[df.columns.duplicated()]
    if len(dup):
        raise ContractError(file, str(dup[0]), "column names must be unique: drop or rename the copies")
    for col in df.columns:
        if not isinstance(col, str) or not _NAME.fullmatch(col):
            raise ContractError(file, str(col), "column name must be letters, digits and single underscores "
                                "('__' is reserved for Feast's <view>__<feature> names): rename the column")


def _check_key_and_time(df: pd.DataFrame, file: str, key: str) -> None:
    for col in (key, "event_timestamp"):
        if col not in df.columns:
            raise ContractError(file, col, "required column is missing: add it")
    if not pd.api.types.is_integer_dtype(df[key]):
        raise ContractError(file, key, f"must be int64, found {df[key].dtype}: cast the ids to int64")
    _fail_if(df[key].isna(), df, file, key, "must not be null: drop those rows", [key])
    ts = df["event_timestamp"]
    if not isinstance(ts.dtype, pd.DatetimeTZDtype) or str(ts.dtype.tz) not in ("UTC", "utc"):
        raise ContractError(file, "event_timestamp", f"must be a UTC timestamp (tz-aware), found {ts.dtype}: "
                            "localise or convert it to UTC")
    _fail_if(ts.isna(), df, file, "event_timestamp", "must not be null: drop those rows", [key, "event_timestamp"])
    if ts.dtype.unit == "ns":  # only nanosecond timestamps can hold sub-microsecond parts (0.26 s per 10M rows)
        _fail_if(ts.dt.nanosecond != 0, df, file, "event_timestamp",
                 "sub-microsecond precision would be lost: round the timestamps to microseconds",
                 [key, "event_timestamp"])
    latest = pd.Timestamp.now(tz="UTC") + FUTURE_SLACK
    _fail_if((ts < EARLIEST) | (ts > latest), df, file, "event_timestamp",
             f"must lie between {EARLIEST:%Y-%m-%d} and tomorrow (UTC): 1970 or a far-future time is a null "
             "sentinel or a unit error; fix or drop those rows", [key, "event_timestamp"])


def _check_feature_columns(df: pd.DataFrame, file: str, reserved: set[str]) -> pd.DataFrame:
    """Other columns: int64 = categorical id, float64 = numeric. Narrower ints/floats are widened."""
    out = {}
    for col in df.columns:
        if col in reserved:
            continue
        dtype = df[col].dtype
        if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_integer_dtype(dtype):
            _fail_if(df[col].isna(), df, file, col,
                     "categorical id must not be null: fill an explicit unknown id (e.g. -1)", [col])
            out[col] = df[col].astype(np.int64)
        elif pd.api.types.is_float_dtype(dtype):
            _fail_if(np.isinf(df[col].to_numpy(np.float64)), df, file, col,
                     "numeric value must be finite: replace inf with null (missing) or a finite value", [col])
            out[col] = df[col].astype(np.float64)
        else:
            raise ContractError(file, col, f"must be int64 (categorical) or float64 (numeric), found {dtype}: "
                                                 "cast or drop the column")
    return df.assign(**out) if out else df


def _check_labels(df: pd.DataFrame, file: str, tasks: TaskGraph) -> pd.DataFrame:
    out = {}
    for t in tasks.tasks:
        if t.column not in df.columns:
            raise ContractError(file, t.column, f"label column of task '{t.name}' is missing: add it, or change "
                                "params.yaml tasks")
        y = df[t.column]
        _fail_if(y.isna(), df, file, t.column, "label must not be null: drop unlabelled rows",
                 ["impression_id", t.column])
        if t.kind == "binary":
            if not (pd.api.types.is_integer_dtype(y) or pd.api.types.is_bool_dtype(y)):
                raise ContractError(file, t.column, f"binary label must be int8 0/1, found {y.dtype}: map it to 0/1")
            _fail_if(~y.isin([0, 1]), df, file, t.column, "binary label must be 0 or 1: map it to 0/1",
                     ["impression_id", t.column])
            out[t.column] = y.astype(np.int8)
        else:
            if not pd.api.types.is_numeric_dtype(y):
                raise ContractError(file, t.column, f"regression label must be float64, found {y.dtype}: cast it")
            _fail_if(y < 0, df, file, t.column, "value must not be negative: an amount is >= 0",
                     ["impression_id", t.column])
            _fail_if(~np.isfinite(y.to_numpy(np.float64)), df, file, t.column, "value must be finite (inf found)",
                     ["impression_id", t.column])
            out[t.column] = y.astype(np.float64)
    df = df.assign(**out)
    for t in tasks.tasks:
        if t.parent is None:
            continue
        rule = ("positive value without its parent step" if t.kind == "regression"
                else "positive step without its parent step")
        _fail_if((df[t.column] > 0) & (df[t.parent] == 0), df, file, t.column,
                 f"funnel rule: {rule} '{t.parent}': fix the labels (the parent step is 1 wherever this one is "
                 "positive)", ["impression_id", t.parent, t.column])
    return df


def check_table(name: str, df: pd.DataFrame, tasks: TaskGraph | None, file: str) -> pd.DataFrame:
    """Every contract rule of one table; returns it with dtypes normalised (int64 ids, int8 labels...).

    ``tasks`` None: impressions to score, without labels (``check_scoring_input``).
    """
    key = TABLES[name]
    keys = {key} | ({"user_id", "item_id"} if name == "impressions" else set())
    _check_names(df, file)
    for k in sorted(keys - {key}):
        if k not in df.columns:
            raise ContractError(file, k, "required column is missing: add it")
        if not pd.api.types.is_integer_dtype(df[k]):
            raise ContractError(file, k, f"must be int64, found {df[k].dtype}: cast the ids to int64")
        _fail_if(df[k].isna(), df, file, k, "must not be null: drop those rows", [key, k])
    _check_key_and_time(df, file, key)
    labels = set(tasks.names) if name == "impressions" and tasks is not None else set()
    if name == "impressions":
        dup = df[key].duplicated(keep=False)
        _fail_if(dup, df, file, key, "impression_id must be unique: drop the duplicates", [key, "event_timestamp"])
        if tasks is not None:
            df = _check_labels(df, file, tasks)
    else:
        dup = df.duplicated([key, "event_timestamp"], keep=False)
        _fail_if(dup, df, file, key, "one row per (key, event_timestamp): drop the duplicates",
                 [key, "event_timestamp"])
    df = _check_feature_columns(df, file, keys | {"event_timestamp"} | labels)
    df = df.astype({k: np.int64 for k in keys}).astype({"event_timestamp": "datetime64[us, UTC]"})
    return df.reset_index(drop=True)


def check_dataset(ds: FunnelDataset, tasks: TaskGraph, source: str = "") -> FunnelDataset:
    """Every contract rule; returns the dataset with dtypes normalised (int64 ids, int8 labels...)."""
    return FunnelDataset(**{name: check_table(name, df, tasks, f"{source}/{name}.parquet" if source else
                                              f"{name}.parquet") for name, df in ds.tables().items()})


def check_scoring_input(df: pd.DataFrame, file: str, categorical: Sequence[str], numeric: Sequence[str]
                        ) -> pd.DataFrame:
    """Impressions to score: the impressions rules without labels, at least one row, and the context
    columns the model reads (``categorical``: int64 ids, ``numeric``: float64); other columns go."""
    if df.empty:
        raise ContractError(file, "-", "no impressions to score: pass a file with at least one row")
    keys = ["impression_id", "event_timestamp", "user_id", "item_id"]
    context = [c for c in dict.fromkeys([*categorical, *numeric]) if c not in keys]
    for col in [*keys, *context]:
        if col not in df.columns:
            raise ContractError(file, col, "required column is missing (the champion reads it): add it")
    for col in categorical:
        if col in context and not pd.api.types.is_integer_dtype(df[col]):
            raise ContractError(file, col, f"must be int64 without nulls (a categorical id the champion reads), "
                                f"found {df[col].dtype}")
    return check_table("impressions", df[[*keys, *context]], None, file)


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    df.to_parquet(path, index=False, coerce_timestamps="us", allow_truncated_timestamps=False)


def write_dataset(ds: FunnelDataset, out_dir: Path | str, extra: dict | None = None) -> dict:
    """Write a flat dataset atomically: build in a sibling temp folder, then swap it in."""
    summary: dict = {"tables": {}, **(extra or {})}
    with atomic_dir(out_dir) as tmp:
        for name, df in ds.tables().items():
            _write_parquet(df, tmp / f"{name}.parquet")
            summary["tables"][name] = {"rows": len(df), "columns": list(map(str, df.columns))}
        ts = ds.impressions["event_timestamp"]
        summary["time_range"] = [ts.min().isoformat(), ts.max().isoformat()]
        (tmp / "dataset.json").write_text(json.dumps(summary, indent=2))
    return summary


# --- days -------------------------------------------------------------------------------------------

def day_of(ts: pd.Series) -> pd.Series:
    """The UTC day ("YYYY-MM-DD") of each timestamp (formatted once per distinct day: strftime per row is slow)."""
    codes, days = pd.factorize(ts.dt.tz_convert("UTC").dt.floor("D"))
    names = np.array([d.strftime("%Y-%m-%d") for d in days] or [""], dtype=object)
    return pd.Series(names[codes], index=ts.index)


def split_days(ds: FunnelDataset) -> dict[str, FunnelDataset]:
    """A flat dataset as day partitions: impressions by their date; a profile row goes to the latest
    impression day on or before its date (rows before the first day go to the first day)."""
    imp_day = day_of(ds.impressions["event_timestamp"])
    days = sorted(imp_day.unique())
    out = {d: {"impressions": ds.impressions[(imp_day == d).to_numpy()].reset_index(drop=True)} for d in days}
    for name in PROFILES:
        df = ds.tables()[name]
        pos = np.searchsorted(np.array(days), day_of(df["event_timestamp"]).to_numpy(), side="right") - 1
        for i, d in enumerate(days):
            out[d][name] = df[np.maximum(pos, 0) == i].reset_index(drop=True)
    return {d: FunnelDataset(**t) for d, t in out.items()}


def write_partitioned(ds: FunnelDataset, out_dir: Path | str, extra: dict | None = None) -> dict:
    """Write a dataset as day partitions (``dt=YYYY-MM-DD/``, see ``split_days``), swapped in whole."""
    parts = split_days(ds)
    days = sorted(parts)
    summary: dict = {"days": [days[0], days[-1]] if days else [], "partitions": len(days), "rows": {},
                     **(extra or {})}
    with atomic_dir(out_dir) as tmp:
        for d in days:
            folder = tmp / f"{DAY_PREFIX}{d}"
            folder.mkdir()
            for name, df in parts[d].tables().items():
                if name == "impressions" or len(df):
                    _write_parquet(df, folder / f"{name}.parquet")
                    summary["rows"][name] = summary["rows"].get(name, 0) + len(df)
        (tmp / "dataset.json").write_text(json.dumps(summary, indent=2))
    return summary


@dataclass
class Partition:
    """One day of a source: its files (a partitioned source) or its frames (a flat one split by day)."""

    day: str
    sha256: str
    files: dict[str, Path] = field(default_factory=dict)
    frames: dict[str, pd.DataFrame] | None = None

    def load(self) -> dict[str, pd.DataFrame]:
        """The day's tables (profiles absent that day are left out)."""
        if self.frames is None:
            self.frames = {name: read_table(path) for name, path in self.files.items()}
        return self.frames


def _files_hash(files: dict[str, Path]) -> str:
    h = hashlib.sha256()
    for name, path in sorted(files.items()):
        h.update(name.encode())
        parts = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
        for p in parts:
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def _frames_hash(frames: dict[str, pd.DataFrame]) -> str:
    h = hashlib.sha256()
    for name, df in sorted(frames.items()):
        h.update(f"{name}:{list(map(str, df.columns))}:{list(map(str, df.dtypes))}".encode())
        h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()


def _day_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(DAY_PREFIX))


def source_partitions(source: Path | str) -> list[Partition]:
    """The day partitions of a source folder, partitioned (``dt=YYYY-MM-DD/``) or flat (split by day)."""
    root = Path(source)
    if not root.is_dir():
        raise ContractError(str(root), "-", "dataset folder does not exist")
    folders = _day_folders(root)
    if not folders:
        ds = read_dataset(root)
        for name, df in ds.tables().items():  # the day split needs valid keys and times
            _check_key_and_time(df, str(root / f"{name}.parquet"), TABLES[name])
        return [Partition(d, _frames_hash(p.tables()), frames=p.tables()) for d, p in split_days(ds).items()]
    out = []
    for folder in folders:
        day = folder.name.removeprefix(DAY_PREFIX)
        if not _DAY.match(day):
            raise ContractError(str(folder), "-", "a partition folder must be named dt=YYYY-MM-DD")
        files = {name: p for name in TABLES for p in (folder / f"{name}.parquet", folder / name) if p.exists()}
        out.append(Partition(day, _files_hash(files), files=files))
    return out


@dataclass(frozen=True)
class StoredDays:
    """What a new day must agree with: the stored days' schemas, the impression ids of the other stored
    days, and the profile keys (users, items) of the stored days before it."""

    schemas: dict[str, pa.Schema]
    impression_ids: np.ndarray
    profile_keys: dict[str, np.ndarray]


def check_partition(day: str, frames: dict[str, pd.DataFrame], tasks: TaskGraph, source: str,
                    stored: StoredDays) -> dict[str, pd.DataFrame]:
    """The contract on one day: every table's rules, impressions on that day only, at least one
    impression, impression ids not used by another stored day, every user and item known by that day,
    and the stored days' columns."""
    where = f"{source}/{DAY_PREFIX}{day}"
    if "impressions" not in frames:
        raise ContractError(f"{where}/impressions.parquet", "-", "file is missing (a day needs its impressions)")
    checked = {name: check_table(name, df, tasks, f"{where}/{name}.parquet") for name, df in frames.items()}
    imps, file = checked["impressions"], f"{where}/impressions.parquet"
    if imps.empty:
        raise ContractError(file, "-", "no impressions: drop the day's folder until its data has arrived")
    _fail_if(day_of(imps["event_timestamp"]) != day, imps, file, "event_timestamp",
             f"impressions of partition {DAY_PREFIX}{day} must fall on {day} (UTC): move them to their day's "
             "partition", ["impression_id", "event_timestamp"])
    _fail_if(np.isin(imps["impression_id"].to_numpy(), stored.impression_ids), imps, file, "impression_id",
             "impression_id already used by another stored day", ["impression_id", "event_timestamp"])
    for name in PROFILES:
        key = TABLES[name]
        known = [stored.profile_keys.get(name, np.empty(0, np.int64))]
        if name in checked:
            known.append(checked[name][key].to_numpy())
        _fail_if(~np.isin(imps[key].to_numpy(), np.concatenate(known)), imps, file, key,
                 f"unknown {key}: no row in {name}.parquet of this day or an earlier stored day; send the "
                 f"profile rows first", ["impression_id", "event_timestamp", key])
    for name, df in checked.items():
        if name in stored.schemas:
            _check_schema(_schema(df), stored.schemas[name], f"{where}/{name}.parquet")
    return checked


def _check_schema(got: pa.Schema, want: pa.Schema, file: str) -> None:
    """The stored days' columns and types, the first difference named."""
    if got.equals(want):
        return
    have, need = dict(zip(got.names, got.types, strict=True)), dict(zip(want.names, want.types, strict=True))
    new_lineage = "ingest with --new-lineage to start a new data set with these columns"
    for col, typ in need.items():
        if col not in have:
            raise ContractError(file, col, f"column of the stored days is missing: fix the day, or {new_lineage}")
        if have[col] != typ:
            raise ContractError(file, col, f"type {have[col]} differs from the stored days' {typ}: fix the day, or "
                                f"{new_lineage}")
    extra = [c for c in have if c not in need]
    if extra:
        raise ContractError(file, extra[0], f"column is not in the stored days: drop it, or {new_lineage}")
    raise ContractError(file, "-", f"columns are in another order than the stored days' ({_cols(want)}): reorder them")


def _schema(df: pd.DataFrame) -> pa.Schema:
    return pa.Schema.from_pandas(df, preserve_index=False).remove_metadata()


def _cols(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name}:{f.type}" for f in schema)


# --- the raw store ------------------------------------------------------------------------------------

def _day_dir(raw_dir: Path | str, day: str) -> Path:
    return Path(raw_dir) / f"{DAY_PREFIX}{day}"


def raw_manifest(raw_dir: Path | str) -> dict:
    """partitions.json of the raw store: lineage and stored days (empty before ingest)."""
    path = Path(raw_dir) / PARTITIONS
    if not path.exists():
        return {"lineage": None, "partitions": {}}
    return json.loads(path.read_text())


def raw_days(raw_dir: Path | str) -> list[str]:
    """The stored days, sorted ("YYYY-MM-DD")."""
    return sorted(raw_manifest(raw_dir)["partitions"])


def lineage(raw_dir: Path | str) -> dict:
    """The raw store's lineage: ``{"id", "started_at", "reason"}``."""
    found = raw_manifest(raw_dir)["lineage"]
    if found is None:
        raise MissingInput(Path(raw_dir) / PARTITIONS, "ingest")
    return found


def read_raw(raw_dir: Path | str, name: str, days: Sequence[str] | None = None,
             columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Table ``name`` of the raw store: its partitions (all, or ``days``) concatenated in day order."""
    stored = raw_days(raw_dir)
    if not stored:
        raise MissingInput(Path(raw_dir) / PARTITIONS, "ingest")
    unknown = sorted(set(days or ()) - set(stored))
    if unknown:
        raise ValueError(f"{raw_dir}: days {', '.join(unknown)} are not in the raw store (stored: {stored[0]} to "
                         f"{stored[-1]})")
    wanted = sorted(stored if days is None else days)
    files = [f for d in wanted if (f := _day_dir(raw_dir, d) / f"{name}.parquet").exists()]
    if not files:
        key = TABLES[name]
        return pd.DataFrame({key: pd.Series(dtype=np.int64),
                             "event_timestamp": pd.Series(dtype="datetime64[us, UTC]")})
    cols = list(columns) if columns is not None else None
    table = pa.concat_tables([pq.read_table(f, columns=cols) for f in files])
    return table.to_pandas()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _new_lineage(reason: str) -> dict:
    started = _now()
    return {"id": f"{started[:10]}-{uuid.uuid4().hex[:8]}", "started_at": started, "reason": reason}


class _Store:
    """The raw store during one ingest: what is stored, the schemas and keys a new day must agree with."""

    def __init__(self, raw_dir: Path, manifest: dict):
        self.raw_dir, self.manifest = raw_dir, manifest
        self._schemas: dict[str, pa.Schema] | None = None
        self._keys: dict[str, dict[str, np.ndarray]] | None = None

    def schemas(self) -> dict[str, pa.Schema]:
        if self._schemas is None:
            self._schemas = {}
            for day in sorted(self.manifest["partitions"]):
                for name in TABLES:
                    f = _day_dir(self.raw_dir, day) / f"{name}.parquet"
                    if name not in self._schemas and f.exists():
                        self._schemas[name] = pq.read_schema(f).remove_metadata()
        return self._schemas

    def keys(self) -> dict[str, dict[str, np.ndarray]]:
        """Per stored day, the key column of each table it holds (impression, user and item ids)."""
        if self._keys is None:
            self._keys = {}
            for day in self.manifest["partitions"]:
                files = {name: _day_dir(self.raw_dir, day) / f"{name}.parquet" for name in TABLES}
                self._keys[day] = {name: pq.read_table(f, columns=[TABLES[name]])[TABLES[name]].to_numpy()
                                   for name, f in files.items() if f.exists()}
        return self._keys

    def agreed(self, day: str) -> StoredDays:
        """What ``day`` must agree with (the stored ``day`` itself left out: the new one replaces it)."""
        keys = self.keys()
        return StoredDays(self.schemas(), _concat([k["impressions"] for d, k in keys.items() if d != day]),
                          {name: _concat([k[name] for d, k in keys.items() if d < day and name in k])
                           for name in PROFILES})

    def store(self, day: str, tables: dict[str, pd.DataFrame], record: dict) -> None:
        kept = {name: df for name, df in tables.items() if name == "impressions" or len(df)}
        with atomic_dir(_day_dir(self.raw_dir, day)) as tmp:
            for name, df in kept.items():
                _write_parquet(df, tmp / f"{name}.parquet")
        schemas = self.schemas()
        for name, df in kept.items():
            schemas.setdefault(name, _schema(df))
        self.keys()[day] = {name: df[TABLES[name]].to_numpy() for name, df in kept.items()}
        self.manifest["partitions"][day] = record


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.empty(0, np.int64)


def _quarantine(part: Partition, quarantine_dir: Path, reason: str) -> None:
    """Keep the bad day's input and its reason (the stored day, if any, is left as it was)."""
    with atomic_dir(quarantine_dir / f"{DAY_PREFIX}{part.day}") as tmp:
        if part.files:
            for path in part.files.values():
                (shutil.copytree if path.is_dir() else shutil.copy2)(path, tmp / path.name)
        else:
            for name, df in (part.frames or {}).items():
                df.to_parquet(tmp / f"{name}.parquet", index=False)
        write_text(tmp / "reason.txt", reason + "\n")


def quarantine_records(quarantine_dir: Path | str) -> dict[str, dict]:
    """The quarantined days: per day its reason, content hash, source and time (empty when none)."""
    path = Path(quarantine_dir) / QUARANTINED
    return json.loads(path.read_text()) if path.exists() else {}


def ingest(source: Path | str, raw_dir: Path | str, tasks: TaskGraph, quarantine_dir: Path | str,
           new_lineage: str | None = None, label: str | None = None) -> dict:
    """Add a source's day partitions to the raw store, each checked against the contract on its own.

    Idempotent: a day whose content hash is stored is "unchanged" (not rewritten); a changed day
    replaces that day only. A bad day goes to ``quarantine_dir/dt=DAY/`` with ``reason.txt`` (recorded in
    ``quarantine_dir/quarantined.json``, not in the raw store) and the stored day stays;
    ``PartitionsQuarantined`` is raised after the good days are stored (a day quarantined before with
    the same content is skipped with a warning). ``new_lineage`` (a reason) replaces the store with the
    source's days, as does a first ingest into an empty store; if no day is good, the store is left as
    it was. ``label`` is the source name recorded (default: ``source``).
    """
    raw_dir, quarantine_dir, label = Path(raw_dir), Path(quarantine_dir), label or str(source)
    parts = source_partitions(source)
    if not parts:
        raise ContractError(str(source), "impressions", "source has no impressions")
    old, old_bad = raw_manifest(raw_dir), quarantine_records(quarantine_dir)
    fresh = new_lineage is not None or old["lineage"] is None
    manifest = ({"lineage": _new_lineage(new_lineage or f"first ingest of {label}"), "partitions": {}}
                if fresh else json.loads(json.dumps(old)))
    bad_days = json.loads(json.dumps(old_bad))
    store = _Store(raw_dir, manifest)
    result: dict = {"added": [], "replaced": [], "unchanged": [], "quarantined": {}}
    for part in parts:
        stored, bad = manifest["partitions"].get(part.day), bad_days.get(part.day)
        if stored is not None and stored["sha256"] == part.sha256:
            result["unchanged"].append(part.day)
            bad_days.pop(part.day, None)  # the source is back to the stored (good) content
            continue
        if not fresh and bad is not None and bad["sha256"] == part.sha256:
            log.warning("day %s: same content as when it was quarantined (%s); skipped", part.day, bad["reason"])
            continue
        try:
            tables = check_partition(part.day, part.load(), tasks, label, store.agreed(part.day))
        except ContractError as err:
            reason = " | ".join(" ".join(line.split()) for line in str(err).splitlines() if line.strip())
            _quarantine(part, quarantine_dir, str(err))
            bad_days[part.day] = {"reason": reason, "sha256": part.sha256, "source": label, "quarantined_at": _now()}
            result["quarantined"][part.day] = reason
            continue
        result["replaced" if stored is not None else "added"].append(part.day)
        bad_days.pop(part.day, None)
        store.store(part.day, tables, {"rows": len(tables["impressions"]), "sha256": part.sha256,
                                       "source": label, "ingested_at": _now()})
    if bad_days != old_bad:
        write_json(quarantine_dir / QUARANTINED, bad_days)
    if manifest["partitions"] and manifest != old:  # a new lineage without one good day changes nothing
        write_json(raw_dir / PARTITIONS, manifest)
        _drop_unlisted_days(raw_dir, manifest)
    current = manifest if manifest["partitions"] else old
    result["lineage"] = current["lineage"]["id"] if current["lineage"] else None
    result["days"] = sorted(current["partitions"])
    if result["quarantined"]:
        raise PartitionsQuarantined(result["quarantined"], quarantine_dir)
    return result


def _drop_unlisted_days(raw_dir: Path, manifest: dict) -> None:
    """Days of a previous lineage go, once the new manifest no longer lists them."""
    for folder in _day_folders(raw_dir):
        if folder.name.removeprefix(DAY_PREFIX) not in manifest["partitions"]:
            shutil.rmtree(folder)
