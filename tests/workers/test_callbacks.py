"""Callback delivery against a real HTTP(S) server on 127.0.0.1.

The receivers listen on loopback, which the SSRF guard refuses by default, so
tests that expect a delivery allow private addresses explicitly (``LOCAL_OK``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from infra.callback_urls import CallbackUrlPolicy
from infra.models import JobStatus
from tests.workers.helpers import WorkerEnv, update_job
from workers.callbacks import DELIVERED, GAVE_UP, REFUSED, CallbackDelivery

LOCAL_OK = CallbackUrlPolicy(allow_private=True)

Answer = int | tuple[int, dict[str, str]]


class Receiver:
    """A tiny HTTP(S) server answering POSTs with a scripted list of status codes
    (or ``(status, headers)`` pairs)."""

    def __init__(self, statuses: list[Answer], tls: ssl.SSLContext | None = None) -> None:
        self.statuses = list(statuses)
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                receiver.headers.append(dict(self.headers))
                answer = receiver.statuses.pop(0) if receiver.statuses else 200
                code, extra = answer if isinstance(answer, tuple) else (answer, {})
                self.send_response(code)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url_for(self, host: str) -> str:
        """This receiver's URL with ``host`` in place of 127.0.0.1."""
        return self.url.replace("127.0.0.1", host, 1)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory() -> Iterator[Any]:
    made: list[Receiver] = []

    def make(statuses: list[Answer], tls: ssl.SSLContext | None = None) -> Receiver:
        r = Receiver(statuses, tls)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def test_retries_with_exponential_backoff_until_delivered(receiver_factory: Any) -> None:
    rx = receiver_factory([503, 500, 200])
    waits: list[float] = []
    delivery = CallbackDelivery(max_tries=5, base_delay_s=0.01, max_delay_s=1.0, policy=LOCAL_OK)
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
    delivery = CallbackDelivery(max_tries=4, base_delay_s=0.01, max_delay_s=0.03, policy=LOCAL_OK)
    status, tries = delivery.deliver(rx.url, {"id": "j"}, sleep=waits.append)
    assert (status, tries) == (GAVE_UP, 4)
    assert len(rx.bodies) == 4
    assert waits == [0.01, 0.02, 0.03]  # capped at max_delay_s


def test_client_errors_are_not_retried(receiver_factory: Any) -> None:
    rx = receiver_factory([404])
    delivery = CallbackDelivery(max_tries=5, base_delay_s=0.01, policy=LOCAL_OK)
    status, tries = delivery.deliver(rx.url, {"id": "j"})
    assert (status, tries) == (GAVE_UP, 1)


def test_unreachable_receiver_is_retried_then_given_up() -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    waits: list[float] = []
    delivery = CallbackDelivery(max_tries=3, base_delay_s=0.01, timeout_s=1.0, policy=LOCAL_OK)
    status, tries = delivery.deliver(f"http://127.0.0.1:{port}/x", {"id": "j"}, sleep=waits.append)
    assert (status, tries) == (GAVE_UP, 3)
    assert len(waits) == 2


# ------------------------------------------------------------------ SSRF guard


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]", "2130706433", "0.0.0.0"]
)
def test_default_policy_refuses_loopback_at_delivery(receiver_factory: Any, host: str) -> None:
    """A URL accepted earlier (or written straight into the row) is checked again."""
    rx = receiver_factory([200])
    waits: list[float] = []
    status, tries = CallbackDelivery(max_tries=3, base_delay_s=0.01).deliver(
        rx.url_for(host), {"id": "j"}, sleep=waits.append
    )
    assert (status, tries) == (REFUSED, 0)
    assert rx.bodies == [] and waits == []  # never contacted, not retried


@pytest.mark.parametrize(
    "url",
    [
        "http://user:secret@example.com/hook",
        "file:///etc/passwd",
        "gopher://example.com/x",
        "http://example.com/" + "a" * 3000,
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/x",
    ],
)
def test_malformed_or_internal_urls_are_refused_without_a_request(url: str) -> None:
    assert CallbackDelivery(max_tries=2).deliver(url, {"id": "j"}) == (REFUSED, 0)


