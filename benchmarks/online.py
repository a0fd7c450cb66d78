"""Online scoring over loopback HTTP: `funnelflow serve` (fetch + fill + model) beside `feast serve` (fetch).

    python -m benchmarks.online                      # a small champion built in a temp dir (serving.py's --fresh)
    python -m benchmarks.online --data-dir data      # the champion and Feast store of a data dir (`make run`)
    python -m benchmarks.online --fresh-dir /tmp/online-bench --seconds 10   # build once there, reuse after

Per online store (``--stores``: SQLite, and Redis started with ``infra/redis.sh`` and stopped by its PID),
the store is materialized (``steps.features_materialize``), then two servers start as subprocesses on
free loopback ports, one process each:

* ``funnelflow serve`` (one uvicorn process) on the data dir, its params.yaml pointing at the store;
* Feast's own feature server, ``feast -c <repo> serve`` (gunicorn, one uvicorn worker, worker restarts
  off) on the same registry and online store: the repo's feature_repo/ for SQLite, a temporary
  feature_store.yaml with the Redis store otherwise.

This process drives the load: ``--concurrency`` asyncio clients (``Connection``), one keep-alive connection
each, closed loop (a client sends its next request when the answer arrives), for ``--seconds`` per cell
after ``--warmup`` seconds, ``--repeats`` times (the two servers in turn; the Redis target counts as met
only if met in every run). A cell is one user x 1, 10 or 100 candidates: ``POST /score`` to
funnelflow, and ``POST /get-online-features`` (feature service ``features.feature_service``, the same
user x item entity rows) to Feast. Users, contexts and items are sampled from the test split (real ids),
``--pool`` requests per cell, sent in turn. Latency is client-side (request sent to answer read); req/s
is answers over the measured wall time. The share of funnelflow's server-side ``/score`` time in each
stage (fetch, fill, model; the rest is HTTP, validation and JSON) comes from the differences of its
``/metrics`` histogram sums over the measured window.

Side effect on ``--data-dir``: each store is materialized there, and ``<data>/feast/online.json``
ends up describing the last store loaded (Redis): the next ``features materialize`` on SQLite reloads
it in full (features/store.py trusts the record only while the store holds its token).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pandas as pd
import psutil
import yaml
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.serving import build_fresh, latency_summary, reuse_fresh
from features.online import context_columns
from flows.params import Params, Paths, load_params
from flows.registry import Registry
from infra.local_prefect import free_port

REPO = Path(__file__).resolve().parents[1]
FEATURE_REPO = REPO / "features" / "feature_repo"
REDIS_SH = REPO / "infra" / "redis.sh"
STAGES = ("fetch", "fill", "model")
SERVERS = ("funnelflow serve", "feast serve")
TARGET_P99_MS = 10.0  # 1 user x 100 candidates on Redis
TARGET_CANDIDATES = 100
JSON = {"content-type": "application/json"}


# ----------------------------------------------------------------------------- data dir
def prepare(args: argparse.Namespace, tmp: Path) -> Paths:
    """The data dir to serve: ``--data-dir`` as it is, else a small champion built by serving.py's
    ``build_fresh`` in ``--fresh-dir`` (reused when it holds one) or in ``tmp``."""
    if args.data_dir is not None:
        paths = Paths(args.data_dir.resolve())
        if Registry(paths.registry).champion_dir() is None:
            raise SystemExit(f"no champion in {paths.registry} (no champion.json): run `make run` first, "
                             "or leave --data-dir out to build a small one")
        if not (paths.training_set / "test.parquet").exists():
            raise SystemExit(f"{paths.training_set}/test.parquet is missing: the requests are sampled from it; "
                             "run `funnelflow training-set` (or `make run`) first")
        return paths
    root = args.fresh_dir.resolve() if args.fresh_dir else tmp / "fresh"
    model = [load_params(args.params).model.name]
    if reuse_fresh(root, model) is None:
        build_fresh(root, model, args.fresh_rows, epochs=1)
    return Paths(root / "data")


def store_params(params_path: Path, online: dict[str, Any], out: Path, item_cache: int | None = None) -> Path:
    """A copy of ``params_path`` whose ``features.online_store`` is ``online`` (and ``serve.item_cache``
    ``item_cache``, unless None): the serve subprocess reads its store from params.yaml."""
    raw = yaml.safe_load(params_path.read_text())
    raw["features"]["online_store"] = online
    if item_cache is not None:
        raw.setdefault("serve", {})["item_cache"] = item_cache
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def feast_repo(params: Params, out: Path) -> Path:
    """The ``feast -c`` repo for ``params``' online store: the repo's own for SQLite; for Redis a copy of
    its feature_store.yaml with the Redis store features/store.py configures (the same server and db)."""
    online = params.features.online_store
    if online.kind == "sqlite":
        return FEATURE_REPO
    raw = yaml.safe_load((FEATURE_REPO / "feature_store.yaml").read_text())  # ${FUNNELFLOW_DATA_DIR} kept
    db = f",db={online.db}" if online.db else ""
    raw["online_store"] = {"type": "redis", "connection_string": f"{online.connection}{db}", "skip_dedup": True}
    out.mkdir(parents=True, exist_ok=True)
    (out / "feature_store.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


# ----------------------------------------------------------------------------- processes
@dataclass
class Server:
    """A server subprocess on loopback: started, waited for, stopped by its PID (and its children's)."""

    name: str
    cmd: list[str]  # ends with its port option: the port is appended
    env: dict[str, str]
    ready: str  # the path answering 200 once it serves
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the process, its output into ``log``."""
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([*self.cmd, str(self.port)], cwd=REPO, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Poll ``ready`` until it answers 200; SystemExit with the log's tail if the process dies or times out."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if httpx.get(self.url + self.ready, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        tail = self.log.read_text(errors="replace").strip().splitlines()[-15:]
        raise SystemExit(f"{self.name} is not ready on {self.url}{self.ready} (exit {self.proc.poll()}): "
                         + "\n".join(tail))

    def stop(self) -> None:
        """SIGTERM the process (gunicorn stops its worker), then kill whatever of it is left, by PID."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            family = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            family = []
        self.proc.terminate()
        _, alive = psutil.wait_procs(family, timeout=15)
        for p in alive:
            p.kill()
        self.proc.wait(timeout=15)


@contextmanager
def running(*servers: Server) -> Iterator[None]:
    """Start ``servers`` together (their start-ups overlap), wait until each is ready, stop all at the end."""
    try:
        for s in servers:
            s.start()
        for s in servers:
            s.wait_ready()
        yield
    finally:
        for s in servers:
            s.stop()


@contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """A Redis server from infra/redis.sh (its own folder, a free port) as "127.0.0.1:PORT", stopped by PID."""
    start = subprocess.run(["bash", str(REDIS_SH), "start", str(folder)], capture_output=True, text=True)
    if start.returncode != 0:
        raise SystemExit(f"infra/redis.sh start {folder} failed: {start.stderr.strip()}")
    try:
        yield start.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(REDIS_SH), "stop", str(folder)], check=True, capture_output=True)


