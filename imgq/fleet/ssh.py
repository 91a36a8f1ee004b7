"""Talking to one host over SSH: connect, run a command, move files, keep a process open.

The thin layer under the fleet. A connection is a Fabric ``Connection`` opened the way the
user's OpenSSH client would open it: host aliases, users, ports, identity files and
ProxyJump come from ``~/.ssh/config`` (or the given config file), and host keys are checked
against the config's ``UserKnownHostsFile`` / ``GlobalKnownHostsFile``. An unknown host key
is refused unless the caller opts in, and then it is appended to known_hosts the way
``StrictHostKeyChecking accept-new`` would. A changed key is always refused.

Any way a host can fail us becomes ``HostUnreachable`` (transient: the queue retries
elsewhere) with a message saying what to do; a remote filesystem refusing a transfer is
``StorageError``. Nothing here waits forever: every network wait has a timeout, so a hung
host (its kernel still answers TCP, nothing else does) is noticed like a dead one.

Remote commands are argv lists; every argument is quoted with ``shlex.quote`` on its way
into the remote shell (``remote_command``), so nothing from a file name or an owner folder
is ever interpreted by it. Files travel over SFTP, which has no shell at all.

Two transports, measured against each other in docs/transport.md: SFTP (``put_bytes``,
``get_bytes``, ``Workdir``) for files that must land on a host's disk, and length-prefixed
frames over the stdin/stdout of one long-lived remote process (``start_process``), which
moves photos to and from a remote agent faster and with less CPU.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import logging
import os
import re
import secrets
import select
import shlex
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import fabric
import paramiko
from paramiko.hostkeys import HostKeys

from imgq.errors import HostUnreachable, StorageError, UsageError

# paramiko logs a traceback from its transport thread for every failed handshake; without
# this, Python's last-resort handler would print it on stderr even though we raise a clear
# HostUnreachable. A CLI that configures logging (--debug) still sees them.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

DEFAULT_CONNECT_TIMEOUT = 10.0
# A keepalive goes out after this many idle seconds; with TCP_USER_TIMEOUT the kernel drops
# a connection whose data stays unacknowledged for DEAD_AFTER seconds (a host that vanished
# from the network), so a dead host is noticed in seconds, not after TCP's ~15 minutes.
KEEPALIVE_INTERVAL = 5
DEAD_AFTER = 15.0
DEFAULT_IO_TIMEOUT = 60.0
# Channel window: how much may be in flight unacknowledged. paramiko's 2 MB is below
# bandwidth x round trip of a fast WAN link (1 Gbit/s x 20 ms = 2.5 MB); on loopback the
# two measured alike (docs/transport.md).
CHANNEL_WINDOW = 16 * 2**20
FRAME_HEADER = struct.Struct("!Q")  # 8-byte big-endian payload length
MAX_FRAME = 2**34  # 16 GiB: anything larger is a corrupt header, not a photo

_SPEC = re.compile(
    r"""^(?:(?P<user>[^@\s:/]+)@)?     # user@
        (?P<host>[A-Za-z0-9_.%+-]+)    # host name, address or ssh_config alias
        (?::(?P<port>\d+))?            # :port
        (?:/(?P<slots>\d+))?$          # /slots
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class HostSpec:
    """Where to run: ``[user@]host[:port][/slots]``; None means "from ssh_config / default"."""

    host: str
    user: str | None = None
    port: int | None = None
    slots: int | None = None

    def __str__(self) -> str:
        text = self.host
        if self.user:
            text = f"{self.user}@{text}"
        if self.port:
            text = f"{text}:{self.port}"
        if self.slots:
            text = f"{text}/{self.slots}"
        return text


