"""Model inputs for live requests: Feast's online store, filled by the training set's own code.

A request is one user, its candidate items and the request's context at one instant. Its feature
rows come from ONE online call: Feast's ``get_online_features`` on SQLite (entity rows user x items,
full feature names, so the columns are the training set's ``<view>__<feature>``), or on Redis one
Lua-script round trip over Feast's own layout (``RedisReader``). Beside the request's keys and context
columns, ``training_set.FillPolicy`` fills missing history exactly as it does for the training set
(unknown ids -1, counts 0, rates the prior in force at the request time); the champion's Preprocessor
encodes the rows as it encoded training rows (an id it never saw, or a -1, takes the OOV slot).

Both go column by column, so they run per entity (``RequestInputs``): on the user's one row (with the
context) and on each distinct item's, whose encoded rows are kept between requests while the store's
load, the fills and the champion hold. The columns stay numpy arrays: at a hundred rows, pandas frames
cost more than the model.

An entity (the user, an item) with no online value in any of its views is flagged unknown: it is
scored through those fills and the OOV slot.
"""
from __future__ import annotations

import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pandas.api.extensions import ExtensionArray

from features import store
from features.contract import ContractError, MissingInput, require_input
from features.engineering import TABLES_META, Dtype, RedisOnline
from features.store import FeastPaths
from features.training_set import FeatureMeta, FillPolicy
from models.preprocess import Preprocessor

if TYPE_CHECKING:
    from feast import FeatureStore

KEYS = ("impression_id", "event_timestamp", "user_id", "item_id")
USER_KEY, ITEM_KEY = "user_id", "item_id"


class StaleRegistry(MissingInput):
    """Feast's registry serves fewer feature columns than the feature tables hold (rebuilt since applied)."""

    def __init__(self, registry: Path, missing: list[str]):
        super().__init__(registry, "features apply")
        self.args = (f"{registry} does not serve {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} "
                     f"that {TABLES_META} lists: run `funnelflow features apply`",)


def context_columns(schema: Mapping[str, str], labels: Sequence[str]) -> dict[str, Dtype]:
    """The request context of a training-set schema (manifest.json ``schema``): every impressions
    column but the keys and labels (the contract's "any other column": position, device, hour, ...),
    int64 a categorical id, float64 numeric, in the training set's order."""
    skip = {*KEYS, *labels}
    out: dict[str, Dtype] = {}
    for col, dtype in schema.items():
        if col in skip or "__" in col:
            continue
        if dtype not in ("int64", "float64"):
            raise ContractError("training-set manifest.json", col, f"a context column is int64 or float64, found "
                                f"{dtype}: rebuild the training set from contract-checked data")
        out[col] = "int64" if dtype == "int64" else "float64"
    return out


