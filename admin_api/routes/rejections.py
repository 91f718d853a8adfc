"""Rejected inputs: list and detail for everyone; the quarantined bytes (PHI) for admins, audited."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from admin_api.context import ApiContext
from admin_api.params import PageNumber, PageSize
from admin_api.security import client_address, principal_of
from dicom_node.services import rejection_admin
from dicom_node.services.rejection_admin import RejectionView
from dicom_node.services.views import Page, PageRequest

router = APIRouter(prefix="/api/v1/rejections", tags=["rejections"])


@router.get("", response_model=Page[RejectionView])
def list_rejections(
    request: Request, code: str | None = None, page: PageNumber = 1, page_size: PageSize = 50
) -> Page[RejectionView]:
    context: ApiContext = request.app.state.context
    return rejection_admin.list_rejections(
        context.node, PageRequest(page=page, page_size=page_size), code=code
    )


@router.get("/{rejection_id}", response_model=RejectionView)
def get_rejection(request: Request, rejection_id: str) -> RejectionView:
    context: ApiContext = request.app.state.context
    return rejection_admin.get_rejection(context.node, rejection_id)


@router.get("/{rejection_id}/bytes", response_class=FileResponse)
def quarantined_bytes(request: Request, rejection_id: str) -> FileResponse:
    context: ApiContext = request.app.state.context
    principal = principal_of(request)
    path = rejection_admin.quarantined_bytes(
        context.node, rejection_id, actor=principal.actor, client_address=client_address(request)
    )
    return FileResponse(path, media_type="application/octet-stream", filename=f"{rejection_id}.bin")