def parse_host_spec(text: str) -> HostSpec:
    """Parse ``[user@]host[:port][/slots]``; raise UsageError naming what is wrong."""
    form = "expected [user@]host[:port][/slots], e.g. alice@gpu1:2222/8"
    raw = text
    text = text.strip()
    if not text:
        raise UsageError(f"empty host spec ({form})")
    if text.count(":") > 1 or text.startswith("["):
        raise UsageError(
            f"bad host spec {raw!r}: IPv6 addresses are not supported; "
            "give the host an alias in ~/.ssh/config"
        )
    if text.startswith("-"):
        raise UsageError(f"bad host spec {raw!r}: a host name cannot start with '-'")
    m = _SPEC.match(text)
    if not m:
        raise UsageError(f"bad host spec {raw!r} ({form})")
    port = int(m["port"]) if m["port"] is not None else None
    if port is not None and not 1 <= port <= 65535:
        raise UsageError(f"bad host spec {raw!r}: port {port} is not in 1-65535")
    slots = int(m["slots"]) if m["slots"] is not None else None
    if slots is not None and slots < 1:
        raise UsageError(f"bad host spec {raw!r}: slots must be at least 1")
    return HostSpec(host=m["host"], user=m["user"], port=port, slots=slots)


def remote_command(argv: list[str]) -> str:
    """One shell command line that runs ``argv`` exactly, every argument quoted.

    The remote login shell must be POSIX-like (sh, bash, dash, zsh, ksh). To run a script
    with arguments, pass ``["sh", "-c", SCRIPT, "sh", arg1, ...]`` and refer to "$1"...
    inside SCRIPT, never format arguments into it.
    """
    if isinstance(argv, (str, bytes)) or not argv:
        raise TypeError("remote_command takes a non-empty list of arguments")
    parts = []
    for arg in argv:
        arg = os.fspath(arg)
        if not isinstance(arg, str):
            raise TypeError(f"remote command arguments must be str, not {type(arg).__name__}")
        if "\0" in arg:
            raise ValueError(f"a remote command argument cannot contain NUL: {arg!r}")
        parts.append(shlex.quote(arg))
    return " ".join(parts)


# ---------------------------------------------------------------------------------------
# Connecting


def _fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class Connection(fabric.Connection):
    """A Fabric connection as ``connect`` makes it: host keys checked, timeouts set.

    Only adds a slot for the SFTP session the file helpers share. (Attributes must exist
    on the class: Invoke turns unknown attribute writes into configuration values.)
    """

    shared_sftp = None


class _UnknownHostKey(paramiko.SSHException):
    def __init__(self, hostname: str, key: paramiko.PKey):
        super().__init__(f"host key for {hostname} is unknown")
        self.hostname, self.key = hostname, key


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client, hostname, key):
        raise _UnknownHostKey(hostname, key)


class _AcceptNew(paramiko.MissingHostKeyPolicy):
    """Like OpenSSH's ``StrictHostKeyChecking accept-new``: append the key, keep the file."""

    def __init__(self, known_hosts: Path, hashed: bool):
        self.known_hosts, self.hashed = known_hosts, hashed

    def missing_host_key(self, client, hostname, key):
        name = HostKeys.hash_host(hostname) if self.hashed else hostname
        line = f"{name} {key.get_name()} {key.get_base64()}\n"
        try:
            self.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a") as f:
                f.write(line)
        except OSError as exc:
            raise paramiko.SSHException(
                f"cannot record the host key of {hostname} in {self.known_hosts}: {exc}"
            ) from exc
        client.get_host_keys().add(hostname, key.get_name(), key)


def _expand_path(path: str, user: str) -> Path:
    home = os.path.expanduser("~")
    path = path.replace("%%", "\0").replace("%d", home).replace("%u", getpass.getuser())
    path = path.replace("%r", user).replace("\0", "%")
    return Path(os.path.expanduser(path))


@dataclass
class _HostKeyFiles:
    user_files: list[Path]
    global_files: list[Path]

    @property
    def save_to(self) -> Path:
        return self.user_files[0]


def _host_key_files(ssh_config: dict, user: str) -> _HostKeyFiles:
    user_files = ssh_config.get("userknownhostsfile", "~/.ssh/known_hosts ~/.ssh/known_hosts2")
    global_files = ssh_config.get(
        "globalknownhostsfile", "/etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2"
    )
    return _HostKeyFiles(
        [_expand_path(p, user) for p in user_files.split()],
        [_expand_path(p, user) for p in global_files.split()],
    )


# AES-GCM first: it needs no separate MAC pass over the data, and it cut the
# coordinator's CPU per MB moved by about a quarter (docs/transport.md). A server without
# it (OpenSSH before 6.2) still negotiates paramiko's usual AES-CTR.
_FAST_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


