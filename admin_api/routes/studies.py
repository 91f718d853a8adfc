"""Studies: pseudonymous lists and details; `include_phi=true` (admins) adds the originals, audited."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request

from admin_api.context import ApiContext
from admin_api.params import PageNumber, PageSize
from admin_api.security import client_address, principal_of, require_phi_reader
from dicom_node.services import catalog
from dicom_node.services.catalog import StudyDetail, StudyFilter, StudyView
from dicom_node.services.views import Page, PageRequest

router = APIRouter(prefix="/api/v1/studies", tags=["studies"])


@router.get("", response_model=Page[StudyView])
def list_studies(
    request: Request,
    status: str | None = None,
    modality: str | None = None,
    received_from: datetime | None = None,
    received_to: datetime | None = None,
    include_phi: bool = False,
    page: PageNumber = 1,
    page_size: PageSize = 50,
) -> Page[StudyView]:
    context: ApiContext = request.app.state.context
    principal = require_phi_reader(request) if include_phi else principal_of(request)
    return catalog.list_studies(
        context.node,
        StudyFilter(status=status, modality=modality, received_from=received_from, received_to=received_to),
        PageRequest(page=page, page_size=page_size),
        include_phi=include_phi,
        actor=principal.actor,
        client_address=client_address(request),
    )


@router.get("/{study_id}", response_model=StudyDetail)
def study_detail(request: Request, study_id: str, include_phi: bool = False) -> StudyDetail:
    context: ApiContext = request.app.state.context
    principal = require_phi_reader(request) if include_phi else principal_of(request)
    return catalog.study_detail(
        context.node,
        study_id,
        include_phi=include_phi,
        actor=principal.actor,
        client_address=client_address(request),
    )
