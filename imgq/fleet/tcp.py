"""Connect-back agents, what both ends share: parsing ``ADDR[:PORT]``, the address to
advertise, the limits and ``NAME=VALUE`` credential names, and ``TcpTransport``, the
admitted agent's TLS stream as the fleet's ``AgentLink`` uses a transport (write, read n,
timeouts, end, close, with the errors the SSH transport gives).

The coordinator's side (``Listener``) is ``imgq.fleet.listen``; the agent's side
(credentials, ``dial``) is ``imgq.fleet.join``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import time

from imgq.errors import HostUnreachable, ImgqError, UsageError
from imgq.fleet import protocol, tls

AUTH_TIMEOUT = 10.0  # TLS handshake + challenge + proof, all of it
AUTH_HEADER = 4096  # the largest frame accepted before authentication
HELLO_TIMEOUT = 60.0  # an admitted agent's hello (a cold Python importing OpenCV)
MAX_PENDING = 32  # connections being checked at once; more are closed at once
DIAL_RETRY = 30.0  # an agent retries connecting this long (the coordinator may be starting)
ENV_CONNECT, ENV_SECRET, ENV_FINGERPRINT, ENV_NAME = "IMGQ_AGENT_CONNECT", "IMGQ_AGENT_SECRET", "IMGQ_AGENT_FINGERPRINT", "IMGQ_AGENT_NAME"
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._:@+=/-]")


class AgentRefused(ImgqError):
    """The agent will not work for the server it dialled (not the pinned certificate), or
    the coordinator would not admit it (wrong secret)."""



def parse_address(text: str, *, default_port: int | None = 0) -> tuple[str, int]:
    """``ADDR[:PORT]``, ``:PORT``, ``PORT``, ``[v6]:PORT`` -> (host, port); host "" is all
    addresses. UsageError for anything else (or no port where one is needed)."""
    t = text.strip()
    host, port = t, None
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?", t)
    if m:
        host, port = m.group(1), m.group(2)
    elif t.isdigit():
        host, port = "", t
    elif t.count(":") == 1:
        host, port = t.split(":")
    if port is None:
        if default_port is None:
            raise UsageError(f"{text!r}: give the port too (HOST:PORT)")
        port = default_port
    try:
        port = int(port)
    except ValueError:
        raise UsageError(f"{text!r}: the port must be a number") from None
    if not 0 <= port <= 65535 or (default_port is None and port == 0):
        raise UsageError(f"{text!r}: port {port} is out of range")
    if host and not re.fullmatch(r"[A-Za-z0-9._:-]+", host):
        raise UsageError(f"{text!r}: not a host name or address")
    return host, port


def _unspecified(host: str) -> bool:
    """All addresses ("", 0.0.0.0, ::): agents need another address to dial."""
    if not host:
        return True
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False  # a host name


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def clean_name(name, peer: str) -> str:
    """The name an agent gave (a job label: ``slurm:1234.0``), made safe for a table and a
    terminal; ``tcp:PEER`` if it gave none."""
    if not isinstance(name, str) or not name.strip():
        return f"tcp:{peer}"
    return _NAME_CHARS.sub("_", name.strip())[:80]


def route_address(towards: str | None = None) -> str:
    """The address of this machine's interface that routes towards ``towards`` (default:
    the default route), found by connecting a UDP socket (no packet is sent); the host
    name's address or 127.0.0.1 when there is no route."""
    for target in ([towards] if towards else []) + ["192.0.2.1"]:
        try:
            with socket.socket(socket.AF_INET6 if ":" in target else socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((target, 9))
                addr = s.getsockname()[0]
                if addr and not ipaddress.ip_address(addr).is_unspecified:
                    return addr
        except (OSError, ValueError):
            continue
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


# --- the transport AgentLink uses -------------------------------------------------------


class TcpTransport:
    """An admitted agent's TLS stream, as ``AgentLink`` uses a transport: ``read(n)``
    exactly n bytes, b"" at a clean end between frames; every failure (timeout, reset,
    end inside a frame) a ``HostUnreachable`` naming the agent and its peer address."""

    def __init__(self, stream: tls.TlsStream, name: str, peer: str):
        self.stream, self.name, self.peer = stream, name, peer

    def _lost(self, exc: BaseException, doing: str) -> HostUnreachable:
        if isinstance(exc, TimeoutError):
            why = f"nothing for {self.stream.timeout:g} s" if self.stream.timeout else "timed out"
        elif isinstance(exc, ssl.SSLError):
            why = f"TLS error ({exc.reason or exc})"
        else:
            why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return HostUnreachable(f"{self.name} ({self.peer}): {why} while {doing}")

    def set_timeout(self, seconds: float | None) -> None:
        self.stream.timeout = seconds

    def write(self, data) -> None:
        try:
            self.stream.write(data)
        except OSError as e:
            raise self._lost(e, "sending to the agent") from e

    def read(self, n: int):
        try:
            data = self.stream.read(n)
        except OSError as e:
            raise self._lost(e, "reading from the agent") from e
        if 0 < len(data) < n:
            raise HostUnreachable(f"{self.name} ({self.peer}): the connection ended inside a frame")
        return data

    def why_ended(self) -> str:
        # its stderr is wherever its launcher put it (a Slurm job's output file)
        return f"agent closed its connection from {self.peer} (ended or killed)"

    def end(self) -> None:
        """The agent reads the end of its input: it stops its slots and exits."""
        self.stream.end_output()

    def close(self, grace: float = 0.0) -> None:
        deadline = time.monotonic() + grace
        while grace and not self.stream.ended and time.monotonic() < deadline:
            time.sleep(0.05)  # the reader sees the agent close its side
        self.stream.close()


def _send(stream: tls.TlsStream, header: dict) -> None:
    for piece in protocol.encode(header):
        stream.write(piece)


def _close(conn: socket.socket) -> None:
    try:
        conn.close()
    except OSError:
        pass
