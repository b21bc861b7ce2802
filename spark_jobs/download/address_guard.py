"""Refuse URLs that reach non-public addresses (loopback, private, link-local, reserved, ...).

A crawl follows URLs written by strangers; without this guard one ``<img src>`` (or a redirect)
pointing at ``169.254.169.254`` reads the cloud metadata endpoint from an executor. Two checks
cover every path to a socket: ``check_literal`` for IP-literal hosts (aiohttp connects to those
without asking the resolver) and ``GuardedResolver`` for names, which hands aiohttp only the
resolved addresses it has checked, so the address connected to is the address checked (no DNS
rebinding window). Entries of ``allow_hosts`` let one port of a host or network through:
``127.0.0.1:18765``, ``localhost:8080``, ``[::1]:8080``, ``10.0.0.0/8:443``, ``[fd00::/8]:443``.
An entry without a port is a ``ConfigError``: allowing every port of an internal host would open its
admin and metadata services too.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from infra.config import IPNetwork, parse_allow_entry

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressRefused(OSError):
    """The host is, or resolves only to, addresses the crawl must not reach."""


def _literal_ip(host: str) -> IPAddress | None:
    """The address ``host`` denotes without DNS, including legacy IPv4 forms (2130706433, 127.1)."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, UnicodeError):
        return None


class AddressGuard:
    """Which addresses the crawl may connect to; raises ``ConfigError`` for a malformed allow list."""

    def __init__(self, allow_hosts: Iterable[str] = ()):
        self._networks: list[tuple[IPNetwork, int]] = []
        self._names: set[tuple[str, int]] = set()
        for entry in allow_hosts:
            host, port = parse_allow_entry(entry)
            if isinstance(host, str):
                self._names.add((host, port))
            else:
                self._networks.append((host, port))

    def allowed_name(self, host: str, port: int) -> bool:
        return (host.lower().rstrip("."), port) in self._names

    def allowed_ip(self, ip: IPAddress, port: int) -> bool:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1 (Python 3.11 does not unwrap it)
        if any(ip in net and port == allowed for net, allowed in self._networks):
            return True
        return ip.is_global and not (ip.is_multicast or ip.is_reserved)

    def check_literal(self, host: str, port: int) -> None:
        """Raise ``AddressRefused`` if ``host`` is an IP literal that is not allowed on ``port``."""
        ip = _literal_ip(host)
        if ip is not None and not self.allowed_name(host, port) and not self.allowed_ip(ip, port):
            raise AddressRefused(f"{host} is a non-public address ({ip}) not allowed on port {port}")


class GuardedResolver(AbstractResolver):
    """Resolves with the system resolver, then drops every address the guard refuses."""

    def __init__(self, guard: AddressGuard, inner: AbstractResolver | None = None):
        self._guard = guard
        self._inner = inner or ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: Any = socket.AF_INET) -> list[ResolveResult]:
        infos = await self._inner.resolve(host, port, family)
        if self._guard.allowed_name(host, port):
            return infos
        kept = [
            info for info in infos if (ip := _literal_ip(info["host"])) is not None and self._guard.allowed_ip(ip, port)
        ]
        if not kept:
            addresses = ", ".join(sorted({info["host"] for info in infos}))
            raise AddressRefused(f"{host}:{port} resolves only to non-public addresses not allowed there ({addresses})")
        return kept

    async def close(self) -> None:
        await self._inner.close()
