"""The callback SSRF guard: address kinds, static URL checks, resolution, operator overrides."""

from __future__ import annotations

import ipaddress

import pytest

from infra.callback_urls import (
    CallbackHostUnresolved,
    CallbackUrlPolicy,
    CallbackUrlRefused,
    address_kind,
    resolve_host,
)
from infra.settings import Settings


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1", "link-local"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "private"),  # CGNAT
        ("fd12:3456::1", "private"),  # ULA
        ("fec0::1", "private"),  # site-local
        ("192.0.2.1", "private"),  # documentation
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "link-local"),
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("2002:a9fe:a9fe::", "link-local"),  # 6to4 of 169.254.169.254
        ("93.184.216.34", None),
        ("2606:4700::1111", None),
        ("::ffff:93.184.216.34", None),
        ("64:ff9b::5db8:d822", None),  # NAT64 of a public address
    ],
)
def test_address_kinds(address: str, kind: str | None) -> None:
    assert address_kind(ipaddress.ip_address(address)) == kind


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("ftp://example.com/x", "only http and https"),
        ("http://user:pw@example.com/", "user name or password"),
        ("http://user@example.com/", "user name or password"),
        ("http://example.com/" + "a" * 2100, "over the limit of 2048"),
        ("http://exa mple.com/", "whitespace"),
        ("http://example.com:0/", "port 0"),
        ("http://example.com:99999/", "not a valid URL"),
        ("http:///path", "no host"),
        ("http://127.0.0.1:8000/hook", "is a loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::ffff:a9fe:a9fe]/", "link-local"),
        ("http://10.0.0.5/", "private"),
        ("http://localhost/hook", "resolves to 127.0.0.1, a loopback address"),
        ("http://0/", "unspecified"),
        ("http://2130706433/", "loopback"),  # 127.0.0.1 as one number
    ],
)
def test_refused_urls_say_why(url: str, hint: str) -> None:
    with pytest.raises(CallbackUrlRefused) as info:
        CallbackUrlPolicy().check(url)
    assert hint in str(info.value)


def test_public_and_unresolvable_hosts_pass_the_submit_check() -> None:
    policy = CallbackUrlPolicy()
    target = policy.check("https://93.184.216.34:8443/hook?token=abc")
    assert target.addresses == (ipaddress.ip_address("93.184.216.34"),)
    assert target.pinned_url(target.addresses[0]) == "https://93.184.216.34:8443/hook?token=abc"
    assert target.host_header == "93.184.216.34:8443"
    # RFC 6761: .invalid never resolves; accepted now, delivery resolves and checks again
    unresolved = policy.check("https://callbacks.example.invalid/hook")
    assert unresolved.addresses == () and unresolved.port == 443
    with pytest.raises(CallbackHostUnresolved):
        policy.resolve(unresolved)


def test_ipv6_targets_are_pinned_with_brackets() -> None:
    target = CallbackUrlPolicy().check("http://[2606:4700::1111]/h")
    assert target.host_header == "[2606:4700::1111]"
    assert target.pinned_url(target.addresses[0]) == "http://[2606:4700::1111]:80/h"


def test_resolve_host_gives_loopback_for_localhost() -> None:
    addresses = resolve_host("localhost", 80, timeout_s=5)
    assert addresses and all(a.is_loopback for a in addresses)


def test_operator_overrides_from_settings() -> None:
    default = CallbackUrlPolicy.from_settings(Settings())
    assert not default.allow_private and default.allowed_networks == ()

    private = CallbackUrlPolicy.from_settings(Settings(callback_allow_private=True))
    assert private.check("http://localhost:9/x").addresses
    private.check("http://10.0.0.5/")
    with pytest.raises(CallbackUrlRefused, match="link-local"):  # metadata stays refused
        private.check("http://169.254.169.254/")
    with pytest.raises(CallbackUrlRefused, match="multicast"):
        private.check("http://224.0.0.1/")

    listed = CallbackUrlPolicy.from_settings(
        Settings(callback_allowed_cidrs=["169.254.0.0/16"], callback_max_url_length=64)
    )
    listed.check("http://169.254.10.10/")  # explicitly listed: admitted, whatever its kind
    with pytest.raises(CallbackUrlRefused, match="loopback"):
        listed.check("http://127.0.0.1/")
    with pytest.raises(CallbackUrlRefused, match="over the limit of 64"):
        listed.check("http://169.254.10.10/" + "x" * 64)


def test_settings_validate_the_cidrs_and_length(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPLATPACK_CALLBACK_ALLOWED_CIDRS", '["10.20.0.0/16", "fd00:1::/64"]')
    monkeypatch.setenv("SPLATPACK_CALLBACK_ALLOW_PRIVATE", "true")
    settings = Settings()
    assert settings.callback_allow_private
    assert [str(n) for n in settings.callback_allowed_cidrs] == ["10.20.0.0/16", "fd00:1::/64"]
    with pytest.raises(ValueError, match="callback_allowed_cidrs"):
        Settings(callback_allowed_cidrs=["not-a-network"])
    with pytest.raises(ValueError, match="callback_max_url_length"):
        Settings(callback_max_url_length=10)
