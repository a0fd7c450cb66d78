"""Feature rows for live requests: Feast's online store, filled by the training set's own code.

A request is one user, its candidate items and the request's context at one instant. Its feature
rows come from ONE online call: Feast's ``get_online_features`` on SQLite (entity rows user x items,
full feature names, so the columns are the training set's ``<view>__<feature>``), or on Redis one
Lua-script round trip over Feast's own layout (``RedisReader``), with the items' rows kept per load of
the store (``ItemRows``). Beside the request's keys and context columns, ``training_set.FillPolicy``
fills missing history exactly as it does for the training set (unknown ids -1, counts 0, rates the
prior in force at the request time). The columns have the training set's names and dtypes, and stay
numpy arrays (no frame: at a hundred rows pandas cost more than the model); the champion's
Preprocessor encodes them as it encoded training rows: an id it never saw, or a -1, takes the OOV slot.

An entity (the user, an item) with no online value in any of its views is flagged unknown: it is
scored through those fills and the OOV slot.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
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

    def __init__(self, cfg: RedisOnline, key_of: Mapping[str, str], features: Mapping[str, FeatureMeta],
                 item_cache: int):
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
        self.items = ItemRows(item_cache, len(self.item_dtypes))

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
        keys: list[str | bytes] = [store.LOAD_TOKEN, self.key(USER_KEY, user_id),
                                   *(self.key(ITEM_KEY, i) for i in items)]
        token, user, *rows = self.script(keys=keys, args=self.args)
        return token, user, rows

    def fetch(self, user_id: int, items: Sequence[int]) -> dict[str, Any]:
        """Like ``OnlineFeatures.fetch``: int64 columns as nullable Int64, float64 ones with NaN where
        the store holds no value. Each distinct item is read once, and not at all while ``items`` holds
        its row for the store's current load."""
        uniq, inverse = np.unique(np.asarray(items, np.int64), return_inverse=True)
        ids = uniq.tolist()
        rows = self.items.find(ids)
        missed = [i for i, row in zip(ids, rows.tolist(), strict=True) if row < 0]
        token, user, read = self._read(int(user_id), missed)
        if token != self.items.token:  # a load since the rows were kept, or none to trust: read them all
            self.items.reset(token)
            if len(missed) < len(ids):
                rows, missed = np.full(len(ids), -1, np.intp), ids
                token, user, read = self._read(int(user_id), ids)
                self.items.reset(token)
        new = _decode(self.item_dtypes, Cells.of(read))
        kept = self.items.put(missed, new)
        if kept is not None:
            rows[rows < 0] = kept
        item_rows = self.items.gather(rows, new).take(inverse)
        user_rows = _decode(self.user_dtypes, Cells.of([user])).take(np.zeros(len(items), np.intp))
        out = {**dict(zip(self.columns[USER_KEY], user_rows.columns(self.user_dtypes), strict=True)),
               **dict(zip(self.columns[ITEM_KEY], item_rows.columns(self.item_dtypes), strict=True))}
        return {c: out[c] for c in self.dtypes}  # the fill policy's order, as Feast's answer has it


@dataclass(frozen=True)
class Cells:
    """Rows of serialized ValueProtos as ``_decode`` takes them: each cell's size in bytes (0: no value)
    and the cells' bytes concatenated, row by row."""

    sizes: np.ndarray
    data: bytes

    @classmethod
    def of(cls, rows: Sequence[Sequence[bytes]]) -> Cells:
        """The cells of rows as Redis answered them (lengths and bytes taken by C loops)."""
        cells = list(chain.from_iterable(rows))
        return cls(np.fromiter(map(len, cells), np.int64, len(cells)), b"".join(cells))


@dataclass(frozen=True)
class Block:
    """Decoded cells, rows x columns: ``bits`` holds an int64 column's values and a float64 column's bit
    patterns (NaN where no value), so that one array takes any row selection; ``missing``: no value."""

    bits: np.ndarray
    missing: np.ndarray

    def take(self, rows: np.ndarray) -> Block:
        """These rows, in this order."""
        return Block(self.bits[rows], self.missing[rows])

    def columns(self, dtypes: Sequence[Dtype]) -> list[Any]:
        """One array per column: float64 with NaN, or nullable Int64."""
        bits, missing = self.bits.T.copy(), self.missing.T.copy()  # one copy: each column contiguous
        return [bits[j].view(np.float64) if d == "float64" else pd.arrays.IntegerArray(bits[j], missing[j])
                for j, d in enumerate(dtypes)]