def test_a_hostname_is_resolved_checked_and_pinned(receiver_factory: Any) -> None:
    """``localhost`` resolves to loopback: refused by default; allowed, the request goes to
    the checked address with the URL's host in the Host header."""
    rx = receiver_factory([200])
    url = rx.url_for("localhost")
    assert CallbackDelivery(max_tries=2).deliver(url, {"id": "j"}) == (REFUSED, 0)
    assert rx.bodies == []

    allowed = CallbackDelivery(max_tries=2, policy=LOCAL_OK).deliver(url, {"id": "j"})
    assert allowed == (DELIVERED, 1)
    assert rx.headers[0]["Host"] == f"localhost:{rx.port}"


def test_an_allowed_cidr_admits_its_addresses_only(receiver_factory: Any) -> None:
    rx = receiver_factory([200])
    elsewhere = CallbackUrlPolicy(allowed_networks=(ipaddress.ip_network("10.0.0.0/8"),))
    assert CallbackDelivery(max_tries=1, policy=elsewhere).deliver(rx.url, {}) == (REFUSED, 0)
    loopback = CallbackUrlPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),))
    assert CallbackDelivery(max_tries=1, policy=loopback).deliver(rx.url, {}) == (DELIVERED, 1)


def test_redirects_are_not_followed(receiver_factory: Any) -> None:
    """A receiver cannot bounce the POST elsewhere (e.g. to an internal address)."""
    inner = receiver_factory([200])
    outer = receiver_factory([(307, {"Location": inner.url}), (302, {"Location": inner.url})])
    delivery = CallbackDelivery(max_tries=3, base_delay_s=0.01, policy=LOCAL_OK)
    assert delivery.deliver(outer.url, {"id": "j"}) == (GAVE_UP, 1)
    assert len(outer.bodies) == 1 and inner.bodies == []


def _tls_pair(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context with a cert for ``name`` signed by a fresh CA, client trusting that CA)."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def cert(
        subject: str, key: Any, issuer: str, signer: Any, *, ca: bool, san: str | None = None
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san is not None:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = cert("test-ca", ca_key, "test-ca", ca_key, ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = cert(name, leaf_key, "test-ca", ca_key, ca=False, san=name)
    cert_path, key_path = tmp_path / "leaf.pem", tmp_path / "leaf.key"
    cert_path.write_bytes(leaf_cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(
        cadata=ca_cert.public_bytes(serialization.Encoding.PEM).decode()
    )
    return server, client


def test_https_is_pinned_but_verified_against_the_url_host(
    receiver_factory: Any, tmp_path: Path
) -> None:
    """The connection goes to the checked IP, yet the certificate must match the URL's host."""
    server_tls, trust = _tls_pair(tmp_path, "localhost")
    rx = receiver_factory([200, 200], tls=server_tls)
    delivery = CallbackDelivery(max_tries=1, policy=LOCAL_OK, verify=trust)
    assert delivery.deliver(rx.url_for("localhost"), {"id": "j"}) == (DELIVERED, 1)
    assert rx.headers[0]["Host"] == f"localhost:{rx.port}"
    # the same server by IP: its certificate does not name 127.0.0.1, so verification fails
    assert delivery.deliver(rx.url, {"id": "j"}) == (GAVE_UP, 1)
    assert len(rx.bodies) == 1


def test_runner_records_a_refused_callback_and_keeps_the_job(
    worker_env: WorkerEnv, receiver_factory: Any
) -> None:
    """Default settings: a loopback callback is refused at delivery, the job stays succeeded."""
    rx = receiver_factory([200])
    runner = worker_env.runner()
    job_id = worker_env.add_job("uploads/x/in.mp4", callback_url=rx.url)
    update_job(worker_env.session_factory, job_id, status=JobStatus.succeeded)
    assert runner.deliver_callback(job_id) == REFUSED
    job = worker_env.job(job_id)
    assert job.status == JobStatus.succeeded and job.callback_status == REFUSED
    assert rx.bodies == []

    allowed = worker_env.runner(callback_allow_private=True)
    assert allowed.deliver_callback(job_id) == DELIVERED
    assert worker_env.job(job_id).callback_status == DELIVERED and len(rx.bodies) == 1
