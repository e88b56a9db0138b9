"""Tell a client its job finished: POST the job as JSON to its ``callback_url``.

Delivery retries on connection errors, DNS failures, timeouts, 408, 429 and 5xx
with exponential backoff (``base_delay_s * 2**try``, capped), up to
``max_tries`` attempts, then gives up. Other 4xx answers are final (the
receiver rejected it). Delivery never raises: the job's outcome does not depend on it.

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
from infra.settings import Settings

log = logging.getLogger("splatpack.callbacks")

DELIVERED = "delivered"
GAVE_UP = "gave_up"
PENDING = "pending"
REFUSED = "refused"  # the SSRF guard refused the URL or an address of its host
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


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
            max_tries=settings.callback_max_tries, policy=CallbackUrlPolicy.from_settings(settings)
        )

    def delays(self) -> list[float]:
        """The waits between tries (``max_tries - 1`` of them)."""
        return [
            min(self.max_delay_s, self.base_delay_s * 2**i)
            for i in range(max(self.max_tries - 1, 0))
        ]

    def deliver(
        self,
        url: str,
        payload: dict[str, Any],
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> tuple[str, int]:
        """POST ``payload`` to ``url``; returns (``delivered`` | ``gave_up`` | ``refused``, tries).

        A try is one attempt to resolve and POST; a refusal ends delivery before its POST.
        """
        try:
            target = self.policy.parse(url)
        except CallbackUrlError as err:
            log.warning("callback url refused, not delivering: %s", err)
            return REFUSED, 0
        headers = {
            "User-Agent": self.user_agent,
            "Host": target.host_header,
            "X-Splatpack-Event": f"job.{payload.get('status', 'finished')}",
            "X-Splatpack-Job-Id": str(payload.get("id", "")),
        }
        delays = self.delays()
        tries = 0
        with httpx.Client(
            timeout=self.timeout_s, follow_redirects=False, trust_env=False, verify=self.verify
        ) as client:
            for attempt in range(max(self.max_tries, 1)):
                tries += 1
                try:
                    code = _post_pinned(client, self.policy.resolve(target), payload, headers)
                except CallbackUrlRefused as err:  # e.g. the name now resolves to 127.0.0.1
                    log.warning("callback to %s refused at delivery: %s", url, err)
                    return REFUSED, tries - 1
                except (CallbackHostUnresolved, httpx.HTTPError) as exc:
                    log.info("callback to %s failed (try %d): %s", url, tries, exc)
                else:
                    if 200 <= code < 300:
                        return DELIVERED, tries
                    if code not in RETRY_STATUS:
                        log.warning("callback to %s answered %d; giving up", url, code)
                        return GAVE_UP, tries
                    log.info("callback to %s answered %d (try %d)", url, code, tries)
                if attempt < len(delays):
                    sleep(delays[attempt])
        return GAVE_UP, tries


def _post_pinned(
    client: httpx.Client,
    target: CallbackTarget,
    payload: dict[str, Any],
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
                json=payload,
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
