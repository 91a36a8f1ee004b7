"""A destination that is a folder on a host reached over SSH: ``ssh://[user@]host[:port]/path``.

Files travel over SFTP; checks run ``sha256sum`` there (the host needs a POSIX shell and
coreutils). Folders are walked with SFTP ``lstat``, never through a symlink. What the
destination is (``identity``) is the random id in the ``.imgq-destination`` marker file
written in its root at first use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re
import secrets
import stat
import threading
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from imgq.destinations.base import (
    CHECK_BATCH,
    CHUNK,
    MARKER,
    REMOTE_TEMP_AGE,
    SWEEP_DEPTH,
    Destination,
    DestinationUnavailable,
    Found,
    NameRefused,
    NameTaken,
    SourceUnavailable,
    check_component,
    copy_hashing,
    is_safe_name,
    is_temp_name,
    is_temp_of,
    open_source,
    source_changed,
    split_rel,
)
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

# Run by `sh -c SCRIPT sh ROOT REL...`: one line per REL, "SIZE SHA256", or "-" when there
# is no regular file there or a folder on the way is a symlink (never read through one, as
# the local walk with O_NOFOLLOW). Paths arrive as arguments, never inside the script.
_CHECK_SCRIPT = r"""
root=$1
shift
for rel do
  p=$root
  rest=$rel
  ok=1
  while :; do
    case $rest in */*) ;; *) break ;; esac
    p="$p/${rest%%/*}"
    rest=${rest#*/}
    if [ -h "$p" ] || [ ! -d "$p" ]; then ok=0; break; fi
  done
  f="$p/$rest"
  if [ $ok = 1 ] && [ -f "$f" ] && [ ! -h "$f" ]; then
    s=$(wc -c < "$f") && h=$(sha256sum < "$f") && echo "$s ${h%% *}" || echo "!"
  else
    echo "-"
  fi
done
"""
# fsync one file (coreutils sync FILE; a plain `sync` where that is not understood), then
# report its size and hash the way _CHECK_SCRIPT does.
_SYNC_CHECK_SCRIPT = r"""
sync -- "$1" 2>/dev/null || sync
s=$(wc -c < "$1") && h=$(sha256sum < "$1") && echo "$s ${h%% *}"
"""
# sha256 of the first $2 bytes of $1: the part of a killed copy to be continued
_PREFIX_SCRIPT = r"""head -c "$2" -- "$1" | sha256sum"""
RESUME_MIN = 1 << 20  # a killed copy's part this long or longer is continued, not sent again
_SYNC_DIR_SCRIPT = r"""for d do sync -- "$d" 2>/dev/null || { sync; break; }; done"""
_DF_SCRIPT = r"""df -Pk -- "$1" | tail -n 1"""
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
# Temporary names of killed copies, up to the depth imgq writes at, never through a
# symlink (find -P); the writer's pid is another machine's, so age tells ($2 minutes).
_SWEEP_SCRIPT = r"""
find "$1" -mindepth 1 -maxdepth "$3" -type f -name '.*.imgq-tmp' -mmin "+$2" -print -delete 2>/dev/null
exit 0
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