class ItemRows:
    """Items' decoded rows, by item id, for one load of the store.

    A catalogue's items recur in every user's candidates, while the store changes only when it is
    loaded: at a hundred candidates, reading and decoding them again was half of a request. The store's
    load token (features/store.py: removed while a load runs, a new one after it) is read with every
    request; a new token empties the rows, and without one nothing is kept. Past ``capacity`` items
    no more are kept until the next load. Rows written to the store by anything but ``features
    materialize`` (a bare ``feast materialize``) leave the token as it was: they are not seen until the
    next load.
    """

    def __init__(self, capacity: int, width: int):
        self.capacity, self.width = capacity, width
        self.token: bytes | None = None
        self.row: dict[int, int] = {}
        self.block = Block(np.empty((0, width), np.int64), np.empty((0, width), bool))  # grown by doubling

    def find(self, items: list[int]) -> np.ndarray:
        """Each item's row in ``block``; -1: not kept."""
        get = self.row.get
        return np.fromiter((get(i, -1) for i in items), np.intp, len(items))

    def reset(self, token: bytes | None) -> None:
        """Keep rows of the load ``token`` from now on (None: keep none); the old ones are dropped."""
        self.token, self.row = token, {}

    def put(self, items: list[int], rows: Block) -> np.ndarray | None:
        """Keep these items' ``rows`` of the current load; their row numbers, or None if not kept (no
        token, or no room)."""
        start, end = len(self.row), len(self.row) + len(items)
        if self.token is None or end > self.capacity:
            return None
        if end > len(self.block.bits):
            size = min(self.capacity, max(end, 2 * len(self.block.bits), 1024))
            grown = Block(np.empty((size, self.width), np.int64), np.empty((size, self.width), bool))
            grown.bits[:start], grown.missing[:start] = self.block.bits[:start], self.block.missing[:start]
            self.block = grown
        self.block.bits[start:end], self.block.missing[start:end] = rows.bits, rows.missing
        self.row.update(zip(items, range(start, end), strict=True))
        return np.arange(start, end)

    def gather(self, rows: np.ndarray, new: Block) -> Block:
        """The kept rows ``rows`` (>= 0) and, where -1, the rows of ``new`` in order."""
        hit = rows >= 0
        if hit.all():
            return self.block.take(rows)
        out = Block(np.empty((len(rows), self.width), np.int64), np.empty((len(rows), self.width), bool))
        out.bits[hit], out.missing[hit] = self.block.bits[rows[hit]], self.block.missing[rows[hit]]
        out.bits[~hit], out.missing[~hit] = new.bits, new.missing
        return out


# A ValueProto's first byte (field number << 3 | wire type), for the two types the feature views declare:
# double_val (field 5, 8 fixed bytes after it) and int64_val (field 4, a varint of 1 to 10 bytes after it).
_DOUBLE_TAG, _INT64_TAG = 5 << 3 | 1, 4 << 3 | 0
_VARINT = np.arange(10)  # a varint's byte positions; 7 bits each, least significant first
_SHIFTS = (7 * _VARINT).astype(np.uint64)


def _decode(dtypes: Sequence[Dtype], cells: Cells) -> Block:
    """Serialized ValueProtos, a row per entity and a cell per ``dtypes`` column (size 0: no value),
    decoded.

    From the bytes in numpy, every cell at once: protobuf costs ~40 µs of Python per column at a
    hundred rows, and a request reads ~50 columns. A column holding anything but its declared type's
    encoding goes through protobuf."""
    size, buf = cells.sizes, np.frombuffer(cells.data, np.uint8)
    start = np.cumsum(size) - size
    tag = np.zeros(len(size), np.uint8)
    tag[size > 0] = buf[start[size > 0]]
    is_double, is_int = (tag == _DOUBLE_TAG) & (size == 9), (tag == _INT64_TAG) & (size <= 11)
    doubles = np.full(len(size), np.nan)
    doubles[is_double] = buf[start[is_double, None] + 1 + np.arange(8)].view("<f8").ravel()
    ints = np.zeros(len(size), np.uint64)
    at = np.minimum(start[is_int, None] + 1 + _VARINT, len(buf) - 1)
    byte = np.where(_VARINT < size[is_int, None] - 1, buf[at], 0).astype(np.uint64)
    ints[is_int] = ((byte & 0x7F) << _SHIFTS).sum(axis=1, dtype=np.uint64)  # two's complement: view as int64
    shape = (-1, len(dtypes))  # rows x columns
    floats = np.array([d == "float64" for d in dtypes])
    block = Block(np.where(floats, doubles.view(np.int64).reshape(shape), ints.view(np.int64).reshape(shape)),
                  (size == 0).reshape(shape))
    fits = np.where(floats, is_double.reshape(shape), is_int.reshape(shape)) | block.missing
    for j in np.flatnonzero(~fits.all(axis=0)).tolist():
        spans = zip(start.reshape(shape)[:, j].tolist(), size.reshape(shape)[:, j].tolist(), strict=True)
        values = _decode_proto([cells.data[a:a + z] for a, z in spans], dtypes[j])
        if floats[j]:
            block.bits[:, j] = values.view(np.int64)
        else:
            block.bits[:, j], block.missing[:, j] = values.to_numpy(np.int64, na_value=0), values.isna()
    return block


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
class OnlineRows:
    """The scoring rows of one request.

    Attributes:
        columns: one value per candidate, in the request's order: event_timestamp (datetime64[us],
            UTC), user_id, item_id, the context, then every feature column filled, as numpy arrays;
            what the champion encodes (models.preprocess.Columns).
        unknown_user: the user has no online row in any user view.
        unknown_items: per candidate, the item has no online row in any item view.
        seconds: time spent per stage: ``fetch`` (the store call and decoding) and ``fill``.
    """

    columns: dict[str, np.ndarray]
    unknown_user: bool
    unknown_items: np.ndarray
    seconds: dict[str, float]

    @property
    def frame(self) -> pd.DataFrame:
        """The columns as the training set lays them out (its dtypes, a tz-aware event_timestamp)."""
        ts = pd.DatetimeIndex(self.columns["event_timestamp"]).tz_localize("UTC")
        return pd.DataFrame({**self.columns, "event_timestamp": ts})


