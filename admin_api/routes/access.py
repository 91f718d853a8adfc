"""Who may use the API, for admins: tokens (list, revoke) and users (add, list, read, change)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from admin_api.context import ApiContext
from admin_api.openapi import errors_documented
from admin_api.params import PageNumber, PageSize
from admin_api.security import client_address, principal_of
from dicom_node.services import access_admin, auth
from dicom_node.services.access_admin import TokenView, UserView
from dicom_node.services.views import Page, PageRequest
from storage.models import Role

tokens = APIRouter(prefix="/api/v1/tokens", tags=["access"])
users = APIRouter(prefix="/api/v1/users", tags=["access"])


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=auth.MIN_PASSWORD_LENGTH, max_length=1024)
    role: Role


class UserChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    disabled: bool | None = None
    unlock: bool = Field(default=False, description="lift a lockout and reset the failure counter")
    password: str | None = Field(
        default=None,
        min_length=auth.MIN_PASSWORD_LENGTH,
        max_length=1024,
        description="set a new password (a reset): ends the user's sessions and lifts a lockout",
    )


@tokens.get("", response_model=Page[TokenView])
def list_tokens(
    request: Request,
    kind: str | None = None,
    active: bool | None = None,
    user_id: str | None = None,
    page: PageNumber = 1,
    page_size: PageSize = 50,
) -> Page[TokenView]:
    context: ApiContext = request.app.state.context
    return access_admin.list_tokens(
        context.node, PageRequest(page=page, page_size=page_size), kind=kind, active=active, user_id=user_id
    )


@tokens.post("/{token_id}/revoke", response_model=TokenView, responses=errors_documented(409))
def revoke_token(request: Request, token_id: str) -> TokenView:
    context: ApiContext = request.app.state.context
    return access_admin.revoke_token(
        context.node, token_id, actor=principal_of(request).actor, client_address=client_address(request)
    )


@users.get("", response_model=Page[UserView])
def list_users(
    request: Request,
    role: str | None = None,
    disabled: bool | None = None,
    page: PageNumber = 1,
    page_size: PageSize = 50,
) -> Page[UserView]:
    context: ApiContext = request.app.state.context
    return access_admin.list_users(
        context.node, PageRequest(page=page, page_size=page_size), role=role, disabled=disabled
    )


@users.post("", response_model=UserView, status_code=201, responses=errors_documented(409))
def add_user(request: Request, body: UserIn) -> UserView:
    context: ApiContext = request.app.state.context
    user_id = auth.add_user(
        context.node,
        username=body.username,
        password=body.password,
        role=body.role,
        actor=principal_of(request).actor,
        client_address=client_address(request),
    )
    return access_admin.get_user(context.node, user_id)


@users.get("/{user_id}", response_model=UserView)
def get_user(request: Request, user_id: str) -> UserView:
    context: ApiContext = request.app.state.context
    return access_admin.get_user(context.node, user_id)


@users.patch("/{user_id}", response_model=UserView, responses=errors_documented(409))
def update_user(request: Request, user_id: str, body: UserChange) -> UserView:
    context: ApiContext = request.app.state.context
    return access_admin.update_user(
        context.node,
        user_id,
        role=body.role,
        disabled=body.disabled,
        unlock=body.unlock,
        password=body.password,
        actor=principal_of(request).actor,
        client_address=client_address(request),
    )
