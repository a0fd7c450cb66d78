"""`funnelflow serve` on a real data dir: Feast's online store (SQLite and Redis), the champion's ONNX bundle,
the registry's pointer. Parity with batch scoring, bad requests, unknown entities, hot reload, metrics and
logs, the real CLI process, and schemathesis against the published OpenAPI schema."""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import redis
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from features.engineering import RedisOnline, read_tables_meta
from features.store import FeastPaths
from features.training_set import point_in_time_features
from flows import steps
from flows.params import Paths
from flows.registry import Registry
from flows.serve import create_app
from infra.local_prefect import free_port
from models.digest import sha256_file
from models.export import OnnxScorer
from models.networks import parse_model_config

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
SERVE_DB = 15  # the session Redis server's last database: the online-store tests count up from 1
UNKNOWN = 10**12  # an id no user or item has


def _copy(src: Paths, dst: Path) -> Paths:
    shutil.copytree(src.root, dst)
    return Paths(dst)


@pytest.fixture(scope="module")
def serve_params(params):
    """A small model trained one epoch; a gate on nothing (the gate is not under test here); a fast poll."""
    return params.model_copy(update={
        "train": params.train.model_copy(update={"epochs": 1, "batch_size": 512}),
        "model": parse_model_config({"name": "shared_bottom", "embedding_dim": 4, "hidden": [16, 8], "tower": [8]}),
        "gate": params.gate.model_copy(update={"absolute": [], "change": []}),
        "serve": params.serve.model_copy(update={"max_candidates": 50, "reload_seconds": 0.1}),
    })


@pytest.fixture(scope="module")
def served(pipeline_data, tmp_path_factory, serve_params):
    """A copy of the pipeline's data dir with champion v0001 promoted by the steps. Its Feast registry still
    reads the pipeline's feature tables (the same bytes as the copy's: nothing here rebuilds them); the
    online store is the copy's."""
    paths = _copy(pipeline_data, tmp_path_factory.mktemp("serve") / "data")
    steps.train(serve_params, paths, progress=False)
    for step in (steps.evaluate, steps.score_champion, steps.gate, steps.export, steps.promote):
        step(serve_params, paths)
    assert Registry(paths.registry).champion()["version"] == "v0001"
    return paths


def _on_store(params, online):
    return params.model_copy(update={"features": params.features.model_copy(update={"online_store": online})})


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def store_params(request, served, serve_params):
    """The serving params on each online store; Redis is loaded by `features materialize` first."""
    if request.param == "sqlite":
        return serve_params
    online = RedisOnline(kind="redis", connection=request.getfixturevalue("redis_server"), db=SERVE_DB)
    redis.Redis(host=online.host, port=online.port, db=online.db).flushdb()
    on_redis = _on_store(serve_params, online)
    steps.features_materialize(on_redis, served)
    return on_redis


@pytest.fixture(scope="module")
def client(served, store_params):
    with TestClient(create_app(store_params, served)) as c:
        yield c


def _after_last_feature_row(paths: Paths) -> pd.Timestamp:
    """An instant after every feature row: there the point-in-time join (the latest row at or before t)
    and the online store (the latest row materialized) hold the same rows; before it, an online read
    would see rows the point-in-time join hides, and parity would not be expected."""
    meta = read_tables_meta(paths.features)
    return max(v.time_range[1] for v in meta.views.values() if v.time_range is not None) + pd.Timedelta(hours=1)


def _requests(paths: Paths, at: pd.Timestamp) -> list[dict]:
    """Sampled test impressions as requests: per user its items (and an unknown item), the context of its
    first impression; one unknown user."""
    test = pd.read_parquet(paths.training_set / "test.parquet")
    users = test["user_id"].drop_duplicates().sample(5, random_state=3)
    out = []
    for user in [*users, UNKNOWN]:
        rows = test[test["user_id"] == user].head(12) if user != UNKNOWN else test.head(4)
        ctx = {c: int(rows[c].iloc[0]) for c in ("position", "device", "hour")}
        items = [*dict.fromkeys(map(int, rows["item_id"])), UNKNOWN + 1]
        out.append({"user_id": int(user), "items": items, "context": {**ctx, "event_timestamp": at.isoformat()}})
    return out


