"""Archive destinations: a local folder, or a folder on a host over SSH, behind one interface.

Every destination promises the same three things:

- ``put``: a copy lands under a temporary name in the target folder, is flushed and
  fsynced, read back and its sha256 compared with what was meant to be written, and only
  then renamed into place (and the folder fsynced). A reader never sees a partial file
  under its final name, whatever kills us and when.
- ``check``: the size and sha256 of what is at a name now (read in full, not trusted
  from any cache), or None if nothing is there.
- ``free_bytes``: the space left.
- ``identity``: what the destination is, however it was spelled: the (device, inode) of a
  local root, or the random id in the ``.imgq-destination`` marker of a remote root.
- ``sweep_temps``: remove the temporary files of killed copies.

The rename into place never replaces anything: a final name (on a case-insensitive file
system, any case of it) holding another file raises ``NameTaken``; only a damaged copy
the caller proved to be its own (``replace``) is written over. A name the file system
refuses (FAT's ``:`` ``?``…, too long) raises ``NameRefused``.

Paths are relative to the destination root and always made of plain components (no
``..``, no ``/`` inside a component). Local folders are walked one component at a time
with ``O_NOFOLLOW``, so a symlink planted inside the archive can never take a write
outside of it. Over SSH the same walk is done with SFTP ``lstat``.

Errors: ``DestinationUnavailable`` (transient) when the whole destination cannot take
copies now: unreachable, not mounted, full. ``StorageError`` (transient) for a failure of
one copy. ``SourceUnavailable`` when the file to copy from is missing or no longer has
the content it should: the destination is not to blame.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import re
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from imgq.errors import HostUnreachable, ImgqError, StorageError, UsageError
from imgq.store import TEMP_MARK, pid_alive, temp_name, temp_writer

CHUNK = 1 << 20
CHECK_BATCH = 200  # paths per remote check command (well under any ARG_MAX)


class DestinationUnavailable(StorageError):
    """The destination as a whole cannot take copies now (unreachable, missing, full)."""


class SourceUnavailable(ImgqError):
    """The file a copy is made from is missing or does not have the expected content."""


class SourceChanged(SourceUnavailable):
    """The bytes read from the source while copying are not the ones expected."""


class NameTaken(StorageError):
    """Something other than this copy is at the final name (on a case-insensitive
    destination, possibly under a name differing only in case); nothing was replaced."""


class NameRefused(StorageError):
    """The destination cannot hold this name (characters FAT/exFAT/SMB refuse, or too
    long for it): a safe name must be used instead."""


MARKER = ".imgq-destination"  # the random id of a remote destination, written at first use
_MARKER_TEXT = re.compile(r"imgq-destination ([0-9a-f]{32})")
_SAFE_NAME = re.compile(r"[A-Za-z0-9._+-]{1,100}")
SWEEP_DEPTH = 4  # YYYY/YYYY-MM-DD/OWNER/NAME: the deepest level imgq writes at
REMOTE_TEMP_AGE = 3600.0  # a remote temporary file this old has no live writer


def is_safe_name(name: str) -> bool:
    """Whether every file system imgq writes to can hold ``name``: short ASCII letters,
    digits and ``. _ + -`` only."""
    return bool(_SAFE_NAME.fullmatch(name))


def is_temp_name(entry: str) -> bool:
    return entry.startswith(".") and entry.endswith(TEMP_MARK)


@dataclasses.dataclass(frozen=True)
class Found:
    """What is at a name now."""

    bytes: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class SshOptions:
    """How to reach ``ssh://`` destinations (see imgq.remote.connect)."""

    config: Path | None = None
    accept_new_host_keys: bool = False
    connect_timeout: float | None = None


def check_component(part: str) -> str:
    """Raise ValueError unless ``part`` is one plain path component."""
    if not part or part in (".", "..") or "/" in part or "\0" in part:
        raise ValueError(f"not a plain path component: {part!r}")
    return part


