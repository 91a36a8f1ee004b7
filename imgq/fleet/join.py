"""Connect-back agents, the agent's side (``imgq agent --connect``): its credentials
(``NAME=VALUE`` lines on its stdin, in a file or in its environment; never on its command
line), ``dial`` (connect, retried while the coordinator starts; check the certificate
against the pinned fingerprint before sending a byte; answer the challenge; wait for the
welcome) and ``StreamIO``, the TLS stream as the agent's stdin and stdout.

The coordinator's side is ``imgq.fleet.listen``; what both share is ``imgq.fleet.tcp``.
"""

from __future__ import annotations

import dataclasses
import hmac
import socket
import time

from imgq.errors import HostUnreachable, UsageError
from imgq.fleet import protocol, tls
from imgq.fleet.tcp import (
    AUTH_HEADER,
    AUTH_TIMEOUT,
    DIAL_RETRY,
    ENV_CONNECT,
    ENV_FINGERPRINT,
    ENV_NAME,
    ENV_SECRET,
    AgentRefused,
    _send,
    parse_address,
)


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