def _batch_scores(paths: Paths, params, reqs: list[dict], at: pd.Timestamp) -> pd.DataFrame:
    """The same (user, item, context) rows scored as `funnelflow predict` does: Feast's point-in-time join at
    ``at``, the training set's fills, the champion's OnnxScorer."""
    rows = [{"user_id": r["user_id"], "item_id": i, **{k: v for k, v in r["context"].items() if k != "event_timestamp"}}
            for r in reqs for i in r["items"]]
    imps = pd.DataFrame(rows).assign(impression_id=lambda d: np.arange(len(d), dtype=np.int64),
                                     event_timestamp=pd.Series([at] * len(rows), dtype="datetime64[us, UTC]"))
    feats = point_in_time_features(FeastPaths(paths.feast, paths.features), imps, params.features)
    preds = OnnxScorer(Registry(paths.registry).champion_dir()).predict(feats)
    return feats.merge(preds, on="impression_id")


def _online_rows(online, user_id, items, at, context, context_dtypes):
    """(a row per candidate as the training set lays them out, the Entities it is made of): the rows a
    request's inputs are encoded from (features.online.RequestInputs keeps only their encoding)."""
    uniq, take = np.unique(items, return_inverse=True)
    ents = online.entities(online.read(user_id, uniq.tolist()), user_id, uniq.tolist(), at, context, context_dtypes)
    return ents.frame(take), ents


def test_online_scores_equal_batch_scores(client, served, store_params):
    at = _after_last_feature_row(served)
    reqs = _requests(served, at)
    batch = _batch_scores(served, store_params, reqs, at)
    outputs = ["p_click", "p_conversion", "p_conversion_given_click", "value_given_conversion", "value_expected"]
    online = client.app.state.service.online
    got = []
    for r in reqs:
        res = client.post("/score", json=r)
        assert res.status_code == 200, res.text
        body = res.json()
        assert body["champion"] == "v0001" and body["rank_by"] == "value_expected"
        assert body["unknown_user"] is (r["user_id"] == UNKNOWN)
        cands = body["candidates"]
        assert [c["rank"] for c in cands] == list(range(1, len(r["items"]) + 1))
        assert [c["value_expected"] for c in cands] == sorted((c["value_expected"] for c in cands), reverse=True)
        assert sorted(c["item_id"] for c in cands) == sorted(r["items"])
        assert {c["item_id"]: c["unknown_item"] for c in cands}[UNKNOWN + 1] is True
        got += [{"user_id": r["user_id"], **c} for c in cands]
        # The online rows are the training set's layout and values: the batch rows, column for column.
        ctx = {k: v for k, v in r["context"].items() if k != "event_timestamp"}
        frame = _online_rows(online, r["user_id"], r["items"], at, ctx, client.app.state.service.context)[0]
        expected = batch[batch["user_id"] == r["user_id"]].drop(columns=["impression_id", *outputs])
        assert sorted(frame.columns) == sorted(expected.columns)
        pd.testing.assert_frame_equal(frame, expected[frame.columns].reset_index(drop=True), check_exact=True)
    merged = pd.DataFrame(got).merge(batch, on=["user_id", "item_id"], suffixes=("", "_batch"))
    assert len(merged) == len(batch) == sum(len(r["items"]) for r in reqs)
    for col in outputs:
        np.testing.assert_allclose(merged[col], merged[f"{col}_batch"], rtol=0, atol=1e-5, err_msg=col)
    assert merged["unknown_item"].sum() == len(reqs)  # only the unknown item of each request


