"""The online store beyond SQLite: Redis selected in params.yaml, loaded by materialize in full on a
switch or when it lost its data, incrementally after a new day, and serving what SQLite serves (real
Feast, a real redis-server from infra/redis.sh)."""
import itertools
import shutil
import socket
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import redis
import yaml

from features import store
from features.contract import FunnelDataset, ingest, write_partitioned
from features.engineering import RedisOnline, SqliteOnline, build_feature_tables, read_table
from features.generate import generate
from features.store import FeastPaths, OnlineStoreUnavailable
from features.views import VIEWS
from flows.params import ParamsError, load_params, params_hash

REPO = Path(__file__).resolve().parents[2]
DAYS = 6
_dbs = itertools.count(1)  # one Redis database per test: the session's server is shared
SQLITE = SqliteOnline()


@pytest.fixture
def redis_db(redis_server):
    """A Redis online store on the session's server, in a database of its own, empty."""
    online = RedisOnline(kind="redis", connection=redis_server, db=next(_dbs))
    redis.Redis(host=online.host, port=online.port, db=online.db).flushdb()
    return online


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A small generated dataset as day partitions."""
    root = tmp_path_factory.mktemp("online_source")
    data = generate(rows=4000, days=DAYS, seed=11)
    write_partitioned(FunnelDataset(data.impressions, data.users, data.items), root)
    return root


def _land(source, landing, days):
    landing.mkdir(exist_ok=True)
    for day in sorted(p.name for p in source.glob("dt=*"))[:days]:
        if not (landing / day).exists():
            shutil.copytree(source / day, landing / day)


def _data_dir(root, source, params, days, online=SQLITE):
    """A data dir with ``days`` days ingested, their feature tables built and the views applied on ``online``."""
    _land(source, root / "landing", days)
    ingest(root / "landing", root / "raw", params.task_graph, root / "quarantine")
    paths = FeastPaths(root / "feast", root / "features", online)
    build_feature_tables(root / "raw", paths.tables, params.task_graph, params.features, VIEWS)
    store.apply(paths, params.features.feature_service, VIEWS)
    return SimpleNamespace(root=root, paths=paths)


@pytest.fixture(scope="module")
def built(tmp_path_factory, source, params):
    return _data_dir(tmp_path_factory.mktemp("online"), source, params, DAYS)


def _online(paths, online, params, rows):
    """The feature service's online values for ``rows`` (user_id, item_id) as one frame."""
    fs = store.open_store(FeastPaths(paths.feast, paths.tables, online))
    got = fs.get_online_features(features=fs.get_feature_service(params.features.feature_service),
                                 entity_rows=rows, full_feature_names=True).to_dict()
    return pd.DataFrame(got).sort_index(axis=1)


def _rows(root, n=40):
    """Sampled (user, item) pairs of the impressions, and one pair never seen."""
    imps = pd.read_parquet(next((root / "raw").glob("dt=*/impressions.parquet")))
    sample = imps.sample(n, random_state=0)
    rows = [{"user_id": int(u), "item_id": int(i)} for u, i in zip(sample["user_id"], sample["item_id"], strict=True)]
    return [*rows, {"user_id": 10**9, "item_id": 10**9}]


def _modes(summary):
    return set(summary["modes"].values())


@pytest.mark.e2e
def test_redis_serves_what_sqlite_serves_and_a_switch_loads_in_full(built, redis_db, params):
    sqlite = built.paths
    assert _modes(store.materialize(sqlite)) == {"full"}
    on_redis = FeastPaths(sqlite.feast, sqlite.tables, redis_db)
    switched = store.materialize(on_redis)
    assert _modes(switched) == {"full"} and switched["store"] == f"redis {redis_db.connection} db {redis_db.db}"
    rows = _rows(built.root)
    from_redis = _online(sqlite, redis_db, params, rows)
    assert from_redis.notna().any().all() and len(from_redis.columns) > 10
    pd.testing.assert_frame_equal(from_redis, _online(sqlite, SqliteOnline(), params, rows), check_exact=True)
    assert _modes(store.materialize(on_redis)) == {"none"}  # the record is Redis's now, and trusted
    assert _modes(store.materialize(sqlite)) == {"full"}  # back to SQLite: its rows may be stale


@pytest.mark.e2e
def test_a_flushed_redis_is_reloaded_in_full(built, redis_db, params):
    on_redis = FeastPaths(built.paths.feast, built.paths.tables, redis_db)
    store.materialize(on_redis)
    rows = _rows(built.root)
    before = _online(built.paths, redis_db, params, rows)
    redis.Redis(host=redis_db.host, port=redis_db.port, db=redis_db.db).flushdb()  # a restarted server: empty
    assert _online(built.paths, redis_db, params, rows).drop(columns=["user_id", "item_id"]).isna().all().all()
    assert _modes(store.materialize(on_redis)) == {"full"}
    pd.testing.assert_frame_equal(_online(built.paths, redis_db, params, rows), before, check_exact=True)


