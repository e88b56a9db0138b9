"""Tell a client its job finished: POST the job as JSON to its ``callback_url``, signed.

One *try* (:meth:`CallbackDelivery.attempt`) resolves the host, checks it and
POSTs once; the outcome is ``delivered`` (2xx), ``retry`` (connection errors,
DNS failures, timeouts, 408, 425, 429, 5xx), ``failed`` (any other answer: the
receiver rejected it) or ``refused`` (the SSRF guard). The durable queue that
spreads tries over time lives in ``workers.callback_dispatch``;
:meth:`CallbackDelivery.deliver` is the same loop in-process (tries with
exponential backoff ``base_delay_s * 2**try``, capped). Neither raises: a job's
outcome never depends on its callback.

Signing: every request carries ``X-Splatpack-Timestamp`` (Unix seconds, taken at
that try) and ``X-Splatpack-Signature: sha256=<hex>``, the HMAC-SHA256 of
``"<timestamp>." + body`` (the exact request bytes) keyed with the tenant's
callback secret (``tenants.callback_secret``, read with ``GET /v1/callback-secret``
and rotated with ``POST /v1/callback-secret``). A receiver recomputes the HMAC
over the raw body, compares in constant time and rejects old timestamps (replays);
:func:`verify_signature` does exactly that. Delivery is at least once: a receiver
may see a job's callback twice (``X-Splatpack-Job-Id`` identifies it).

SSRF guard (``infra.callback_urls``, the same policy the API applied at submit):
before every try the host is resolved again and every address checked; a
refused URL or address ends delivery at once with ``refused`` (not retried). The
request goes to the checked address itself (the URL's host is kept in the
``Host`` header and as the TLS server name, so certificates are verified against
it), which closes the window in which a rebinding DNS answer could send it
elsewhere. Redirects are never followed (a 3xx is a final answer, so a receiver
cannot bounce the POST to an internal address), proxy settings from the
environment are ignored, and the response body is never read.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from infra.callback_urls import (
    CallbackHostUnresolved,
    CallbackTarget,
    CallbackUrlError,
    CallbackUrlPolicy,
    CallbackUrlRefused,
)
from infra.models import CallbackStatus
from infra.settings import Settings

log = logging.getLogger("splatpack.callbacks")

DELIVERED = CallbackStatus.delivered.value
FAILED = CallbackStatus.failed.value  # tries used up, or the receiver answered no
PENDING = CallbackStatus.pending.value
REFUSED = CallbackStatus.refused.value  # the SSRF guard refused the URL or an address of its host
RETRY = "retry"  # a try's outcome only: worth trying again later
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})

SIGNATURE_HEADER = "X-Splatpack-Signature"
TIMESTAMP_HEADER = "X-Splatpack-Timestamp"
SIGNATURE_TOLERANCE_S = 300  # how old a timestamp :func:`verify_signature` accepts


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Splatpack-Signature`` value: ``sha256=`` + hex HMAC of ``"<timestamp>." + body``."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify_signature(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    now_s: float | None = None,
    tolerance_s: float = SIGNATURE_TOLERANCE_S,
) -> bool:
    """What a receiver checks: the signature matches and the timestamp is recent."""
    if not (timestamp.isascii() and timestamp.isdigit()):
        return False
    age_s = (time.time() if now_s is None else now_s) - int(timestamp)
    if abs(age_s) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def encode_body(payload: dict[str, Any]) -> bytes:
    """The request body: compact JSON, UTF-8 (the bytes the signature covers)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class TryResult:
    """What one try got: ``delivered`` | ``retry`` | ``failed`` | ``refused``, and why."""

    outcome: str
    detail: str


