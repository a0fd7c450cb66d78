"""`funnelflow serve`: the champion scores live requests with the features of Feast's online store.

One process holds the champion's ONNX bundle and the Feast store, loaded once. ``POST /score`` takes a
user, its candidate items (at most ``serve.max_candidates``: more is 413) and the request's context;
their features come from one online call, filled by the training set's own FillPolicy
(features/online.py), so the champion scores the inputs training saw. The answer: per candidate every
column of the predictions layout, its rank by expected value and whether the item is unknown; whether
the user is; the champion's version.

Operations: ``/health`` (the process answers), ``/ready`` (champion and store loaded), ``/metrics``
(Prometheus: latency, requests and errors by status, time per stage, the champion, reloads), one JSON
log line per request. A thread polls the registry's champion pointer every ``serve.reload_seconds``: a
new version is loaded in full and checked (checksums, its inputs and outputs against this service's, a
finite score for an unknown user and item) before one reference assignment swaps it in; a request in
flight finishes on the champion it started with. A version that fails a check is refused (logged,
counted) and the old champion keeps serving. Nothing a request sends, and no failure of the store or
of a new bundle, stops the process.
"""
from __future__ import annotations

import gc
import json
import logging
import threading
import time
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import numpy as np
import orjson
import pandas as pd
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StrictInt, create_model
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from features.contract import EARLIEST, FUTURE_SLACK, require_input
from features.engineering import Dtype
from features.online import OnlineFeatures, RequestInputs, StoreUnavailable, context_columns
from features.store import FeastPaths
from flows.params import Params, Paths
from flows.registry import Registry
from models.export import OnnxScorer
from models.networks import prediction_columns

log = logging.getLogger("funnelflow.serve")
Int64 = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]  # the contract's ids and categorical values
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _in_contract_range(at: datetime) -> datetime:
    if not EARLIEST <= at <= pd.Timestamp.now(tz="UTC") + FUTURE_SLACK:
        raise ValueError(f"must be between {EARLIEST:%Y-%m-%d} and tomorrow (UTC), as the contract's timestamps are")
    return at


class Problem(BaseModel):
    """Why a request was not scored."""

    detail: str


class Readiness(BaseModel):
    """Whether the service can score: a champion and the online store loaded."""

    ready: bool
    champion: str | None
    store: bool


def request_model(context: dict[str, Dtype]) -> type[BaseModel]:
    """The ``/score`` body for a training set's context columns: int64 ones are required integers,
    float64 ones numbers or null (the contract's rules); ``event_timestamp`` defaults to now."""
    fields: dict[str, Any] = {
        "event_timestamp": (Annotated[AwareDatetime | None, AfterValidator(lambda t: t and _in_contract_range(t))],
                            Field(None, description="the request's time, with a time zone (default: now)"))}
    for col, dtype in context.items():
        fields[col] = (Int64, ...) if dtype == "int64" else (Annotated[float | None, Field(allow_inf_nan=False)], ...)
    strict = ConfigDict(extra="forbid")
    ctx = create_model("Context", __config__=strict, __doc__="The request's context: every candidate's.", **fields)
    return create_model("ScoreRequest", __config__=strict, __doc__="A user and its candidate items to score.",
                        user_id=(Int64, ...), items=(list[Int64], Field(min_length=1)), context=(ctx, ...))


def response_model(outputs: list[str]) -> type[BaseModel]:
    """The ``/score`` answer: candidates best first, each with the predictions layout's columns."""
    scores: dict[str, Any] = {c: (float, ...) for c in outputs}
    candidate = create_model("Candidate", __doc__="One candidate's scores and rank (1: the best).",
                             item_id=(int, ...), rank=(int, ...), unknown_item=(bool, ...), **scores)
    return create_model("ScoreResponse", __doc__="The candidates ranked, and what scored them.",
                        champion=(str, ...), user_id=(int, ...), unknown_user=(bool, ...),
                        event_timestamp=(datetime, ...), rank_by=(str, ...), candidates=(list[candidate], ...))


