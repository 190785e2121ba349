"""What keeps a web page from driving the API, as ASGI middleware: the checks run on headers alone, before any byte
of the body is read, and a refused request reaches no route (nothing is stored).

A page the user opens can send "simple" cross-site requests (a form post, a ``fetch`` with ``text/plain``) without
a CORS preflight, and a DNS-rebinding page (its own name, re-pointed at 127.0.0.1) can even read the answers; with
no token on loopback, that page could submit and stop studies. Three rules close it (docs/security.md):

* **Host** (400): the request must name the address it arrived on (loopback names when it arrived on loopback, the
  server's own IP literal otherwise, always with the server's port) or a ``PHASETUNE_ALLOWED_HOSTS`` entry. A
  rebinding page's requests carry its own name, so they are refused. The address is the connection's own socket
  (ASGI ``scope["server"]``), not a setting, so it holds whatever ``--host`` the server was given.
* **Origin** (403): a request with an ``Origin`` header must come from the API's own origin (the scheme and Host it
  was sent to) or a ``PHASETUNE_ALLOWED_ORIGINS`` entry. Browsers send ``Origin`` on every cross-origin request
  but simple GETs; a request without one is not a browser's cross-site request. ``Origin: null`` is refused.
* **Content-Type** (415): a POST, with a body or without one (``POST /studies/{id}/stop``), and a PUT, PATCH or
  DELETE with a body must say ``application/json``: a type a page can send cross-site only after a CORS preflight,
  which the API never grants (it sends no CORS headers). POST is the one method that changes something and that a
  page can send cross-site without a preflight; a bodyless PUT, PATCH or DELETE needs one anyway (and meets 405).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

JSON = "application/json"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
DEFAULT_PORTS = {"http": 80, "https": 443}
# Methods that change something: their bodies must be JSON. A POST must say so even without a body (of these, only
# POST is sent cross-site without a preflight).
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# The answers these rules add to every operation's OpenAPI (document_guard); 415 only to the writes'.
BAD_HOST = "a Host header this API does not answer for (PHASETUNE_ALLOWED_HOSTS); nothing was done"
BAD_ORIGIN = "an Origin that is not the API's own (PHASETUNE_ALLOWED_ORIGINS); nothing was done"
NOT_JSON = "not Content-Type: application/json (a POST needs it even without a body); nothing was done"


@dataclass(frozen=True)
class Authority:
    """A host name (lower case, IPv6 without brackets) and a port (None: not stated)."""

    name: str
    port: int | None

    @classmethod
    def parse(cls, text: str) -> Authority:
        """``name``, ``name:port``, ``[v6]`` or ``[v6]:port``; ValueError for anything else."""
        parts = urlsplit(f"//{text}")
        if not parts.hostname or parts.username is not None or parts.path or parts.query or parts.fragment:
            raise ValueError(f"not a host[:port]: {text!r}")
        return cls(parts.hostname, parts.port)  # .port raises ValueError for a bad port

    def matches(self, other: Authority) -> bool:
        """This allow-list entry admits ``other`` (an entry without a port admits every port)."""
        return self.name == other.name and (self.port is None or self.port == other.port)


@dataclass(frozen=True)
class Origin:
    """A web origin: scheme, host, port (the scheme's default when not stated)."""

    scheme: str
    name: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Origin:
        """``scheme://host[:port]`` with no path; ValueError for anything else (``null`` included)."""
        parts = urlsplit(text)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/") or parts.query \
                or parts.username is not None:
            raise ValueError(f"not an origin (scheme://host[:port]): {text!r}")
        return cls(parts.scheme, parts.hostname, parts.port or DEFAULT_PORTS[parts.scheme])


def _unmapped(address: str) -> str:
    """An IPv4 address a dual-stack socket reports as IPv6 (``::ffff:127.0.0.1``) as the IPv4 address it is."""
    try:
        mapped = ipaddress.ip_address(address)
    except ValueError:
        return address
    return str(mapped.ipv4_mapped) if isinstance(mapped, ipaddress.IPv6Address) and mapped.ipv4_mapped else address


def _loopback_socket(address: str) -> bool:
    """A socket's own address is on loopback. It is an IP literal (no name to resolve, unlike a ``--host`` that
    ``auth.is_loopback`` judges; this module imports nothing of phasetune's, so the settings can use its parsers)."""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def parse_hosts(entries: Iterable[str]) -> list[Authority]:
    return [Authority.parse(entry.strip()) for entry in entries]


def parse_origins(entries: Iterable[str]) -> list[Origin]:
    return [Origin.parse(entry.strip()) for entry in entries]


class BrowserGuard:
    """The three rules above; ``allowed_hosts`` and ``allowed_origins`` are the settings' allow-lists."""

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str] = (), allowed_origins: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed_hosts = parse_hosts(allowed_hosts)
        self.allowed_origins = parse_origins(allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope, Headers(scope=scope))
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, detail = refusal
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", JSON.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def refusal(self, scope: Scope, headers: Headers) -> tuple[int, str] | None:
        """(status, detail) for a request the rules refuse; None for one they let through."""
        scheme = scope.get("scheme", "http")
        host_header = headers.get("host")
        host: Authority | None = None
        if host_header is not None:  # HTTP/1.0 may omit it; a browser never does
            try:
                host = Authority.parse(host_header)
            except ValueError:
                return 400, f"Host {host_header[:100]!r} is not a host[:port]"
            host = Authority(host.name, host.port or DEFAULT_PORTS.get(scheme))
            if not self._serves(host, scope.get("server")):
                return 400, (f"this API does not answer for Host {host_header[:100]!r}: only for the address it is "
                             f"bound to, or a name listed in PHASETUNE_ALLOWED_HOSTS")
        origin_header = headers.get("origin")
        if origin_header is not None and not self._trusts(origin_header, scheme, host):
            return 403, (f"requests from Origin {origin_header[:100]!r} are refused: only the API's own origin, or "
                         f"one listed in PHASETUNE_ALLOWED_ORIGINS")
        method = scope["method"]
        has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
        if method == "POST" or (method in WRITE_METHODS and has_body):
            content_type = headers.get("content-type")
            if content_type is None or content_type.split(";")[0].strip().lower() != JSON:
                given = "no Content-Type" if content_type is None else f"Content-Type {content_type[:100]!r}"
                return 415, (f"{given} is refused: a {method} must be Content-Type: application/json"
                             f"{'' if has_body else ' (even without a body)'}")
        return None

    def _serves(self, host: Authority, server: tuple[str, int | None] | None) -> bool:
        """The Host names the socket the request arrived on (or loopback, arriving on loopback), or is allowed."""
        if any(entry.matches(host) for entry in self.allowed_hosts):
            return True
        if server is None:  # an ASGI server that does not say where it listens: the allow-list only
            return False
        address, port = _unmapped(server[0].lower()), server[1]
        if host.port != port:
            return False
        return host.name == address or (_loopback_socket(address) and host.name in LOOPBACK_NAMES)

    def _trusts(self, origin_header: str, scheme: str, host: Authority | None) -> bool:
        try:
            origin = Origin.parse(origin_header)
        except ValueError:
            return False
        own = host is not None and origin == Origin(scheme, host.name, host.port or DEFAULT_PORTS[scheme])
        return own or origin in self.allowed_origins


def document_guard(schema: dict[str, Any]) -> None:
    """Add the rules' 400, 403 and 415 to every operation of the OpenAPI ``schema`` (a 403 already there, a token's
    scope, keeps its meaning beside the Origin's). A step of ``service.openapi.customise_openapi``."""
    for operations in schema["paths"].values():
        for method, operation in operations.items():
            responses = operation["responses"]
            responses["400"] = {"description": BAD_HOST}
            forbidden = responses.get("403", {}).get("description")
            responses["403"] = {"description": f"{forbidden}; or {BAD_ORIGIN}" if forbidden else BAD_ORIGIN}
            if method.upper() in WRITE_METHODS:
                responses["415"] = {"description": NOT_JSON}
