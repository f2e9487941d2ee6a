"""Which addresses an image URL may reach (the SSRF guard), and a connection backend that connects
only to the address it checked.

A URL's host is turned into addresses once: IP literals in every spelling (IPv6, IPv4-mapped
IPv6, `127.1`, `2130706433`, `0x7f000001`, `017700000001`) are parsed here, names are resolved
once. Every address must be public unless ALLOWED_IMAGE_HOSTS names the host (or a network it is
in) or ALLOW_PRIVATE_URLS is on; a name with one non-public address is refused whole. The
connection then goes to the checked address itself, so a second DNS answer (rebinding) cannot
redirect it. Each redirect is a new connection and is checked again.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import typing
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import anyio
import httpcore

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]

# Cloud instance-metadata endpoints: refused even with ALLOW_PRIVATE_URLS (they hand out
# credentials); only naming one in ALLOWED_IMAGE_HOSTS opens it.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, ...
    "169.254.170.2",  # AWS ECS task metadata
    "169.254.169.123",  # AWS time sync
    "100.100.100.200",  # Alibaba Cloud
    "fd00:ec2::254",  # AWS IPv6
))
METADATA_NAMES = frozenset({"metadata.google.internal", "metadata", "instance-data", "metadata.azure.internal"})

# Networks whose addresses embed an IPv4 address that decides where packets really go.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_HOST_CHARS = re.compile(r"^[a-z0-9._:\-\[\]%]+$")


class URLNotAllowed(ValueError):
    """The URL points somewhere the server must not fetch from; the message says why."""


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, compatible, 6to4, Teredo, NAT64)."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's address
    if address in _NAT64 or address in _NAT64_LOCAL:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if int(address) >> 32 == 0 and int(address) > 1:  # IPv4-compatible ::a.b.c.d (deprecated)
        return ipaddress.IPv4Address(int(address))
    return None


def is_public(address: IPAddress) -> bool:
    """True for addresses on the public internet (not loopback, private, link-local, shared,
    multicast, reserved, documentation, unspecified or metadata), looking through IPv6 forms
    that embed an IPv4 address."""
    if address in METADATA_ADDRESSES:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return is_public(address.ipv4_mapped)  # ::ffff:a.b.c.d is a.b.c.d on a dual-stack socket
    inner = embedded_ipv4(address)
    if inner is not None and not is_public(inner):
        return False
    return bool(address.is_global) and not address.is_multicast and not address.is_reserved


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address a host spells directly, in any spelling C's inet_aton accepts; else None."""
    text = host.strip().strip("[]")
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])  # an IPv6 zone id does not change the address
    except ValueError:
        pass
    # 127.1, 2130706433, 0x7f000001, 017700000001, 0x7f.0.0.1: forms resolvers and browsers accept.
    if re.fullmatch(r"[0-9a-fA-FxX.]+", text) and re.search(r"\d", text):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def normalise_host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    try:
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError as e:
        raise URLNotAllowed(f"the host {host!r} is not a valid name") from e
    if not host or not _HOST_CHARS.match(host):
        raise URLNotAllowed(f"the host {host!r} is not a valid name")
    return host


async def system_resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (the OS resolver, off the event loop)."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class AddressPolicy:
    """Which hosts and addresses outbound fetches may reach."""

    allowed_hosts: frozenset[str] = frozenset()
    allowed_networks: tuple[IPNetwork, ...] = ()
    allow_private: bool = False

    @classmethod
    def from_settings(cls, allowed_image_hosts: Iterable[str], allow_private_urls: bool) -> "AddressPolicy":
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in allowed_image_hosts:
            entry = entry.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            hosts.add(entry.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks), allow_private_urls)

    def host_allowed(self, host: str) -> bool:
        return host in self.allowed_hosts

    def address_allowed(self, address: IPAddress, host_allowed: bool) -> bool:
        if host_allowed or any(address in net for net in self.allowed_networks):
            return True
        if is_public(address):
            return True
        return self.allow_private and address not in METADATA_ADDRESSES

    def check_addresses(self, host: str, addresses: list[IPAddress]) -> list[IPAddress]:
        """`addresses` if every one is allowed for `host`, else URLNotAllowed naming the first bad one."""
        if not addresses:
            raise URLNotAllowed(f"the host {host!r} has no address")
        named = self.host_allowed(host)
        for address in addresses:
            if not self.address_allowed(address, named):
                where = f"{host!r} is" if str(address) == host else f"{host!r} resolves to {address}, which is"
                raise URLNotAllowed(
                    f"{where} not a public address; image URLs must point at the public internet "
                    "(an operator can allow hosts with ALLOWED_IMAGE_HOSTS)"
                )
        return addresses

    async def resolve(self, host: str, port: int, resolver: Resolver = system_resolve) -> list[IPAddress]:
        """The checked addresses of `host` (URLNotAllowed if any is not allowed)."""
        host = normalise_host(host)
        literal = parse_ip_literal(host)
        if literal is not None:
            return self.check_addresses(host, [literal])
        if host in METADATA_NAMES and not self.host_allowed(host):
            raise URLNotAllowed(f"{host!r} is a cloud metadata service; image URLs cannot point at it")
        if host == "localhost" or host.endswith(".localhost"):
            # RFC 6761: always loopback, whatever a resolver says.
            return self.check_addresses(host, [ipaddress.ip_address("127.0.0.1")])
        try:
            found = await resolver(host, port)
        except OSError as e:
            raise ConnectionError(f"the host {host!r} could not be resolved ({e})") from e
        addresses = []
        for text in found:
            parsed = parse_ip_literal(text)
            if parsed is not None:
                addresses.append(parsed)
        return self.check_addresses(host, addresses)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend that resolves and checks a host itself and then connects to the
    checked address (TLS still verifies the certificate against the URL's host name)."""

    def __init__(self, policy: AddressPolicy, resolver: Resolver = system_resolve) -> None:
        self.policy = policy
        self.resolver = resolver
        self.inner = httpcore.AnyIOBackend()
        self.connected: list[str] = []  # addresses connected to, for logs and tests

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: typing.Iterable[typing.Any] | None = None) -> httpcore.AsyncNetworkStream:
        addresses = await self.policy.resolve(host, port, self.resolver)
        last_error: Exception | None = None
        for address in addresses:
            try:
                stream = await self.inner.connect_tcp(str(address), port, timeout=timeout,
                                                      local_address=local_address, socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                last_error = e
                continue
            self.connected.append(str(address))
            return stream
        assert last_error is not None
        raise last_error

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise URLNotAllowed("unix sockets are not fetched")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)
