"""The connection to a folder on a host reached over SSH (``ssh://[user@]host[:port]/path``):
the URL's parsing, how to reach it (SshOptions), an SSH connection and SFTP session per
thread, the ``.imgq-destination`` marker read (and written at first use) on every connection,
and shell scripts run there. What is copied there, and how, is imgq.destinations.ssh.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import stat
import threading
from pathlib import Path, PurePosixPath

from imgq.destinations.base import MARKER, DestinationUnavailable, check_component, split_rel
from imgq.destinations.ssh_scripts import H256_PROBE, h256_function
from imgq.errors import HostUnreachable, ImgqError, StorageError, UsageError
from imgq.store import temp_name

_MARKER_TEXT = re.compile(r"imgq-destination ([0-9a-f]{32})")
SMALL_FILE = 1 << 20  # hashed on the host by coreutils' sha256sum whatever else is there (SshFolder._script)


@dataclasses.dataclass(frozen=True)
class SshOptions:
    """How to reach ``ssh://`` destinations (see imgq.remote.connect)."""

    config: Path | None = None
    accept_new_host_keys: bool = False
    connect_timeout: float | None = None


_SSH_URL = re.compile(r"^ssh://(?P<where>[^/]+)(?P<path>/.*)$")

# The destination's identity: the marker file in its root, written at first use with a
# random id ($3) under a temporary name ($2) and linked into place (ln refuses to replace,
# so of two first uses at once one id wins and both read it back); mv -n where the file
# system has no hard links (FAT). Read back on every connection. It is on the remote host,
# so this script writes it, not store.write_atomically.
_MARKER_SCRIPT = r"""
m="$1/.imgq-destination"
if [ ! -e "$m" ] && [ ! -h "$m" ]; then
  t="$1/$2"
  printf 'imgq-destination %s\n' "$3" > "$t" && { sync -- "$t" 2>/dev/null || sync; } &&
  { ln -- "$t" "$m" 2>/dev/null || { [ -e "$m" ] || mv -n -- "$t" "$m"; }; }
  rm -f -- "$t"
fi
if [ -f "$m" ] && [ ! -h "$m" ]; then head -c 200 -- "$m"; fi
"""

def parse_ssh_url(text: str):
    """(HostSpec, root) from ``ssh://[user@]host[:port]/path``; ``/~/x`` is x in the login folder."""
    from imgq.ssh import parse_host_spec

    m = _SSH_URL.match(text)
    if not m:
        raise UsageError(f"bad destination {text!r}: expected ssh://[user@]host[:port]/path")
    spec = parse_host_spec(m["where"])
    if spec.slots:
        raise UsageError(f"bad destination {text!r}: /SLOTS has no meaning for a destination")
    path = m["path"]
    root = path[3:] if path.startswith("/~/") else path
    root = root.rstrip("/") or "/"
    if not root or any(p in (".", "..") for p in PurePosixPath(root).parts):
        raise UsageError(f"bad destination {text!r}: the path may not contain . or ..")
    return spec, root


