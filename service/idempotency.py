"""Idempotency keys bound to their request, as payment APIs do it.

The first request with an ``Idempotency-Key`` stores the sha256 of its
normalised body (:func:`request_hash`: the validated model with defaults filled
in, keys sorted, so key order, whitespace and spelled-out defaults do not
matter) beside the key. A retry with the same key and the same hash replays the
first result (200, ``Idempotent-Replayed: true``); the same key with a different
body is a 409 ``idempotency_key_reused``, and the new body is not acted on.
Rows made before hashes were stored (``idempotency_hash`` null) replay as before.
"""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel

from service.errors import ApiError


def request_hash(body: BaseModel) -> str:
    """sha256 hex of ``body`` in a canonical JSON form."""
    canonical = json.dumps(
        body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def ensure_same_request(stored_hash: str | None, new_hash: str, key: str, kind: str) -> None:
    """A 409 unless the request that made the stored row had the same hash."""
    if stored_hash is not None and stored_hash != new_hash:
        raise ApiError(
            409,
            "idempotency_key_reused",
            f"Idempotency-Key {key!r} was used for a different {kind} request; a retry must "
            "send the same body, or use a new key for a new request",
        )