def servers(paths: Paths, params_file: Path, repo: Path, logs: Path, tag: str) -> tuple[Server, Server]:
    """Both servers, `funnelflow serve` and `feast serve`, on the same data dir and online store (not started)."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "FUNNELFLOW_DATA_DIR": str(paths.root), "PYTHONPATH": str(REPO)}
    ours = Server(SERVERS[0], [sys.executable, "-m", "flows.cli", "--params", str(params_file), "--data-dir",
                               str(paths.root), "serve", "--host", "127.0.0.1", "--port"],
                  env, "/ready", logs / f"funnelflow-{tag}.log")
    # One worker like ours; gunicorn's default recycles it every ~1000 requests, which a closed loop would time.
    feast = Server(SERVERS[1], [str(bin_dir / "feast"), "-c", str(repo), "serve", "--host", "127.0.0.1",
                                "--no-access-log", "--workers", "1", "--max-requests", "0", "--port"],
                   env, "/health", logs / f"feast-{tag}.log")
    return ours, feast


# ----------------------------------------------------------------------------- requests
def sample_requests(paths: Paths, params: Params, candidates: int, pool: int, seed: int) -> tuple[list[bytes],
                                                                                                 list[bytes]]:
    """``pool`` requests of one test-split user (with its impression's context) x ``candidates`` test-split
    items, as the two bodies: funnelflow's /score and Feast's /get-online-features for the same rows."""
    test = pd.read_parquet(paths.training_set / "test.parquet")
    manifest = json.loads((paths.training_set / "manifest.json").read_text())
    context = context_columns(manifest["schema"], [t.column for t in params.task_graph.tasks])
    rng = np.random.default_rng(seed)
    items = test["item_id"].unique()
    ours, feast = [], []
    for row in rng.integers(0, len(test), pool):
        imp = test.iloc[int(row)]
        user = int(imp["user_id"])
        picked = [int(i) for i in rng.choice(items, candidates, replace=len(items) < candidates)]
        ctx = {c: (int(imp[c]) if d == "int64" else None if pd.isna(imp[c]) else float(imp[c]))
               for c, d in context.items()}
        ours.append(json.dumps({"user_id": user, "items": picked, "context": ctx}).encode())
        feast.append(json.dumps({"feature_service": params.features.feature_service, "full_feature_names": True,
                                 "entities": {"user_id": [user] * candidates, "item_id": picked}}).encode())
    return ours, feast


def check_found(ours: Server, feast: Server, our_body: bytes, feast_body: bytes) -> None:
    """Both servers answer the same sampled request with stored features: an empty or wrong store
    answers fast and would prove nothing."""
    a = httpx.post(ours.url + "/score", content=our_body, headers=JSON, timeout=30)
    b = httpx.post(feast.url + "/get-online-features", content=feast_body, headers=JSON, timeout=30)
    for server, r in ((ours, a), (feast, b)):
        if r.status_code != 200:
            raise SystemExit(f"{server.name} answered {r.status_code} to a sampled request: {r.text[:300]}")
    scored, fetched = a.json(), b.json()
    ours_found = not scored["unknown_user"] or not all(c["unknown_item"] for c in scored["candidates"])
    present = [n for n, res in zip(fetched["metadata"]["feature_names"], fetched["results"], strict=True)
               if "__" in n and "PRESENT" in res["statuses"]]  # view__feature: not the entity keys
    if not (ours_found and present):
        raise SystemExit(f"no stored features for the sampled test-split entities (funnelflow: {ours_found}, "
                         f"feast: {bool(present)}): is the online store materialized?")


# ----------------------------------------------------------------------------- load
@dataclass
class Load:
    """One measured window: client-side seconds per request, non-200 answers by status, wall seconds."""

    seconds: list[float]
    errors: dict[int, int]
    wall: float


class Connection:
    """One keep-alive HTTP/1.1 connection on asyncio streams: a POST with a JSON body, its status and
    body back (Content-Length answers, which both servers give). Written out because httpx's async
    client spends ~2.5 ms of its own per request here, half of funnelflow's whole /score at one
    candidate; latency is meant to be the servers'."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str):
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        """Connect to ``host:port``."""
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, host)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """(status, body) of one POST."""
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        status = int((await self.reader.readline()).split()[1])
        length = None
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise SystemExit(f"an answer to POST {path} without Content-Length: this client reads only those")
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        """Close the connection."""
        self.writer.close()