def test_unknown_entities_get_the_fills_in_force_at_the_request_time(client, served):
    """An unknown user and item: ids -1 (then the OOV slot), counts 0, numeric profile NaN, rates the
    platform prior of the last day boundary at or before the request (priors.parquet, read here directly)."""
    service = client.app.state.service
    priors = pd.read_parquet(served.features / "priors.parquet").sort_values("event_timestamp")
    for at in (priors["event_timestamp"].iloc[3] + pd.Timedelta(hours=5), _after_last_feature_row(served)):
        frame, ents = _online_rows(service.online, UNKNOWN, [UNKNOWN + 1], at, {"position": 0, "device": 1, "hour": 9},
                                   service.context)
        assert ents.unknown_user and ents.unknown_items.tolist() == [True]
        row = frame.iloc[0]
        in_force = priors[priors["event_timestamp"] <= at].iloc[-1]
        assert row["user_profile__gender"] == row["item_profile__brand"] == -1
        assert np.isnan(row["item_profile__price"]) and row["item_activity__clicks_7d"] == 0.0
        assert row["user_activity__click_rate_7d"] == in_force["prior_click_per_impressions"]
        assert row["item_activity__conversion_per_click_30d"] == in_force["prior_conversion_per_click"]
    res = client.post("/score", json={"user_id": UNKNOWN, "items": [UNKNOWN + 1],
                                      "context": {"position": 0, "device": 1, "hour": 9}})
    assert res.json()["unknown_user"] and res.json()["candidates"][0]["unknown_item"]
    assert 0 < res.json()["candidates"][0]["p_click"] < 1


def test_bad_requests_answer_422_naming_the_field_and_413_for_too_many(client):
    good = {"user_id": 1, "items": [1, 2], "context": {"position": 0, "device": 1, "hour": 9}}
    cases = [
        ({**good, "user_id": "1"}, ["body", "user_id"]),
        ({**good, "items": []}, ["body", "items"]),
        ({**good, "items": [1, 2.5]}, ["body", "items", 1]),
        ({**good, "context": {"position": 0, "device": 1}}, ["body", "context", "hour"]),
        ({**good, "context": {**good["context"], "colour": 3}}, ["body", "context", "colour"]),
        ({**good, "context": {**good["context"], "event_timestamp": "2026-09-30T10:00:00"}},
         ["body", "context", "event_timestamp"]),  # no time zone
        ({**good, "context": {**good["context"], "event_timestamp": "1990-01-01T00:00:00Z"}},
         ["body", "context", "event_timestamp"]),  # outside the contract's range
        ({**good, "user_id": 2**63}, ["body", "user_id"]),  # not an int64
    ]
    for body, loc in cases:
        res = client.post("/score", json=body)
        assert res.status_code == 422, (body, res.text)
        assert [e["loc"] for e in res.json()["detail"]] == [loc], res.text
    assert client.post("/score", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    res = client.post("/score", json={**good, "items": list(range(51))})
    assert res.status_code == 413 and "at most 50 (serve.max_candidates)" in res.json()["detail"]
    assert client.post("/score", json={**good, "items": list(range(50))}).status_code == 200
    assert client.get("/health").json() == {"status": "ok"}


def test_no_champion_answers_503_and_not_ready(pipeline_data, serve_params):
    with TestClient(create_app(serve_params, pipeline_data)) as c:  # through the training set: no registry
        assert c.get("/health").status_code == 200
        ready = c.get("/ready")
        assert ready.status_code == 503 and ready.json() == {"ready": False, "champion": None, "store": True}
        res = c.post("/score", json={"user_id": 1, "items": [1], "context": {"position": 0, "device": 1, "hour": 9}})
        assert res.status_code == 503 and res.json() == {"detail": "no champion loaded yet"}


def _break_online_db(paths: Paths) -> None:
    """Overwrite online.db in place (the open connection reads the same file): no longer a database."""
    (paths.feast / "online.db").write_bytes(b"not a database" * 512)


def _redis_sh(*args: str) -> str:
    return subprocess.run(["bash", str(REPO / "infra" / "redis.sh"), *args], capture_output=True, text=True,
                          check=True, timeout=300).stdout


@pytest.fixture()
def own_redis(tmp_path):
    """A Redis server of this test's own (the test stops it by its PID), as its "127.0.0.1:PORT"."""
    folder = tmp_path / "redis"
    yield _redis_sh("start", str(folder)).split()[-1]
    if (folder / "redis.pid").exists():  # the test failed before it stopped the server (stop removes the file)
        _redis_sh("stop", str(folder))


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_store_unreachable_answers_503_and_the_process_lives_on(kind, served, serve_params, tmp_path, caplog,
                                                               request):
    paths, params = _copy(served, tmp_path / "data"), serve_params
    if kind == "redis":
        params = _on_store(params, RedisOnline(kind="redis", connection=request.getfixturevalue("own_redis")))
        steps.features_materialize(params, paths)
    body = {"user_id": 1, "items": [1, 2], "context": {"position": 0, "device": 1, "hour": 9}}
    with TestClient(create_app(params, paths)) as c:
        assert c.post("/score", json=body).status_code == 200
        if kind == "redis":
            _redis_sh("stop", str(tmp_path / "redis"))  # by its PID
        else:
            _break_online_db(paths)
        with caplog.at_level(logging.INFO, "funnelflow.serve"):
            res = c.post("/score", json=body)
        assert res.status_code == 503 and res.json()["detail"].startswith("the online store is unavailable"), res.text
        assert any(json.loads(r.getMessage())["event"] == "store_error" for r in caplog.records
                   if r.name == "funnelflow.serve")
        assert c.get("/health").status_code == 200
        errors = c.app.state.service.metrics.registry.get_sample_value(
            "funnelflow_serve_errors_total", {"route": "/score", "status": "503"})
        assert errors == 1


def _variant(paths: Paths, out: Path) -> Path:
    """Another champion without another training run (seconds under CI load): v0001's bundle with its
    numeric inputs standardised differently, its checksum in bundle.json updated. It scores differently."""
    shutil.copytree(Registry(paths.registry).champion_dir(), out)
    pre = json.loads((out / "preprocess.json").read_text())
    for column in pre["columns"]["numeric"]:
        pre["mean"][column] += 1.0
    (out / "preprocess.json").write_text(json.dumps(pre))
    meta = json.loads((out / "bundle.json").read_text())
    meta["files"]["preprocess.json"] = sha256_file(out / "preprocess.json")
    (out / "bundle.json").write_text(json.dumps(meta))
    return out


def _wait(condition, seconds=60.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _truncate_onnx(version_dir: Path) -> None:
    onnx = version_dir / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])