class RedisReader:
    """Every feature of a request's entities from Feast's Redis online store in ONE round trip.

    Feast's ``get_online_features`` spends ~20 ms of Python on a user and 100 items (with hiredis; ~45
    ms without), the whole budget of a live request. This reads Feast's own layout with Feast's own key
    and field encodings: one hash per entity (key: Feast's serialized entity key + the project), one
    field per feature (murmur3 of ``view:feature``) holding a serialized ValueProto. A Lua script
    HMGETs every entity's hash server side, so a request is one command; its thousands of cells are
    decoded at once in numpy (``_decode``). The parity tests hold it to Feast's point-in-time join.
    """

    # KEYS: the load token, the user's hash, then the items'; ARGV: the count of user fields, the user's,
    # the items'. Returns the token (nil: none), then a row per hash. A missing value comes back as an
    # empty string (a ValueProto with no field), not nil, so that this side can take every cell's length
    # and bytes with C loops (map, join).
    SCRIPT = """local nu = tonumber(ARGV[1])
local function get(i, from, to)
  local values = redis.call('HMGET', KEYS[i], unpack(ARGV, from, to))
  for j = 1, #values do if not values[j] then values[j] = '' end end
  return values
end
local out = {redis.call('GET', KEYS[1]), get(2, 2, nu + 1)}
for i = 3, #KEYS do out[i] = get(i, nu + 2, #ARGV) end
return out"""

    def __init__(self, cfg: RedisOnline, key_of: Mapping[str, str], features: Mapping[str, FeatureMeta]):
        import redis
        from feast.infra.online_stores.helpers import _mmh3

        self.client = redis.Redis(host=cfg.host, port=cfg.port, db=cfg.db, socket_timeout=5.0)
        self.script = self.client.register_script(self.SCRIPT)
        # Per entity: its feature columns (the fill policy's order) and their hash fields.
        self.columns = {k: [c for c in features if key_of[c] == k] for k in (USER_KEY, ITEM_KEY)}
        self.dtypes = {c: m.dtype for c, m in features.items()}
        fields = {k: [_mmh3(c.replace("__", ":", 1)) for c in cols] for k, cols in self.columns.items()}
        self.args = [len(fields[USER_KEY]), *fields[USER_KEY], *fields[ITEM_KEY]]
        self.user_dtypes, self.item_dtypes = ([self.dtypes[c] for c in self.columns[k]] for k in (USER_KEY, ITEM_KEY))

    @staticmethod
    @lru_cache(maxsize=1 << 20)
    def key(join_key: str, value: int) -> bytes:
        """Feast's Redis key of one entity (cached: serializing an EntityKey costs ~10 µs)."""
        from feast.infra.online_stores.helpers import _redis_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        entity = EntityKey(join_keys=[join_key], entity_values=[Value(int64_val=value)])
        return _redis_key(store.PROJECT, entity, store.ENTITY_KEY_VERSION)

    def _read(self, user_id: int, items: list[int]) -> tuple[bytes | None, list[bytes], list[list[bytes]]]:
        """(the store's load token, the user's row, the items' rows) in one round trip."""
        from redis.exceptions import NoScriptError

        keys: list[str | bytes] = [store.LOAD_TOKEN, self.key(USER_KEY, user_id),
                                   *(self.key(ITEM_KEY, i) for i in items)]
        try:  # EVALSHA itself: redis-py's Script.__call__ costs ~50 µs more per request
            token, user, *rows = self.client.evalsha(self.script.sha, len(keys), *keys, *self.args)
        except NoScriptError:  # a server without the script yet (new, restarted): Script loads it and runs it
            token, user, *rows = self.script(keys=keys, args=self.args)
        return token, user, rows

    def read(self, user_id: int, items: list[int]) -> Read:
        """Like ``OnlineFeatures.read``, with the store's load token."""
        token, user, rows = self._read(user_id, items)
        user_block, item_block = _decode(self.user_dtypes, [user]), _decode(self.item_dtypes, rows)
        item_cols = item_block.columns(self.item_dtypes) if rows else []
        return Read(token, dict(zip(self.columns[USER_KEY], user_block.columns(self.user_dtypes), strict=True)),
                    dict(zip(self.columns[ITEM_KEY], item_cols, strict=False)),  # no items read: none
                    bool(user_block.absent()[0]), item_block.absent())


@dataclass(frozen=True)
class Read:
    """One online read, unfilled: the user's feature columns (one row) and the items' (a row per item
    read; no column when none was), int64 ones as int64 or, where the store holds no value, nullable
    Int64, float64 ones with NaN there; the store's load token (features/store.py; None: a load is
    running, or the store keeps none); whether the user, and each item read, has no value at all."""

    token: bytes | None
    user: dict[str, Any]
    items: dict[str, Any]
    unknown_user: bool
    unknown_items: np.ndarray