def split_rel(rel: str) -> list[str]:
    parts = rel.split("/")
    for p in parts:
        check_component(p)
    return parts


def is_temp_of(entry: str, name: str) -> bool:
    return entry.startswith(f".{name}.") and entry.endswith(TEMP_MARK)


def _copy_hashing(src, out, source_name: str = "the source") -> tuple[int, str]:
    """Copy src to out; (bytes, sha256) of what was read. A failure to read is the
    source's (SourceUnavailable), a failure to write is the caller's to classify."""
    h = hashlib.sha256()
    n = 0
    while True:
        try:
            chunk = src.read(CHUNK)
        except OSError as e:
            raise SourceUnavailable(f"cannot read {source_name}: {e.strerror or e}") from e
        if not chunk:
            break
        h.update(chunk)
        out.write(chunk)
        n += len(chunk)
    return n, h.hexdigest()


_NAME_REFUSALS = (errno.EINVAL, errno.ENAMETOOLONG, errno.EILSEQ, errno.EPERM)  # FAT says EINVAL or EPERM
RENAME_NOREPLACE = 1
_renameat2 = None


def rename_noreplace(dir_fd: int, src: str, dst: str) -> None:
    """Rename ``src`` to ``dst`` in one folder, never replacing anything: FileExistsError
    if ``dst`` (on a case-insensitive file system: any case of it) exists.

    renameat2(RENAME_NOREPLACE) where the file system has it; else link + unlink (link
    refuses an existing name); on file systems with neither (FAT through FUSE), a check
    right before a plain rename: the only window left is one no imgq writer enters, as
    every imgq writer takes a name this way."""
    global _renameat2
    if _renameat2 is None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        _renameat2 = getattr(libc, "renameat2", False)
    if _renameat2:
        import ctypes

        if _renameat2(dir_fd, os.fsencode(src), dir_fd, os.fsencode(dst), RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, os.strerror(err), dst)
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), dst)
    try:
        os.link(src, dst, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS):
            raise
        try:
            os.stat(dst, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            os.rename(src, dst, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            return
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst) from None
    os.unlink(src, dir_fd=dir_fd)


def _hash_at(dfd: int, name: str) -> Found | None:
    """Size and sha256 of the regular file ``name`` in folder ``dfd`` (from the device,
    not the page cache), or None if there is none."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    except (FileNotFoundError, IsADirectoryError):
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return hash_fd(fd)
    finally:
        os.close(fd)


def hash_fd(fd: int) -> Found:
    """Size and sha256 of an open file, read from its start."""
    h = hashlib.sha256()
    n = 0
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, CHUNK):
        h.update(chunk)
        n += len(chunk)
    return Found(n, h.hexdigest())


def _open_source(source):
    """A binary file object for ``source``: a path, or a callable that opens one (so a
    caller can open an inbox original by identity, imgq.original)."""
    if callable(source):
        return source()
    try:
        return open(source, "rb")
    except OSError as e:
        raise SourceUnavailable(f"cannot read {source}: {e.strerror or e}") from e


def _changed(source, written: int, digest: str, size: int, sha256: str) -> SourceChanged:
    return SourceChanged(f"{getattr(source, 'shown', source)} changed: it has {written} bytes, sha256 {digest[:12]}…, expected {size} bytes, {sha256[:12]}…")


class Destination:
    """The interface; see the module docstring."""

    url: str  # the canonical text stored in the database

    def put(self, source, rel: str, *, sha256: str, size: int, replace: Found | None = None) -> None:
        """Copy ``source`` (a path, or a callable returning an open binary file) to ``rel``.

        The final name is never replaced unless ``replace`` is given and the name holds
        exactly those bytes at the moment of the rename (a damaged copy proven to be this
        item's): otherwise an occupied name raises NameTaken and nothing is replaced."""
        raise NotImplementedError

    def identity(self) -> str:
        """What this destination is, whatever it was called: 'local:DEV:INO' of the root
        folder, or 'marker:HEX' from the marker file in a remote root. Read now."""
        raise NotImplementedError

    def sweep_temps(self, *, now: float) -> list[str]:
        """Remove temporary files of killed copies (writer gone) anywhere imgq writes in
        this destination; returns their destination-relative paths."""
        raise NotImplementedError

    def check(self, rels: Iterable[str]) -> dict[str, Found | None]:
        raise NotImplementedError

    def fetch(self, rel: str, local: Path) -> None:
        """Copy what is at ``rel`` to the local file ``local`` (created; caller verifies)."""
        raise NotImplementedError

    def free_bytes(self) -> int:
        raise NotImplementedError

    def file_identity(self, rel: str) -> tuple[int, int] | None:
        """(device, inode) of the file at ``rel`` when it is on this machine, else None:
        collect compares it with the inbox file's, so that the inbox file itself (a hard
        link, a copy inside the inbox) never counts as a copy of itself."""
        return None

    def close(self) -> None:
        pass

    def __str__(self) -> str:
        return self.url


# --- a local folder ---------------------------------------------------------------------


def _storage_error(url: str, exc: OSError, doing: str) -> StorageError:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DestinationUnavailable(f"{url}: no space left on the device while {doing}")
    if exc.errno == errno.EROFS:
        return DestinationUnavailable(f"{url}: read-only file system while {doing}")
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        reason = "a folder on the way is a symlink or not a folder; imgq never writes through one"
    return StorageError(f"{url}: {reason} while {doing}")


class LocalDestination(Destination):
    """A folder on this machine (a second disk, a NAS mount, a USB drive)."""

    def __init__(self, root: Path | str):
        self.root = Path(os.path.abspath(os.fspath(root)))
        self.url = str(self.root)

    def _root_fd(self) -> int:
        try:
            return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            raise DestinationUnavailable(
                f"{self.url}: {e.strerror}; the destination folder must exist (is the disk mounted?)"
            ) from e

    def _dir_fd(self, parts: list[str], *, create: bool) -> int | None:
        """An fd of root/parts, walked without following symlinks; None if missing."""
        fd = self._root_fd()
        try:
            for part in parts:
                check_component(part)
                if create:
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                        os.fsync(fd)  # the new folder survives a crash with what goes in it
                    except FileExistsError:
                        pass
                try:
                    nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except FileNotFoundError:
                    if create:
                        raise
                    os.close(fd)
                    return None
                os.close(fd)
                fd = nfd
            return fd
        except BaseException:
            os.close(fd)
            raise

    def identity(self) -> str:
        fd = self._root_fd()
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        return f"local:{st.st_dev}:{st.st_ino}"

    def put(self, source, rel: str, *, sha256: str, size: int, replace: Found | None = None) -> None:
        parts = split_rel(rel)
        name = parts[-1]
        try:
            dfd = self._dir_fd(parts[:-1], create=True)
        except OSError as e:
            raise _storage_error(self.url, e, f"creating the folder for {rel}") from e
        tmp = temp_name(name)
        try:
            self._sweep(dfd, name)
            vfs = os.fstatvfs(dfd)
            if vfs.f_bavail * vfs.f_frsize < size:
                raise DestinationUnavailable(f"{self.url}: no space left for {rel} ({size} bytes)")
            with _open_source(source) as src:
                try:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dfd)
                except OSError as e:
                    if e.errno in _NAME_REFUSALS and not is_safe_name(name):
                        raise NameRefused(f"{self.url}: the destination cannot hold the name {name!r} ({e.strerror})") from e
                    raise _storage_error(self.url, e, f"writing {rel}") from e
                try:
                    with os.fdopen(fd, "wb") as out:
                        written, digest = _copy_hashing(src, out, str(getattr(source, "shown", source)))
                        out.flush()
                        os.fsync(out.fileno())
                except OSError as e:
                    raise _storage_error(self.url, e, f"writing {rel}") from e
            if (written, digest) != (size, sha256):
                raise _changed(source, written, digest, size, sha256)
            self._verify_and_rename(dfd, tmp, name, rel, Found(size, sha256), replace)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise
        finally:
            os.close(dfd)

    def _verify_and_rename(self, dfd: int, tmp: str, name: str, rel: str, want: Found, replace: Found | None) -> None:
        try:
            got = _hash_at(dfd, tmp)
        except OSError as e:
            raise _storage_error(self.url, e, f"reading back {rel}") from e
        if got != want:
            raise StorageError(f"{self.url}: {rel} did not verify after writing (read back {got.bytes if got else 0} bytes, sha256 {got.sha256[:12] if got else '-'}…)")
        try:
            if replace is not None and _hash_at(dfd, name) == replace:
                os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)  # the proven damaged copy of this item
            else:
                rename_noreplace(dfd, tmp, name)
            os.fsync(dfd)
        except FileExistsError as e:
            raise NameTaken(f"{self.url}: {rel} (or a name differing only in case) holds another file; imgq never replaces it") from e
        except OSError as e:
            raise _storage_error(self.url, e, f"renaming {rel} into place") from e

    def sweep_temps(self, *, now: float) -> list[str]:
        """Local temporary names carry their writer's pid: one whose process is gone is a
        killed copy's leftover (a live writer's file stays)."""
        swept: list[str] = []
        try:
            walk = os.fwalk(self.root, follow_symlinks=False)
            for folder, dirs, files, dfd in walk:
                depth = 0 if folder == str(self.root) else len(PurePosixPath(folder).relative_to(self.root).parts)
                if depth >= SWEEP_DEPTH - 1:
                    dirs.clear()
                for entry in files:
                    if not is_temp_name(entry):
                        continue
                    pid = temp_writer(entry)
                    if pid is not None and (pid == os.getpid() or pid_alive(pid)):
                        continue
                    try:
                        os.unlink(entry, dir_fd=dfd)
                    except FileNotFoundError:
                        continue
                    swept.append(str(PurePosixPath(folder).relative_to(self.root) / entry))
        except OSError as e:
            raise _storage_error(self.url, e, "removing temporary files of killed copies") from e
        return swept

    @staticmethod
    def _sweep(dfd: int, name: str) -> None:
        """Remove temporary files an earlier, killed copy of the same name left behind."""
        for entry in os.listdir(dfd):
            if is_temp_of(entry, name):
                pid = temp_writer(entry)
                if pid is not None and pid != os.getpid() and pid_alive(pid):
                    continue  # a live writer (another process on this machine)
                try:
                    os.unlink(entry, dir_fd=dfd)
                except FileNotFoundError:
                    pass

    def check(self, rels: Iterable[str]) -> dict[str, Found | None]:
        out: dict[str, Found | None] = {}
        for rel in rels:
            out[rel] = self._check_one(rel)
        return out

    def _check_one(self, rel: str) -> Found | None:
        parts = split_rel(rel)
        try:
            dfd = self._dir_fd(parts[:-1], create=False)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                return None  # not a real folder of ours: no copy there
            raise _storage_error(self.url, e, f"checking {rel}") from e
        if dfd is None:
            return None
        try:
            try:
                fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            except (FileNotFoundError, IsADirectoryError):
                return None
            except OSError as e:
                if e.errno == errno.ELOOP:
                    return None
                raise _storage_error(self.url, e, f"checking {rel}") from e
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    return None
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                return hash_fd(fd)
            except OSError as e:
                raise _storage_error(self.url, e, f"reading {rel}") from e
            finally:
                os.close(fd)
        finally:
            os.close(dfd)

    def fetch(self, rel: str, local: Path) -> None:
        parts = split_rel(rel)
        try:
            dfd = self._dir_fd(parts[:-1], create=False)
            if dfd is None:
                raise SourceUnavailable(f"{self.url}: {rel} is missing")
            try:
                fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            finally:
                os.close(dfd)
            with os.fdopen(fd, "rb") as src, open(local, "xb") as out:
                _copy_hashing(src, out)
        except FileNotFoundError as e:
            raise SourceUnavailable(f"{self.url}: {rel} is missing") from e
        except OSError as e:
            raise _storage_error(self.url, e, f"reading {rel}") from e

    def file_identity(self, rel: str) -> tuple[int, int] | None:
        parts = split_rel(rel)
        try:
            dfd = self._dir_fd(parts[:-1], create=False)
        except (OSError, ImgqError):
            return None
        if dfd is None:
            return None
        try:
            st = os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
        except OSError:
            return None
        finally:
            os.close(dfd)
        return (st.st_dev, st.st_ino)

    def free_bytes(self) -> int:
        try:
            st = os.statvfs(self.root)
        except OSError as e:
            raise DestinationUnavailable(f"{self.url}: {e.strerror}") from e
        return st.f_bavail * st.f_frsize


