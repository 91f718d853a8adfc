"""Liveness, readiness and Prometheus metrics: public, for load balancers and scrapers."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from admin_api.context import ApiContext
from dicom_node.core.metrics_export import latest_metrics

router = APIRouter()


@router.get("/healthz", summary="The API process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


class ReadyOut(BaseModel):
    ready: bool
    database: bool
    migrations_at_head: bool
    scp_listening: bool
    model_loaded: bool
    model_required: bool
    provider: str | None


@router.get(
    "/readyz",
    summary="Database reachable, migrations at head, SCP listening, model state",
    response_model=ReadyOut,
    responses={503: {"model": ReadyOut, "description": "Not ready: the false fields say why"}},
)
def readyz(request: Request) -> JSONResponse:
    context: ApiContext = request.app.state.context
    state = context.readiness()
    body = {"ready": state.ready, **asdict(state)}
    return JSONResponse(body, status_code=200 if state.ready else 503)


@router.get("/metrics", summary="Prometheus metrics of every node process", response_class=PlainTextResponse)
def metrics(request: Request) -> Response:
    context: ApiContext = request.app.state.context
    return Response(latest_metrics(context.collectors), media_type=CONTENT_TYPE_LATEST)