def test_hot_reload_swaps_a_new_champion_and_refuses_a_broken_one_without_failing_requests(
        served, serve_params, tmp_path, caplog):
    paths = _copy(served, tmp_path / "data")
    registry = Registry(paths.registry)
    bundle = _variant(paths, tmp_path / "bundle")
    body = {"user_id": 1, "items": [1, 2, 3], "context": {"position": 0, "device": 1, "hour": 9,
                                                          "event_timestamp": "2026-09-25T00:00:00Z"}}
    seen: list[tuple[int, str | None, float | None]] = []
    stop = threading.Event()
    caplog.set_level(logging.INFO, "funnelflow.serve")
    with TestClient(create_app(serve_params, paths)) as c:
        service = c.app.state.service

        def load() -> None:
            while not stop.is_set():
                res = c.post("/score", json=body)
                ok = res.status_code == 200
                seen.append((res.status_code, res.json()["champion"] if ok else None,
                             res.json()["candidates"][0]["p_click"] if ok else None))

        loader = threading.Thread(target=load)
        loader.start()
        try:
            _wait(lambda: len(seen) > 5)
            registry.promote(bundle, {}, {})  # v0002: picked up by the poll, swapped in whole
            _wait(lambda: service.champion.version == "v0002")
            _wait(lambda: sum(s[1] == "v0002" for s in seen) > 5)
            # v0003 is damaged after the registry's own check and before the pointer moves (a disk
            # fault): the poll can only ever see it broken, so the service must refuse it.
            registry.promote(bundle, {}, {}, verify=_truncate_onnx)
            refused = {"outcome": "refused"}
            _wait(lambda: service.metrics.registry.get_sample_value("funnelflow_serve_reloads_total", refused) == 1)
            n = len(seen)
            _wait(lambda: len(seen) > n + 5)  # still serving, on v0002
        finally:
            stop.set()
            loader.join()
        assert service.champion.version == "v0002"
        assert c.get("/ready").json() == {"ready": True, "champion": "v0002", "store": True}
        metrics = c.get("/metrics").text
    assert {s[0] for s in seen} == {200}, "a request failed during a swap"
    versions = [s[1] for s in seen]
    assert versions == sorted(versions) and set(versions) == {"v0001", "v0002"}  # switched once, never back
    assert len({s[2] for s in seen if s[1] == "v0001"} | {s[2] for s in seen if s[1] == "v0002"}) == 2  # two models
    assert 'funnelflow_serve_champion_info{version="v0002"} 1.0' in metrics
    assert "funnelflow_serve_champion_version 2.0" in metrics
    assert 'funnelflow_serve_reloads_total{outcome="loaded"} 2.0' in metrics
    events = [json.loads(r.getMessage()) for r in caplog.records if r.name == "funnelflow.serve"]
    refusal = [e for e in events if e["event"] == "champion_refused"]
    assert len(refusal) == 1 and refusal[0]["version"] == "v0003" and refusal[0]["serving"] == "v0002"
    assert "v0003/model.onnx does not match the sha256" in refusal[0]["reason"]