@dataclass(frozen=True)
class CallbackDelivery:
    """How to deliver callbacks; fields are the stage's settings."""

    max_tries: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    timeout_s: float = 10.0
    user_agent: str = "splatpack-callbacks/1"
    policy: CallbackUrlPolicy = field(default_factory=CallbackUrlPolicy)
    # TLS trust: True (certifi's CAs) or an SSL context (e.g. a private CA)
    verify: bool | ssl.SSLContext = True

    @classmethod
    def from_settings(cls, settings: Settings) -> CallbackDelivery:
        """Delivery with the operator's ``callback_*`` settings."""
        return cls(
            max_tries=settings.callback_max_tries,
            base_delay_s=settings.callback_base_delay_s,
            max_delay_s=settings.callback_max_delay_s,
            timeout_s=settings.callback_timeout_s,
            policy=CallbackUrlPolicy.from_settings(settings),
        )

    def backoff_s(self, tries: int) -> float:
        """The wait after the ``tries``-th failed try (1-based)."""
        return min(self.max_delay_s, self.base_delay_s * 2 ** max(tries - 1, 0))

    def delays(self) -> list[float]:
        """The waits between tries (``max_tries - 1`` of them)."""
        return [self.backoff_s(i + 1) for i in range(max(self.max_tries - 1, 0))]

    def _client(self) -> httpx.Client:
        return httpx.Client(
            timeout=self.timeout_s, follow_redirects=False, trust_env=False, verify=self.verify
        )

    def attempt(
        self,
        url: str,
        payload: dict[str, Any],
        *,
        secret: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> TryResult:
        """One try: check ``url``, POST ``payload`` (signed with ``secret`` when given)."""
        try:
            target = self.policy.parse(url)
        except CallbackUrlError as err:
            return TryResult(REFUSED, f"callback url refused: {err}")
        with self._client() as client:
            return self._try(client, target, payload, secret, clock)

    def deliver(
        self,
        url: str,
        payload: dict[str, Any],
        *,
        secret: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> tuple[str, int]:
        """Try ``url`` until delivered, refused, rejected or ``max_tries`` are spent, sleeping
        between tries; returns (``delivered`` | ``failed`` | ``refused``, tries).

        A try is one attempt to resolve and POST; a refusal ends delivery before its POST.
        """
        try:
            target = self.policy.parse(url)
        except CallbackUrlError as err:
            log.warning("callback url refused, not delivering: %s", err)
            return REFUSED, 0
        delays = self.delays()
        with self._client() as client:
            for index in range(max(self.max_tries, 1)):
                result = self._try(client, target, payload, secret, clock)
                if result.outcome == REFUSED:
                    return REFUSED, index
                if result.outcome != RETRY:
                    return result.outcome, index + 1
                if index < len(delays):
                    sleep(delays[index])
        return FAILED, max(self.max_tries, 1)

    def _try(
        self,
        client: httpx.Client,
        target: CallbackTarget,
        payload: dict[str, Any],
        secret: str | None,
        clock: Callable[[], float],
    ) -> TryResult:
        url = target.url
        body = encode_body(payload)
        headers = {
            "User-Agent": self.user_agent,
            "Host": target.host_header,
            "Content-Type": "application/json",
            "X-Splatpack-Event": f"job.{payload.get('status', 'finished')}",
            "X-Splatpack-Job-Id": str(payload.get("id", "")),
        }
        if secret is not None:
            timestamp = str(int(clock()))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = sign(secret, timestamp, body)
        try:
            code = _post_pinned(client, self.policy.resolve(target), body, headers)
        except CallbackUrlRefused as err:  # e.g. the name now resolves to 127.0.0.1
            log.warning("callback to %s refused at delivery: %s", url, err)
            return TryResult(REFUSED, f"refused at delivery: {err}")
        except (CallbackHostUnresolved, httpx.HTTPError) as exc:
            log.info("callback to %s failed: %s", url, exc)
            return TryResult(RETRY, f"{type(exc).__name__}: {exc}"[:500])
        if 200 <= code < 300:
            return TryResult(DELIVERED, f"answered {code}")
        if code in RETRY_STATUS:
            log.info("callback to %s answered %d", url, code)
            return TryResult(RETRY, f"answered {code}")
        log.warning("callback to %s answered %d; not retrying", url, code)
        return TryResult(FAILED, f"answered {code}")


def _post_pinned(
    client: httpx.Client,
    target: CallbackTarget,
    body: bytes,
    headers: dict[str, str],
) -> int:
    """POST to the target's checked addresses in turn (the next one only when connecting
    fails, as a resolver-driven client would); the status code of the first answer."""
    extensions: dict[str, Any] = {}
    if target.scheme == "https" and not target.host_is_ip:
        extensions["sni_hostname"] = target.host.rstrip(".")  # and the name the cert must match
    last_error: httpx.HTTPError | None = None
    for address in target.addresses:
        try:
            with client.stream(
                "POST",
                target.pinned_url(address),
                content=body,
                headers=headers,
                extensions=extensions,
            ) as resp:
                return resp.status_code
        except httpx.ConnectError as exc:
            last_error = exc
    if last_error is None:
        raise CallbackHostUnresolved(f"host {target.host!r} has no addresses")
    raise last_error


def job_payload(job: Any) -> dict[str, Any]:
    """The JSON body of a callback: the job's public fields."""

    def iso(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    def enum_value(value: Any) -> Any:
        return getattr(value, "value", value)

    return {
        "id": str(job.id),
        "tenant_id": str(job.tenant_id),
        "batch_id": str(job.batch_id) if job.batch_id else None,
        "status": enum_value(job.status),
        "phase": enum_value(job.phase),
        "input_uri": job.input_uri,
        "preset": job.preset,
        "quality": job.quality,
        "gop": job.gop,
        "gops_total": job.gops_total,
        "gops_done": job.gops_done,
        "frames_total": job.frames_total,
        "frames_done": job.frames_done,
        "attempts": job.attempts,
        "error_code": job.error_code,
        "error_message": job.error_message,
        "outputs": dict(job.outputs or {}),
        "report": dict(job.report or {}),
        "user_metadata": dict(job.user_metadata or {}),
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
    }