def rank_column(outputs: list[str]) -> str:
    """The column candidates are ranked by: the deepest expected value, else the deepest probability."""
    expected = [c for c in outputs if c.endswith("_expected")]
    return (expected or [c for c in outputs if c.startswith("p_")])[-1]


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (two apps in one process stay apart)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.latency = Histogram("funnelflow_serve_request_seconds", "Request latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=reg)
        self.requests = Counter("funnelflow_serve_requests", "Requests by route and status", ["route", "status"],
                                registry=reg)
        self.errors = Counter("funnelflow_serve_errors", "Answers with a status >= 400 by route and status",
                              ["route", "status"], registry=reg)
        self.stages = Histogram("funnelflow_serve_stage_seconds",
                                "Time per stage of /score: fetch (the store read), fill (fills and encoding), model",
                                ["stage"], buckets=LATENCY_BUCKETS, registry=reg)
        self.version = Gauge("funnelflow_serve_champion_version", "The champion's version number (v0003: 3; 0: none)",
                             registry=reg)
        self.champion = Info("funnelflow_serve_champion", "The champion being served", registry=reg)
        self.reloads = Counter("funnelflow_serve_reloads", "Champion loads by outcome: loaded, refused", ["outcome"],
                               registry=reg)

    def request(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        self.latency.labels(route).observe(seconds)
        self.requests.labels(route, str(status)).inc()
        if status >= 400:
            self.errors.labels(route, str(status)).inc()


@dataclass(frozen=True)
class Champion:
    """A loaded, checked champion: swapped in and out whole."""

    version: str
    scorer: OnnxScorer
    inputs: RequestInputs  # its items' encoded rows kept: a new champion starts without any


def _event(event: str, **fields: Any) -> None:
    """One JSON log line."""
    line = {"ts": datetime.now(UTC).isoformat(timespec="milliseconds"), "event": event, **fields}
    log.info(orjson.dumps(line, default=str, option=orjson.OPT_SERIALIZE_NUMPY).decode())


class Service:
    """What one app serves with: its config, the online features, the champion; the reload logic."""

    def __init__(self, params: Params, paths: Paths):
        self.params, self.cfg = params, params.serve
        # The online store only: serving never runs the offline engine (Spark's would load pyspark here).
        self.feast = FeastPaths(paths.feast, paths.features, params.features.online_store)
        self.registry = Registry(paths.registry)
        manifest = json.loads(require_input(paths.training_set / "manifest.json", "training-set").read_text())
        self.context = context_columns(manifest["schema"], [t.column for t in params.task_graph.tasks])
        self.outputs = prediction_columns(params.task_graph)
        self.rank_by = rank_column(self.outputs)
        self.candidate_keys = ("item_id", "rank", "unknown_item", *self.outputs)  # an answer's candidate
        self.metrics = Metrics()
        self.online: OnlineFeatures | None = None
        self.champion: Champion | None = None
        self._refused: tuple[str, Any] | None = None  # the pointer last refused: not reloaded until it moves
        self._store_error: str | None = None  # the last failure logged, per kind
        self._pointer_error: str | None = None
        self._lock = threading.Lock()  # one poll at a time (startup and the reload thread)

    # ---- loading -------------------------------------------------------------------------------
    def poll(self) -> None:
        """Open the online store if it is not, refresh it, and load the champion if the pointer moved."""
        with self._lock:
            if self.online is None:
                self._open_store()
            else:
                try:
                    self.online.refresh()
                except Exception as exc:  # a store that went away: requests answer 503 until it is back
                    _event("store_refresh_failed", error=f"{type(exc).__name__}: {exc}")
            if self.online is not None:
                self._check_champion(self.online)

    def _open_store(self) -> None:
        try:
            online = OnlineFeatures(self.feast, self.params.features.feature_service)
            online.read(0, [0])  # the first call reads Feast's registry and connects (~0.2 s): not in a request
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            if error != self._store_error:  # once per distinct cause, not every poll
                _event("store_unavailable", error=error)
            self._store_error = error
            return
        self.online, self._store_error = online, None
        _event("store_loaded", registry=str(self.feast.registry))

    def _check_champion(self, online: OnlineFeatures) -> None:
        current = self.champion
        try:
            ptr = self.registry.champion()
        except Exception as exc:  # a corrupt pointer: keep serving what is loaded
            if str(exc) != self._pointer_error:  # once per distinct cause, not every poll
                _event("champion_pointer_unreadable", error=str(exc), serving=current and current.version)
            self._pointer_error = str(exc)
            return
        self._pointer_error = None
        if ptr is None or (current is not None and ptr["version"] == current.version):
            return
        key = (ptr["version"], ptr.get("at"))
        if key == self._refused:
            return
        try:
            loaded = self.load(ptr["version"], online)
        except Exception as exc:
            self._refused = key
            self.metrics.reloads.labels("refused").inc()
            _event("champion_refused", version=ptr["version"], reason=f"{type(exc).__name__}: {exc}",
                   serving=current and current.version)
            return
        self.champion = loaded  # the swap: one reference; requests in flight keep the one they read
        self.metrics.reloads.labels("loaded").inc()
        self.metrics.version.set(int(loaded.version[1:]))
        self.metrics.champion.info({"version": loaded.version})
        _event("champion_loaded", version=loaded.version, previous=current and current.version)

    def load(self, version: str, online: OnlineFeatures) -> Champion:
        """Load ``version`` and check it can serve here: checksums (Registry.verify), outputs equal to
        this service's predictions layout, inputs this service has, and a finite score for an unknown
        user and item (through the fills and the OOV slot).

        Raises:
            RegistryError: a file missing or changed.
            ValueError: it would not serve these requests (one line saying why).
        """
        # One onnxruntime thread: a second one gains ~0.1 ms at a hundred rows, and its spinning takes the
        # core that the store and the other replicas use.
        scorer = OnnxScorer(self.registry.verify(version), threads=1)
        if scorer.outputs != self.outputs:
            raise ValueError(f"its outputs {scorer.outputs} are not this service's {self.outputs} (params tasks): "
                             "restart the service with the params it was trained with")
        try:
            inputs = RequestInputs(scorer.preprocessor, online, list(self.context), self.cfg.item_cache)
        except ValueError as exc:
            raise ValueError(f"it reads what this service does not serve ({exc})") from None
        context = {c: 0 if d == "int64" else None for c, d in self.context.items()}
        unknown = online.entities(online.absent(1), 0, [0], pd.Timestamp.now(UTC), context, self.context)
        if not np.isfinite(scorer.run(*inputs.encode(unknown, np.zeros(1, np.intp)))).all():
            raise ValueError("it scores an unknown user and item to non-finite values")
        return Champion(version, scorer, inputs)

    def poll_until(self, stop: threading.Event) -> None:
        """Poll every ``reload_seconds`` until ``stop`` is set; a failure is logged, never fatal."""
        while not stop.wait(self.cfg.reload_seconds):
            try:
                self.poll()
            except Exception as exc:
                _event("poll_failed", error=f"{type(exc).__name__}: {exc}")

    # ---- serving -------------------------------------------------------------------------------
    def readiness(self) -> Readiness:
        """What /ready says."""
        champ = self.champion
        return Readiness(ready=champ is not None and self.online is not None,
                         champion=champ and champ.version, store=self.online is not None)

    def score(self, body: Any, request: Request) -> Response:
        """Score one request (see the module docstring); HTTPException 413 or 503 when it cannot."""
        champ, online = self.champion, self.online  # read once: a swap during the request does not touch it
        if champ is None or online is None:
            raise HTTPException(503, "no champion loaded yet" if online else "the online store is not loaded yet")
        items: list[int] = body.items
        if len(items) > self.cfg.max_candidates:
            raise HTTPException(413, f"items: {len(items)} candidates, at most {self.cfg.max_candidates} "
                                     "(serve.max_candidates): split the request")
        ctx = body.context
        at = pd.Timestamp(ctx.event_timestamp or datetime.now(UTC)).tz_convert(UTC)
        try:
            inputs = champ.inputs(online, body.user_id, items, at, ctx.model_dump(), self.context)
        except StoreUnavailable as exc:
            _event("store_error", error=str(exc))
            raise HTTPException(503, f"the online store is unavailable ({type(exc.__cause__).__name__})") from None
        t0 = time.perf_counter()
        values = champ.scorer.run(inputs.categorical, inputs.numeric)
        seconds = {**inputs.seconds, "model": time.perf_counter() - t0}
        if not np.isfinite(values).all():
            raise RuntimeError(f"champion {champ.version} scored non-finite values")
        for stage, s in seconds.items():
            self.metrics.stages.labels(stage).observe(s)
        request.state.log = {"user_id": body.user_id, "candidates": len(items), "champion": champ.version,
                             "unknown_user": inputs.unknown_user, "unknown_items": int(inputs.unknown_items.sum())}
        order = np.argsort(-values[:, self.outputs.index(self.rank_by)], kind="stable")
        ranked = zip(np.asarray(items)[order].tolist(), range(1, len(items) + 1),
                     inputs.unknown_items[order].tolist(), *values[order].T.tolist(), strict=True)
        candidates = [dict(zip(self.candidate_keys, row, strict=True)) for row in ranked]
        answer = {"champion": champ.version, "user_id": body.user_id, "unknown_user": inputs.unknown_user,
                  "event_timestamp": at.to_pydatetime(), "rank_by": self.rank_by, "candidates": candidates}
        # Encoded here, not through the response model (FastAPI would validate and encode each candidate
        # in Python again); the schema test holds these answers to that model.
        timing = ", ".join(f"{k};dur={v * 1e3:.3f}" for k, v in seconds.items())
        return Response(orjson.dumps(answer, option=orjson.OPT_UTC_Z), media_type="application/json",
                        headers={"Server-Timing": timing})


class Observe:
    """ASGI middleware: times each request, counts it in the metrics and logs one JSON line for it; a
    bug (an exception, not the request's fault) is answered 500 and logged, and the process lives on.
    Plain ASGI, not Starlette's BaseHTTPMiddleware, which adds a task group and a body stream to every
    request (both showed in py-spy profiles of /score)."""

    def __init__(self, app: ASGIApp, service: Service):
        self.app, self.service = app, service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0, status = time.perf_counter(), 0

        async def send_and_see(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_see)
        except Exception as exc:
            _event("error", path=scope["path"], error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
            if status:  # the answer has begun: nothing more can be said on this connection
                raise
            status = 500
            await JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)(
                scope, receive, send)
        seconds = time.perf_counter() - t0
        # The route template (FastAPI's own /openapi.json and /docs set none: their path), so that no
        # label is made per arbitrary URL.
        route = getattr(scope.get("route"), "path", None)
        path = route or (scope["path"] if status != 404 else "unmatched")
        self.service.metrics.request(path, status, seconds)
        _event("request", method=scope["method"], path=path, status=status, ms=round(seconds * 1e3, 3),
               **scope.get("state", {}).get("log", {}))


def create_app(params: Params, paths: Paths) -> FastAPI:
    """The service on ``paths``' data dir, configured by ``params`` (``serve``, ``features``, ``tasks``).

    The champion and the store are loaded at startup (the app's lifespan), then polled by a thread.

    Raises:
        MissingInput: no training set manifest (the request's context columns come from it).
    """
    service = Service(params, paths)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(service.poll)
        # What startup made (Feast, pandas, the champion: ~450k objects) is never garbage; a full
        # collection scanning it takes ~0.4 s, a stall in whichever request triggers it. Frozen: not scanned.
        gc.collect()
        gc.freeze()
        _event("started", **service.readiness().model_dump())
        stop = threading.Event()
        poller = threading.Thread(target=service.poll_until, args=(stop,), name="champion-reload", daemon=True)
        poller.start()
        yield
        stop.set()
        poller.join(timeout=30)
        _event("stopped", champion=service.readiness().champion)

    app = FastAPI(title="funnelflow", version="1", lifespan=lifespan,
                  description="The champion funnel model scoring live requests with Feast online features.")
    app.state.service = service
    ScoreRequest, ScoreResponse = request_model(service.context), response_model(service.outputs)
    problems: dict[int | str, dict[str, Any]] = {
        400: {"model": Problem, "description": "a body that cannot be parsed (not UTF-8 JSON)"},
        413: {"model": Problem, "description": "more candidates than serve.max_candidates"},
        503: {"model": Problem, "description": "no champion loaded, or the online store unavailable"}}

    app.add_middleware(Observe, service=service)

    async def score(body: Any, request: Request) -> Response:
        """Score a user's candidate items with the champion: best first, with the predictions layout."""
        # On the event loop, not in FastAPI's worker threads: a request is a few ms of CPU, and the thread
        # hop added ~2 ms at one candidate (benchmarks/online.py). A process scores one request at a time:
        # more cores take more processes (replicas behind a load balancer).
        return service.score(body, request)

    score.__annotations__["body"] = ScoreRequest  # a model built here: FastAPI reads the body's schema from it
    app.add_api_route("/score", score, methods=["POST"], response_model=ScoreResponse, responses=problems)

    @app.get("/health")
    def health() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/ready", response_model=Readiness, responses={503: {"model": Readiness}})
    def ready() -> JSONResponse:
        """200 once a champion and the online store are loaded, else 503."""
        state = service.readiness()
        return JSONResponse(state.model_dump(), status_code=200 if state.ready else 503)

    @app.get("/metrics", response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    def metrics() -> Response:
        """Prometheus metrics."""
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def configure_logging() -> None:
    """The service's lines as bare JSON on stderr (one per request and per event)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


def serve(params: Params, paths: Paths, host: str, port: int) -> None:
    """Run the service in this process (uvicorn, one worker) until it is stopped (SIGINT/SIGTERM)."""
    import uvicorn

    configure_logging()
    uvicorn.run(create_app(params, paths), host=host, port=port, workers=1, access_log=False, log_level="warning")
