"""Jobs: list and detail; retry a dead one or cancel a pending one (operators)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from admin_api.context import ApiContext
from admin_api.openapi import errors_documented
from admin_api.params import PageNumber, PageSize
from admin_api.security import client_address, principal_of
from dicom_node.services import job_admin
from dicom_node.services.job_admin import JobView
from dicom_node.services.views import Page, PageRequest

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])


@router.get("", response_model=Page[JobView])
def list_jobs(
    request: Request,
    status: str | None = None,
    kind: str | None = None,
    study_id: str | None = None,
    page: PageNumber = 1,
    page_size: PageSize = 50,
) -> Page[JobView]:
    context: ApiContext = request.app.state.context
    return job_admin.list_jobs(
        context.node, PageRequest(page=page, page_size=page_size), status=status, kind=kind, study_id=study_id
    )


@router.get("/{job_id}", response_model=JobView)
def get_job(request: Request, job_id: str) -> JobView:
    context: ApiContext = request.app.state.context
    return job_admin.get_job(context.node, job_id)


@router.post("/{job_id}/retry", response_model=JobView, responses=errors_documented(409))
def retry_job(request: Request, job_id: str) -> JobView:
    context: ApiContext = request.app.state.context
    principal = principal_of(request)
    return job_admin.retry_job(
        context.node, job_id, actor=principal.actor, client_address=client_address(request)
    )


@router.post("/{job_id}/cancel", response_model=JobView, responses=errors_documented(409))
def cancel_job(request: Request, job_id: str) -> JobView:
    context: ApiContext = request.app.state.context
    principal = principal_of(request)
    return job_admin.cancel_job(
        context.node, job_id, actor=principal.actor, client_address=client_address(request)
    )
