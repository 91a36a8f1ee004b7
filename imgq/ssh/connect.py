"""Connecting to a host the way the user's OpenSSH client would.

A connection is a Fabric ``Connection``: host aliases, users, ports, identity files and
ProxyJump come from ``~/.ssh/config`` (or the given config file), and host keys are checked
against the config's ``UserKnownHostsFile`` / ``GlobalKnownHostsFile``. An unknown host key
is refused unless the caller opts in, and then it is appended to known_hosts the way
``StrictHostKeyChecking accept-new`` would. A changed key is always refused. Any way a
host can fail us becomes ``HostUnreachable`` (``translate``) with a message saying what to
do; every network wait has a timeout.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import fabric
import paramiko
from paramiko.hostkeys import HostKeys

from imgq.errors import HostUnreachable, UsageError
from imgq.ssh.hostspec import HostSpec, parse_host_spec

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


def _fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class Connection(fabric.Connection):
    """A Fabric connection as ``connect`` makes it: host keys checked, timeouts set."""


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
    if isinstance(sock, socket.socket):
        # before the handshake, not after it (_tune): the client's NEWKEYS and its service
        # request go out back to back, and Nagle held the second until the server's
        # delayed ACK of the first, 40 ms into every connection
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t = paramiko.Transport(sock, **kwargs)
    opts = t.get_security_options()
    available = list(opts.ciphers)
    opts.ciphers = [c for c in _FAST_CIPHERS if c in available] + [
        c for c in available if c not in _FAST_CIPHERS
    ]
    _acknowledge_global_requests(t)
    return t


def _acknowledge_global_requests(t: paramiko.Transport) -> None:
    """Answer a server's global request that wants no reply with an SSH_MSG_IGNORE.

    OpenSSH's sshd sends one (``hostkeys-00@openssh.com``) right after authentication,
    and does not set TCP_NODELAY on non-interactive sessions: its answer to the first
    channel we open was held back (Nagle) until we ACKed that request, which we delay by
    40 ms when we have nothing to send. The ignore message carries the ACK at once; the
    first channel of every connection opened in 1-2 ms instead of 43 here."""
    from paramiko.common import MSG_GLOBAL_REQUEST, cMSG_IGNORE
    from paramiko.message import Message

    # paramiko's handler table is not public API: where a version lays it out otherwise,
    # connections go on as before (40 ms slower), never fail for it
    # (paramiko 5 keeps a table of bound methods per transport; older ones shared one of
    # plain functions between all transports, which must not be touched)
    table = vars(t).get("_handler_table")
    parse = table.get(MSG_GLOBAL_REQUEST) if isinstance(table, dict) else None
    if parse is None or not hasattr(t, "_send_message"):
        return

    def handler(m):
        parse(m)
        ignore = Message()
        ignore.add_byte(cMSG_IGNORE)
        ignore.add_string(b"")
        t._send_message(ignore)  # as paramiko sends its own replies from this thread

    table[MSG_GLOBAL_REQUEST] = handler


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


def translate(conn: fabric.Connection, exc: BaseException, doing: str) -> HostUnreachable:
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


NETWORK_ERRORS = (paramiko.SSHException, OSError, EOFError)


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
    except NETWORK_ERRORS as exc:
        conn.close()
        raise translate(conn, exc, "connecting") from exc
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


def live_transport(conn: fabric.Connection, doing: str) -> paramiko.Transport:
    """The live transport, or HostUnreachable; never silently reconnects."""
    t = conn.transport
    if t is None or not t.is_active():
        raise HostUnreachable(f"{describe(conn)}: connection lost (before {doing})")
    return t


def close(conn: fabric.Connection) -> None:
    """Close the connection and any ProxyJump hops it opened."""
    hop = conn
    while isinstance(hop, fabric.Connection):
        hop.close()
        hop = hop.gateway


def open_sftp(conn: fabric.Connection, *, io_timeout: float = DEFAULT_IO_TIMEOUT):
    """A new SFTP session on the connection (one per thread for concurrent transfers)."""
    t = live_transport(conn, "opening SFTP")
    try:
        sftp = paramiko.SFTPClient.from_transport(t, window_size=CHANNEL_WINDOW)
    except NETWORK_ERRORS as exc:
        raise translate(conn, exc, "opening SFTP") from exc
    sftp.get_channel().settimeout(io_timeout)
    return sftp
