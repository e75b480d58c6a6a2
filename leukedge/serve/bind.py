"""Where the live page listens, and who may open it.

Loopback (127.0.0.1, ::1, localhost) by default: only this machine. Any other
address reaches the lab's network, so it needs a token; the token is compared in
constant time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass

from leukedge.validate import UsageError

DEFAULT_HOST = "127.0.0.1"
TOKEN_HEADER = "X-Leukedge-Token"
TOKEN_QUERY = "token"


@dataclass(frozen=True)
class Bind:
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def url(self, port: int | None = None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port if port is None else port}/"


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_bind(text: str) -> Bind:
    """``PORT``, ``HOST:PORT`` or ``[IPv6]:PORT`` (port 0: any free port)."""
    t = text.strip()
    host, _, port_text = t.rpartition(":") if ":" in t else ("", "", t)
    host = host.strip("[]") or DEFAULT_HOST
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise UsageError(
            f"--serve: expected [HOST:]PORT such as 8080 or 0.0.0.0:8080, not {text!r}"
        )
    return Bind(host, port)


def check_access(bind: Bind, token: str | None) -> None:
    """Refuse a page on the network without a token (exit code 2)."""
    if token is not None and len(token) < 8:
        raise UsageError("--token: use at least 8 characters (e.g. `openssl rand -hex 16`)")
    if not bind.loopback and not token:
        raise UsageError(
            f"--serve {bind.host}:{bind.port} opens the live page to the network: give --token "
            "(or LEUKEDGE_TOKEN), or serve on 127.0.0.1 only"
        )


def token_ok(given: str | None, token: str) -> bool:
    """Constant-time comparison, so the time taken tells nothing about the token."""
    return given is not None and hmac.compare_digest(given.encode(), token.encode())
