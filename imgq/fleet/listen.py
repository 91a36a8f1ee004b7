"""Connect-back agents: the coordinator listens (``imgq work --listen``), agents started
by something else (a Slurm job, a site script) dial it (``imgq agent --connect``).

Both ends, and the transport the fleet's ``AgentLink`` speaks frames over:

- ``Listener`` binds ``ADDR[:PORT]``, makes this run's secret (32 random bytes) and a
  throw-away TLS certificate (``imgq.fleet.tls``), and admits agents. An accepted
  connection proves itself before anything else: TLS, then the coordinator sends a
  random challenge and the first frame back must be ``auth`` with
  HMAC(secret, challenge, certificate fingerprint), read with a 4 KiB limit and a
  10 s deadline for the whole exchange. A connection without it, with a wrong one,
  with garbage, too big or silent is closed and logged (``on_log``, one line naming the
  peer); at most ``max_pending`` connections are being checked at once. An admitted
  agent then says hello exactly as over SSH, and ``on_agent`` gets an ``Arrival``.
- ``dial`` is the agent's side: connect (retried while the coordinator starts), check
  the certificate against the pinned fingerprint before sending a byte, answer the
  challenge, wait for the welcome.
- ``TcpTransport``: what ``AgentLink`` needs of a transport (write, read n, timeouts,
  end, close), over the TLS stream, with the errors the SSH transport gives.

The secret and fingerprint reach an agent as ``NAME=VALUE`` lines (``agent_env``,
``credentials``): on its stdin, in a file, or in its environment; never on its
command line, which every user of the machine can read.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import os
import re
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

from imgq.errors import HostUnreachable, ImgqError, UsageError
from imgq.fleet import hosts, protocol, tls

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


class _Refused(Exception):
    """Why a connection was not admitted (logged with its peer, never raised further)."""


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


# --- the coordinator's side -------------------------------------------------------------


@dataclasses.dataclass
class Arrival:
    """An agent that proved itself and said hello: its name, peer, transport and hello;
    ``problems`` what makes it unfit to work (``hosts.check_hello``), empty when fit."""

    name: str
    peer: str
    transport: TcpTransport
    hello: dict
    problems: list[str]


class Listener:
    """This run's door for agents: bound at construction (so the port is known), admitting
    after ``start()``, closed by ``close()``. See the module's docstring."""

    def __init__(self, address: str = "", *, advertise: str | None = None, route_to: str | None = None,
                 on_agent: Callable[[Arrival], None] = lambda a: None, on_log: Callable[[str], None] = lambda line: None,
                 auth_timeout: float = AUTH_TIMEOUT, hello_timeout: float = HELLO_TIMEOUT, max_pending: int = MAX_PENDING):
        host, port = parse_address(address)
        self.secret = secrets.token_bytes(32)
        self.ctx, self.fingerprint = tls.server_context()
        self.on_agent, self.on_log = on_agent, on_log
        self.auth_timeout, self.hello_timeout = auth_timeout, hello_timeout
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self.sock = socket.create_server((host, port), family=family, backlog=128)
        except OSError as e:
            raise UsageError(f"--listen {address or '(all addresses)'}: cannot listen on {_join(host or '0.0.0.0', port)}: {e.strerror or e}") from None
        self.port = self.sock.getsockname()[1]
        self.bound = _join(host or "0.0.0.0", self.port)
        self.advertise = _join(advertise or (route_address(route_to) if _unspecified(host) else host), self.port)
        self._slots = threading.BoundedSemaphore(max_pending)
        self.max_pending = max_pending
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._accept_loop, daemon=True, name="imgq-listen")

    # --- what agents need -------------------------------------------------------------

    def agent_env(self) -> dict[str, str]:
        """The environment an agent needs: ``imgq agent --connect "$IMGQ_AGENT_CONNECT"``
        reads the secret and fingerprint from it (pass it to the agent's environment or
        its stdin, never its command line)."""
        return {ENV_CONNECT: self.advertise, ENV_SECRET: self.secret.hex(), ENV_FINGERPRINT: self.fingerprint}

    def credentials(self) -> bytes:
        """``agent_env`` as NAME=VALUE lines: an agent's stdin, or its ``--secret-file``."""
        return "".join(f"{k}={v}\n" for k, v in self.agent_env().items()).encode()

    def agent_argv(self, imgq: tuple[str, ...] = ("imgq",)) -> list[str]:
        """The command line that starts an agent for this run (no secret in it)."""
        return [*imgq, "agent", "--connect", self.advertise]

    def write_agent_file(self, path: Path) -> None:
        """``credentials`` into ``path``, mode 0600 from the first byte, replaced atomically."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, self.credentials())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def remove_agent_file(self, path: Path) -> None:
        """Remove ``path`` if it still holds this run's secret (another run may own it now)."""
        try:
            if self.secret.hex() in path.read_text():
                path.unlink()
        except OSError:
            pass

    # --- admitting --------------------------------------------------------------------

    def start(self) -> "Listener":
        self.thread.start()
        return self

    def close(self) -> None:
        self.closed.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes accept()
        except OSError:
            pass
        self.sock.close()

    def _accept_loop(self) -> None:
        while not self.closed.is_set():
            try:
                conn, addr = self.sock.accept()
            except OSError:
                if self.closed.is_set():
                    return
                time.sleep(0.1)  # out of file descriptors: the next accept may work
                continue
            peer = _join(addr[0], addr[1])
            if not self._slots.acquire(blocking=False):
                conn.close()
                self.on_log(f"refused a connection from {peer}: {self.max_pending} connections are already being checked")
                continue
            threading.Thread(target=self._admit, args=(conn, peer), daemon=True, name=f"imgq-admit-{peer}").start()

    def _authenticate(self, conn: socket.socket, peer: str) -> tuple[tls.TlsStream, str]:
        """TLS, challenge, proof, welcome, all within ``auth_timeout``: (stream, name)."""
        tls.tune(conn)
        stream = tls.TlsStream(conn, self.ctx, server_side=True)
        stream.deadline = time.monotonic() + self.auth_timeout
        try:
            stream.handshake()
        except TimeoutError:
            raise _Refused(f"no TLS handshake within {self.auth_timeout:g} s") from None
        except ssl.SSLError as e:
            raise _Refused(f"not a TLS client of this protocol ({e.reason or e})") from None
        challenge = secrets.token_bytes(32)
        _send(stream, {"type": "challenge", "challenge": challenge.hex(), "protocol": protocol.PROTOCOL})
        try:
            msg = protocol.read_message(stream.read, max_header=AUTH_HEADER - protocol.HEAD.size)
        except TimeoutError:
            raise _Refused(f"no proof of the secret within {self.auth_timeout:g} s") from None
        except protocol.ProtocolError as e:
            raise _Refused(f"its first frame is not an authentication ({e})") from None
        if msg is None:
            raise _Refused("it closed the connection without authenticating")
        header = msg[0]
        given = header.get("proof")
        if header["type"] != "auth" or not isinstance(given, str):
            raise _Refused(f"its first message is a {str(header['type'])[:40]!r}, not an authentication")
        expected = tls.proof(self.secret, challenge, self.fingerprint)
        if not hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode()):
            raise _Refused("wrong secret (its proof does not match this run's)")
        _send(stream, {"type": "welcome"})
        stream.deadline = None
        return stream, clean_name(header.get("name"), peer)

    def _admit(self, conn: socket.socket, peer: str) -> None:
        """In a thread per connection: authenticate, read the hello, hand the agent over."""
        try:
            stream, name = self._authenticate(conn, peer)
        except (_Refused, OSError, ValueError) as e:
            if isinstance(e, _Refused):
                why = str(e)
            elif isinstance(e, ConnectionError):  # a pinned agent that found another certificate hangs up here
                why = f"it closed the connection without authenticating ({e.strerror or type(e).__name__})"
            elif isinstance(e, ssl.SSLError):
                why = f"TLS error ({e.reason or e})"
            else:
                why = f"{type(e).__name__}: {e}"
            self.on_log(f"refused a connection from {peer}: {why}")
            _close(conn)
            return
        finally:
            self._slots.release()
        transport = TcpTransport(stream, name, peer)
        transport.set_timeout(self.hello_timeout)
        try:
            msg = protocol.read_message(transport.read, max_header=protocol.REPLY_HEADER)
            if msg is None:
                raise protocol.ProtocolError("it closed the connection before its hello")
            hello = msg[0]
            if hello.get("type") != "hello" or type(hello.get("slots")) is not int or hello["slots"] < 1:
                raise protocol.ProtocolError("its first message is not a hello with slots")
        except (HostUnreachable, protocol.ProtocolError) as e:
            self.on_log(f"agent {name} from {peer} authenticated but did not say hello: {e}")
            stream.close()
            return
        if self.closed.is_set():
            stream.close()
            return
        self.on_agent(Arrival(name, peer, transport, hello, hosts.check_hello(hello)))