def _transport_factory(sock, **kwargs) -> paramiko.Transport:
    t = paramiko.Transport(sock, **kwargs)
    opts = t.get_security_options()
    available = list(opts.ciphers)
    opts.ciphers = [c for c in _FAST_CIPHERS if c in available] + [
        c for c in available if c not in _FAST_CIPHERS
    ]
    return t


def _prepare(conn: fabric.Connection, *, accept_new: bool, timeout: float) -> None:
    """Make one hop (and, recursively, its ProxyJump hops) check host keys and time out."""
    files = _host_key_files(conn.ssh_config, conn.user)
    client = conn.client
    for path in files.user_files + files.global_files:
        if path.is_file():
            # loaded read-only: paramiko's own save would rewrite the user's file and drop
            # comments and markers; new keys are appended by _AcceptNew instead
            client.load_system_host_keys(str(path))
    if accept_new:
        hashed = conn.ssh_config.get("hashknownhosts", "no").lower() == "yes"
        client.set_missing_host_key_policy(_AcceptNew(files.save_to, hashed))
    else:
        client.set_missing_host_key_policy(_RefuseUnknown())
    kwargs = dict(conn.connect_kwargs)
    kwargs.update(banner_timeout=timeout, auth_timeout=timeout, channel_timeout=timeout)
    kwargs.setdefault("transport_factory", _transport_factory)
    if conn.ssh_config.get("identitiesonly", "no").lower() == "yes":
        kwargs.update(allow_agent=False, look_for_keys=False)
    conn.connect_kwargs = kwargs
    conn.connect_timeout = timeout  # Fabric rounds config values to int; keep fractions
    if isinstance(conn.gateway, fabric.Connection):
        _prepare(conn.gateway, accept_new=accept_new, timeout=timeout)


def describe(conn: fabric.Connection) -> str:
    """``alias (user@address:port)`` for messages."""
    where = f"{conn.user}@{conn.host}:{conn.port}"
    return where if conn.original_host == conn.host else f"{conn.original_host} ({where})"


def _hop(conn: fabric.Connection, hostname: str) -> fabric.Connection:
    """The connection in conn's ProxyJump chain whose host key is named ``hostname``."""
    hop = conn
    while isinstance(hop, fabric.Connection):
        if hostname in (hop.host, f"[{hop.host}]:{hop.port}"):
            return hop
        hop = hop.gateway
    return conn


def _translate(conn: fabric.Connection, exc: BaseException, doing: str) -> HostUnreachable:
    """A HostUnreachable whose message says what failed and what to do about it."""
    who = describe(conn)
    if isinstance(exc, HostUnreachable):
        return exc
    if isinstance(exc, (_UnknownHostKey, paramiko.BadHostKeyException)):
        hop = _hop(conn, exc.hostname)
        known_hosts = _host_key_files(hop.ssh_config, hop.user).save_to
        via = f", the jump host for {conn.original_host}" if hop is not conn else ""
    if isinstance(exc, _UnknownHostKey):
        msg = (
            f"host key for {hop.original_host} ({exc.hostname}{via}, {exc.key.get_name()} "
            f"{_fingerprint(exc.key)}) is unknown: add it to {known_hosts} "
            "(e.g. ssh to it once and check the fingerprint) or pass --accept-new-host-keys"
        )
    elif isinstance(exc, paramiko.BadHostKeyException):
        msg = (
            f"host key for {hop.original_host} ({describe(hop)}{via}) does not match "
            f"{known_hosts} (got {exc.key.get_name()} {_fingerprint(exc.key)}): "
            "the host was reinstalled or someone is in the "
            f"middle; if the change is expected, run: ssh-keygen -R '{exc.hostname}'"
        )
    elif isinstance(exc, paramiko.AuthenticationException):
        msg = (
            f"cannot log in to {who}: {exc}; check the user, IdentityFile and ssh-agent "
            "(ssh to it once by hand to see why)"
        )
    elif isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError) or isinstance(
        exc, ConnectionRefusedError
    ):
        msg = f"{who}: connection refused ({doing}); is sshd running there?"
    elif isinstance(exc, socket.gaierror):
        msg = f"{who}: unknown host name {conn.host!r} (not in DNS, /etc/hosts or ssh config)"
    elif isinstance(exc, (socket.timeout, TimeoutError)):
        msg = f"{who}: no answer while {doing} (timed out); the host may be down or hung"
    elif isinstance(exc, EOFError):
        msg = f"{who}: connection lost while {doing}"
    elif isinstance(exc, paramiko.SSHException) and any(
        # paramiko's words for a handshake that never completed (which one depends on
        # which of its equal timeouts fires first)
        words in str(exc) for words in ("banner", "No existing session", "Negotiation failed")
    ):
        msg = (
            f"{who}: the port accepts connections but no SSH server answered while {doing} "
            "(timed out); the host may be hung or overloaded"
        )
    elif isinstance(exc, paramiko.SSHException):
        msg = f"{who}: SSH failed while {doing}: {exc}"
    elif isinstance(exc, OSError):
        msg = f"{who}: {exc.strerror or exc} while {doing}"
    else:
        msg = f"{who}: {type(exc).__name__} while {doing}: {exc}"
    err = HostUnreachable(msg)
    err.__cause__ = exc
    return err