def _latest(tables, view, key, n=25):
    table = read_table(tables, view).sort_values("event_timestamp")
    return table.groupby(key).tail(1).set_index(key).sample(n, random_state=1)


def _assert_serves_latest(paths, online, view, key, features):
    latest = _latest(paths.tables, view, key)
    fs = store.open_store(FeastPaths(paths.feast, paths.tables, online))
    got = fs.get_online_features(features=[f"{view}:{f}" for f in features],
                                 entity_rows=[{key: int(k)} for k in latest.index]).to_dict()
    for f in features:
        np.testing.assert_array_equal(got[f], latest[f].to_numpy(), err_msg=f)


@pytest.mark.e2e
def test_a_new_day_loads_incrementally_into_redis_and_a_replaced_day_in_full(tmp_path, source, redis_db, params):
    data = _data_dir(tmp_path, source, params, DAYS - 1, redis_db)
    on_redis = data.paths
    assert _modes(store.materialize(on_redis)) == {"full"}
    _land(source, tmp_path / "landing", DAYS)
    ingest(tmp_path / "landing", tmp_path / "raw", params.task_graph, tmp_path / "quarantine")
    build_feature_tables(tmp_path / "raw", data.paths.tables, params.task_graph, params.features, VIEWS)
    new_day = store.materialize(on_redis)
    assert new_day["modes"]["user_activity"] == "incremental" and _modes(new_day) <= {"incremental", "none"}
    _assert_serves_latest(data.paths, redis_db, "user_activity", "user_id", ["clicks_7d", "value_sum_30d"])

    # The new day replaced (labels cleared): same timestamps, other values; Redis must take them.
    day = max(tmp_path.joinpath("landing").glob("dt=*"))
    imps = pd.read_parquet(day / "impressions.parquet")
    for col in ("click", "conversion", "value"):
        imps[col] = np.zeros(len(imps), dtype=imps[col].dtype)
    imps.to_parquet(day / "impressions.parquet", index=False)
    ingest(tmp_path / "landing", tmp_path / "raw", params.task_graph, tmp_path / "quarantine")
    build_feature_tables(tmp_path / "raw", data.paths.tables, params.task_graph, params.features, VIEWS)
    assert store.materialize(on_redis)["modes"]["user_activity"] == "full"
    _assert_serves_latest(data.paths, redis_db, "user_activity", "user_id", ["clicks_7d", "value_sum_30d"])

    # Applied on Redis, switched to SQLite: its tables are made before the full load.
    assert _modes(store.materialize(FeastPaths(on_redis.feast, on_redis.tables))) == {"full"}
    _assert_serves_latest(data.paths, SqliteOnline(), "user_activity", "user_id", ["clicks_7d", "value_sum_30d"])


@pytest.mark.e2e
def test_an_unreachable_redis_fails_in_one_line_naming_the_fix(built):
    with socket.socket() as s:  # a loopback port bound, never listened on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        online = RedisOnline(kind="redis", connection=f"127.0.0.1:{port}")
        with pytest.raises(OnlineStoreUnavailable, match=rf"redis 127.0.0.1:{port} db 0 .*infra/redis.sh start"):
            store.materialize(FeastPaths(built.paths.feast, built.paths.tables, online))


def _params_with(tmp_path, online_store):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["features"]["online_store"] = online_store
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_params(path, tuned=False)


@pytest.mark.parametrize(("online_store", "error"), [
    ({"kind": "redis", "connection": "127.0.0.1:6379", "password": "x"}, "features.online_store.password: Extra"),
    ({"kind": "sqlite", "path": "/tmp/online.db"}, "features.online_store.path: Extra"),
    ({"kind": "memcached"}, "features.online_store: a mapping whose kind is sqlite or redis"),
    ({"connection": "127.0.0.1:6379"}, "features.online_store: a mapping whose kind is sqlite or redis"),
    ({"kind": "redis", "connection": "localhost"}, "features.online_store.connection: .*is not host:port"),
], ids=["redis-extra", "sqlite-extra", "unknown-kind", "no-kind", "no-port"])
def test_online_store_config_is_a_strict_union_on_kind(tmp_path, online_store, error):
    with pytest.raises(ParamsError, match=error):
        _params_with(tmp_path, online_store)


