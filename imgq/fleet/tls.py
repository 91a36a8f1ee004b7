"""TLS over TCP for connect-back agents (``imgq work --listen``, ``imgq agent --connect``):
the stream both ends speak frames over, the coordinator's throw-away certificate, and the
proof that an agent holds this run's secret.

- ``TlsStream`` runs TLS through memory buffers (``ssl.MemoryBIO``) over a plain socket,
  so one thread may read while others write: OpenSSL does not allow two threads inside
  one ``SSL`` object at once, and an ``ssl.SSLSocket`` read by the link's reader while a
  sender writes a photo would be exactly that. Here every call into the TLS object holds
  one short lock; the socket I/O happens outside it.
- ``server_context`` makes a fresh EC key and a self-signed certificate in memory (the
  ``cryptography`` package); ``ssl`` can only load them from a file, so they are loaded
  from an anonymous memory file (``memfd``) or, where there is none, a 0600 temporary
  file removed at once. The agent pins the certificate's sha256 (``fingerprint``), so no
  CA and no host name are involved, and a man in the middle has no certificate to show.
- ``proof``: the agent answers the coordinator's random challenge with
  HMAC-SHA256(secret, label | challenge | fingerprint). The secret never crosses the
  wire, even inside TLS; the MAC is bound to this challenge (no replay) and to this
  certificate (no relay through another TLS endpoint).

Imports: ``ssl``, ``hashlib`` and ``socket`` only, except ``server_context``, which
imports ``cryptography`` (the agent never needs it).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import ssl
import tempfile
import threading
import time

CHUNK = 1 << 20  # plaintext encrypted and sent per socket write
RECV = 1 << 18
READ_AHEAD = 1 << 16  # reads up to this size are served from a buffer of decrypted bytes
PROOF_LABEL = b"imgq agent proof v1\0"


def fingerprint(der: bytes) -> str:
    """The sha256 of a DER certificate, lowercase hex (what the agent pins)."""
    return hashlib.sha256(der).hexdigest()


def normal_fingerprint(text: str) -> str:
    """A fingerprint as a person may write it (``AB:CD:…``, ``sha256:…``), as hex."""
    t = text.strip().lower()
    if t.startswith("sha256:"):
        t = t[7:]
    t = t.replace(":", "")
    if len(t) != 64 or any(c not in "0123456789abcdef" for c in t):
        raise ValueError(f"not a sha256 fingerprint: {text.strip()[:80]!r}")
    return t


def proof(secret: bytes, challenge: bytes, cert_fingerprint: str) -> str:
    """What an agent sends to show it holds ``secret`` (hex HMAC-SHA256)."""
    return hmac.new(secret, PROOF_LABEL + challenge + bytes.fromhex(cert_fingerprint), hashlib.sha256).hexdigest()


def server_context() -> tuple[ssl.SSLContext, str]:
    """A TLS server context with a new key and self-signed certificate that exist only
    in this process's memory; (context, the certificate's sha256 fingerprint)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imgq coordinator")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30)).sign(key, hashes.SHA256()))
    der = cert.public_bytes(serialization.Encoding.DER)
    pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    _load_chain(ctx, pem)
    return ctx, fingerprint(der)


def _load_chain(ctx: ssl.SSLContext, pem: bytes) -> None:
    """``ctx.load_cert_chain`` from bytes: through a memfd (never on a disk), else a 0600
    file in a fresh 0700 folder, removed as soon as it is loaded."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("imgq-tls", getattr(os, "MFD_CLOEXEC", 1))
        try:
            os.write(fd, pem)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
            return
        except OSError:
            pass  # no /proc: fall through to a temporary file
        finally:
            os.close(fd)
    folder = tempfile.mkdtemp(prefix="imgq-tls-")
    path = os.path.join(folder, "chain.pem")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        ctx.load_cert_chain(path)
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
        os.rmdir(folder)


def client_context() -> ssl.SSLContext:
    """The agent's context: no CA, no host name; the caller checks the pinned fingerprint
    (``TlsStream.peer_fingerprint``) before it sends a byte."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def tune(sock: socket.socket, *, dead_after: float = 20.0) -> None:
    """No Nagle (a frame header must not wait for its blob's ACK); keepalives and
    ``TCP_USER_TIMEOUT`` so a peer that vanished without a FIN is noticed."""
    for level, opt, val in ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1), (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
                            (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), 5),
                            (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), 5),
                            (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), 3),
                            (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), int(dead_after * 1000))):
        if opt is None:
            continue
        try:
            sock.setsockopt(level, opt, val)
        except OSError:
            pass


class Deadline(TimeoutError):
    """The other side did not finish in time (a subclass of OSError, like a socket timeout)."""