_NETWORK_ERRORS = (paramiko.SSHException, OSError, EOFError)


def connect(
    spec: HostSpec | str,
    *,
    ssh_config: Path | str | None = None,
    accept_new_host_keys: bool = False,
    connect_timeout: float | None = None,
    keepalive: int = KEEPALIVE_INTERVAL,
) -> Connection:
    """An open, authenticated connection to ``spec``, resolved through the ssh config.

    ``ssh_config`` replaces ~/.ssh/config and /etc/ssh/ssh_config (as ``ssh -F`` does).
    ``connect_timeout`` bounds TCP connect, banner, key exchange and authentication
    (default: the config's ConnectTimeout, else 10 s). Raises HostUnreachable.
    """
    if isinstance(spec, str):
        spec = parse_host_spec(spec)
    if ssh_config is not None and not Path(ssh_config).is_file():
        raise UsageError(f"ssh config file {ssh_config} does not exist")
    try:
        config = fabric.Config(runtime_ssh_path=str(ssh_config) if ssh_config else None)
        conn = Connection(spec.host, user=spec.user, port=spec.port, config=config)
    except paramiko.SSHException as exc:  # e.g. a bad ProxyJump or Match line
        raise UsageError(f"cannot use the ssh config for {spec.host}: {exc}") from exc
    if connect_timeout is None:
        connect_timeout = float(conn.ssh_config.get("connecttimeout", DEFAULT_CONNECT_TIMEOUT))
    _prepare(conn, accept_new=accept_new_host_keys, timeout=connect_timeout)
    try:
        conn.open()
    except _NETWORK_ERRORS as exc:
        conn.close()
        raise _translate(conn, exc, "connecting") from exc
    hop = conn
    while isinstance(hop, fabric.Connection):
        _tune(hop.transport, keepalive)
        hop = hop.gateway
    return conn


def _tune(transport: paramiko.Transport | None, keepalive: int) -> None:
    if transport is None:
        return
    transport.set_keepalive(keepalive)
    sock = transport.sock
    if not isinstance(sock, socket.socket):  # a ProxyJump channel: its hop is tuned itself
        return
    # Without TCP_NODELAY, Nagle's algorithm holds a small packet until the previous one is
    # acknowledged, and the peer delays that ACK by 40 ms: every small frame round trip took
    # 44 ms instead of 0.1 ms (docs/transport.md). OpenSSH sets it for interactive sessions.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(DEAD_AFTER * 1000))


def _transport(conn: fabric.Connection, doing: str) -> paramiko.Transport:
    """The live transport, or HostUnreachable; never silently reconnects."""
    t = conn.transport
    if t is None or not t.is_active():
        raise HostUnreachable(f"{describe(conn)}: connection lost (before {doing})")
    return t