def test_metrics_and_one_json_log_line_per_request(client, caplog):
    body = {"user_id": 1, "items": [1, 2, 3], "context": {"position": 0, "device": 1, "hour": 9}}
    with caplog.at_level(logging.INFO, "funnelflow.serve"):
        ok = client.post("/score", json=body)
        client.post("/score", json={**body, "items": []})
    assert ok.status_code == 200
    assert [part.split(";")[0] for part in ok.headers["server-timing"].split(", ")] == ["fetch", "fill", "model"]
    events = [json.loads(r.getMessage()) for r in caplog.records if r.name == "funnelflow.serve"]
    lines = [e for e in events if e["event"] == "request"]
    assert [(e["path"], e["status"]) for e in lines] == [("/score", 200), ("/score", 422)]
    assert lines[0]["candidates"] == 3 and lines[0]["champion"] == "v0001" and lines[0]["ms"] > 0
    text = client.get("/metrics").text
    for expected in ('funnelflow_serve_request_seconds_bucket{le="0.005",route="/score"}',
                     'funnelflow_serve_requests_total{route="/score",status="200"}',
                     'funnelflow_serve_errors_total{route="/score",status="422"}',
                     'funnelflow_serve_stage_seconds_count{stage="fetch"}',
                     'funnelflow_serve_champion_info{version="v0001"} 1.0',
                     "funnelflow_serve_champion_version 1.0"):
        assert expected in text, expected
    assert 'status="200"' not in text.split("funnelflow_serve_errors_total")[-1].split("# HELP")[0]


def test_the_cli_serves_over_http_until_stopped_by_pid(served):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "--data-dir", str(served.root), "serve",
                             "--port", str(port)], cwd=REPO, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # imports torch, onnxruntime and Feast: slow on a loaded machine
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the service did not get ready"
            time.sleep(0.2)
        res = httpx.post(f"{url}/score", json={"user_id": 1, "items": [5, 6],
                                               "context": {"position": 0, "device": 1, "hour": 9}}, timeout=10)
        assert res.status_code == 200 and res.json()["champion"] == "v0001", res.text
        assert "/score" in httpx.get(f"{url}/openapi.json", timeout=5).json()["paths"]
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        stderr = proc.communicate(timeout=30)[1]
    # uvicorn shuts down gracefully (the app's "stopped" line), then re-raises the signal it caught.
    assert proc.returncode in (0, -signal.SIGTERM), stderr
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events if e["event"] != "request"] == ["store_loaded", "champion_loaded", "started",
                                                                       "stopped"], stderr
    assert {"event": "request", "method": "POST", "path": "/score", "status": 200} \
        .items() <= next(e for e in events if e.get("path") == "/score").items()


def test_the_published_schema_holds(served, serve_params):
    """schemathesis on /openapi.json, valid and invalid requests alike: no 5xx, every answer as documented."""
    app = create_app(serve_params, served)
    app.state.service.poll()  # what startup does: the store and the champion loaded
    api = schemathesis.openapi.from_asgi("/openapi.json", app)
    modes = schemathesis.GenerationMode
    cases = api.as_strategy(modes.POSITIVE) | api.as_strategy(modes.NEGATIVE)

    @given(case=cases)
    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case):
        case.call_and_validate(checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                       response_schema_conformance])

    check()
    scored = app.state.service.metrics.registry.get_sample_value(
        "funnelflow_serve_requests_total", {"route": "/score", "status": "200"})
    assert scored and scored > 0  # generated requests were scored, not only refused
