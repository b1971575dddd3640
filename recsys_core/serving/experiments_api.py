"""Keyed admin endpoints (scope `admin`) for online experiments: create (`PUT /experiments/{name}`: the name is the
experiment's identity, never reused), list, stop.

They write the same SQLite definitions as `recsys experiments` (so an experiment survives a service restart and the
CLI and the service agree), then reload the service's arms at once: a created experiment serves its next request, a
stopped one's users go back to the champion immediately.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from recsys_core.experiments.definitions import ExperimentDefinition
from recsys_core.experiments.online import Guardrail
from recsys_core.serving.arms import ExperimentArms
from recsys_core.serving.auth import ApiKeys
from recsys_core.serving.errors import KEYED_RESPONSES, ErrorBody

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class GuardrailModel(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    metric: str = Field(min_length=1, max_length=64, description="latency_p99_ms, fallback_rate or coverage")
    max_relative_change: float = Field(ge=0, allow_inf_nan=False)
    higher_is_better: bool = False


class ExperimentIn(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    arms: dict[str, str] = Field(description="arm -> alias:NAME or version:N; two arms, the control first")
    shares: dict[str, float] | None = Field(default=None, description="traffic share per arm; default equal, summing to 1")
    salt: str = Field(default="", max_length=128, description="assignment salt; default the name")
    primary_metric: str = "ctr"
    guardrails: list[GuardrailModel] | None = Field(default=None, description="default latency_p99_ms, fallback_rate, coverage")
    min_users_per_arm: int = Field(default=200, ge=1)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    mixture_sd: float = Field(default=0.02, gt=0, allow_inf_nan=False)
    attribution_window_s: float = Field(default=3600.0, gt=0, allow_inf_nan=False)


class ExperimentOut(BaseModel):
    name: str
    arms: dict[str, str]
    shares: dict[str, float]
    salt: str
    start_time: float
    primary_metric: str
    guardrails: list[GuardrailModel]
    min_users_per_arm: int
    alpha: float
    mixture_sd: float
    attribution_window_s: float
    status: str
    stopped_at: float | None
    stop_reason: str
    served: bool = Field(description="whether this service routes users to it now (running and every arm loaded)")
    error: str | None = Field(default=None, description="why a running experiment is paused here")


def experiments_router(arms: ExperimentArms, keys: ApiKeys) -> APIRouter:
    router = APIRouter(tags=["experiments"], dependencies=[Depends(keys.require("admin"))], responses=KEYED_RESPONSES)

    def out(definition: ExperimentDefinition) -> ExperimentOut:
        served = any(r.definition.name == definition.name for r in arms.running)
        return ExperimentOut(**{**definition.__dict__, "guardrails": [g.__dict__ for g in definition.guardrails]},
                             served=served, error=arms.errors.get(definition.name))  # fmt: skip

    @router.get("/experiments", response_model=list[ExperimentOut])
    def list_experiments() -> list[ExperimentOut]:
        """Every experiment, running and stopped."""
        return [out(d) for d in arms.store.list()]

    @router.put("/experiments/{name}", response_model=ExperimentOut, status_code=201,
                responses={409: {"model": ErrorBody, "description": "An experiment of that name exists (names are never reused)"}})
    async def create_experiment(body: ExperimentIn, name: str = Path(pattern=NAME)) -> ExperimentOut:
        """Defines and starts an experiment; 422 when an arm's model cannot be found in the registry."""
        shares = body.shares or {arm: 1 / len(body.arms) for arm in body.arms}
        rails = {"guardrails": [Guardrail(**g.model_dump()) for g in body.guardrails]} if body.guardrails is not None else {}
        try:
            definition = ExperimentDefinition(
                name, dict(body.arms), dict(shares), salt=body.salt, primary_metric=body.primary_metric,
                min_users_per_arm=body.min_users_per_arm, alpha=body.alpha, mixture_sd=body.mixture_sd,
                attribution_window_s=body.attribution_window_s, **rails,
            )  # fmt: skip
        except ValueError as error:
            raise HTTPException(422, str(error)) from None
        problems = await run_in_threadpool(arms.check_refs, list(definition.arms.values()))
        if problems:
            raise HTTPException(422, f"experiment {name!r}: arm model not found: {'; '.join(problems)}")
        try:
            created = arms.store.create(definition)
        except ValueError as error:
            raise HTTPException(409, str(error)) from None
        await run_in_threadpool(arms.refresh)
        return out(created)

    @router.post("/experiments/{name}/stop", response_model=ExperimentOut,
                 responses={404: {"model": ErrorBody, "description": "No such experiment"}})
    async def stop_experiment(
        name: str = Path(pattern=NAME), reason: str = Query("", max_length=500, description="kept with the experiment")
    ) -> ExperimentOut:
        """Stops an experiment: its users get the champion from the next request on. Stopping twice is harmless."""
        try:
            stopped = arms.store.stop(name, reason or "stopped through the admin API")
        except KeyError as error:
            raise HTTPException(404, str(error.args[0])) from None
        await run_in_threadpool(arms.refresh)
        return out(stopped)

    return router