class OnlineFeatures:
    """The online store of ``feast`` serving ``feature_service``, opened once, and the fill policy of
    its feature tables (re-read by ``refresh`` when the tables are rebuilt). On Redis, up to
    ``item_cache`` items' rows are kept between requests (``ItemRows``)."""

    def __init__(self, feast: FeastPaths, feature_service: str, item_cache: int = 0):
        require_input(feast.registry, "features apply")
        self.feast, self.item_cache = feast, item_cache
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
        return RedisReader(online, self.key_of, self.policy.features, self.item_cache)

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

    def fetch(self, user_id: int, items: Sequence[int]) -> dict[str, pd.api.extensions.ExtensionArray | np.ndarray]:
        """Every feature column for rows (user_id, item) in one online call: int64 columns as nullable
        Int64, float64 columns with NaN where the store holds no value."""
        if self.redis is not None:
            return self.redis.fetch(user_id, items)
        features = self.policy.features
        rows = {USER_KEY: [user_id] * len(items), ITEM_KEY: list(items)}
        resp = self.store.get_online_features(features=self.service, entity_rows=rows, full_feature_names=True)
        out: dict[str, Any] = {}
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
                out[name] = pd.arrays.IntegerArray(ints, ~there)
            else:
                out[name] = np.fromiter((v.double_val if v.HasField("double_val") else np.nan for v in vector.values),
                                        np.float64, len(items))
        return out

    def missing(self, n: int) -> dict[str, Any]:
        """Every feature column of ``n`` rows with no online value (what ``fetch`` returns for unknown
        entities): a champion's smoke score runs on these without touching the store."""
        return {c: pd.array([pd.NA] * n, dtype="Int64") if m.dtype == "int64" else np.full(n, np.nan)
                for c, m in self.policy.features.items()}

    def assemble(self, user_id: int, items: Sequence[int], at: pd.Timestamp, context: Mapping[str, int | float | None],
                 context_dtypes: Mapping[str, Dtype], feats: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The training-set columns of a request at ``at`` (tz-aware): its keys, its context (one value
        for every candidate) and the fetched features ``feats``, filled by the training set's FillPolicy."""
        n = len(items)
        micros = np.full(n, pd.Timestamp(at).value // 1000, np.int64)  # Timestamp.value: UTC nanoseconds
        cols: dict[str, Any] = {"event_timestamp": micros.view("datetime64[us]"),
                                USER_KEY: np.full(n, user_id, np.int64), ITEM_KEY: np.asarray(items, np.int64)}
        for col, dtype in context_dtypes.items():
            value = context.get(col)
            cols[col] = np.full(n, np.nan if value is None else value, np.int64 if dtype == "int64" else np.float64)
        policy = self.policy  # read once: ``refresh`` may swap it meanwhile
        cols.update(policy.fill(feats, micros))  # the training set's column order
        return cols

    def rows(self, user_id: int, items: Sequence[int], at: pd.Timestamp, context: Mapping[str, int | float | None],
             context_dtypes: Mapping[str, Dtype]) -> OnlineRows:
        """The scoring rows of a request at time ``at`` (tz-aware): fetched in one call, then assembled."""
        t0 = time.perf_counter()
        feats = self.fetch(user_id, items)
        t1 = time.perf_counter()
        columns = self.assemble(user_id, items, at, context, context_dtypes, feats)
        t2 = time.perf_counter()
        known = {USER_KEY: np.zeros(len(items), bool), ITEM_KEY: np.zeros(len(items), bool)}
        for col, values in feats.items():
            known[self.key_of[col]] |= ~(values.isna() if isinstance(values, ExtensionArray) else np.isnan(values))
        return OnlineRows(columns, unknown_user=not known[USER_KEY].any(), unknown_items=~known[ITEM_KEY],
                          seconds={"fetch": t1 - t0, "fill": t2 - t1})
