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

This module is the coordinator's side (``Listener``, ``Arrival``); the agent's side is
``imgq.fleet.join`` and what both share (addresses, ``TcpTransport``) ``imgq.fleet.tcp``.
Their public names are re-exported here.
"""

from __future__ import annotations

import dataclasses
import hmac
import os
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

from imgq.errors import HostUnreachable, UsageError
from imgq.fleet import hosts, protocol, tls
from imgq.fleet.join import (  # noqa: F401  (re-exported: the agent's side)
    Credentials,
    StreamIO,
    credentials,
    dial,
    parse_credentials,
    read_credential_lines,
)
from imgq.fleet.tcp import (  # noqa: F401  (re-exported: what both sides share)
    AUTH_HEADER,
    AUTH_TIMEOUT,
    DIAL_RETRY,
    ENV_CONNECT,
    ENV_FINGERPRINT,
    ENV_NAME,
    ENV_SECRET,
    HELLO_TIMEOUT,
    MAX_PENDING,
    AgentRefused,
    TcpTransport,
    _close,
    _join,
    _send,
    _unspecified,
    clean_name,
    parse_address,
    route_address,
)


class _Refused(Exception):
    """Why a connection was not admitted (logged with its peer, never raised further)."""


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
        self.agent_options: list[str] = []  # more options for agent_argv (paths the agents share with us)
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
        """The command line that starts an agent for this run (no secret in it), with
        ``agent_options`` (the run's ``--shared-root`` and ``--shared-store``)."""
        return [*imgq, "agent", "--connect", self.advertise, *self.agent_options]

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