def test_the_online_store_is_serving_only_and_keeps_the_params_hash(tmp_path):
    sqlite = _params_with(tmp_path, {"kind": "sqlite"})
    on_redis = _params_with(tmp_path, {"kind": "redis", "connection": "10.0.0.5:6380", "db": 2})
    assert on_redis.features.online_store == RedisOnline(kind="redis", connection="10.0.0.5:6380", db=2)
    assert load_params(REPO / "params.yaml", tuned=False).features.online_store == SqliteOnline()
    assert params_hash(on_redis) == params_hash(sqlite)
    assert store.repo_config(FeastPaths(tmp_path, tmp_path, on_redis.features.online_store)).online_store.model_dump(
        include={"type", "connection_string", "skip_dedup"}) == {
        "type": "redis", "connection_string": "10.0.0.5:6380,db=2", "skip_dedup": True}


def _alive(pid):
    """Whether ``pid`` runs (a zombie left for a container's init to reap does not)."""
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _redis_sh(*args):
    return subprocess.run(["bash", str(REPO / "infra" / "redis.sh"), *args], capture_output=True, text=True,
                          timeout=120)


def test_redis_sh_starts_in_memory_on_a_free_port_and_stops_that_pid(tmp_path, redis_server):
    started = _redis_sh("start", str(tmp_path))
    assert started.returncode == 0, started.stderr
    pid, port = int((tmp_path / "redis.pid").read_text()), int((tmp_path / "redis.port").read_text())
    assert started.stdout.strip() == f"127.0.0.1:{port}" != redis_server
    client = redis.Redis(host="127.0.0.1", port=port)
    assert client.ping() and client.config_get("save") == {"save": ""}
    assert client.config_get("appendonly") == {"appendonly": "no"}
    again = _redis_sh("start", str(tmp_path))
    assert again.returncode == 1 and "running already" in again.stderr
    assert _redis_sh("stop", str(tmp_path)).returncode == 0
    with pytest.raises(redis.ConnectionError):
        client.ping()
    assert not _alive(pid) and not (tmp_path / "redis.pid").exists()
    host, session_port = redis_server.split(":")
    assert redis.Redis(host=host, port=int(session_port)).ping()  # the session's server still runs


@pytest.mark.parametrize("loop_cells", [10**9, 0], ids=["loop", "numpy"])
def test_redis_cells_decode_as_protobuf_reads_them_without_protobuf_for_the_declared_types(monkeypatch, loop_cells):
    """features.online._decode reads doubles and int64 varints from their bytes, cell by cell or all at
    once in numpy; protobuf, the reference, decodes each cell here too. Only the columns holding another
    type may reach protobuf there."""
    from feast.protos.feast.types.Value_pb2 import Value

    from features import online

    rng = np.random.default_rng(3)
    doubles = [0.0, -0.0, 1.5, -2.25, np.inf, -np.inf, np.nan, 1e308, 5e-324, *rng.normal(0, 1e6, 20)]
    ints = [0, 1, -1, 127, 128, 300, 2**31, 2**63 - 1, -(2**63), *rng.integers(-(2**62), 2**62, 20).tolist()]
    n = len(doubles)

    def cell(field: str | None, value: object) -> bytes:
        return Value(**{field: value}).SerializeToString() if field else b""  # b"": no value stored

    columns = {  # dtype, cells
        "double": ("float64", [cell(None, 0) if i % 5 == 0 else cell("double_val", v) for i, v in enumerate(doubles)]),
        "int64": ("int64", [cell(None, 0) if i % 7 == 3 else cell("int64_val", v) for i, v in enumerate(ints[:n])]),
        "empty": ("float64", [b""] * n),
        "int32 declared int64": ("int64", [cell("int32_val", i - 5) for i in range(n)]),
        "int64 declared float64": ("float64", [cell("int64_val", i) for i in range(n)]),
    }
    dtypes = [d for d, _ in columns.values()]
    rows = [[cells[r] for _, cells in columns.values()] for r in range(n)]
    reference = [online._decode_proto(list(cells), d) for d, cells in columns.values()]
    through_protobuf = []
    proto = online._decode_proto
    monkeypatch.setattr(online, "_decode_proto", lambda values, d: through_protobuf.append(d) or proto(values, d))
    monkeypatch.setattr(online, "LOOP_CELLS", loop_cells)
    got = online._decode(dtypes, rows).columns(dtypes)
    for name, dtype, want, have in zip(columns, dtypes, reference, got, strict=True):
        nullable = dtype == "int64" and pd.isna(want).any()  # int64: nullable Int64 only where a value is missing
        assert type(have) is (pd.arrays.IntegerArray if nullable else np.ndarray), name
        assert pd.array(have).equals(pd.array(want)) or np.array_equal(have, want, equal_nan=True), name
    assert np.signbit(got[0][1]) and got[1][7] == 2**63 - 1 and got[1][8] == -(2**63)
    assert through_protobuf == ["int64", "float64"]  # the two mismatched columns, and only them


