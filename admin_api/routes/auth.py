"""Login (a short-lived session token), logout (revokes it), who am I, and changing one's own password."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from admin_api.context import ApiContext
from admin_api.openapi import errors_documented
from admin_api.security import client_address, principal_of
from dicom_node.services import auth

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


class LoginRequest(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=auth.MIN_PASSWORD_LENGTH, max_length=1024)


class TokenOut(BaseModel):
    token: str
    token_type: str = "bearer"
    role: str
    expires_at: datetime | None


class MeOut(BaseModel):
    name: str
    role: str
    kind: str


@router.post("/login", response_model=TokenOut, responses=errors_documented(401, 423))
def login(body: LoginRequest, request: Request) -> TokenOut:
    context: ApiContext = request.app.state.context
    issued = auth.login(
        context.node,
        context.auth,
        username=body.username,
        password=body.password,
        client_address=client_address(request),
    )
    return TokenOut(token=issued.token, role=issued.role, expires_at=issued.expires_at)


@router.post("/logout", status_code=204, response_class=Response, responses=errors_documented(409))
def logout(request: Request) -> None:
    context: ApiContext = request.app.state.context
    auth.logout(context.node, principal_of(request), client_address=client_address(request))


@router.get("/me", response_model=MeOut)
def me(request: Request) -> MeOut:
    principal = principal_of(request)
    return MeOut(name=principal.name, role=principal.role, kind=principal.kind)


@router.post("/password", status_code=204, response_class=Response, responses=errors_documented(403, 409))
def change_password(body: PasswordChange, request: Request) -> None:
    context: ApiContext = request.app.state.context
    auth.change_password(
        context.node,
        principal_of(request),
        current=body.current_password,
        new=body.new_password,
        client_address=client_address(request),
    )
