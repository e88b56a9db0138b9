"""API-key authentication: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from infra.models import Tenant
from infra.tenants import authenticate
from service.deps import SessionDep
from service.errors import ApiError

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer sp_<prefix>_<secret>")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the same key")


def get_current_tenant(
    session: SessionDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    api_key: Annotated[str | None, Security(_api_key_header)],
) -> Tenant:
    """The tenant whose key came with the request, else a 401."""
    key = bearer.credentials if bearer is not None else api_key
    challenge = {"WWW-Authenticate": "Bearer"}
    if not key:
        raise ApiError(
            401,
            "unauthorized",
            "missing API key; send 'Authorization: Bearer <key>' or 'X-API-Key: <key>' "
            "(make one with: splatpack keys create --tenant NAME)",
            headers=challenge,
        )
    tenant = authenticate(session, key.strip())
    if tenant is None:
        raise ApiError(
            401, "unauthorized", "invalid or revoked API key; check the key", headers=challenge
        )
    return tenant


TenantDep = Annotated[Tenant, Depends(get_current_tenant)]