async def _client(url: str, bodies: list[bytes], first: int, step: int, until: float, out: Load) -> None:
    where = urlsplit(url)
    conn = await Connection.open(where.hostname or "127.0.0.1", where.port or 80)
    try:
        i, clock = first, time.perf_counter
        while clock() < until:
            body = bodies[i % len(bodies)]
            i += step
            t0 = clock()
            status, _ = await conn.post(where.path, body)
            out.seconds.append(clock() - t0)
            if status != 200:
                out.errors[status] = out.errors.get(status, 0) + 1
    finally:
        conn.close()


async def _drive(url: str, bodies: list[bytes], seconds: float, concurrency: int, first: int) -> Load:
    out = Load([], {}, 0.0)
    t0 = time.perf_counter()
    await asyncio.gather(*(_client(url, bodies, first + k, concurrency, t0 + seconds, out)
                           for k in range(concurrency)))
    out.wall = time.perf_counter() - t0
    return out


def drive(url: str, bodies: list[bytes], seconds: float, concurrency: int, first: int = 0) -> Load:
    """Closed-loop load on ``url`` for ``seconds``: ``concurrency`` clients, client k sending bodies
    first+k, first+k+concurrency, ... (each request of the pool in turn)."""
    return asyncio.run(_drive(url, bodies, seconds, concurrency, first))