# --- a folder on a host over SSH -----------------------------------------------------------

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
_SYNC_DIR_SCRIPT = r"""sync -- "$1" 2>/dev/null || sync"""
_DF_SCRIPT = r"""df -Pk -- "$1" | tail -n 1"""
# The destination's identity: the marker file in its root, written at first use with a
# random id ($3) under a temporary name ($2) and linked into place (ln refuses to replace,
# so of two first uses at once one id wins and both read it back); mv -n where the file
# system has no hard links (FAT). Read back on every connection.
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
    from imgq.fleet.ssh import parse_host_spec

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


class SshDestination(Destination):
    """A folder on a host reached over SSH (Fabric): files travel over SFTP, checks run
    ``sha256sum`` there. Needs a POSIX shell and coreutils on the host."""

    def __init__(self, url: str, options: SshOptions = SshOptions()):
        self.spec, self.root = parse_ssh_url(url)
        self.url = canonical(url)
        self.options = options
        self._conn = None
        self._sftp = None
        self._dirs_ok: set[str] = set()
        self._identity = ""

    # connection -------------------------------------------------------------------------

    def _connect(self):
        from imgq.fleet import ssh as remote

        if self._conn is not None and self._conn.transport is not None and self._conn.transport.is_active():
            return self._conn, self._sftp
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
        try:
            st = self._sftp.stat(self.root)
        except OSError as e:
            raise DestinationUnavailable(f"{self.url}: {self.root} is not there ({e.strerror or e}); the destination folder must exist") from e
        if not stat.S_ISDIR(st.st_mode):
            raise DestinationUnavailable(f"{self.url}: {self.root} is not a folder")
        self._identity = self._read_marker()
        return self._conn, self._sftp

    def _read_marker(self) -> str:
        from imgq.fleet import ssh as remote

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

    def close(self) -> None:
        for thing in (self._sftp, self._conn):
            try:
                if thing is not None:
                    thing.close()
            except Exception:
                pass
        self._sftp = self._conn = None
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
        from imgq.fleet import ssh as remote

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

    # the interface ----------------------------------------------------------------------

    def put(self, source, rel: str, *, sha256: str, size: int, replace: Found | None = None) -> None:
        parts = split_rel(rel)
        name = parts[-1]
        folder = self._make_dir(parts[:-1])
        _, sftp = self._connect()
        final = f"{folder}/{name}"
        tmp = f"{folder}/{temp_name(name)}"
        try:
            for entry in sftp.listdir(folder):
                if is_temp_of(entry, name):
                    sftp.remove(f"{folder}/{entry}")  # a killed copy's leftovers
        except Exception as e:
            raise self._error(e, f"listing {folder}") from e
        try:
            with _open_source(source) as src:
                try:
                    out = sftp.open(tmp, "wbx")
                except Exception as e:
                    err = self._error(e, f"writing {rel}")
                    if type(err) is StorageError and not is_safe_name(name):
                        raise NameRefused(f"{self.url}: the destination cannot hold the name {name!r} ({err})") from e
                    raise err from e
                try:
                    with out:
                        out.set_pipelined(True)
                        written, digest = _copy_hashing(src, out, str(getattr(source, "shown", source)))
                except Exception as e:
                    err = self._error(e, f"writing {rel}")
                    if type(err) is StorageError and self._full(size):
                        err = DestinationUnavailable(f"{self.url}: no space left for {rel} ({size} bytes)")
                    raise err from e
            if (written, digest) != (size, sha256):
                raise _changed(source, written, digest, size, sha256)
            r = self._sh(_SYNC_CHECK_SCRIPT, [tmp], f"verifying {rel}")
            got = _parse_found(r.stdout.decode(errors="replace").strip())
            if r.exit_status == 127 or got is None:
                raise StorageError(f"{self.url}: cannot verify {rel}: {r.stderr.decode(errors='replace').strip() or 'no answer'} (the host needs sh, wc and sha256sum)")
            if got != Found(size, sha256):
                raise StorageError(f"{self.url}: {rel} did not verify after writing (read back {got.bytes} bytes, sha256 {got.sha256[:12]}…)")
            self._rename_into_place(sftp, tmp, final, rel, replace)
            self._sh(_SYNC_DIR_SCRIPT, [folder], f"syncing {folder}")
        except BaseException:
            try:
                if self._sftp is not None:
                    self._sftp.remove(tmp)
            except Exception:
                pass
            raise

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
                _copy_hashing(src, out)
        except FileNotFoundError as e:
            raise SourceUnavailable(f"{self.url}: {rel} is missing") from e
        except Exception as e:
            raise self._error(e, f"downloading {rel}") from e

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


