"""Tell a client its job finished: POST the job as JSON to its ``callback_url``.

Delivery retries on connection errors, timeouts, 408, 429 and 5xx with
exponential backoff (``base_delay_s * 2**try``, capped), up to ``max_tries``
attempts, then gives up. Other 4xx answers are final (the receiver rejected
it). Delivery never raises: the job's outcome does not depend on it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

log = logging.getLogger("splatpack.callbacks")

DELIVERED = "delivered"
GAVE_UP = "gave_up"
PENDING = "pending"
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class CallbackDelivery:
    """How to deliver callbacks; fields are the stage's settings."""

    max_tries: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    timeout_s: float = 10.0
    user_agent: str = "splatpack-callbacks/1"

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
        """POST ``payload`` to ``url``; returns (``delivered`` | ``gave_up``, tries made)."""
        if not url.startswith(("http://", "https://")):
            log.warning("callback url %r is not http(s); not delivering", url)
            return GAVE_UP, 0
        headers = {
            "User-Agent": self.user_agent,
            "X-Splatpack-Event": f"job.{payload.get('status', 'finished')}",
            "X-Splatpack-Job-Id": str(payload.get("id", "")),
        }
        delays = self.delays()
        tries = 0
        with httpx.Client(timeout=self.timeout_s, follow_redirects=False) as client:
            for attempt in range(max(self.max_tries, 1)):
                tries += 1
                try:
                    resp = client.post(url, json=payload, headers=headers)
                except httpx.HTTPError as exc:
                    log.info("callback to %s failed (try %d): %s", url, tries, exc)
                else:
                    if 200 <= resp.status_code < 300:
                        return DELIVERED, tries
                    if resp.status_code not in RETRY_STATUS:
                        log.warning(
                            "callback to %s refused with %d; giving up", url, resp.status_code
                        )
                        return GAVE_UP, tries
                    log.info("callback to %s answered %d (try %d)", url, resp.status_code, tries)
                if attempt < len(delays):
                    sleep(delays[attempt])
        return GAVE_UP, tries


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