@pytest.mark.e2e
def test_kept_item_codes_serve_the_current_load_and_prior_only(tmp_path, source, redis_db, params):
    """features.online.RequestInputs: the items' encoded rows kept between requests are read again after a
    load (a new token) and when another prior is in force, none are kept while the store has no token,
    and the inputs always equal those of a reader that keeps nothing."""
    from features.engineering import PRIORS, table_path
    from features.online import OnlineFeatures, RequestInputs
    from models.preprocess import Preprocessor, infer_feature_columns

    data = _data_dir(tmp_path, source, params, DAYS - 1, redis_db)
    store.materialize(data.paths)
    online = OnlineFeatures(data.paths, params.features.feature_service)
    imps = pd.read_parquet(next((tmp_path / "raw").glob("dt=*/impressions.parquet")))
    user, items = int(imps["user_id"].iloc[0]), [int(i) for i in imps["item_id"].unique()[:30]] + [10**9]
    priors = pd.read_parquet(table_path(data.paths.tables, PRIORS)).sort_values("event_timestamp")["event_timestamp"]
    at, earlier = priors.iloc[-1] + pd.Timedelta(hours=1), priors.iloc[-3] + pd.Timedelta(hours=1)
    uniq, take = np.unique(items, return_inverse=True)
    rows = online.entities(online.read(user, uniq.tolist()), user, uniq.tolist(), at, {}, {}).frame(take)
    pre = Preprocessor.fit(rows, infer_feature_columns(rows, params.task_graph), min_count=1)
    kept, fresh = RequestInputs(pre, online, [], 10_000), RequestInputs(pre, online, [], 0)
    reads: list[list[int]] = []
    read = online.read
    online.read = lambda u, i: reads.append(i) or read(u, i)

    def same(when=at, some=items):
        a, b = kept(online, user, some, when, {}, {}), fresh(online, user, some, when, {}, {})
        for name in ("categorical", "numeric", "unknown_items"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        return a

    before = same()
    assert before.unknown_items.tolist() == [False] * 30 + [True]
    same(some=items[:10])
    assert reads[-2] == []  # kept's read: all kept, only the user and the token read
    same(when=earlier)
    assert sorted(reads[-2]) == sorted(items)  # another prior in force: read again whole
    same()
    same(some=items[:10])
    assert reads[-2] == []  # kept again for the prior at ``at``

    _land(source, tmp_path / "landing", DAYS)  # a new day: the items' aggregates move
    ingest(tmp_path / "landing", tmp_path / "raw", params.task_graph, tmp_path / "quarantine")
    build_feature_tables(tmp_path / "raw", data.paths.tables, params.task_graph, params.features, VIEWS)
    store.materialize(data.paths)
    after = same()
    assert sorted(reads[-2]) == sorted(items)  # read again whole: the kept rows were of the old load
    moved = kept.item.numeric
    assert not np.array_equal(before.numeric[:, moved], after.numeric[:, moved]), "no item feature moved"

    client = redis.Redis(host=redis_db.host, port=redis_db.port, db=redis_db.db)
    client.delete(store.LOAD_TOKEN)  # a load running
    same()
    assert kept.kept.key is None and kept.kept.row == {}
    same(some=items[:5])
    assert len(reads[-2]) == 5

    client.script_flush()  # a restarted server holds no script: the reader loads it again
    same(some=items[:5])
    assert client.script_exists(online.redis.script.sha) == [True]


def test_kept_items_stop_growing_at_capacity_and_serve_kept_and_new_rows_together():
    """features.online.KeptItems: rows are kept up to ``capacity`` items; past it a request's new rows are
    served beside the kept ones without being kept; no key keeps nothing; a reset drops every row."""
    from features.online import KeptItems

    kept = KeptItems(capacity=3)
    codes = {i: np.array([[10 * i, 10 * i + 1]]) for i in range(1, 8)}  # an item's encoded row

    def request(items: list[int]) -> np.ndarray:
        rows = kept.find(items)
        missed = [i for i, r in zip(items, rows.tolist(), strict=True) if r < 0]
        new = [np.concatenate([codes[i] for i in missed])] if missed else []
        put = kept.put(missed, new) if missed else None
        if put is not None:
            rows[rows < 0] = put
        return kept.gather(rows, new)[0]

    assert kept.put([1], [codes[1]]) is None and kept.row == {}  # no key yet
    kept.reset("load-1")
    np.testing.assert_array_equal(request([1, 2]), np.concatenate([codes[1], codes[2]]))
    assert sorted(kept.row) == [1, 2]
    np.testing.assert_array_equal(request([3, 1, 4]), np.concatenate([codes[3], codes[1], codes[4]]))
    assert sorted(kept.row) == [1, 2]  # 3 and 4 would pass the capacity of 3: served, not kept
    np.testing.assert_array_equal(request([2, 1]), np.concatenate([codes[2], codes[1]]))
    kept.reset("load-2")
    assert kept.row == {} and kept.find([1, 2]).tolist() == [-1, -1]