def probe(conn: fabric.Connection, timeout: float = 5.0) -> None:
    """Raise HostUnreachable unless the host answers a channel request within ``timeout``.

    Catches a hung host (its kernel still ACKs TCP, its sshd answers nothing), which
    keepalives alone cannot notice.
    """
    t = _transport(conn, "probing")
    try:
        chan = t.open_session(timeout=timeout)
    except _NETWORK_ERRORS as exc:
        raise _translate(conn, exc, f"probing (no answer in {timeout:g} s)") from exc
    chan.close()


def close(conn: fabric.Connection) -> None:
    """Close the connection, its SFTP session and any ProxyJump hops it opened."""
    hop = conn
    while isinstance(hop, fabric.Connection):
        if isinstance(hop, Connection) and hop.shared_sftp is not None:
            hop.shared_sftp.close()
            hop.shared_sftp = None
        hop.close()
        hop = hop.gateway


# ---------------------------------------------------------------------------------------
# Commands


@dataclass
class RemoteResult:
    argv: list[str]
    exit_status: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


def _open_exec(conn, argv, doing, window=None) -> paramiko.Channel:
    t = _transport(conn, doing)
    try:
        chan = t.open_session(window_size=window, timeout=conn.connect_timeout)
        chan.exec_command(remote_command(argv))
    except _NETWORK_ERRORS as exc:
        raise _translate(conn, exc, doing) from exc
    return chan


def _feed(chan: paramiko.Channel, data: bytes) -> None:
    try:
        chan.sendall(data)
        chan.shutdown_write()
    except Exception:  # the reader notices the lost channel and reports it
        pass


def run(
    conn: fabric.Connection,
    argv: list[str],
    *,
    input: bytes | None = None,
    timeout: float = DEFAULT_IO_TIMEOUT,
) -> RemoteResult:
    """Run ``argv`` on the host (no terminal), feed it ``input``, collect its output.

    A non-zero exit is returned, not raised. HostUnreachable if the host is lost or the
    command has not finished after ``timeout`` seconds (the channel is then closed).
    """
    doing = f"running {argv[0]}"
    chan = _open_exec(conn, argv, doing)
    out, err = bytearray(), bytearray()
    deadline = time.monotonic() + timeout
    try:
        if input:
            # fed from a thread: a command that answers as it reads (cat) would otherwise
            # fill our receive window while we are still sending, and both sides would wait
            threading.Thread(target=_feed, args=(chan, input), daemon=True).start()
        else:
            chan.shutdown_write()
        while True:
            while chan.recv_ready():
                out += chan.recv(1 << 20)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(1 << 20)
            if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                if chan.eof_received or chan.closed:
                    break
            if not chan.get_transport().is_active():
                raise EOFError("connection lost")
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout(f"{argv[0]} did not finish within {timeout:g} s")
            select.select([chan], [], [], min(left, 0.5))
        status = chan.recv_exit_status()
        if not chan.eof_received:
            # closed without the end of its output: the connection died, not the command
            raise EOFError("connection lost")
    except _NETWORK_ERRORS as exc:
        raise _translate(conn, exc, doing) from exc
    finally:
        chan.close()
    return RemoteResult(list(argv), status, bytes(out), bytes(err))


# ---------------------------------------------------------------------------------------
# Files over SFTP


def open_sftp(conn: fabric.Connection, *, io_timeout: float = DEFAULT_IO_TIMEOUT):
    """A new SFTP session on the connection (one per thread for concurrent transfers)."""
    t = _transport(conn, "opening SFTP")
    try:
        sftp = paramiko.SFTPClient.from_transport(t, window_size=CHANNEL_WINDOW)
    except _NETWORK_ERRORS as exc:
        raise _translate(conn, exc, "opening SFTP") from exc
    sftp.get_channel().settimeout(io_timeout)
    return sftp


def _sftp(conn: fabric.Connection, sftp):
    """The caller's SFTP session, or the connection's shared one (made once)."""
    if sftp is not None:
        return sftp
    if not isinstance(conn, Connection):  # a plain Fabric connection: its own cache
        _transport(conn, "opening SFTP")
        return conn.sftp()
    if conn.shared_sftp is None or conn.shared_sftp.get_channel().closed:
        conn.shared_sftp = open_sftp(conn)
    return conn.shared_sftp