@dataclass(frozen=True)
class Block:
    """Decoded cells, rows x columns: ``bits`` holds an int64 column's values and a float64 column's bit
    patterns (NaN where no value), so that one array takes any row selection; ``missing``: no value."""

    bits: np.ndarray
    missing: np.ndarray

    def columns(self, dtypes: Sequence[Dtype]) -> list[Any]:
        """One array per column: float64 with NaN; int64, or nullable Int64 where a value is missing."""
        bits, missing = self.bits.T.copy(), self.missing.T.copy()  # one copy: each column contiguous
        holes: list[bool] = np.logical_or.reduce(missing, axis=1).tolist()
        return [bits[j].view(np.float64) if d == "float64" else
                pd.arrays.IntegerArray(bits[j], missing[j]) if holes[j] else bits[j]
                for j, d in enumerate(dtypes)]

    def absent(self) -> np.ndarray:
        """Per row: no value in any column."""
        return np.logical_and.reduce(self.missing, axis=1)


# A ValueProto's first byte (field number << 3 | wire type), for the two types the feature views declare:
# double_val (field 5, 8 fixed bytes after it) and int64_val (field 4, a varint of 1 to 10 bytes after it).
_DOUBLE_TAG, _INT64_TAG = 5 << 3 | 1, 4 << 3 | 0
_BITS = struct.Struct("<q").unpack_from  # a double's 8 bytes as the int64 of the same bits
_NAN_BITS = int(np.array(np.nan).view(np.int64))
_VARINT = np.arange(10)  # a varint's byte positions; 7 bits each, least significant first
_SHIFTS = (7 * _VARINT).astype(np.uint64)
# Up to this many cells a Python loop decodes faster than numpy's ~30 array operations (a request's user
# row: 25 cells, 23 vs 89 µs); past it numpy does (a hundred items' 1848 cells: 1.2 vs 0.45 ms).
LOOP_CELLS = 256


def _decode(dtypes: Sequence[Dtype], rows: Sequence[Sequence[bytes]]) -> Block:
    """Serialized ValueProtos, a row per entity and a cell per ``dtypes`` column (b"": no value), decoded
    from their bytes: protobuf costs ~40 µs of Python per column at a hundred rows, and a request reads
    ~50 columns. A column holding anything but its declared type's encoding goes through protobuf."""
    doubles = np.array([d == "float64" for d in dtypes])
    decode = _decode_loop if len(rows) * len(dtypes) <= LOOP_CELLS else _decode_numpy
    bits, missing, fits = decode(doubles, rows)
    block = Block(bits.reshape(-1, len(dtypes)), missing.reshape(-1, len(dtypes)))
    for j in np.flatnonzero(~(fits.reshape(block.bits.shape) | block.missing).all(axis=0)).tolist():
        column = _decode_proto([row[j] for row in rows], dtypes[j])
        if doubles[j]:
            block.bits[:, j] = column.view(np.int64)
        else:
            block.bits[:, j], block.missing[:, j] = column.to_numpy(np.int64, na_value=0), column.isna()
    return block


def _decode_loop(doubles: np.ndarray, rows: Sequence[Sequence[bytes]]) -> tuple[np.ndarray, ...]:
    """``_decode``'s cells one by one: (bits, missing, in the declared type's encoding), flat."""
    bits: list[int] = []
    fits: list[bool] = []
    kinds = doubles.tolist()
    for row in rows:
        for cell, double in zip(row, kinds, strict=True):
            if not cell:
                bits.append(_NAN_BITS if double else 0)
            elif double and cell[0] == _DOUBLE_TAG and len(cell) == 9:
                bits.append(_BITS(cell, 1)[0])
            elif not double and cell[0] == _INT64_TAG and len(cell) <= 11:
                value = shift = 0
                for byte in cell[1:]:
                    value, shift = value | (byte & 0x7F) << shift, shift + 7
                bits.append(value - (1 << 64) if value >= 1 << 63 else value)  # two's complement
            else:
                bits.append(0)
                fits.append(False)
                continue
            fits.append(True)
    cells = [cell for row in rows for cell in row]
    return np.array(bits, np.int64), np.array([not c for c in cells], bool), np.array(fits, bool)