class SshDestination(SshFolder, Destination):
    """A folder on a host reached over SSH (Fabric): files travel over SFTP, checks run
    ``sha256sum`` there. Needs a POSIX shell and coreutils on the host."""

    # Copies at once over the one connection: each holds an SFTP session and, while it
    # verifies, a command's; with the archive's own session and command that is 10,
    # OpenSSH's default MaxSessions (more are refused, and look like a lost connection).
    max_transfers = 4

    def identity(self) -> str:
        self._connect()
        return self._identity

    def sweep_temps(self, *, now: float) -> list[str]:
        minutes = int(REMOTE_TEMP_AGE // 60)
        r = self._sh(_SWEEP_SCRIPT, [self.root, str(minutes), str(SWEEP_DEPTH)], "removing temporary files of killed copies")
        out = []
        for line in r.stdout.decode(errors="surrogateescape").splitlines():
            if line.startswith(self.root + "/"):
                out.append(line[len(self.root) + 1 :])
        return out

    def put(self, source, rel: str, *, sha256: str, size: int, replace: Found | None = None) -> None:
        parts = split_rel(rel)
        name = parts[-1]
        folder = self._make_dir(parts[:-1])
        _, sftp = self._connect()
        final = f"{folder}/{name}"
        # not store.write_atomically: the file is on another host, written over SFTP and
        # synced, checked and renamed by commands run there (same steps, same temp name)
        tmp = f"{folder}/{temp_name(name)}"
        resume = 0  # bytes of a killed copy of this name, now at tmp, to be continued
        try:
            leftovers = sorted((e for e in sftp.listdir_attr(folder) if is_temp_of(e.filename, name)), key=lambda e: -(e.st_size or 0))
            for entry in leftovers:  # a killed copy's: the largest is continued, the rest go
                left = f"{folder}/{entry.filename}"
                if not resume and RESUME_MIN <= (entry.st_size or 0) < size and stat.S_ISREG(entry.st_mode or 0):
                    try:
                        sftp.rename(left, tmp)  # ours now (plain rename: never onto a name in use)
                        resume = entry.st_size
                        continue
                    except OSError:
                        pass
                sftp.remove(left)
        except Exception as e:
            raise self._error(e, f"listing {folder}") from e
        try:
            with open_source(source) as src:
                h, start = self._resumable(sftp, src, tmp, resume, rel) if resume else (hashlib.sha256(), 0)
                try:
                    if start:
                        out = sftp.open(tmp, "r+b")
                        out.seek(start)
                    else:
                        out = sftp.open(tmp, "wbx")
                except Exception as e:
                    err = self._error(e, f"writing {rel}")
                    if type(err) is StorageError and not is_safe_name(name):
                        raise NameRefused(f"{self.url}: the destination cannot hold the name {name!r} ({err})") from e
                    raise err from e
                try:
                    with out:
                        out.set_pipelined(True)
                        written, digest = copy_hashing(src, out, str(getattr(source, "shown", source)), h=h, n=start)
                except Exception as e:
                    err = self._error(e, f"writing {rel}")
                    if type(err) is StorageError and self._full(size):
                        err = DestinationUnavailable(f"{self.url}: no space left for {rel} ({size} bytes)")
                    raise err from e
            if (written, digest) != (size, sha256):
                raise source_changed(source, written, digest, size, sha256)
            r = self._sh(_SYNC_CHECK_SCRIPT, [tmp], f"verifying {rel}")
            got = _parse_found(r.stdout.decode(errors="replace").strip())
            if r.exit_status == 127 or got is None:
                raise StorageError(f"{self.url}: cannot verify {rel}: {r.stderr.decode(errors='replace').strip() or 'no answer'} (the host needs sh, wc and sha256sum)")
            if got != Found(size, sha256):
                raise StorageError(f"{self.url}: {rel} did not verify after writing (read back {got.bytes} bytes, sha256 {got.sha256[:12]}…)")
            self._rename_into_place(sftp, tmp, final, rel, replace)
            deferred = getattr(self._mine, "folders", None)
            if deferred is None:
                self._sh(_SYNC_DIR_SCRIPT, [folder], f"syncing {folder}")
            else:
                deferred.add(folder)  # synced once for all, before the caller records (deferring_folder_syncs)
        except BaseException:
            try:
                if self._conn is not None:
                    sftp.remove(tmp)
            except Exception:
                pass
            raise

    @contextlib.contextmanager
    def deferring_folder_syncs(self):
        """Puts on this thread inside leave their folder's sync to the end of the block,
        where each folder is synced once, in one command: a file's copies (original and
        artifacts, one folder) cost one sync, not one each. Whoever records the copies
        does so after the block, so nothing is recorded before its folder is synced."""
        self._mine.folders = folders = set()
        try:
            yield
        finally:
            self._mine.folders = None
            if folders:
                self._sh(_SYNC_DIR_SCRIPT, sorted(folders), "syncing folders")

    def _resumable(self, sftp, src, tmp: str, length: int, rel: str):
        """(the sha256 of what of ``src`` is at ``tmp`` already, its length): a killed
        copy's first ``length`` bytes are kept only if the host hashes them to what ours
        hash to; otherwise ``tmp`` is removed and the copy starts over (a fresh hash, 0).
        The whole file is still verified there before it is renamed into place."""
        h = hashlib.sha256()
        n = 0
        while n < length:
            try:
                chunk = src.read(min(CHUNK, length - n))
            except OSError as e:
                raise SourceUnavailable(f"cannot read {getattr(src, 'name', 'the source')}: {e.strerror or e}") from e
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
        if n == length:
            r = self._sh(_PREFIX_SCRIPT, [tmp, str(length)], f"checking the part of {rel} a killed copy left")
            if r.exit_status == 0 and r.stdout.decode(errors="replace").split()[:1] == [h.hexdigest()]:
                try:
                    sftp.truncate(tmp, length)
                    return h, length
                except Exception as e:
                    raise self._error(e, f"continuing {rel}") from e
        try:
            src.seek(0)
            sftp.remove(tmp)
        except Exception as e:
            raise self._error(e, f"starting {rel} over") from e
        return hashlib.sha256(), 0

    def _rename_into_place(self, sftp, tmp: str, final: str, rel: str, replace: Found | None) -> None:
        """SFTP's plain rename (not posix-rename) never replaces: OpenSSH's server links
        and unlinks, or where the file system has no links (FAT) renames only if the name
        is free. A damaged copy proven to be this item's (``replace``) is replaced."""
        try:
            if replace is not None and self.check([rel])[rel] == replace:
                sftp.posix_rename(tmp, final)
            else:
                sftp.rename(tmp, final)
            return
        except ImgqError:
            raise
        except Exception as e:
            err = self._error(e, f"renaming {rel} into place")
            if type(err) is not StorageError:
                raise err from e
            try:
                sftp.lstat(final)
            except FileNotFoundError:
                raise err from e
            except Exception as e2:
                raise self._error(e2, f"renaming {rel} into place") from e
            raise NameTaken(f"{self.url}: {rel} (or a name differing only in case) holds another file; imgq never replaces it") from e

    def _full(self, size: int) -> bool:
        try:
            return self.free_bytes() < max(size, 1)
        except ImgqError:
            return False

    def check(self, rels: Iterable[str]) -> dict[str, Found | None]:
        rels = list(rels)
        out: dict[str, Found | None] = {}
        for i in range(0, len(rels), CHECK_BATCH):
            batch = rels[i : i + CHECK_BATCH]
            for rel in batch:
                split_rel(rel)
            r = self._sh(_CHECK_SCRIPT, [self.root, *batch], "checking copies")
            lines = r.stdout.decode(errors="replace").splitlines()
            if r.exit_status == 127 or len(lines) != len(batch):
                raise StorageError(f"{self.url}: cannot check copies: {r.stderr.decode(errors='replace').strip() or 'unexpected answer'} (the host needs sh, wc and sha256sum)")
            for rel, line in zip(batch, lines):
                if line == "!":
                    raise StorageError(f"{self.url}: cannot read {rel}")
                out[rel] = None if line == "-" else _parse_found(line)
        return out

    def fetch(self, rel: str, local: Path) -> None:
        _, sftp = self._connect()
        try:
            with sftp.open(self._abs(rel), "rb") as src, open(local, "xb") as out:
                src.prefetch()
                copy_hashing(src, out)
        except FileNotFoundError as e:
            raise SourceUnavailable(f"{self.url}: {rel} is missing") from e
        except Exception as e:
            raise self._error(e, f"downloading {rel}") from e

    def listdir(self, rel: str, *, folders: bool = False) -> list[str]:
        _, sftp = self._connect()
        try:
            entries = sftp.listdir_attr(self._abs(rel))
        except FileNotFoundError:
            return []
        except Exception as e:
            raise self._error(e, f"listing {rel}") from e
        wanted = stat.S_ISDIR if folders else stat.S_ISREG
        return sorted(e.filename for e in entries if wanted(e.st_mode or 0) and not is_temp_name(e.filename))

    def remove(self, rel: str) -> None:
        _, sftp = self._connect()
        try:
            sftp.remove(self._abs(rel))
        except FileNotFoundError:
            pass
        except Exception as e:
            raise self._error(e, f"removing {rel}") from e

    def free_bytes(self) -> int:
        r = self._sh(_DF_SCRIPT, [self.root], "asking for free space")
        fields = r.stdout.decode(errors="replace").split()
        try:
            return int(fields[3]) * 1024
        except (IndexError, ValueError):
            raise StorageError(f"{self.url}: cannot read free space from df: {r.stdout!r} {r.stderr!r}")


def _parse_found(line: str) -> Found | None:
    m = re.fullmatch(r"(\d+) ([0-9a-f]{64})", line.strip())
    return Found(int(m.group(1)), m.group(2)) if m else None
