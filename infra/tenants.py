"""Tenants and their API keys.

A key reads ``sp_<prefix>_<secret>``: ``prefix`` (12 hex chars) is public and
indexes the row; only the sha256 of the whole key is stored, and it is compared
in constant time. The plaintext is returned once, by :func:`create_tenant_key`.

Each tenant also has a ``callback_secret`` (made by the database with the tenant,
``infra.models.CALLBACK_SECRET_SQL``) that signs its job callbacks; it is stored
in plain text because signing needs it. :func:`rotate_callback_secret` replaces it.

These functions flush but never commit: the caller owns the transaction
(``with session_factory() as s: key = create_tenant_key(s, "acme"); s.commit()``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from datetime import UTC, datetime

from sqlalchemy import literal_column, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from infra.models import ApiKey, Tenant

KEY_SCHEME = "sp"
PREFIX_HEX_CHARS = 12
TENANT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_KEY_RE = re.compile(r"^sp_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})$")
_DUMMY_DIGEST = hashlib.sha256(b"no such key").hexdigest()


def hash_key(key: str) -> str:
    """sha256 hex digest of a whole plaintext key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_prefix(key: str) -> str | None:
    """The public prefix of a well-formed key, else None."""
    match = _KEY_RE.match(key)
    return match.group(1) if match else None


def validate_tenant_name(name: str) -> str:
    if not TENANT_NAME_RE.match(name):
        raise ValueError(
            f"tenant name {name!r} is invalid; use 1-100 characters from letters, digits, "
            "'.', '_' and '-', starting with a letter or digit"
        )
    return name


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    """The tenant called ``name``, created if missing (safe against concurrent creators)."""
    validate_tenant_name(name)
    session.execute(
        insert(Tenant)
        .values(id=uuid.uuid4(), name=name)
        .on_conflict_do_nothing(index_elements=["name"])
    )
    return session.scalars(select(Tenant).where(Tenant.name == name)).one()


def create_tenant_key(session: Session, tenant_name: str) -> str:
    """Make a new API key for ``tenant_name`` (creating the tenant); return its plaintext once."""
    tenant = get_or_create_tenant(session, tenant_name)
    prefix = secrets.token_hex(PREFIX_HEX_CHARS // 2)
    key = f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(32)}"
    session.add(ApiKey(tenant_id=tenant.id, prefix=prefix, secret_sha256=hash_key(key)))
    session.flush()
    return key


def authenticate(session: Session, key: str) -> Tenant | None:
    """The tenant owning the unrevoked ``key``, else None."""
    prefix = key_prefix(key)
    row = None
    if prefix is not None:
        row = session.execute(
            select(ApiKey, Tenant)
            .join(Tenant, Tenant.id == ApiKey.tenant_id)
            .where(ApiKey.prefix == prefix)
        ).first()
    stored = row[0].secret_sha256 if row is not None else _DUMMY_DIGEST
    matches = hmac.compare_digest(stored, hash_key(key))
    if row is None or not matches or row[0].revoked_at is not None:
        return None
    tenant: Tenant = row[1]
    return tenant


def revoke_key(session: Session, key_or_prefix: str) -> bool:
    """Revoke a key given by its plaintext or its prefix; False when no active key matched."""
    prefix = key_prefix(key_or_prefix) or key_or_prefix
    api_key = session.scalars(
        select(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
    ).first()
    if api_key is None:
        return False
    api_key.revoked_at = datetime.now(UTC)
    session.flush()
    return True


def list_tenant_keys(session: Session, tenant_name: str) -> list[ApiKey]:
    """The keys (revoked too) of a tenant, oldest first; empty for an unknown tenant."""
    return list(
        session.scalars(
            select(ApiKey)
            .join(Tenant, Tenant.id == ApiKey.tenant_id)
            .where(Tenant.name == tenant_name)
            .order_by(ApiKey.created_at)
        )
    )


def rotate_callback_secret(session: Session, tenant_id: uuid.UUID) -> str:
    """Give the tenant a fresh callback secret (the column's default); return it.

    Callbacks signed from then on use it; one already in flight keeps the old one.
    """
    secret = session.scalar(
        update(Tenant)
        .where(Tenant.id == tenant_id)
        .values(callback_secret=literal_column("DEFAULT"))
        .returning(Tenant.callback_secret)
        .execution_options(synchronize_session=False)
    )
    if secret is None:
        raise LookupError(f"tenant {tenant_id} does not exist")
    session.expire_all()
    return secret