def _decode_numpy(doubles: np.ndarray, rows: Sequence[Sequence[bytes]]) -> tuple[np.ndarray, ...]:
    """``_decode``'s cells all at once in numpy: (bits, missing, in the declared type's encoding), flat."""
    cells = [cell for row in rows for cell in row]
    size, data = np.fromiter(map(len, cells), np.int64, len(cells)), b"".join(cells)
    buf, start = np.frombuffer(data, np.uint8), np.cumsum(size) - size
    tag = np.zeros(len(size), np.uint8)
    tag[size > 0] = buf[start[size > 0]]
    floats = np.resize(doubles, len(size))  # each cell's column's kind, row by row
    is_double = floats & (tag == _DOUBLE_TAG) & (size == 9)
    is_int = ~floats & (tag == _INT64_TAG) & (size <= 11)
    values = np.where(floats, _NAN_BITS, 0)
    values[is_double] = buf[start[is_double, None] + 1 + np.arange(8)].view("<i8").ravel()
    at = np.minimum(start[is_int, None] + 1 + _VARINT, len(buf) - 1)
    byte = np.where(_VARINT < size[is_int, None] - 1, buf[at], 0).astype(np.uint64)
    values[is_int] = ((byte & 0x7F) << _SHIFTS).sum(axis=1, dtype=np.uint64).view(np.int64)  # two's complement
    return values, size == 0, is_double | is_int


def _decode_proto(values: list[bytes], dtype: Dtype) -> Any:
    """Serialized ValueProtos of one column through protobuf (any oneof field, cast to ``dtype``)."""
    from feast.protos.feast.types.Value_pb2 import Value

    proto, parsed = Value(), []
    for v in values:
        kind = None
        if v:
            proto.ParseFromString(v)
            kind = proto.WhichOneof("val")
        parsed.append(getattr(proto, kind) if kind else None)
    if dtype == "int64":
        missing = np.array([x is None for x in parsed], bool)
        return pd.arrays.IntegerArray(np.array([x or 0 for x in parsed], np.int64), missing)
    return np.array([np.nan if x is None else x for x in parsed], np.float64)


@dataclass(frozen=True)
class Entities:
    """A request's rows per entity, filled as the training set fills them.

    Attributes:
        user: one row: event_timestamp (datetime64[us], UTC), user_id, the context, the user's features.
        items: a row per item read: item_id, the item's features.
        unknown_items: per item row, the item has no online value in any item view.
        unknown_user: the user has no online value in any user view.
    """

    user: dict[str, Any]
    items: dict[str, Any]
    unknown_items: np.ndarray
    unknown_user: bool

    def frame(self, take: np.ndarray) -> pd.DataFrame:
        """A row per candidate (``take``: its item's row) as the training set lays them out (its dtypes, a
        tz-aware event_timestamp)."""
        user = np.zeros(len(take), np.intp)
        cols = {**{c: v[user] for c, v in self.user.items()}, **{c: v[take] for c, v in self.items.items()}}
        return pd.DataFrame({**cols, "event_timestamp": pd.DatetimeIndex(cols["event_timestamp"]).tz_localize("UTC")})


def _absent(columns: Mapping[str, Any], n: int) -> np.ndarray:
    """Per row: no value in any of ``columns`` (read, unfilled)."""
    out = np.ones(n, bool)
    for values in columns.values():
        out &= values.isna() if isinstance(values, ExtensionArray) else np.isnan(values)
    return out


