"""The audit trail (admins): events newest first, and a verification of the whole hash chain."""

from __future__ import annotations

from fastapi import APIRouter, Request

from admin_api.context import ApiContext
from admin_api.params import PageNumber, PageSize
from dicom_node.services import audit_trail
from dicom_node.services.audit_trail import AuditEventView, ChainVerification
from dicom_node.services.views import Page, PageRequest

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


@router.get("", response_model=Page[AuditEventView])
def list_events(
    request: Request,
    action: str | None = None,
    object_ref: str | None = None,
    page: PageNumber = 1,
    page_size: PageSize = 50,
) -> Page[AuditEventView]:
    context: ApiContext = request.app.state.context
    return audit_trail.list_events(
        context.node, PageRequest(page=page, page_size=page_size), action=action, object_ref=object_ref
    )


@router.get("/verify", response_model=ChainVerification)
def verify(request: Request) -> ChainVerification:
    context: ApiContext = request.app.state.context
    return audit_trail.verify(context.node)
