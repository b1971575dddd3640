"""The recommendation HTTP service (FastAPI; OpenAPI docs at /docs).

Every response names the model version that produced it and, per item, the history item that explains it.
Unknown users get popularity (GET) or their ad-hoc history (POST); a failure inside the model path degrades to
popularity rather than a 500. Inputs are bounded before they are parsed (body size, JSON nesting: see
`middleware`), typed strictly (no "5" for an integer, no 0 for a boolean, no NaN) and bounded after (k, history
length, id range); every error is one documented body (see `errors`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from pydantic import BaseModel, ConfigDict, Field

from recsys_core.privacy import Tombstones
from recsys_core.schema import MAX_ID
from recsys_core.serving.docs import mount_offline_docs
from recsys_core.serving.errors import ERROR_RESPONSES, JSON_ERROR_REFS, KEYED_RESPONSES, install_error_handlers
from recsys_core.serving.middleware import AccessLog, RequestBounds
from recsys_core.serving.arms import ExperimentArms, Routed
from recsys_core.serving.auth import ApiKeys
from recsys_core.serving.events_api import LiveEvents, events_router
from recsys_core.serving.experiments_api import experiments_router
from recsys_core.serving.privacy_api import ForgottenUsers, poll_tombstones, privacy_router
from recsys_core.serving.ratelimit import RateLimitCollector
from recsys_core.serving.reload import ModelHolder, Reloader, ServedModel
from recsys_core.serving.scorer import OnnxScorer, Recommendations

log = logging.getLogger(__name__)

# A readiness check answers whether a dependency (the model, later the event store) can serve now.
ReadinessCheck = Callable[[], bool]


@dataclass(frozen=True)
class Limits:
    max_k: int = 100
    max_history: int = 200
    max_body_bytes: int = 65_536  # 200 history events take about 8 KB
    max_json_depth: int = 10  # the request nests 3 deep


STRICT = ConfigDict(strict=True, extra="forbid")


class HistoryEvent(BaseModel):
    model_config = STRICT

    item_id: int = Field(ge=0, le=MAX_ID)
    rating: float = Field(default=1.0, ge=-100.0, le=100.0, allow_inf_nan=False)


class HistoryRequest(BaseModel):
    model_config = STRICT

    user_id: int | None = Field(default=None, ge=0, le=MAX_ID, description="known users also use their stored history")
    history: list[HistoryEvent] = Field(default_factory=list, description="recent events, oldest first")
    k: int = Field(default=10, ge=1)
    exclude_seen: bool = True


class Reason(BaseModel):
    item_id: int
    title: str | None
    text: str


class RecommendedItem(BaseModel):
    item_id: int
    score: float
    title: str | None = None
    reason: Reason | None = None


class RecommendationResponse(BaseModel):
    user_id: int | None
    model_version: str
    source: str
    items: list[RecommendedItem]
    request_id: str = Field(description="the X-Request-ID of this response; send it with clicks (POST /events)")
    experiment: str | None = Field(default=None, description="the online experiment that served the user, if any")
    arm: str | None = Field(default=None, description="the user's arm in that experiment (stable per user)")


class SimilarResponse(BaseModel):
    item_id: int
    model_version: str
    items: list[RecommendedItem]


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"] = Field(description="degraded: the last attempt to load a new model failed")
    model_version: str
    model_source: str
    loaded_at: float
    n_users: int
    n_items: int
    providers: list[str]
    swaps: int
    refused: int
    last_error: str | None


class LiveResponse(BaseModel):
    status: Literal["live"]


class ReadyResponse(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, bool]


def request_id_of(request: Request) -> str:
    """The access log's id (a sane incoming X-Request-ID, else a new one), so logs, clicks and exposures agree."""
    return getattr(request.state, "request_id", None) or uuid.uuid4().hex


def _response(
    scorer: OnnxScorer, version: str, recs: Recommendations, request_id: str, routed: Routed | None
) -> RecommendationResponse:
    items = []
    for item_id, score, because in zip(recs.item_ids, recs.scores, recs.reasons or [None] * len(recs.item_ids)):
        reason = None
        if because is not None:
            title = scorer.title(because)
            reason = Reason(item_id=because, title=title, text=f"because you liked {title or f'item {because}'}")
        items.append(RecommendedItem(item_id=item_id, score=score, title=scorer.title(item_id), reason=reason))
    return RecommendationResponse(user_id=recs.user_id, model_version=version, source=recs.source, items=items,
                                  request_id=request_id, experiment=routed and routed.experiment, arm=routed and routed.arm)