class OnlineFeatures:
    """The online store of ``feast`` serving ``feature_service``, opened once, and the fill policy of
    its feature tables (re-read by ``refresh`` when the tables are rebuilt)."""

    def __init__(self, feast: FeastPaths, feature_service: str):
        require_input(feast.registry, "features apply")
        self.feast = feast
        self.store: FeatureStore = store.open_store(feast)
        self.service = self.store.get_feature_service(feature_service)
        self._tables_stamp = self._stamp()
        self.policy = FillPolicy(feast.tables)
        # Which entity key each feature column belongs to, from the views the service serves.
        self.key_of = {f"{p.name}__{f.name}": self.store.get_feature_view(p.name).join_keys[0]
                       for p in self.service.feature_view_projections for f in p.features}
        missing = sorted(set(self.policy.features) - set(self.key_of))
        if missing:
            raise StaleRegistry(feast.registry, missing)
        self.redis = self._redis_reader()

    def _redis_reader(self) -> RedisReader | None:
        online = self.feast.online
        if not isinstance(online, RedisOnline):
            return None
        return RedisReader(online, self.key_of, self.policy.features)

    def _stamp(self) -> int:
        return (self.feast.tables / TABLES_META).stat().st_mtime_ns

    def refresh(self) -> None:
        """Re-read Feast's registry now, not inside a request when its cache expires (SQLite: Feast
        reads it per request; Redis: the reader never does, and a re-read holds the GIL ~6 ms), and the
        fill policy if the feature tables were rebuilt (new priors)."""
        if self.redis is None:
            self.store.refresh_registry()
        stamp = self._stamp()
        if stamp != self._tables_stamp:
            self.policy, self._tables_stamp = FillPolicy(self.feast.tables), stamp
            self.redis = self._redis_reader()

    def columns_of(self, key: str) -> list[str]:
        """The entity ``key``'s own columns: the key, then its feature columns (the fill policy's order)."""
        return [key, *(c for c in self.policy.features if self.key_of[c] == key)]

    def read(self, user_id: int, items: list[int]) -> Read:
        """The user's and ``items``' feature rows (each item once) in one online call: Redis's one round
        trip (``RedisReader``), else Feast's ``get_online_features``, which reads no load token."""
        if self.redis is not None:
            return self.redis.read(user_id, items)
        features = self.policy.features
        rows = {USER_KEY: [user_id] * len(items), ITEM_KEY: items}
        resp = self.store.get_online_features(features=self.service, entity_rows=rows, full_feature_names=True)
        out: dict[str, dict[str, Any]] = {USER_KEY: {}, ITEM_KEY: {}}
        for name, vector in zip(resp.proto.metadata.feature_names.val, resp.proto.results, strict=True):
            meta = features.get(name)
            if meta is None:
                continue  # the entity keys
            # A value is there when its field is set: Redis answers "present" for keys it does not hold,
            # so the statuses cannot tell. Only the one field the view declares (Int64 / Float64) is read:
            # Feast's generic decoding of every value costs ~2x more.
            if meta.dtype == "int64":
                there = np.fromiter((v.HasField("int64_val") for v in vector.values), bool, len(items))
                ints = np.fromiter((v.int64_val for v in vector.values), np.int64, len(items))
                values: Any = pd.arrays.IntegerArray(ints, ~there)
            else:
                values = np.fromiter((v.double_val if v.HasField("double_val") else np.nan for v in vector.values),
                                     np.float64, len(items))
            key = self.key_of[name]
            out[key][name] = values[:1] if key == USER_KEY else values
        return Read(None, out[USER_KEY], out[ITEM_KEY], bool(_absent(out[USER_KEY], 1)[0]),
                    _absent(out[ITEM_KEY], len(items)))

    def absent(self, items: int) -> Read:
        """What ``read`` returns for an unknown user and ``items`` unknown items, without touching the
        store: a champion's smoke score runs on it."""
        rows = {USER_KEY: 1, ITEM_KEY: items}
        cols: dict[str, dict[str, Any]] = {USER_KEY: {}, ITEM_KEY: {}}
        for c, m in self.policy.features.items():
            n = rows[self.key_of[c]]
            cols[self.key_of[c]][c] = pd.array([pd.NA] * n, dtype="Int64") if m.dtype == "int64" else np.full(n, np.nan)
        return Read(None, cols[USER_KEY], cols[ITEM_KEY], True, np.ones(items, bool))

    def entities(self, read: Read, user_id: int, items: Sequence[int], at: pd.Timestamp,
                 context: Mapping[str, int | float | None], context_dtypes: Mapping[str, Dtype]) -> Entities:
        """``read`` (of ``user_id`` and ``items``) at ``at`` (tz-aware), filled by the training set's
        FillPolicy, with the request's keys and context (one value for every candidate)."""
        micros = pd.Timestamp(at).value // 1000  # Timestamp.value: UTC nanoseconds
        user, unknown_user = self.user_row(read, user_id, micros, context, context_dtypes)
        return Entities(user, *self.item_rows(read, items, micros), unknown_user)

    def user_row(self, read: Read, user_id: int, micros: int, context: Mapping[str, int | float | None],
                 context_dtypes: Mapping[str, Dtype]) -> tuple[dict[str, Any], bool]:
        """The user's row of ``Entities`` at ``micros`` (int64 microseconds since the epoch), and whether
        the user is unknown."""
        at = np.array([micros])
        row: dict[str, Any] = {"event_timestamp": at.view("datetime64[us]"), USER_KEY: np.array([user_id], np.int64)}
        for col, dtype in context_dtypes.items():
            value = context.get(col)
            row[col] = np.array([np.nan if value is None else value], np.int64 if dtype == "int64" else np.float64)
        row.update(self.policy.fill(read.user, at))
        return row, read.unknown_user

    def item_rows(self, read: Read, items: Sequence[int], micros: int) -> tuple[dict[str, Any], np.ndarray]:
        """The items' rows of ``Entities`` at ``micros``, and which items are unknown."""
        at = np.full(len(items), micros)
        return {ITEM_KEY: np.asarray(items, np.int64), **self.policy.fill(read.items, at)}, read.unknown_items


