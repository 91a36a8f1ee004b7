"""A destination that is a folder on this machine (a second disk, a NAS mount, a USB drive).

Walked one component at a time with ``O_NOFOLLOW``, so a symlink planted inside the
archive can never take a write outside of it; temporary names carry their writer's pid,
so the leftovers of killed copies are told from live writers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from imgq.destinations.base import (
    NAME_REFUSALS,
    SWEEP_DEPTH,
    Destination,
    DestinationUnavailable,
    Found,
    NameRefused,
    NameTaken,
    SourceUnavailable,
    check_component,
    copy_hashing,
    hash_fd,
    is_safe_name,
    is_temp_name,
    is_temp_of,
    open_source,
    source_changed,
    split_rel,
)
from imgq.errors import ImgqError, StorageError
from imgq.store import pid_alive, temp_writer, write_atomically


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
        return _hash_from_device(fd)
    finally:
        os.close(fd)


READ_AHEAD = 16 << 20  # bytes asked of the device at once while reading a copy back


def _hash_from_device(fd: int) -> Found:
    """Size and sha256 of an open regular file as its device holds it: its cached pages
    are dropped first (clean ones: a synced file's are all clean), so every byte hashed
    is read from the device again, READ_AHEAD bytes asked for ahead of the reads (2.5
    times faster here than the kernel's own readahead, the same bytes)."""
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    return hash_fd(fd, read_ahead=READ_AHEAD)


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
        self._mine = threading.local()  # .folders: this thread's folders whose sync is deferred

    @contextlib.contextmanager
    def deferring_folder_syncs(self):
        """Puts on this thread inside leave their folder's fsync (the new name on disk) to
        the end of the block, where each folder is synced once: a file's copies (original
        and artifacts, one folder) cost one folder sync, not one each. Each file is still
        fsynced before its rename. Whoever records the copies does so after the block, so
        nothing is recorded before its folder is synced; an error syncing is raised."""
        self._mine.folders = folders = {}  # (device, inode) -> an fd of the folder
        try:
            yield
        finally:
            self._mine.folders = None
            error = None
            for fd in folders.values():
                try:
                    os.fsync(fd)
                except OSError as e:
                    error = error or e
                finally:
                    os.close(fd)
            if error is not None:
                raise _storage_error(self.url, error, "syncing folders")

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
        try:
            self._sweep(dfd, name)
            vfs = os.fstatvfs(dfd)
            if vfs.f_bavail * vfs.f_frsize < size:
                raise DestinationUnavailable(f"{self.url}: no space left for {rel} ({size} bytes)")
            with open_source(source) as src:
                self._write(dfd, name, rel, src, source, Found(size, sha256), replace)
        finally:
            os.close(dfd)

    def _write(self, dfd: int, name: str, rel: str, src, source, want: Found, replace: Found | None) -> None:
        """Copy ``src`` to ``name`` in ``dfd`` through store.write_atomically: hashed as
        copied, read back and compared, renamed into place never replacing anything but the
        proven damaged copy ``replace``. Its OSErrors are worded by the stage they came from."""
        stage, copied = "opening", (0, "")

        def fill(out) -> None:
            nonlocal stage, copied
            stage = "writing"
            copied = copy_hashing(src, out, str(getattr(source, "shown", source)))

        def check(tmp: str) -> None:
            nonlocal stage
            stage = "verifying"
            if copied != (want.bytes, want.sha256):
                raise source_changed(source, *copied, want.bytes, want.sha256)
            self._verify(dfd, tmp, rel, want)
            stage = "renaming"

        def proven_damaged() -> bool:
            return replace is not None and _hash_at(dfd, name) == replace

        deferred = getattr(self._mine, "folders", None)
        try:
            write_atomically(name, fill, dir_fd=dfd, check=check, replace=proven_damaged, sync_folder=deferred is None)
            if deferred is not None:
                st = os.fstat(dfd)
                if (st.st_dev, st.st_ino) not in deferred:
                    deferred[(st.st_dev, st.st_ino)] = os.dup(dfd)
        except FileExistsError as e:
            if stage != "renaming":
                raise _storage_error(self.url, e, f"writing {rel}") from e
            raise NameTaken(f"{self.url}: {rel} (or a name differing only in case) holds another file; imgq never replaces it") from e
        except OSError as e:
            if stage == "renaming":
                raise _storage_error(self.url, e, f"renaming {rel} into place") from e
            if stage == "opening" and e.errno in NAME_REFUSALS and not is_safe_name(name):
                raise NameRefused(f"{self.url}: the destination cannot hold the name {name!r} ({e.strerror})") from e
            raise _storage_error(self.url, e, f"writing {rel}") from e

    def _verify(self, dfd: int, tmp: str, rel: str, want: Found) -> None:
        try:
            got = _hash_at(dfd, tmp)
        except OSError as e:
            raise _storage_error(self.url, e, f"reading back {rel}") from e
        if got != want:
            raise StorageError(f"{self.url}: {rel} did not verify after writing (read back {got.bytes if got else 0} bytes, sha256 {got.sha256[:12] if got else '-'}…)")

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
                return _hash_from_device(fd)
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
                copy_hashing(src, out)
        except FileNotFoundError as e:
            raise SourceUnavailable(f"{self.url}: {rel} is missing") from e
        except OSError as e:
            raise _storage_error(self.url, e, f"reading {rel}") from e

    def listdir(self, rel: str, *, folders: bool = False) -> list[str]:
        try:
            dfd = self._dir_fd(split_rel(rel), create=False)
        except OSError as e:
            raise _storage_error(self.url, e, f"listing {rel}") from e
        if dfd is None:
            return []
        try:
            out = []
            for name in os.listdir(dfd):
                try:
                    mode = os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode
                    if (stat.S_ISDIR(mode) if folders else stat.S_ISREG(mode)) and not is_temp_name(name):
                        out.append(name)
                except FileNotFoundError:
                    continue
            return sorted(out)
        finally:
            os.close(dfd)

    def remove(self, rel: str) -> None:
        parts = split_rel(rel)
        try:
            dfd = self._dir_fd(parts[:-1], create=False)
            if dfd is None:
                return
            try:
                os.unlink(parts[-1], dir_fd=dfd)
                os.fsync(dfd)
            except FileNotFoundError:
                pass
            finally:
                os.close(dfd)
        except OSError as e:
            raise _storage_error(self.url, e, f"removing {rel}") from e

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