class ModelCollector:
    """Model facts read at scrape time, so a hot swap shows up without bookkeeping."""

    def __init__(self, holder: ModelHolder) -> None:
        self.holder = holder

    def collect(self) -> Iterator[Metric]:
        current = self.holder.current
        info = GaugeMetricFamily("recsys_model_info", "Served model (value 1)", labels=["version", "source"])
        info.add_metric([current.version, current.source], 1.0)
        yield info
        yield GaugeMetricFamily("recsys_model_loaded_timestamp_seconds", "When the served model was loaded", value=current.loaded_at)
        reloads = CounterMetricFamily("recsys_model_reloads", "Hot reload outcomes", labels=["outcome"])
        reloads.add_metric(["swapped"], self.holder.swaps)
        reloads.add_metric(["refused"], self.holder.refused)
        yield reloads


class PrometheusMiddleware:
    """Counts requests by route template, method and status, and times them (pure ASGI: no per-request tasks)."""

    def __init__(self, app: Callable[..., Awaitable[None]], requests: Counter, latency: Histogram) -> None:
        self.app, self.requests, self.latency = app, requests, latency

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.requests.labels(route=path, method=scope["method"], status=str(status)).inc()
            self.latency.labels(route=path).observe(time.perf_counter() - started)


def create_app(
    holder: ModelHolder, reloader: Reloader | None = None, limits: Limits = Limits(), live: LiveEvents | None = None,
    keys: ApiKeys = ApiKeys(), readiness: Mapping[str, ReadinessCheck] | None = None, tombstones: Tombstones | None = None,
    experiments: ExperimentArms | None = None,
) -> FastAPI:
    """The service around `holder`; the reloader (if any) starts and stops with the app. With `live`, `POST /events`
    stores events and `GET /recommendations/{user_id}` personalises from them. `readiness` adds checks that
    /health/ready requires besides a loaded model; with `live`, the event store answering is one of them. With
    `experiments`, users are routed to running experiments' arms, exposures logged, and /experiments administers them.
    Users in `tombstones` (default: `recsys_core.privacy.default_privacy_path()`) are served as strangers, outside
    every experiment."""

    async def lifespan(app: FastAPI):  # noqa: ANN202 - FastAPI's lifespan protocol
        for component in (reloader, tombstone_poller, experiments):
            if component is not None:
                component.start()
        yield
        for component in (reloader, tombstone_poller, experiments):
            if component is not None:
                component.stop()  # experiments: flushes every queued exposure into the store

    app = FastAPI(title="recsys", description=__doc__, version="1", lifespan=lifespan, responses=ERROR_RESPONSES,
                  docs_url=None, redoc_url=None)  # fmt: skip
    install_error_handlers(app)
    mount_offline_docs(app)
    registry = CollectorRegistry()
    requests = Counter("recsys_http_requests", "HTTP requests", ["route", "method", "status"], registry=registry)
    latency = Histogram(
        "recsys_http_request_duration_seconds", "HTTP request latency", ["route"], registry=registry,
        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    )
    served = Counter("recsys_recommendations", "Recommendation responses by source", ["source"], registry=registry)
    registry.register(ModelCollector(holder))
    registry.register(RateLimitCollector(keys.buckets))
    app.add_middleware(PrometheusMiddleware, requests=requests, latency=latency)
    app.add_middleware(RequestBounds, max_body_bytes=limits.max_body_bytes, max_json_depth=limits.max_json_depth,
                       path_limits={"/events": live.max_body_bytes} if live is not None else None)  # fmt: skip
    app.add_middleware(AccessLog)  # outermost: every answer, 413s included, gets a request id and a log line
    live_length = Histogram("recsys_live_history_length", "Live events in a GET recommendation's history", registry=registry,
                            buckets=(0, 1, 2, 5, 10, 20, 50, 100, 200))  # fmt: skip
    if live is not None:
        app.include_router(events_router(holder, live, keys, registry))
    forgotten = ForgottenUsers(tombstones or Tombstones(), holder)
    tombstone_poller = poll_tombstones(forgotten, reloader)  # requests never read the file
    app.include_router(privacy_router(forgotten, keys, live.store if live is not None else None))
    if experiments is not None:
        registry.register(experiments.exposures)
        app.include_router(experiments_router(experiments, keys))

    def live_history(scorer: OnnxScorer, user_id: int) -> tuple[list[int], list[float]]:
        """Live events as history; a failing store degrades to the training history alone, never a 500."""
        if live is None:
            return [], []
        try:
            items, ratings = live.history(scorer, user_id)
        except Exception:
            log.exception("event store %s failed; user %s served from the training history", live.store.describe(), user_id)
            return [], []
        live_length.observe(len(items))
        return items, ratings

    dependencies = {**({"event_store": live.store.ping} if live is not None else {}), **(readiness or {})}

    def check_k(k: int) -> None:
        if k > limits.max_k:
            raise HTTPException(422, f"k={k} is above the limit {limits.max_k}")

    def respond(request: Request, model: ServedModel, recs: Recommendations, routed: Routed | None, started: float) -> RecommendationResponse:
        """The stamped response; in an experiment, its exposures queued for the event store (never waited for)."""
        served.labels(source=recs.source).inc()
        response = _response(model.scorer, model.version, recs, request_id_of(request), routed)
        if routed is not None and recs.user_id is not None:
            experiments.log(routed, response.request_id, recs.user_id, recs, 1000 * (time.perf_counter() - started), time.time())
        return response

    @app.get("/recommendations/{user_id}", response_model=RecommendationResponse, responses=KEYED_RESPONSES)
    def recommend_user(
        request: Request,
        user_id: int = Path(ge=0, le=MAX_ID),
        k: int = Query(10, ge=1, le=limits.max_k),
        exclude_seen: bool = True,
        key=Depends(keys.require("read")),  # noqa: ANN001, B008
    ) -> RecommendationResponse:
        started = time.perf_counter()
        stranger = forgotten.contains(user_id)  # the bundle may still hold a forgotten user until the next retrain
        routed = experiments.route(user_id) if experiments is not None and not stranger else None
        model = routed.model if routed else holder.current
        try:
            items, ratings = ([], []) if stranger else live_history(model.scorer, user_id)
            if items:  # training history + live events, both excluded from the results
                recs = model.scorer.recommend_from_history(items, ratings, k=k, user_id=user_id, exclude_seen=exclude_seen)
            elif stranger:
                recs = model.scorer.popular(k, user_id=user_id)
            else:
                recs = model.scorer.recommend([user_id], k=k, exclude_seen=exclude_seen)[0]
        except Exception:  # degrade, never 500: the popularity list needs no model graph
            log.exception("model path failed for user %s; serving popularity", user_id)
            recs = model.scorer.popular(k, user_id=user_id)
        return respond(request, model, recs, routed, started)

    @app.post("/recommendations", response_model=RecommendationResponse, responses=KEYED_RESPONSES)
    def recommend_history(
        http: Request, request: HistoryRequest, key=Depends(keys.require("read"))  # noqa: ANN001, B008
    ) -> RecommendationResponse:
        started = time.perf_counter()
        check_k(request.k)
        if len(request.history) > limits.max_history:
            raise HTTPException(422, f"history has {len(request.history)} events; the limit is {limits.max_history}")
        stranger = forgotten.contains(request.user_id)
        routed = experiments.route(request.user_id) if experiments is not None and not stranger else None
        model = routed.model if routed else holder.current
        item_ids = [event.item_id for event in request.history]
        unknown = [i for i, known in zip(item_ids, model.scorer.items.contains(item_ids)) if not known] if item_ids else []
        if unknown:
            raise HTTPException(422, f"unknown item ids in history: {unknown[:20]}")
        try:
            recs = model.scorer.recommend_from_history(
                item_ids, [event.rating for event in request.history], k=request.k,
                user_id=None if stranger else request.user_id, exclude_seen=request.exclude_seen,
            )
        except Exception:  # degrade, never 500
            log.exception("model path failed for an ad-hoc history; serving popularity")
            recs = model.scorer.popular(request.k, user_id=request.user_id)
        return respond(http, model, recs, routed, started)

    @app.get("/items/{item_id}/similar", response_model=SimilarResponse, responses=KEYED_RESPONSES)
    def similar(
        item_id: int = Path(ge=0, le=MAX_ID), k: int = Query(10, ge=1, le=limits.max_k), key=Depends(keys.require("read"))  # noqa: ANN001, B008
    ) -> SimilarResponse:
        model = holder.current
        if not model.scorer.items.contains([item_id])[0]:
            raise HTTPException(404, f"item {item_id} is not in the catalogue of model {model.version}")
        item_ids, scores = model.scorer.similar_items(item_id, k)
        items = [RecommendedItem(item_id=i, score=s, title=model.scorer.title(i)) for i, s in zip(item_ids, scores)]
        return SimilarResponse(item_id=item_id, model_version=model.version, items=items)

    @app.get("/health", response_model=HealthResponse)
    def health() -> HealthResponse:
        model = holder.current
        return HealthResponse(
            status="degraded" if holder.last_error else "ok", model_version=model.version, model_source=model.source,
            loaded_at=model.loaded_at,
            n_users=len(model.scorer.users), n_items=len(model.scorer.items), providers=model.scorer.providers,
            swaps=holder.swaps, refused=holder.refused, last_error=holder.last_error,
        )

    @app.get("/health/live", response_model=LiveResponse)
    def liveness() -> LiveResponse:
        return LiveResponse(status="live")

    @app.get("/health/ready", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
    def ready() -> JSONResponse:
        checks = {"model": holder.current is not None}
        for name, check in dependencies.items():
            try:
                checks[name] = bool(check())
            except Exception:  # a dependency that cannot even answer is not ready
                log.exception("readiness check %s failed", name)
                checks[name] = False
        body = ReadyResponse(status="ready" if all(checks.values()) else "not ready", checks=checks)
        return JSONResponse(body.model_dump(), status_code=200 if body.status == "ready" else 503)

    @app.get("/metrics", response_class=PlainTextResponse, responses=JSON_ERROR_REFS)
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