def stage_sums(base_url: str) -> dict[str, float]:
    """The summed seconds per stage in funnelflow's /metrics, and the /score route's summed seconds
    (``request``) and count (``count``)."""
    text = httpx.get(base_url + "/metrics", timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "funnelflow_serve_stage_seconds_sum":
                out[s.labels["stage"]] = s.value
            elif s.name.startswith("funnelflow_serve_request_seconds_") and s.labels.get("route") == "/score":
                key = s.name.rpartition("_")[2]
                if key in ("sum", "count"):
                    out["request" if key == "sum" else "count"] = s.value
    return out


def shares(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Between two scrapes: each stage's share of the server-side /score time (``rest``: the remainder,
    HTTP, validation, JSON) and the mean server-side milliseconds per request (``server_ms``)."""
    diff = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in (*STAGES, "request", "count")}
    if diff["request"] <= 0 or diff["count"] <= 0:
        return {}
    out = {s: diff[s] / diff["request"] for s in STAGES}
    out["rest"] = 1.0 - sum(out.values())
    out["server_ms"] = diff["request"] / diff["count"] * 1e3
    return out


def measure(server: Server, path: str, bodies: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    """One cell: warm-up, then the measured window; latency percentiles, req/s and (ours) stage shares."""
    url = server.url + path
    drive(url, bodies, args.warmup, args.concurrency)
    ours = server.name == SERVERS[0]
    before = stage_sums(server.url) if ours else {}
    load = drive(url, bodies, args.seconds, args.concurrency, first=len(bodies) // 2)
    stage = shares(before, stage_sums(server.url)) if ours else {}
    us = latency_summary(load.seconds)
    return {"server": server.name, "requests": us["n"], "errors": load.errors,
            **{k: us[k] / 1e3 for k in ("p50", "p99", "mean")},  # ms
            "rps": us["n"] / load.wall, "shares": stage}


# ----------------------------------------------------------------------------- one store
def bench_store(store: str, paths: Paths, args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    """Materialize ``store``, start both servers on it, and measure every candidate count."""
    with ExitStack() as stack:
        online: dict[str, Any] = {"kind": "sqlite"}
        if store == "redis":
            online = {"kind": "redis", "connection": stack.enter_context(redis_server(tmp / "redis"))}
        params_file = store_params(args.params, online, tmp / f"params-{store}.yaml", args.item_cache)
        params = load_params(params_file, tuned=False)
        from flows import steps

        t0 = time.perf_counter()
        steps.features_materialize(params, paths)
        print(f"{store}: materialized in {time.perf_counter() - t0:.1f} s", flush=True)
        ours, feast = servers(paths, params_file, feast_repo(params, tmp / f"feast-{store}"), tmp, store)
        rows = []
        with running(ours, feast):
            for n in args.candidates:
                our_bodies, feast_bodies = sample_requests(paths, params, n, args.pool, args.seed + n)
                check_found(ours, feast, our_bodies[0], feast_bodies[0])
                for run in range(1, args.repeats + 1):  # the servers in turn: each run sees the machine alike
                    for server, path, bodies in ((ours, "/score", our_bodies),
                                                 (feast, "/get-online-features", feast_bodies)):
                        row = {"store": store, "candidates": n, "run": run, **measure(server, path, bodies, args)}
                        rows.append(row)
                        print(f"{store} x {n}{_run(row, args.repeats)}: {server.name}: p50 {row['p50']:.2f} ms, "
                              f"p99 {row['p99']:.2f} ms, {row['rps']:.0f} req/s", flush=True)
        return rows


def run(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    """The whole benchmark: every store in ``args.stores``, every count in ``args.candidates``."""
    paths = prepare(args, tmp)
    return [row for store in args.stores for row in bench_store(store, paths, args, tmp)]


# ----------------------------------------------------------------------------- report
def _runs(rows: list[dict[str, Any]]) -> int:
    """How many times each cell was measured (``--repeats``)."""
    return max((r["run"] for r in rows), default=1)


def _run(row: dict[str, Any], runs: int) -> str:
    return f" (run {row['run']})" if runs > 1 else ""


def _pct(row: dict[str, Any], key: str) -> str:
    return f"{row['shares'][key]:.0%}" if key in row["shares"] else "-"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One line per store x candidates x server. p50/p99 are client-side; ``server mean ms`` and the stage
    shares are funnelflow's own /score time (its /metrics), so the gap to p50 is HTTP on both ends. A
    ``run`` column when a cell was measured more than once (``--repeats``)."""
    runs = _runs(rows) > 1
    lines = [f"| store | candidates | {'run | ' if runs else ''}server | p50 ms | p99 ms | req/s | errors | "
             "server mean ms | fetch | fill | model | rest |",
             f"|---|---:|{'---:|' if runs else ''}---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        errors = sum(r["errors"].values())
        server = f"{r['shares']['server_ms']:.2f}" if r["shares"] else "-"
        run = f"{r['run']} | " if runs else ""
        lines.append(f"| {r['store']} | {r['candidates']} | {run}{r['server']} | {r['p50']:.2f} | {r['p99']:.2f} | "
                     f"{r['rps']:,.0f} | {errors} | {server} | "
                     + " | ".join(_pct(r, k) for k in (*STAGES, "rest")) + " |")
    return "\n".join(lines)


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's two targets, measured: Redis 1 x 100 p99 (met only if met in every run), and each whole
    score against Feast's fetch in the same run."""
    out = []
    runs = _runs(rows)
    by = {(r["store"], r["candidates"], r["server"], r["run"]): r for r in rows}
    p99s = [r["p99"] for r in rows if (r["store"], r["candidates"], r["server"]) == ("redis", TARGET_CANDIDATES,
                                                                                       SERVERS[0])]
    if p99s:
        met = sum(p < TARGET_P99_MS for p in p99s)
        verdict = "met" if met == len(p99s) else "NOT met"
        out.append(f"target 1 x {TARGET_CANDIDATES} candidates p99 < {TARGET_P99_MS:.0f} ms on redis: {verdict} "
                   f"(p99 {', '.join(f'{p:.2f}' for p in p99s)} ms"
                   + (f"; met in {met} of {len(p99s)} runs)" if len(p99s) > 1 else ")"))
    for (store, n, server, run), ours in by.items():
        feast = by.get((store, n, SERVERS[1], run))
        if server != SERVERS[0] or feast is None:
            continue
        faster = "faster" if ours["p50"] < feast["p50"] and ours["p99"] < feast["p99"] else "NOT faster"
        out.append(f"{store} 1 x {n}{_run(ours, runs)}: whole score {faster} than feast serve's fetch: p50 "
                   f"{ours['p50']:.2f} vs {feast['p50']:.2f} ms ({ours['p50'] / feast['p50']:.2f}x), p99 "
                   f"{ours['p99']:.2f} vs {feast['p99']:.2f} ms")
    return out


def python_speed_ms() -> float:
    """Milliseconds for ``sum(range(10**6))``, best of 5: how fast one core runs Python right now (the
    load average misses a slow or shared CPU); compare runs only at similar values."""
    return min(timeit.repeat("sum(range(10**6))", number=1, repeat=5)) * 1e3


def machine() -> str:
    """The load average and the Python speed, printed beside every table."""
    load = os.getloadavg()
    return (f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs, "
            f"sum(range(10**6)) {python_speed_ms():.0f} ms")


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The table, the machine's state beside it (a busy machine shows in p99 first) and the targets."""
    cache = load_params(args.params, tuned=False).serve.item_cache if args.item_cache is None else args.item_cache
    head = (f"{args.seconds:g} s per cell after {args.warmup:g} s warm-up, {args.concurrency} closed-loop "
            f"client(s), one connection each; funnelflow serve.item_cache {cache}; after: {machine()}")
    return "\n".join([head, "", markdown_table(rows), "", *targets(rows)])


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Parse ``argv``, run, print the report; the rows, for callers."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="a data dir with a champion and a training set (default: build a small one)")
    ap.add_argument("--fresh-dir", type=Path, default=None,
                    help="without --data-dir: build the small champion here and keep it; reused when built "
                         "(default: a temp dir, removed)")
    ap.add_argument("--fresh-rows", type=int, default=50_000)
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml",
                    help="params.yaml the servers run with (its online_store is replaced per store)")
    ap.add_argument("--stores", default="sqlite,redis", type=lambda s: s.split(","))
    ap.add_argument("--candidates", default="1,10,100", type=lambda s: [int(n) for n in s.split(",")])
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per cell")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each cell")
    ap.add_argument("--concurrency", type=int, default=1, help="closed-loop clients, one connection each")
    ap.add_argument("--repeats", type=int, default=1,
                    help="measure each cell this many times, the two servers in turn (this VM's speed moves within "
                         "seconds: one window's p99 says little about the next)")
    ap.add_argument("--pool", type=int, default=256, help="distinct sampled requests per cell, sent in turn")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--item-cache", type=int, default=None,
                    help="funnelflow serve's serve.item_cache (default: --params'); 0 reads every item every time")
    args = ap.parse_args(argv)
    if unknown := set(args.stores) - {"sqlite", "redis"}:
        raise SystemExit(f"--stores: {sorted(unknown)} unknown: use sqlite and/or redis")
    if args.repeats < 1:
        raise SystemExit(f"--repeats: {args.repeats}: measure each cell at least once (1)")
    print(f"before: {machine()}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="online-bench-"))
    try:
        rows = run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(report(rows, args))
    return rows


if __name__ == "__main__":
    main()