# --- choosing one ---------------------------------------------------------------------------


def canonical(text: str) -> str:
    """The form a destination is recorded under: an absolute path, or the ssh:// URL."""
    if text.startswith("ssh://"):
        parse_ssh_url(text)
        return text.rstrip("/")
    if "://" in text:
        raise UsageError(f"unsupported destination {text!r}: use a local folder or ssh://[user@]host[:port]/path")
    if not text:
        raise UsageError("empty destination")
    return os.path.abspath(os.path.expanduser(text))


def open_destination(text: str, ssh: SshOptions = SshOptions()) -> Destination:
    """A destination for ``text`` (a local folder or ssh://...); connects lazily."""
    url = canonical(text)
    if url.startswith("ssh://"):
        return SshDestination(url, ssh)
    return LocalDestination(url)


@dataclasses.dataclass
class Physical:
    """The destinations of a run grouped by what they are (``identity``), read now."""

    unique: list[Destination]  # one per physical destination, in the order given
    identity: dict[str, str]  # url -> identity, for every reachable one
    aliases: list[tuple[str, str]]  # (url, url of the same destination kept in unique)
    down: dict[str, str]  # url -> why its identity could not be read

    def url_of(self, identity: str) -> str | None:
        """The url kept for a physical destination."""
        for d in self.unique:
            if self.identity.get(d.url) == identity:
                return d.url
        return None


def physical(destinations: Iterable[Destination]) -> Physical:
    """Group ``destinations`` by identity: a symlink to a folder, ``/srv/./x``,
    ``ssh://nas/x`` and ``ssh://u@nas:22/x`` are each one destination, not two. One that
    cannot be reached stays in ``unique`` (its copies fail as usual) with its reason."""
    out = Physical([], {}, [], {})
    first: dict[str, str] = {}
    for d in destinations:
        try:
            ident = d.identity()
        except ImgqError as e:
            out.down[d.url] = str(e)
            out.unique.append(d)
            continue
        out.identity[d.url] = ident
        if ident in first:
            out.aliases.append((d.url, first[ident]))
            continue
        first[ident] = d.url
        out.unique.append(d)
    return out