class StoreUnavailable(Exception):
    """The online store failed a read (the request may be answered 503; the process goes on)."""


@dataclass(frozen=True)
class Inputs:
    """A request's model inputs, a row per candidate in the request's order.

    Attributes:
        categorical, numeric: the champion's encoded inputs (models.preprocess.Preprocessor.encode).
        unknown_user, unknown_items: as in ``Entities``, ``unknown_items`` per candidate.
        seconds: time per stage: ``fetch`` (the store call and decoding), ``fill`` (fills and encoding).
    """

    categorical: np.ndarray
    numeric: np.ndarray
    unknown_user: bool
    unknown_items: np.ndarray
    seconds: dict[str, float]


class KeptItems:
    """Items' rows of arrays by item id, for one key; past ``capacity`` items none are added."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.key: Any = None  # None: keep nothing
        self.row: dict[int, int] = {}
        self.arrays: list[np.ndarray] = []  # each grown by doubling

    def find(self, items: list[int]) -> np.ndarray:
        """Each item's row; -1: not kept."""
        get = self.row.get
        return np.fromiter((get(i, -1) for i in items), np.intp, len(items))

    def reset(self, key: Any) -> None:
        """Keep rows for ``key`` from now on (None: none); the old ones are dropped."""
        self.key, self.row, self.arrays = key, {}, []

    def put(self, items: list[int], arrays: Sequence[np.ndarray]) -> np.ndarray | None:
        """Keep these items' rows of ``arrays``; their row numbers, or None if not kept (no key, or no room)."""
        start, end = len(self.row), len(self.row) + len(items)
        if self.key is None or end > self.capacity:
            return None
        if not self.arrays or end > len(self.arrays[0]):
            size = min(self.capacity, max(end, 2 * len(self.arrays[0]) if self.arrays else 0, 1024))
            grown = [np.empty((size, *a.shape[1:]), a.dtype) for a in arrays]
            for old, new in zip(self.arrays, grown, strict=False):
                new[:start] = old[:start]
            self.arrays = grown
        for kept, new in zip(self.arrays, arrays, strict=True):
            kept[start:end] = new
        self.row.update(zip(items, range(start, end), strict=True))
        return np.arange(start, end)

    def gather(self, rows: np.ndarray, new: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The kept rows ``rows`` (>= 0) and, where -1, the rows of ``new`` in order."""
        hit = rows >= 0
        if not hit.any():
            return list(new)
        if hit.all():
            return [a[rows] for a in self.arrays]
        out = [np.empty((len(rows), *a.shape[1:]), a.dtype) for a in new]
        for o, a, kept in zip(out, new, self.arrays, strict=True):
            o[hit], o[~hit] = kept[rows[hit]], a
        return out


class RequestInputs:
    """One champion's model inputs for live requests, encoded per entity.

    Encoding goes column by column (``Preprocessor.split``): the user's and the context's row is
    encoded once and broadcast to the candidates, and each distinct item's row once. Items recur in
    every user's candidates, so up to ``capacity`` items' encoded rows are kept while all they were
    computed from holds: the store's load (its token: a new one, or none, and they are dropped), the
    fill policy and the prior in force. At a hundred candidates, reading, filling and encoding the items
    again was most of a request.

    Raises:
        ValueError: the champion reads a column that is neither the user's, the context's nor an item's.
    """

    def __init__(self, preprocessor: Preprocessor, online: OnlineFeatures, context: Sequence[str], capacity: int):
        self.preprocessor = preprocessor
        self.user, self.item = preprocessor.split([[*online.columns_of(USER_KEY), *context],
                                                   online.columns_of(ITEM_KEY)])
        self.kept = KeptItems(capacity)

    def encode(self, entities: Entities, take: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The (categorical, numeric) inputs of a row per candidate, ``take`` its item's row; nothing kept."""
        item_cat, item_num = self.item.encoder.encode(entities.items)
        return self._join(entities.user, item_cat[take], item_num[take])

    def _join(self, user: Mapping[str, Any], item_cat: np.ndarray, item_num: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        """The whole inputs of the candidates' encoded item rows and the user's row, encoded here once."""
        return self.preprocessor.join(len(item_cat), [(self.user, *self.user.encoder.encode(user)),
                                                      (self.item, item_cat, item_num)])

    def __call__(self, online: OnlineFeatures, user_id: int, items: Sequence[int], at: pd.Timestamp,
                 context: Mapping[str, int | float | None], context_dtypes: Mapping[str, Dtype]) -> Inputs:
        """The inputs of ``user_id``'s candidate ``items`` at ``at`` (tz-aware) in context.

        Raises:
            StoreUnavailable: the online read failed.
        """
        t0 = time.perf_counter()
        index = {i: k for k, i in enumerate(dict.fromkeys(items))}  # each distinct item's row (np.unique: ~3x)
        ids, take = list(index), np.fromiter(map(index.__getitem__, items), np.intp, len(items))
        micros = pd.Timestamp(at).value // 1000  # Timestamp.value: UTC nanoseconds
        in_force = online.policy.in_force(micros)
        rows = self.kept.find(ids)
        missed = [i for i, row in zip(ids, rows.tolist(), strict=True) if row < 0]
        read = self._read(online, user_id, missed)
        key = self._key(online, read.token, in_force)
        if key != self.kept.key:  # kept rows of another load, policy or prior: none of them serve
            self.kept.reset(key)
            if len(missed) < len(ids):
                rows, missed = np.full(len(ids), -1, np.intp), ids
                read = self._read(online, user_id, ids)
                self.kept.reset(self._key(online, read.token, in_force))
        t1 = time.perf_counter()
        user, unknown_user = online.user_row(read, user_id, micros, context, context_dtypes)
        new: list[np.ndarray] = []
        if missed:
            item_rows, unknown = online.item_rows(read, missed, micros)
            new = [*self.item.encoder.encode(item_rows), unknown]
            kept = self.kept.put(missed, new)
            if kept is not None:
                rows[rows < 0] = kept
        item_cat, item_num, unknown = (a[take] for a in self.kept.gather(rows, new))
        cat, num = self._join(user, item_cat, item_num)
        return Inputs(cat, num, unknown_user, unknown, {"fetch": t1 - t0, "fill": time.perf_counter() - t1})

    @staticmethod
    def _read(online: OnlineFeatures, user_id: int, items: list[int]) -> Read:
        try:
            return online.read(user_id, items)
        except Exception as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _key(online: OnlineFeatures, token: bytes | None, in_force: int) -> Any:
        """What kept rows depend on (the policy by identity), or None: nothing to keep them for."""
        return None if token is None else (token, online.policy, in_force)
