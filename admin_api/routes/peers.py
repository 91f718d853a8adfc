"""Remote AEs: list and read for everyone, add, change and remove for admins, C-ECHO for operators."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, field_validator

from admin_api.context import ApiContext
from admin_api.openapi import errors_documented
from admin_api.params import PageNumber, PageSize
from admin_api.security import client_address, principal_of
from dicom_node.core.settings import parse_ae_title
from dicom_node.services import peers
from dicom_node.services.peers import EchoResult, PeerView
from dicom_node.services.views import Page

router = APIRouter(prefix="/api/v1/peers", tags=["peers"])


Host = Annotated[str, Field(min_length=1, max_length=255, pattern=peers.HOST_PATTERN)]
Port = Annotated[int, Field(ge=1, le=peers.MAX_PORT)]


class PeerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ae_title: str
    host: Host
    port: Port
    push_results: bool = False

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str) -> str:
        return parse_ae_title(value)


class PeerChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: Host | None = None
    port: Port | None = None
    push_results: bool | None = None


@router.get("", response_model=Page[PeerView])
def list_peers(request: Request, page: PageNumber = 1, page_size: PageSize = 50) -> Page[PeerView]:
    context: ApiContext = request.app.state.context
    with context.node.sessions() as session:
        everyone = peers.list_peers(session)  # a handful of AEs: paged in memory, like every other list
    start = (page - 1) * page_size
    return Page(
        items=everyone[start : start + page_size], total=len(everyone), page=page, page_size=page_size
    )


@router.post("", response_model=PeerView, status_code=201, responses=errors_documented(409))
def add_peer(request: Request, body: PeerIn) -> PeerView:
    context: ApiContext = request.app.state.context
    principal = principal_of(request)
    with context.node.sessions.begin() as session:
        return peers.add_peer(
            session,
            ae_title=body.ae_title,
            host=body.host,
            port=body.port,
            push_results=body.push_results,
            now=context.node.clock.now(),
            actor=principal.actor,
            client_address=client_address(request),
        )


@router.get("/{ae_title}", response_model=PeerView)
def get_peer(request: Request, ae_title: str) -> PeerView:
    context: ApiContext = request.app.state.context
    with context.node.sessions() as session:
        return peers.get_peer(session, ae_title=ae_title)


@router.patch("/{ae_title}", response_model=PeerView)
def update_peer(request: Request, ae_title: str, body: PeerChange) -> PeerView:
    context: ApiContext = request.app.state.context
    principal = principal_of(request)
    with context.node.sessions.begin() as session:
        return peers.update_peer(
            session,
            ae_title=ae_title,
            host=body.host,
            port=body.port,
            push_results=body.push_results,
            now=context.node.clock.now(),
            actor=principal.actor,
            client_address=client_address(request),
        )


@router.delete("/{ae_title}", status_code=204, response_class=Response)
def remove_peer(request: Request, ae_title: str) -> None:
    context: ApiContext = request.app.state.context
    principal = principal_of(request)
    with context.node.sessions.begin() as session:
        peers.remove_peer(
            session,
            ae_title=ae_title,
            now=context.node.clock.now(),
            actor=principal.actor,
            client_address=client_address(request),
        )


@router.post("/{ae_title}/echo", response_model=EchoResult)
async def echo_peer(request: Request, ae_title: str) -> EchoResult:
    context: ApiContext = request.app.state.context
    with context.node.sessions() as session:
        peer = peers.get_peer(session, ae_title=ae_title)
    return await run_in_threadpool(peers.echo_peer, peer, calling_ae_title=context.ae_title)
