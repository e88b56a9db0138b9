"""/v1/callback-secret: the key that signs this tenant's job callbacks.

Design: one secret per tenant, stored on the tenant row (``tenants.callback_secret``)
in plain text, since signing needs it. The database makes it with the tenant
(random, ``infra.models.CALLBACK_SECRET_SQL``), so every tenant always has one and
every callback is signed. ``GET`` shows it to the tenant's API keys; ``POST``
replaces it (a leaked secret, a routine rotation) and returns the new one.
Rotation takes effect for the next callback try: set the new secret on the
receiver (accepting both for a few minutes covers tries already in flight).
Receivers verify as ``workers.callbacks`` describes: HMAC-SHA256 of
``"<X-Splatpack-Timestamp>." + raw body``, sent as ``X-Splatpack-Signature: sha256=<hex>``.
"""

from __future__ import annotations

from fastapi import APIRouter

from infra.tenants import rotate_callback_secret
from service.auth import TenantDep
from service.deps import SessionDep
from service.schemas import CallbackSecretPublic

router = APIRouter(prefix="/callback-secret", tags=["callbacks"])


@router.get("", response_model=CallbackSecretPublic)
def get_callback_secret(tenant: TenantDep) -> CallbackSecretPublic:
    """The secret that signs your job callbacks."""
    return CallbackSecretPublic(secret=tenant.callback_secret)


@router.post("", response_model=CallbackSecretPublic)
def rotate(tenant: TenantDep, session: SessionDep) -> CallbackSecretPublic:
    """Replace the secret; callbacks are signed with the new one from the next try on."""
    secret = rotate_callback_secret(session, tenant.id)
    session.commit()
    return CallbackSecretPublic(secret=secret)