def _send(stream: tls.TlsStream, header: dict) -> None:
    for piece in protocol.encode(header):
        stream.write(piece)


def _close(conn: socket.socket) -> None:
    try:
        conn.close()
    except OSError:
        pass


# --- the agent's side -------------------------------------------------------------------


@dataclasses.dataclass
class Credentials:
    """What an agent needs to join a run: where to dial, the secret, the pinned fingerprint."""

    connect: str | None
    secret: bytes
    fingerprint: str


def parse_credentials(text: str, *, where: str) -> dict[str, str]:
    """NAME=VALUE lines (``Listener.credentials``); blank lines and ``#`` comments skipped."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or name.strip() not in (ENV_CONNECT, ENV_SECRET, ENV_FINGERPRINT, ENV_NAME):
            raise UsageError(f"{where}: expected {ENV_SECRET}=… and {ENV_FINGERPRINT}=… lines, found {name.strip()[:40]!r}")
        out[name.strip()] = value.strip()
    return out


def read_credential_lines(stream) -> str:
    """Lines from ``stream`` up to a blank line or its end, once secret and fingerprint
    have both come (a pipe a launcher keeps open must not hang us)."""
    lines = []
    while True:
        line = stream.readline()
        if isinstance(line, bytes):
            line = line.decode("utf-8", "replace")
        if not line or not line.strip():
            break
        lines.append(line)
        text = "".join(lines)
        if f"{ENV_SECRET}=" in text and f"{ENV_FINGERPRINT}=" in text:
            break
    return "".join(lines)


def credentials(values: dict[str, str], *, connect: str | None, fingerprint: str | None, where: str) -> Credentials:
    """Checked credentials from ``values`` (NAME=VALUE), an explicit address and pin winning."""
    secret_hex = values.get(ENV_SECRET, "")
    try:
        secret = bytes.fromhex(secret_hex)
    except ValueError:
        secret = b""
    if len(secret) < 16:
        raise UsageError(f"no usable {ENV_SECRET} in {where} (the hex secret of the coordinator's run)")
    pin = fingerprint or values.get(ENV_FINGERPRINT)
    if not pin:
        raise UsageError(f"no {ENV_FINGERPRINT} in {where} (the sha256 of the coordinator's certificate)")
    try:
        pin = tls.normal_fingerprint(pin)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return Credentials(connect or values.get(ENV_CONNECT), secret, pin)


def dial(address: str, creds: Credentials, *, name: str, retry_for: float = DIAL_RETRY, timeout: float = AUTH_TIMEOUT) -> tls.TlsStream:
    """Connect to the coordinator at ``address`` (retried for ``retry_for`` s while it is
    refused), check its certificate against the pin before sending anything, prove the
    secret; the stream, ready for the agent's hello. HostUnreachable if it cannot be
    reached; AgentRefused if it is not the pinned coordinator or refuses the proof."""
    host, port = parse_address(address, default_port=None)
    give_up, delay = time.monotonic() + retry_for, 0.1
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
            break
        except OSError as e:
            if time.monotonic() + delay > give_up:
                raise HostUnreachable(f"cannot connect to the coordinator at {address}: {e.strerror or e}") from None
            time.sleep(delay)
            delay = min(2.0, delay * 2)
    tls.tune(sock)
    stream = tls.TlsStream(sock, tls.client_context(), server_side=False)
    stream.deadline = time.monotonic() + timeout
    try:
        stream.handshake()
        got = stream.peer_fingerprint()
        if got is None or not hmac.compare_digest(got, creds.fingerprint):
            raise AgentRefused(f"the server at {address} is not this run's coordinator: its certificate's sha256 is {got}, "
                               f"the pinned one is {creds.fingerprint} (another run, or someone in between); nothing was sent to it")
        msg = protocol.read_message(stream.read, max_header=AUTH_HEADER)
        if msg is None or msg[0]["type"] != "challenge" or not isinstance(msg[0].get("challenge"), str):
            raise AgentRefused(f"the coordinator at {address} did not send a challenge")
        challenge = bytes.fromhex(msg[0]["challenge"])
        _send(stream, {"type": "auth", "proof": tls.proof(creds.secret, challenge, creds.fingerprint), "name": name, "protocol": protocol.PROTOCOL})
        msg = protocol.read_message(stream.read, max_header=AUTH_HEADER)
        if msg is None or msg[0]["type"] != "welcome":
            raise AgentRefused(f"the coordinator at {address} refused this agent: wrong secret (a secret of another run?)")
    except (OSError, protocol.ProtocolError, ValueError) as e:
        stream.close()
        if isinstance(e, TimeoutError):
            raise HostUnreachable(f"the coordinator at {address} did not answer within {timeout:g} s") from None
        raise HostUnreachable(f"lost the coordinator at {address} while joining: {e}") from None
    except AgentRefused:
        stream.close()
        raise
    stream.deadline = None
    return stream


class StreamIO:
    """A ``TlsStream`` as the agent's stdin and stdout (``read``; ``write`` + ``flush``).
    Small writes wait for ``flush``, so a small message (a beat, an error, a small
    reply) leaves as one TLS record in one packet, not one per piece. The caller
    serialises writers (the agent's write lock)."""

    SMALL = 64 * 1024

    def __init__(self, stream: tls.TlsStream):
        self.stream = stream
        self.pending: list = []

    def read(self, n: int):
        return self.stream.read(n)

    def write(self, data) -> None:
        if len(data) <= self.SMALL:
            self.pending.append(bytes(data))
            return
        self.flush()
        self.stream.write(data)

    def flush(self) -> None:
        if self.pending:
            data, self.pending = b"".join(self.pending), []
            self.stream.write(data)
