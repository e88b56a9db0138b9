"""Which callback URLs splatpack may POST to: the SSRF guard shared by the API and the runner.

A job's ``callback_url`` is user input that makes our servers send a request, so
without a guard any tenant could make the runner POST into the cluster
(databases, admin ports, the cloud metadata service at 169.254.169.254). The
same :class:`CallbackUrlPolicy` is applied twice:

- at submit (``service``): :meth:`CallbackUrlPolicy.check` refuses, with a 422,
  URLs that are not ``http``/``https``, carry a user name or password, are longer
  than ``max_length``, lack a host or name port 0, and hosts that are (or resolve
  to) a refused address. A host that does not resolve is accepted there: the API
  and the runners may see different DNS, and delivery checks again.
- at delivery (``workers.callbacks``): the host is resolved again, every address
  is checked, and the request is sent to the checked address itself (pinned,
  with the original ``Host`` header and TLS server name), so a DNS answer that
  changes between check and connect (rebinding) cannot steer it. Redirects are
  never followed, and proxies from the environment are not used.

Refused: every address that is not publicly routable: unspecified, loopback,
link-local (including the metadata address), multicast, reserved, private
(RFC 1918, CGNAT 100.64/10, IPv6 ULA and site-local, documentation and other
special-purpose ranges). IPv6 forms that embed an IPv4 address (IPv4-mapped
``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``) are judged by
the IPv4 address. A hostname is refused when *any* of its addresses is.

Operators open holes explicitly (``infra.settings.Settings``):
``callback_allow_private`` also admits loopback and private addresses (the
all-in-one demo, tests, a receiver inside the cluster); ``callback_allowed_cidrs``
admits every address in the listed networks, whatever its kind.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import socket
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from infra.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_HOST_LENGTH = 253
# the kinds ``callback_allow_private`` admits; every other refused kind stays refused
PRIVATE_KINDS = frozenset({"loopback", "private"})

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_HOW_TO_ALLOW = (
    "callbacks go only to publicly routable addresses; use a public host name "
    "(an operator can admit private networks with SPLATPACK_CALLBACK_ALLOW_PRIVATE=true "
    "or SPLATPACK_CALLBACK_ALLOWED_CIDRS)"
)
# shared by every resolution: a slow DNS server ties up these threads, never a caller for long
_resolver_pool = concurrent.futures.ThreadPoolExecutor(
    max_workers=4, thread_name_prefix="callback-dns"
)


class CallbackUrlError(ValueError):
    """A callback URL that may not be used; the message says why and what to do."""


class CallbackUrlRefused(CallbackUrlError):
    """The URL is malformed or its host is (or resolves to) a refused address."""


class CallbackHostUnresolved(CallbackUrlError):
    """The host did not resolve (now); may be transient."""


@dataclass(frozen=True)
class CallbackTarget:
    """A checked callback URL, split into what a pinned request needs."""

    url: str
    scheme: str  # http | https
    host: str  # lower-case host name or IP literal, without brackets
    port: int
    host_header: str  # host[:port] as the receiver expects it in ``Host``
    path_and_query: str  # "/path?query" (at least "/")
    addresses: tuple[IPAddress, ...] = ()

    @property
    def host_is_ip(self) -> bool:
        """Whether the URL names an IP address rather than a host name."""
        return _ip_or_none(self.host) is not None

    def pinned_url(self, address: IPAddress) -> str:
        """The URL with its host replaced by ``address`` (the connection goes there)."""
        literal = f"[{address}]" if address.version == 6 else str(address)
        return f"{self.scheme}://{literal}:{self.port}{self.path_and_query}"


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped, NAT64 or 6to4 IPv6 address, else None."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return address.sixtofour


def address_kind(address: IPAddress) -> str | None:
    """Why ``address`` is not publicly routable (``loopback``, ``private``, ...), or None."""
    inner = embedded_ipv4(address)
    if inner is not None:
        return address_kind(inner)
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "private"
    if address.is_reserved:
        return "reserved"
    if address.is_private or (isinstance(address, ipaddress.IPv4Address) and address in _CGNAT):
        return "private"
    if not address.is_global:
        return "private"
    return None


def _ip_or_none(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@dataclass(frozen=True)
class CallbackUrlPolicy:
    """Where callbacks may go; the fields are the operator's settings."""

    allow_private: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()
    max_length: int = 2048
    resolve_timeout_s: float = 3.0

    @classmethod
    def from_settings(cls, settings: Settings) -> CallbackUrlPolicy:
        """The policy ``settings`` describe (``callback_*`` fields)."""
        return cls(
            allow_private=settings.callback_allow_private,
            allowed_networks=tuple(settings.callback_allowed_cidrs),
            max_length=settings.callback_max_url_length,
        )

    # static checks ------------------------------------------------------------
    def parse(self, url: str) -> CallbackTarget:
        """Split ``url`` and check everything that needs no DNS; raises :class:`CallbackUrlRefused`."""
        if len(url) > self.max_length:
            raise CallbackUrlRefused(
                f"is {len(url)} characters, over the limit of {self.max_length}; use a shorter URL"
            )
        if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
            raise CallbackUrlRefused(
                "contains whitespace or control characters; percent-encode them"
            )
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as err:
            raise CallbackUrlRefused(
                f"is not a valid URL ({err}); give http(s)://host/path"
            ) from err
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise CallbackUrlRefused(
                f"has scheme {parts.scheme!r}; only http and https callbacks are sent"
            )
        if "@" in parts.netloc or parts.username is not None or parts.password is not None:
            raise CallbackUrlRefused(
                "contains a user name or password; remove them (put a secret token in the "
                "path or query string instead)"
            )
        host = parts.hostname or ""
        if not host:
            raise CallbackUrlRefused("has no host; give http(s)://host/path")
        if len(host) > MAX_HOST_LENGTH:
            raise CallbackUrlRefused(
                f"has a host of {len(host)} characters, over the DNS limit of {MAX_HOST_LENGTH}"
            )
        if port == 0:
            raise CallbackUrlRefused("names port 0; give a port from 1 to 65535")
        port = port or DEFAULT_PORTS[scheme]
        path = parts.path or "/"
        target = CallbackTarget(
            url=url,
            scheme=scheme,
            host=host,
            port=port,
            host_header=_host_header(host, parts.port),
            path_and_query=path + (f"?{parts.query}" if parts.query else ""),
        )
        literal = _ip_or_none(host)
        if literal is not None:
            self.check_address(host, literal, literal=True)
            return replace(target, addresses=(literal,))
        return target

    # addresses ----------------------------------------------------------------
    def refusal(self, address: IPAddress) -> str | None:
        """The kind of ``address`` when this policy refuses it, else None."""
        if any(
            address in network
            for network in self.allowed_networks
            if network.version == address.version
        ):
            return None
        kind = address_kind(address)
        if kind is None or (self.allow_private and kind in PRIVATE_KINDS):
            return None
        return kind

    def check_address(self, host: str, address: IPAddress, *, literal: bool = False) -> None:
        """Raise :class:`CallbackUrlRefused` when ``address`` (of ``host``) is refused."""
        kind = self.refusal(address)
        if kind is None:
            return
        article = "an" if kind[0] in "aeiou" else "a"
        what = f"{article} {kind} address"
        where = f"is {what}" if literal else f"resolves to {address}, {what}"
        raise CallbackUrlRefused(f"host {host!r} {where}; {_HOW_TO_ALLOW}")

    def resolve(self, target: CallbackTarget) -> CallbackTarget:
        """``target`` with its host's addresses, every one checked.

        Raises :class:`CallbackUrlRefused` when any address is refused and
        :class:`CallbackHostUnresolved` when the host does not resolve in time.
        """
        if target.host_is_ip:
            return target if target.addresses else self.parse(target.url)
        addresses = resolve_host(target.host, target.port, self.resolve_timeout_s)
        for address in addresses:
            self.check_address(target.host, address)
        return replace(target, addresses=addresses)

    def check(self, url: str) -> CallbackTarget:
        """Submit-time check: static checks, then every address the host resolves to now.

        A host that does not resolve is accepted (with no addresses): delivery
        resolves and checks again.
        """
        target = self.parse(url)
        try:
            return self.resolve(target)
        except CallbackHostUnresolved:
            return target


def _host_header(host: str, explicit_port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{explicit_port}" if explicit_port is not None else shown


def resolve_host(host: str, port: int, timeout_s: float) -> tuple[IPAddress, ...]:
    """The distinct addresses ``host`` resolves to (TCP), in resolver order.

    Raises :class:`CallbackHostUnresolved` when it does not resolve within ``timeout_s``.
    """
    future = _resolver_pool.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        infos = future.result(timeout=timeout_s)
    except concurrent.futures.TimeoutError as err:
        raise CallbackHostUnresolved(
            f"host {host!r} did not resolve within {timeout_s:g}s"
        ) from err
    except (OSError, UnicodeError) as err:
        raise CallbackHostUnresolved(f"host {host!r} does not resolve ({err})") from err
    found: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        text = str(sockaddr[0]).split("%", 1)[0]  # drop an IPv6 scope id
        address = _ip_or_none(text)
        if address is not None and address not in found:
            found.append(address)
    if not found:
        raise CallbackHostUnresolved(f"host {host!r} has no IP addresses")
    return tuple(found)