class SshFolder:
    """The connection to a folder on a host: an SSH connection (Fabric) and SFTP session per
    thread that uses it, opened on first use and again after a loss, the folder's marker
    read on every connection; shell scripts run there with paths as arguments, never
    inside the script.

    One connection per thread, not one shared: concurrent copies (``archive
    --transfers``) then each have an sshd of their own on the host and a paramiko
    transport of their own here, and the bytes move about a third faster than over one
    connection (``bin/bench archive``, docs/archive.md); a connection also never holds more
    than three sessions (its SFTP, its copies' receiver and one command), far below
    sshd's MaxSessions (10 by default)."""

    def __init__(self, url: str, options: SshOptions = SshOptions()):
        self.spec, self.root = parse_ssh_url(url)
        self.url = url.rstrip("/")  # canonical (resolve.canonical): parsed above, no trailing slash
        self.options = options
        self._lock = threading.RLock()  # the list of links, the identity
        self._mine = threading.local()  # this thread's link: (connection, SFTP session, epoch)
        self._links: list[tuple] = []  # every open (connection, SFTP session), for close()
        self._epoch = 0  # close() makes every link older than this one stale
        self._dirs_ok: set[str] = set()
        self._identity = ""  # the marker's id, read by the first connection; every later one must read the same
        self._h256 = h256_function(None)  # the scripts' sha256 program, chosen on connecting

    def _connect(self):
        """(connection, SFTP session) of the calling thread, connected (and the marker
        read) if it has none or lost it."""
        mine = self._mine
        link = getattr(mine, "link", None)
        if link is not None and mine.epoch == self._epoch and link[0].transport is not None and link[0].transport.is_active():
            return link
        if link is not None:
            self._drop(link)
        epoch = self._epoch
        link = self._open_link()
        with self._lock:
            self._links.append(link)
        mine.link, mine.epoch = link, epoch
        return link

    def _open_link(self):
        from imgq import ssh as remote

        try:
            conn = remote.connect(
                self.spec,
                ssh_config=self.options.config,
                accept_new_host_keys=self.options.accept_new_host_keys,
                connect_timeout=self.options.connect_timeout,
            )
        except HostUnreachable as e:
            raise DestinationUnavailable(f"{self.url}: {e}") from e
        try:
            try:
                sftp = remote.open_sftp(conn)
            except HostUnreachable as e:
                raise DestinationUnavailable(f"{self.url}: {e}") from e
            try:
                st = sftp.stat(self.root)
            except OSError as e:
                raise DestinationUnavailable(f"{self.url}: {self.root} is not there ({e.strerror or e}); the destination folder must exist") from e
            if not stat.S_ISDIR(st.st_mode):
                raise DestinationUnavailable(f"{self.url}: {self.root} is not a folder")
            identity = self._read_marker(conn)
            with self._lock:
                if not self._identity:
                    self._identity = identity
                    self._h256 = self._choose_h256(conn)
                elif identity != self._identity:
                    raise DestinationUnavailable(
                        f"{self.url}: its {MARKER} changed while in use ({self._identity} became {identity}): another folder is there now"
                    )
        except BaseException:
            remote.close(conn)
            raise
        return conn, sftp

    def _choose_h256(self, conn) -> str:
        """The ``h256`` function for this host's scripts: OpenSSL's sha256 if the host has
        an OpenSSL that hashes a known input right, else coreutils' (ssh_scripts)."""
        from imgq import ssh as remote

        try:
            r = remote.run(conn, ["sh", "-c", H256_PROBE], timeout=60)
        except HostUnreachable as e:
            raise DestinationUnavailable(f"{self.url}: {e} while looking for a sha256 program") from e
        return h256_function(r.stdout.decode(errors="replace"))

    def _script(self, script: str, *, size: int | None = None) -> str:
        """``script`` with the ``h256`` function it may call: for files of ``size`` up to
        1 MiB coreutils' (it starts in half the time of OpenSSL, which pays off from about
        a megabyte on, measured here), else the host's faster one."""
        if size is not None and size <= SMALL_FILE:
            return h256_function(None) + script
        return self._h256 + script

    def _read_marker(self, conn) -> str:
        from imgq import ssh as remote

        try:
            r = remote.run(conn, ["sh", "-c", _MARKER_SCRIPT, "sh", self.root, temp_name(MARKER), secrets.token_hex(16)], timeout=60)
        except HostUnreachable as e:
            raise DestinationUnavailable(f"{self.url}: {e} while reading its {MARKER}") from e
        m = _MARKER_TEXT.fullmatch(r.stdout.decode(errors="replace").strip())
        if not m:
            raise DestinationUnavailable(
                f"{self.url}: cannot read or write {self.root}/{MARKER}, the file that tells this destination apart from others"
                f" ({r.stderr.decode(errors='replace').strip() or 'unexpected content'}); imgq needs it to count copies"
            )
        return "marker:" + m.group(1)

    def _alive(self) -> bool:
        """Whether the calling thread's connection is up (False: it has none)."""
        link = getattr(self._mine, "link", None)
        return link is not None and self._mine.epoch == self._epoch and link[0].transport is not None and link[0].transport.is_active()

    def _drop(self, link) -> None:
        from imgq import ssh as remote

        with self._lock:
            if link in self._links:
                self._links.remove(link)
        for close in (link[1].close, lambda: remote.close(link[0])):
            try:
                close()
            except Exception:
                pass

    def _drop_mine(self) -> None:
        """Close the calling thread's connection (lost, or in doubt): its next use connects again."""
        link = getattr(self._mine, "link", None)
        if link is not None:
            self._mine.link = None
            self._drop(link)

    def close(self) -> None:
        """Close every thread's connection; the next use connects anew and reads the
        marker afresh (within one use, every connection must find the same)."""
        with self._lock:
            links, self._links = self._links, []
            self._epoch += 1
            self._dirs_ok.clear()
            self._identity = ""
        for link in links:
            self._drop(link)

    def _error(self, exc: BaseException, doing: str) -> ImgqError:
        """StorageError for what the remote file system refused; DestinationUnavailable
        when the connection is the problem."""
        import socket

        if isinstance(exc, ImgqError):
            return exc
        if self._alive() and isinstance(exc, OSError) and not isinstance(exc, (socket.timeout, TimeoutError)):
            return StorageError(f"{self.url}: {exc.strerror or exc or type(exc).__name__} while {doing}")
        self._drop_mine()
        return DestinationUnavailable(f"{self.url}: connection lost while {doing} ({type(exc).__name__}: {exc})")

    def _sh(self, script: str, args: list[str], doing: str, timeout: float = 600.0):
        from imgq import ssh as remote

        conn, _ = self._connect()
        try:
            return remote.run(conn, ["sh", "-c", self._script(script), "sh", *args], timeout=timeout)
        except HostUnreachable as e:
            self._drop_mine()
            raise DestinationUnavailable(f"{self.url}: {e} while {doing}") from e

    def _abs(self, rel: str) -> str:
        return str(PurePosixPath(self.root, *split_rel(rel)))

    def _make_dir(self, parts: list[str]) -> str:
        """root/parts, created as needed, every component checked not to be a symlink."""
        _, sftp = self._connect()
        path = PurePosixPath(self.root)
        for part in parts:
            path = path / check_component(part)
            key = str(path)
            if key in self._dirs_ok:
                continue
            try:
                try:
                    st = sftp.lstat(key)
                except FileNotFoundError:
                    try:
                        sftp.mkdir(key, 0o755)
                    except OSError:
                        pass  # made meanwhile, or the lstat below says why not
                    st = sftp.lstat(key)
            except Exception as e:
                raise self._error(e, f"creating folder {key}") from e
            if not stat.S_ISDIR(st.st_mode):
                raise StorageError(f"{self.url}: {key} is a symlink or not a folder; imgq never writes through one")
            self._dirs_ok.add(key)
        return str(path)