class TlsStream:
    """A TLS session over ``sock`` that one reader and any number of writers may use at
    once. ``read(n)`` returns exactly n bytes, or fewer only at the end of the stream;
    ``write`` sends everything. Socket errors and timeouts are ``OSError``s (timeouts
    ``TimeoutError``); a TLS failure is ``ssl.SSLError`` (an ``OSError`` too)."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, *, server_side: bool):
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_side=server_side)
        self.tls_lock = threading.Lock()  # every call into self.tls and its two BIOs
        self.send_lock = threading.Lock()  # records leave in the order they were made
        self.deadline: float | None = None  # absolute (monotonic): every read/write before it
        self.timeout: float | None = None  # else: each socket wait at most this long
        self.ended = False
        self._set_timeout: object = ()  # what the socket's timeout was last set to (each setting is a syscall)
        self._raw = bytearray(RECV)  # what one recv brings, before TLS decrypts it
        self._plain = bytearray()  # decrypted, not yet returned by read()
        self._chunk = bytearray(READ_AHEAD)

    # --- plumbing ---------------------------------------------------------------------

    def _wait(self) -> None:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise Deadline("deadline passed")
            self.sock.settimeout(left)
            self._set_timeout = left
        elif self._set_timeout != self.timeout:
            # only when it changes: both the reader and the writers come here for every
            # record, and each settimeout is an ioctl
            self.sock.settimeout(self.timeout)
            self._set_timeout = self.timeout

    def _flush(self) -> None:
        """Send what the TLS object has made (handshake, alerts, tickets)."""
        with self.send_lock:
            with self.tls_lock:
                data = self.outgoing.read()
            if data:
                self._wait()
                self.sock.sendall(data)

    def _fill(self) -> bool:
        """Feed the TLS object the next bytes from the socket; False at its end."""
        self._wait()
        k = self.sock.recv_into(self._raw)  # into one buffer, not a new 256 kB object per recv
        if not k:
            return False
        with memoryview(self._raw) as view, self.tls_lock:
            self.incoming.write(view[:k])
        return True

    def handshake(self) -> None:
        while True:
            try:
                with self.tls_lock:
                    self.tls.do_handshake()
                self._flush()
                return
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill():
                    raise ConnectionResetError("the other side closed the connection during the TLS handshake") from None

    def peer_fingerprint(self) -> str | None:
        der = self.tls.getpeercert(binary_form=True)
        return fingerprint(der) if der else None

    # --- reading ----------------------------------------------------------------------

    def read_some(self, buf: memoryview) -> int:
        """Read up to len(buf) bytes into buf: how many; 0 at the end of the stream."""
        while True:
            try:
                with self.tls_lock:
                    n = self.tls.read(len(buf), buf)
                    pending = self.outgoing.pending
            except ssl.SSLWantReadError:
                n, pending = None, self.outgoing.pending
            except ssl.SSLZeroReturnError:  # close_notify
                return 0
            if pending:
                self._flush()  # a key update or ticket reply
            if n:
                return n
            if self.ended or not self._fill():
                self.ended = True
                return 0

    def read(self, n: int) -> bytes | bytearray:
        """Exactly n bytes; fewer only if the stream ended (b"" if before the first).

        Small reads are served from what TLS has already decrypted: a frame's length,
        header length and header (three reads) usually come from one record in one call
        into TLS. A large read (a photo) goes straight into its own buffer."""
        plain = self._plain
        if len(plain) >= n:
            out = bytes(plain[:n])
            del plain[:n]  # from the front of a bytearray: no copy of the rest
            return out
        if n - len(plain) <= READ_AHEAD:
            with memoryview(self._chunk) as view:
                while len(plain) < n:
                    k = self.read_some(view)
                    if not k:
                        break
                    plain += view[:k]
            out = bytes(plain[:n])
            del plain[:n]
            return out
        buf = bytearray(n)
        got = len(plain)
        buf[:got] = plain
        plain.clear()
        view = memoryview(buf)
        try:
            while got < n:
                k = self.read_some(view[got:])
                if not k:
                    break
                got += k
        finally:
            view.release()
        if got < n:
            del buf[got:]
        return buf

    # --- writing ----------------------------------------------------------------------

    def write(self, data) -> None:
        view = memoryview(data).cast("B")
        with self.send_lock:
            for i in range(0, len(view), CHUNK):
                piece = view[i : i + CHUNK]
                with self.tls_lock:
                    done = 0
                    while done < len(piece):
                        done += self.tls.write(piece[done:])
                    out = self.outgoing.read()
                self._wait()
                self.sock.sendall(out)

    def end_output(self) -> None:
        """The other side reads the end of the stream (the connection stays open for reading)."""
        with self.send_lock:
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
