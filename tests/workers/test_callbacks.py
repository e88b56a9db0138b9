"""Callback delivery against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from workers.callbacks import DELIVERED, GAVE_UP, CallbackDelivery


class Receiver:
    """A tiny HTTP server answering POSTs with a scripted list of status codes."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                receiver.headers.append(dict(self.headers))
                code = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory() -> Iterator[Any]:
    made: list[Receiver] = []

    def make(statuses: list[int]) -> Receiver:
        r = Receiver(statuses)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def test_retries_with_exponential_backoff_until_delivered(receiver_factory: Any) -> None:
    rx = receiver_factory([503, 500, 200])
    waits: list[float] = []
    delivery = CallbackDelivery(max_tries=5, base_delay_s=0.01, max_delay_s=1.0)
    status, tries = delivery.deliver(
        rx.url, {"id": "j1", "status": "succeeded"}, sleep=waits.append
    )
    assert (status, tries) == (DELIVERED, 3)
    assert waits == [0.01, 0.02]
    assert [b["id"] for b in rx.bodies] == ["j1", "j1", "j1"]
    assert rx.headers[0]["X-Splatpack-Event"] == "job.succeeded"


def test_gives_up_after_max_tries(receiver_factory: Any) -> None:
    rx = receiver_factory([500] * 10)
    waits: list[float] = []
    delivery = CallbackDelivery(max_tries=4, base_delay_s=0.01, max_delay_s=0.03)
    status, tries = delivery.deliver(rx.url, {"id": "j"}, sleep=waits.append)
    assert (status, tries) == (GAVE_UP, 4)
    assert len(rx.bodies) == 4
    assert waits == [0.01, 0.02, 0.03]  # capped at max_delay_s


def test_client_errors_are_not_retried(receiver_factory: Any) -> None:
    rx = receiver_factory([404])
    status, tries = CallbackDelivery(max_tries=5, base_delay_s=0.01).deliver(rx.url, {"id": "j"})
    assert (status, tries) == (GAVE_UP, 1)


def test_unreachable_receiver_is_retried_then_given_up() -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    waits: list[float] = []
    delivery = CallbackDelivery(max_tries=3, base_delay_s=0.01, timeout_s=1.0)
    status, tries = delivery.deliver(f"http://127.0.0.1:{port}/x", {"id": "j"}, sleep=waits.append)
    assert (status, tries) == (GAVE_UP, 3)
    assert len(waits) == 2
