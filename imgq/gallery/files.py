"""The gallery folder, written only through directory handles; image bytes read only
from regular files opened by handle. Used by ``imgq.gallery``; nothing else writes OUT.

Why handles: a check on a path ("is OUT/img a folder inside OUT?") says nothing about what
the name points at a moment later. A handle on a folder opened with ``O_NOFOLLOW`` is that
folder for as long as it is open, and a file created and renamed relative to it lands in
it, whatever is done to the names meanwhile.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

from imgq import store
from imgq.errors import Permanent, StorageError
from imgq.original import Unsafe, open_dir, split_rel

FOLDERS = ("date", "owner", "photo", "img")  # the only folders below OUT the gallery writes in
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NO_LINK = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES)


class UnsafeOutput(Permanent):
    """Something that is not the gallery's stands where it writes: a symlink where a
    folder or a file belongs, a file where a folder belongs. It is left as it is."""


class Source:
    """A regular file opened once without following a symlink below ``root`` (an
    artifact in the store, or an archived copy): the only way publish reads image bytes,
    so what is checked, hard-linked or copied is this object, whatever its name points
    at later. ``root`` itself (the store, a destination) is the user's and may be a link."""

    def __init__(self, root: Path, rel: str):
        parts = split_rel(rel)
        self.name = parts[-1]
        self.dir_fd = open_dir(root, parts[:-1], shown=f"{root}/{rel}")
        self.fd: int | None = None
        try:
            try:
                self.fd = os.open(self.name, _READ, dir_fd=self.dir_fd)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise Unsafe(f"{root}/{rel} is a symlink, not a regular file") from None
                if e.errno == errno.ENXIO:
                    raise Unsafe(f"{root}/{rel} is a socket, not a regular file") from None
                raise
            self.stat = os.fstat(self.fd)
            if not stat.S_ISREG(self.stat.st_mode):
                raise Unsafe(f"{root}/{rel} is not a regular file")
            os.set_blocking(self.fd, True)
        except BaseException:
            self.__exit__()
            raise

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        for fd in (self.fd, self.dir_fd):
            if fd is not None:
                os.close(fd)
        self.fd = self.dir_fd = None

    def chunks(self):
        os.lseek(self.fd, 0, os.SEEK_SET)
        while chunk := os.read(self.fd, 1 << 20):
            yield chunk

    def sha256(self) -> str:
        h = hashlib.sha256()
        for chunk in self.chunks():
            h.update(chunk)
        return h.hexdigest()