def _sftp_error(conn, exc: BaseException, doing: str) -> Exception:
    """StorageError for what the remote filesystem refused (no such folder, permission,
    disk full) while the connection is fine; HostUnreachable when the connection is the
    problem."""
    alive = conn.transport is not None and conn.transport.is_active()
    if alive and isinstance(exc, OSError) and not isinstance(exc, (socket.timeout, TimeoutError)):
        reason = exc.strerror or str(exc) or type(exc).__name__
        err = StorageError(f"{describe(conn)}: {reason} while {doing}")
        err.__cause__ = exc
        return err
    return _translate(conn, exc, doing)


def _tmp_name(remote_path: str) -> str:
    p = PurePosixPath(remote_path)
    return str(p.with_name(f".{p.name}.imgq-tmp-{secrets.token_hex(4)}"))


def make_dirs(conn: fabric.Connection, remote_path: str, *, sftp=None) -> None:
    """``mkdir -p`` over SFTP."""
    s = _sftp(conn, sftp)
    try:
        parts = PurePosixPath(remote_path).parts
        for i in range(1, len(parts) + 1):
            d = str(PurePosixPath(*parts[:i]))
            try:
                s.stat(d)
            except FileNotFoundError:
                s.mkdir(d)
    except _NETWORK_ERRORS as exc:
        raise _sftp_error(conn, exc, f"creating folder {remote_path!r}") from exc


_CHUNK = 1 << 20


def _upload(conn, chunks, remote_path: str, sftp) -> None:
    s = _sftp(conn, sftp)
    tmp = _tmp_name(remote_path)
    try:
        sent = 0
        with s.open(tmp, "wb") as f:
            f.set_pipelined(True)  # don't wait for each write's reply
            for chunk in chunks:
                f.write(chunk)
                sent += len(chunk)
        size = s.stat(tmp).st_size
        if size != sent:
            raise OSError(f"sent {sent} bytes but {size} landed")
        s.posix_rename(tmp, remote_path)
    except _NETWORK_ERRORS as exc:
        try:
            s.remove(tmp)
        except Exception:
            pass
        raise _sftp_error(conn, exc, f"uploading {remote_path!r}") from exc


def put_bytes(conn: fabric.Connection, data: bytes, remote_path: str, *, sftp=None) -> None:
    """Write ``data`` to ``remote_path`` atomically: a temporary name, then rename into place.

    Relative paths are relative to the remote login folder; the parent folder must exist
    (``make_dirs``). The size that landed is checked. Raises StorageError when the remote
    filesystem refuses (no such folder, permission, disk full), HostUnreachable otherwise.
    """
    view = memoryview(data)
    _upload(conn, (view[i : i + _CHUNK] for i in range(0, len(view), _CHUNK)), remote_path, sftp)


def put_file(conn: fabric.Connection, local_path: Path | str, remote_path: str, *, sftp=None):
    """Upload a local file, streamed (see ``put_bytes``)."""
    with open(local_path, "rb") as f:
        _upload(conn, iter(lambda: f.read(_CHUNK), b""), remote_path, sftp)


def get_bytes(conn: fabric.Connection, remote_path: str, *, sftp=None) -> bytes:
    """The contents of ``remote_path``, all of it (else StorageError or HostUnreachable)."""
    s = _sftp(conn, sftp)
    try:
        with s.open(remote_path, "rb") as f:
            size = f.stat().st_size
            f.prefetch(size)
            data = f.read(size)
        if len(data) != size:
            raise EOFError(f"got {len(data)} of {size} bytes")
        return data
    except _NETWORK_ERRORS as exc:
        raise _sftp_error(conn, exc, f"downloading {remote_path!r}") from exc


def get_file(conn: fabric.Connection, remote_path: str, local_path: Path | str, *, sftp=None):
    """Download to ``local_path`` atomically (temporary name, fsync, rename)."""
    local_path = Path(local_path)
    data = get_bytes(conn, remote_path, sftp=sftp)
    tmp = local_path.with_name(f".{local_path.name}.imgq-tmp-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, local_path)
    finally:
        tmp.unlink(missing_ok=True)


class Workdir:
    """A private folder on the host where staged inputs and outputs live by plain names.

    Names must be single path components (no '/', '.', '..', NUL): a name from the inbox
    can never reach outside the folder. Hostile characters are otherwise fine: SFTP has no
    shell, and commands get the path through ``remote_command``.
    """

    def __init__(self, conn: fabric.Connection, path: str):
        self.conn, self.root = conn, path

    @classmethod
    def create(cls, conn: fabric.Connection, parent: str = ".imgq/work") -> "Workdir":
        """Make a fresh, uniquely named folder under ``parent`` (relative to the login folder)."""
        make_dirs(conn, parent)
        path = str(PurePosixPath(parent) / f"w-{secrets.token_hex(8)}")
        try:
            _sftp(conn, None).mkdir(path, mode=0o700)
        except _NETWORK_ERRORS as exc:
            raise _sftp_error(conn, exc, f"creating folder {path!r}") from exc
        return cls(conn, path)

    def path(self, name: str) -> str:
        if not name or name in (".", "..") or "/" in name or "\0" in name:
            raise ValueError(f"not a plain file name: {name!r}")
        return str(PurePosixPath(self.root) / name)

    def put_bytes(self, name: str, data: bytes, *, sftp=None) -> str:
        path = self.path(name)
        put_bytes(self.conn, data, path, sftp=sftp)
        return path

    def get_bytes(self, name: str, *, sftp=None) -> bytes:
        return get_bytes(self.conn, self.path(name), sftp=sftp)

    def remove(self) -> None:
        """Delete the folder and everything in it."""
        run(self.conn, ["rm", "-rf", "--", self.root])


# ---------------------------------------------------------------------------------------
# A long-lived process with pipes (the remote agent)


class RemoteProcess:
    """A remote command whose stdin/stdout are a byte pipe over one SSH channel.

    stderr is drained in the background (so it can never stall stdout) and its tail kept
    for error messages. Reads wait at most ``io_timeout`` seconds, then HostUnreachable:
    a hung host or agent is noticed, not waited for. Frames are an 8-byte big-endian
    length followed by the payload.
    """

    STDERR_TAIL = 64 * 1024

    def __init__(self, conn: fabric.Connection, chan: paramiko.Channel, argv, io_timeout):
        self.conn, self.channel, self.argv = conn, chan, list(argv)
        self._stderr = bytearray()
        chan.settimeout(io_timeout)
        self._drain = threading.Thread(target=self._drain_stderr, daemon=True)
        self._drain.start()

    def _drain_stderr(self) -> None:
        while True:
            try:
                chunk = self.channel.recv_stderr(65536)
            except socket.timeout:
                if self.channel.closed:
                    return
                continue
            except Exception:
                return
            if not chunk:
                return
            self._stderr += chunk
            del self._stderr[: -self.STDERR_TAIL]

    def stderr_tail(self) -> str:
        return bytes(self._stderr).decode(errors="replace")

    def _lost(self, exc: BaseException, doing: str) -> HostUnreachable:
        """HostUnreachable saying whether the process ended or the connection did."""
        chan = self.channel
        if chan.eof_received:
            # the process closed its output: report how it ended, with what it said
            chan.status_event.wait(1.0)
            self._drain.join(1.0)
            status = chan.recv_exit_status() if chan.exit_status_ready() else -1
            how = f"exit status {status}" if status != -1 else "killed by a signal?"
            err = HostUnreachable(f"{describe(self.conn)}: {self.argv[0]} ended ({how}) "
                                  f"while {doing}")
        elif chan.closed:
            err = _translate(self.conn, EOFError(), doing)
        else:
            err = _translate(self.conn, exc, doing)
        tail = self.stderr_tail().strip()
        if tail:
            err.args = (f"{err.args[0]}; {self.argv[0]} said: {tail[-500:]}",)
        return err

    def set_timeout(self, seconds: float | None) -> None:
        self.channel.settimeout(seconds)

    def write(self, data: bytes) -> None:
        try:
            self.channel.sendall(data)
        except _NETWORK_ERRORS as exc:
            raise self._lost(exc, f"sending to {self.argv[0]}") from exc

    def read_exact(self, n: int, first: bytes = b"") -> bytes | bytearray:
        """Exactly ``n`` bytes of stdout; HostUnreachable on EOF or timeout.

        The bytes land in one buffer of size ``n`` as they arrive (not a list of chunks
        joined at the end, which held every payload twice); ``first``: bytes of them
        already received."""
        buf, got = bytearray(n), len(first)
        view = memoryview(buf)
        view[:got] = first
        try:
            while got < n:
                chunk = self.channel.recv(min(n - got, 1 << 20))
                if not chunk:
                    raise EOFError("end of output")
                view[got : got + len(chunk)] = chunk
                got += len(chunk)
        except _NETWORK_ERRORS as exc:
            raise self._lost(exc, f"reading from {self.argv[0]}") from exc
        finally:
            view.release()
        return buf

    def read(self, n: int) -> bytes | bytearray:
        """For ``protocol.read_message``: exactly ``n`` bytes; b"" if the process closed
        its output before the first of them (a clean end between frames); HostUnreachable
        if the connection ended, the process ended mid-frame, or nothing came in time."""
        try:
            first = self.channel.recv(n)
        except _NETWORK_ERRORS as exc:
            raise self._lost(exc, f"reading from {self.argv[0]}") from exc
        if not first:
            if not self.channel.eof_received:
                raise self._lost(EOFError(), f"reading from {self.argv[0]}")
            return b""
        if len(first) == n:
            return first
        return self.read_exact(n, first)

    def send_frame(self, payload: bytes) -> None:
        header = FRAME_HEADER.pack(len(payload))
        if len(payload) <= 65536:  # one write, one packet: cheaper than copying is for big ones
            self.write(header + payload)
        else:
            self.write(header)
            self.write(payload)

    def recv_frame(self, max_frame: int = MAX_FRAME) -> bytes | None:
        """The next frame, or None if the process closed its output between frames; a
        frame over ``max_frame`` bytes is refused (HostUnreachable) before it is read."""
        try:
            first = self.channel.recv(FRAME_HEADER.size)
        except _NETWORK_ERRORS as exc:
            raise self._lost(exc, f"reading from {self.argv[0]}") from exc
        if not first:
            if not self.channel.eof_received:
                # the output ended because the connection did, not the process
                raise self._lost(EOFError(), f"reading from {self.argv[0]}")
            return None
        header = first + self.read_exact(FRAME_HEADER.size - len(first))
        (size,) = FRAME_HEADER.unpack(header)
        if size > max_frame:
            raise self._lost(EOFError(f"corrupt frame header ({size} bytes, at most {max_frame})"), "reading")
        return self.read_exact(size)

    def close_stdin(self) -> None:
        """Send EOF: the process sees the end of its input."""
        try:
            self.channel.shutdown_write()
        except _NETWORK_ERRORS:
            pass

    def wait(self, timeout: float = DEFAULT_IO_TIMEOUT) -> int:
        """The exit status; HostUnreachable if it has not exited within ``timeout``."""
        if not self.channel.status_event.wait(timeout):
            raise HostUnreachable(
                f"{describe(self.conn)}: {self.argv[0]} did not exit within {timeout:g} s"
            )
        status = self.channel.recv_exit_status()
        if status == -1 and not self.channel.eof_received:
            raise self._lost(EOFError(), f"waiting for {self.argv[0]}")
        return status

    def close(self) -> None:
        """Close the channel; the process sees EOF on stdin and EPIPE on its next write."""
        self.channel.close()

    def __enter__(self) -> "RemoteProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start_process(
    conn: fabric.Connection,
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    io_timeout: float | None = DEFAULT_IO_TIMEOUT,
) -> RemoteProcess:
    """Start ``argv`` on the host with pipes (no terminal); see RemoteProcess.

    ``env`` is passed through ``env NAME=VALUE`` (sshd drops requested variables by default).
    """
    if env:
        for name in env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"not an environment variable name: {name!r}")
    command = ["env", *(f"{k}={v}" for k, v in env.items()), *argv] if env else argv
    chan = _open_exec(conn, command, f"starting {argv[0]}", window=CHANNEL_WINDOW)
    return RemoteProcess(conn, chan, argv, io_timeout)
