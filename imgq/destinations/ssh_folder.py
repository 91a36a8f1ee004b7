"""The connection to a folder on a host reached over SSH (``ssh://[user@]host[:port]/path``):
the URL's parsing, how to reach it (SshOptions), one SSH connection with an SFTP session per
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
from imgq.errors import HostUnreachable, ImgqError, StorageError, UsageError
from imgq.store import temp_name

_MARKER_TEXT = re.compile(r"imgq-destination ([0-9a-f]{32})")


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
    """The connection to a folder on a host: one SSH connection (Fabric) and SFTP session,
    opened on first use and again after a loss, the folder's marker read on every
    connection; shell scripts run there with paths as arguments, never inside the script."""

    def __init__(self, url: str, options: SshOptions = SshOptions()):
        self.spec, self.root = parse_ssh_url(url)
        self.url = url.rstrip("/")  # canonical (resolve.canonical): parsed above, no trailing slash
        self.options = options
        self._conn = None
        self._sftp = None  # the first thread's SFTP session
        self._lock = threading.RLock()  # connecting, closing
        self._mine = threading.local()  # each thread's own SFTP session over the one connection
        self._sessions: list = []
        self._generation = 0  # connections made: a thread's session of an older one is gone
        self._first_taken = False
        self._dirs_ok: set[str] = set()
        self._identity = ""

    def _connect(self):
        """(connection, this thread's SFTP session): concurrent copies (archive
        --transfers) each use a session of their own over the one SSH connection."""
        with self._lock:
            conn, generation = self._connect_once()
        mine = self._mine
        if getattr(mine, "generation", None) != generation or mine.sftp is None:
            from imgq import ssh as remote

            with self._lock:
                if self._sftp is not None and not self._first_taken:
                    sftp = self._sftp  # the session the connection was checked with
                    self._first_taken = True
                else:
                    try:
                        sftp = remote.open_sftp(conn)
                    except HostUnreachable as e:
                        self.close()
                        raise DestinationUnavailable(f"{self.url}: {e}") from e
                    self._sessions.append(sftp)
                mine.sftp, mine.generation = sftp, generation
        return conn, mine.sftp

    def _connect_once(self):
        from imgq import ssh as remote

        if self._conn is not None and self._conn.transport is not None and self._conn.transport.is_active():
            return self._conn, self._generation
        self.close()
        try:
            self._conn = remote.connect(
                self.spec,
                ssh_config=self.options.config,
                accept_new_host_keys=self.options.accept_new_host_keys,
                connect_timeout=self.options.connect_timeout,
            )
            self._sftp = remote.open_sftp(self._conn)
        except HostUnreachable as e:
            self.close()
            raise DestinationUnavailable(f"{self.url}: {e}") from e
        self._generation += 1
        self._first_taken = False
        try:
            st = self._sftp.stat(self.root)
        except OSError as e:
            raise DestinationUnavailable(f"{self.url}: {self.root} is not there ({e.strerror or e}); the destination folder must exist") from e
        if not stat.S_ISDIR(st.st_mode):
            raise DestinationUnavailable(f"{self.url}: {self.root} is not a folder")
        self._identity = self._read_marker()
        return self._conn, self._generation

    def _read_marker(self) -> str:
        from imgq import ssh as remote

        try:
            r = remote.run(self._conn, ["sh", "-c", _MARKER_SCRIPT, "sh", self.root, temp_name(MARKER), secrets.token_hex(16)], timeout=60)
        except HostUnreachable as e:
            self.close()
            raise DestinationUnavailable(f"{self.url}: {e} while reading its {MARKER}") from e
        m = _MARKER_TEXT.fullmatch(r.stdout.decode(errors="replace").strip())
        if not m:
            raise DestinationUnavailable(
                f"{self.url}: cannot read or write {self.root}/{MARKER}, the file that tells this destination apart from others"
                f" ({r.stderr.decode(errors='replace').strip() or 'unexpected content'}); imgq needs it to count copies"
            )
        return "marker:" + m.group(1)

    def close(self) -> None:
        with self._lock:
            for thing in (*self._sessions, self._sftp, self._conn):
                try:
                    if thing is not None:
                        thing.close()
                except Exception:
                    pass
            self._sftp = self._conn = None
            self._sessions = []
            self._first_taken = False
            self._generation += 1
            self._dirs_ok.clear()

    def _error(self, exc: BaseException, doing: str) -> ImgqError:
        """StorageError for what the remote file system refused; DestinationUnavailable
        when the connection is the problem."""
        import socket

        if isinstance(exc, ImgqError):
            return exc
        conn = self._conn
        alive = conn is not None and conn.transport is not None and conn.transport.is_active()
        if alive and isinstance(exc, OSError) and not isinstance(exc, (socket.timeout, TimeoutError)):
            return StorageError(f"{self.url}: {exc.strerror or exc or type(exc).__name__} while {doing}")
        self.close()
        return DestinationUnavailable(f"{self.url}: connection lost while {doing} ({type(exc).__name__}: {exc})")

    def _sh(self, script: str, args: list[str], doing: str, timeout: float = 600.0):
        from imgq import ssh as remote

        conn, _ = self._connect()
        try:
            return remote.run(conn, ["sh", "-c", script, "sh", *args], timeout=timeout)
        except HostUnreachable as e:
            self.close()
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