class Folder:
    """The gallery folder, reached only through directory handles.

    OUT is opened as the user named it (a link to a web server's root is the user's
    choice); each folder below it is opened with O_NOFOLLOW, so every handle is a folder
    inside OUT. Files are created under a fresh temporary name with O_EXCL|O_NOFOLLOW and
    renamed into place, both relative to that handle. rename() replaces a name, never what
    a symlink points at, so nothing lands outside OUT even if a name is swapped while
    publish runs. A symlink found where a folder or file belongs is refused, not replaced:
    imgq never makes symlinks, so one is a person's (or an attacker's), and replacing it
    would silently undo their intent; the refusal names it so a person can decide."""

    def __init__(self, out: Path, *, dry_run: bool = False):
        """With ``dry_run`` nothing is created, written, linked or removed: every method
        answers as if it had been (a missing OUT is an empty one), and what is in the way
        is refused exactly as in a real run."""
        self.out = out
        self.dry_run = dry_run
        try:
            self.fds: dict[str, int | None] = {"": os.open(out, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)}
        except FileNotFoundError:
            if not dry_run:
                raise StorageError(f"cannot open {out}: it is not there") from None
            self.fds = {"": None}  # publish would create it: empty
        except OSError as e:
            raise StorageError(f"cannot open {out}: {e.strerror or e}") from None
        self.refused: list[str] = []  # what was refused, each naming the path; once each
        self.unsafe: dict[str, str] = {}  # folder -> why it is refused

    def __enter__(self) -> "Folder":
        return self

    def __exit__(self, *exc) -> None:
        for fd in self.fds.values():
            if fd is not None:
                os.close(fd)
        self.fds.clear()

    def refuse(self, why: str) -> None:
        if why not in self.refused:
            self.refused.append(why)

    def folder(self, name: str, *, create: bool) -> int | None:
        """The handle of OUT/name ("" for OUT), made if ``create``; None if absent;
        UnsafeOutput if something else than a folder of ours is there."""
        if name in self.fds:
            return self.fds[name]
        if name in self.unsafe:
            raise UnsafeOutput(self.unsafe[name])
        root = self.fds[""]
        if root is None:
            return None  # a dry run on an OUT not made yet
        if create and not self.dry_run:
            try:
                os.mkdir(name, 0o755, dir_fd=root)
            except FileExistsError:
                pass  # ours from an earlier run, or something else: the open below tells
            except OSError as e:
                raise StorageError(f"cannot create {self.out / name}: {e.strerror or e}") from None
        try:
            fd = os.open(name, _DIR, dir_fd=root)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise StorageError(f"cannot open {self.out / name}: {e.strerror or e}") from None
            what = "is a symlink" if _kind(root, name) == "link" else "is not a folder"
            self.unsafe[name] = f"{self.out / name} {what} where the gallery's {name}/ folder belongs; nothing is written through or over it (remove it, or publish to another folder)"
            raise UnsafeOutput(self.unsafe[name]) from None
        self.fds[name] = fd
        return fd

    def locate(self, rel: str, *, create: bool = True) -> tuple[int | None, str]:
        """(folder handle, name) of an OUT-relative path the gallery writes; ValueError
        for any other path (a manifest is a file anyone could edit)."""
        *folder, name = rel.split("/")
        if len(folder) > 1 or (folder and folder[0] not in FOLDERS) or name in ("", ".", "..") or "\0" in name:
            raise ValueError(rel)
        return self.folder(folder[0] if folder else "", create=create), name

    def size(self, rel: str) -> int | None:
        """Size of the regular file at ``rel``; None if absent or anything else."""
        try:
            fd, name = self.locate(rel, create=False)
            st = os.stat(name, dir_fd=fd, follow_symlinks=False) if fd is not None else None
        except (OSError, ValueError, UnsafeOutput):
            return None
        return st.st_size if st is not None and stat.S_ISREG(st.st_mode) else None

    def read(self, rel: str) -> bytes | None:
        """The bytes of the regular file at ``rel`` (never through a link); None if none."""
        try:
            fd, name = self.locate(rel, create=False)
            if fd is None:
                return None
            f = os.open(name, _READ, dir_fd=fd)
        except (OSError, ValueError, UnsafeOutput):
            return None
        try:
            if not stat.S_ISREG(os.fstat(f).st_mode):
                return None
            os.set_blocking(f, True)
            chunks = []
            while chunk := os.read(f, 1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(f)

    def _target(self, rel: str) -> tuple[int, str]:
        fd, name = self.locate(rel)
        kind = _kind(fd, name) if fd is not None else None
        if kind in ("link", "dir"):
            # checked only to keep a person's link or folder: were it swapped in after this
            # check, the rename would replace the link itself, never write where it points
            what = "a symlink" if kind == "link" else "a folder"
            raise UnsafeOutput(f"{self.out / rel} is {what} where the gallery writes a file; it is left as it is (remove it, or publish to another folder)")
        return fd, name

    def write(self, rel: str, data: bytes, *, sync: bool = False) -> None:
        """Put ``data`` at ``rel`` atomically: a temporary name, then a rename."""
        fd, name = self._target(rel)
        if self.dry_run:
            return

        def fill(f) -> None:
            f.write(data)
            os.fchmod(f.fileno(), 0o644)  # readable by the web server whatever our umask

        try:
            store.write_atomically(name, fill, dir_fd=fd, sync=sync)
        except OSError as e:
            raise StorageError(f"cannot write {self.out / rel}: {e.strerror or e}") from None

    def place(self, rel: str, src: Source, sha256: str, *, link: bool) -> str | None:
        """Put the opened ``src``'s bytes at ``rel`` if their sha256 is ``sha256``:
        "linked" (a hard link of that very file), "copied", or None if they differ."""
        fd, name = self._target(rel)
        if self.dry_run:
            return None if src.sha256() != sha256 else "linked" if link else "copied"
        tmp = store.temp_name(name)
        try:
            if link:
                if src.sha256() != sha256:
                    return None
                # a hard link, not a write (store.write_atomically has nothing to write)
                if self._link(src, fd, tmp):
                    os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
                    # rename() between two links of one file does nothing: the target
                    # already was this very file, and the temporary name is left over
                    _discard(fd, tmp)
                    return "linked"
            return "copied" if self._copy(src, sha256, fd, name) else None
        except OSError as e:
            _discard(fd, tmp)
            raise StorageError(f"cannot place {src.name} at {self.out / rel}: {e.strerror or e}") from None

    @staticmethod
    def _link(src: Source, fd: int, tmp: str) -> bool:
        """Hard-link the opened source as ``tmp``; False if the file system cannot, or if
        the source's name no longer is the file whose bytes were checked."""
        try:
            os.link(src.name, tmp, src_dir_fd=src.dir_fd, dst_dir_fd=fd, follow_symlinks=False)
        except OSError as e:
            if e.errno in _NO_LINK:
                return False
            raise
        st = os.stat(tmp, dir_fd=fd, follow_symlinks=False)
        if (st.st_dev, st.st_ino) == (src.stat.st_dev, src.stat.st_ino):
            return True
        _discard(fd, tmp)
        return False

    @staticmethod
    def _copy(src: Source, sha256: str, fd: int, name: str) -> bool:
        """Copy the opened source to a temporary name and rename it to ``name``; the bytes
        are hashed as they are copied and published only if they match."""
        h = hashlib.sha256()

        def fill(f) -> None:
            for chunk in src.chunks():
                h.update(chunk)
                f.write(chunk)
            os.fchmod(f.fileno(), 0o644)

        def check(_tmp: str) -> None:
            if h.hexdigest() != sha256:
                raise _Differs

        try:
            store.write_atomically(name, fill, dir_fd=fd, check=check, sync=False)
        except _Differs:
            return False
        return True

    def remove(self, rel: str) -> bool:
        """Remove the regular file at ``rel`` (one the manifest lists); True if removed.
        A link, a folder, or a path the gallery never writes is left alone."""
        try:
            fd, name = self.locate(rel, create=False)
            if fd is None or _kind(fd, name) != "file":
                return False
            if not self.dry_run:
                os.unlink(name, dir_fd=fd)
            return True
        except (ValueError, UnsafeOutput, FileNotFoundError):
            return False
        except OSError as e:
            raise StorageError(f"cannot remove {self.out / rel}: {e.strerror or e}") from None

    def sweep(self) -> list[tuple[str, int]]:
        """Remove the temporary files of writers that are gone (killed mid-write) from
        the folders the gallery writes in; returns (OUT-relative path, writer's pid) of
        each. A live writer's file stays; folders of others and links are not entered."""
        swept = []
        for folder in ("", *FOLDERS):
            try:
                fd = self.folder(folder, create=False)
            except UnsafeOutput as e:
                self.refuse(str(e))
                continue
            if fd is None:
                continue
            for name in os.listdir(fd):
                pid = store.temp_writer(name)
                if pid is None or store.pid_alive(pid) or _kind(fd, name) != "file":
                    continue
                try:
                    if not self.dry_run:
                        os.unlink(name, dir_fd=fd)
                except FileNotFoundError:
                    continue
                swept.append((f"{folder}/{name}" if folder else name, pid))
        return swept


def _kind(dir_fd: int, name: str) -> str | None:
    """"file", "link", "dir", "other", or None if nothing is at ``name``."""
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(mode):
        return "link"
    return "file" if stat.S_ISREG(mode) else "dir" if stat.S_ISDIR(mode) else "other"


class _Differs(Exception):
    """The bytes copied are not the ones checked: nothing is published."""


def _discard(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass
