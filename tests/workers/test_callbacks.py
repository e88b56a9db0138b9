"""Callback delivery against a real HTTP(S) server on 127.0.0.1.

The receivers listen on loopback, which the SSRF guard refuses by default, so
tests that expect a delivery allow private addresses explicitly (``LOCAL_OK``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from infra.callback_urls import CallbackUrlPolicy
from infra.models import JobStatus, Tenant
from infra.tenants import rotate_callback_secret
from tests.workers.helpers import WorkerEnv, add_tenant, finish_job, wait_for
from workers.callbacks import DELIVERED, FAILED, REFUSED, CallbackDelivery, verify_signature

LOCAL_OK = CallbackUrlPolicy(allow_private=True)


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
    assert (status, tries) == (FAILED, 4)
    assert len(rx.bodies) == 4
    assert waits == [0.01, 0.02, 0.03]  # capped at max_delay_s


def test_client_errors_are_not_retried(receiver_factory: Any) -> None:
    rx = receiver_factory([404])
    delivery = CallbackDelivery(max_tries=5, base_delay_s=0.01, policy=LOCAL_OK)
    status, tries = delivery.deliver(rx.url, {"id": "j"})
    assert (status, tries) == (FAILED, 1)


def test_unreachable_receiver_is_retried_then_given_up() -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    waits: list[float] = []
    delivery = CallbackDelivery(max_tries=3, base_delay_s=0.01, timeout_s=1.0, policy=LOCAL_OK)
    status, tries = delivery.deliver(f"http://127.0.0.1:{port}/x", {"id": "j"}, sleep=waits.append)
    assert (status, tries) == (FAILED, 3)
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
    assert delivery.deliver(outer.url, {"id": "j"}) == (FAILED, 1)
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
    assert delivery.deliver(rx.url, {"id": "j"}) == (FAILED, 1)
    assert len(rx.bodies) == 1


def test_dispatcher_records_a_refused_callback_and_keeps_the_job(
    worker_env: WorkerEnv, receiver_factory: Any
) -> None:
    """Default settings: a loopback callback is refused at delivery, the job stays succeeded."""
    rx = receiver_factory([200])
    job_id = worker_env.add_job("uploads/x/in.mp4", callback_url=rx.url)
    finish_job(worker_env, job_id, JobStatus.succeeded)
    assert worker_env.runner().dispatcher.run_once() == 1
    job = worker_env.job(job_id)
    assert job.status == JobStatus.succeeded and job.callback_status == REFUSED
    assert job.callback_attempts == 1 and "loopback" in (job.callback_error or "")
    assert rx.bodies == []
    assert worker_env.runner(callback_allow_private=True).dispatcher.run_once() == 0  # final


# ------------------------------------------------------------------ signatures


def _hmac_hex(secret: str, timestamp: str, body: bytes) -> str:
    """What a receiver computes, from the documented recipe only."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def test_callbacks_are_signed_with_the_tenant_secret(
    worker_env: WorkerEnv, receiver_factory: Any
) -> None:
    rx = receiver_factory([200])
    other_tenant = add_tenant(worker_env.session_factory)
    with worker_env.session_factory() as s:
        secrets = {
            t.id: t.callback_secret
            for t in s.scalars(
                select(Tenant).where(Tenant.id.in_([worker_env.tenant_id, other_tenant]))
            )
        }
    own, other = secrets[worker_env.tenant_id], secrets[other_tenant]
    assert own != other and own.startswith("whsec_") and len(own) == 6 + 64

    job_id = worker_env.add_job("uploads/x/in.mp4", callback_url=rx.url)
    finish_job(worker_env, job_id, JobStatus.failed)
    before = int(time.time())
    assert worker_env.runner(callback_allow_private=True).dispatcher.run_once() == 1
    assert worker_env.job(job_id).callback_status == DELIVERED

    headers, raw = rx.headers[0], rx.raw_bodies[0]
    timestamp, signature = headers["X-Splatpack-Timestamp"], headers["X-Splatpack-Signature"]
    assert before <= int(timestamp) <= time.time() + 1
    assert headers["Content-Type"] == "application/json"
    assert json.loads(raw)["id"] == str(job_id)
    assert signature == f"sha256={_hmac_hex(own, timestamp, raw)}"
    assert signature != f"sha256={_hmac_hex(other, timestamp, raw)}"
    assert verify_signature(own, timestamp, raw, signature)
    assert not verify_signature(other, timestamp, raw, signature)
    assert not verify_signature(own, timestamp, raw + b" ", signature)  # body tampered
    assert not verify_signature(own, str(int(timestamp) + 1), raw, signature)
    assert not verify_signature(own, "not-a-time", raw, signature)
    # a replay long after: the signature still matches, the timestamp does not
    assert not verify_signature(own, timestamp, raw, signature, now_s=int(timestamp) + 3600)


def test_a_rotated_secret_signs_the_next_try(worker_env: WorkerEnv, receiver_factory: Any) -> None:
    rx = receiver_factory([503, 200])
    with worker_env.session_factory.begin() as s:
        old = s.get_one(Tenant, worker_env.tenant_id).callback_secret
    job_id = worker_env.add_job("uploads/x/in.mp4", callback_url=rx.url)
    finish_job(worker_env, job_id, JobStatus.succeeded)
    runner = worker_env.runner(callback_allow_private=True, callback_base_delay_s=0.01)
    assert runner.dispatcher.run_once() == 1  # 503: due again in 10 ms
    with worker_env.session_factory.begin() as s:
        new = rotate_callback_secret(s, worker_env.tenant_id)
    assert new != old and new.startswith("whsec_")
    wait_for(lambda: runner.dispatcher.run_once() == 1, 5, "the retry to be due")
    assert worker_env.job(job_id).callback_status == DELIVERED
    (first, second) = [
        (h["X-Splatpack-Timestamp"], h["X-Splatpack-Signature"], raw)
        for h, raw in zip(rx.headers, rx.raw_bodies, strict=True)
    ]
    assert verify_signature(old, first[0], first[2], first[1])
    assert verify_signature(new, second[0], second[2], second[1])
    assert not verify_signature(old, second[0], second[2], second[1])
