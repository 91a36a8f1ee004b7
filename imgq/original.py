"""An original in the inbox, opened once by identity: the one way imgq reads or deletes one.

Every reader of an original (scan's hashing, the worker, fleet staging, archive) and the
one deleter (collect) go through ``Original``. It walks from the inbox root down one
component at a time with ``O_NOFOLLOW`` directory handles, opens the file itself with
``O_NOFOLLOW | O_NONBLOCK`` (a FIFO or device swapped in after scan cannot block the
open) and requires a regular file. From then on every check and every act concerns the
object behind that handle, never the name:

- ``read_verified`` reads the bytes once and compares their sha256 (and size) with what
  the journal recorded: a mismatch is ``ChangedInInbox``; the caller uses exactly the bytes
  that were checked;
- ``still_named`` tells whether the name still points at the opened (device, inode);
- ``unlink_if_same`` removes the name only if, at that moment, it is the opened object:
  it first renames the name to a private quarantine name in the same folder (an atomic
  act that takes whatever object is there out of reach of other writers), compares the
  quarantined object's (device, inode) with the handle, and unlinks it only if they are
  equal; otherwise it renames it back (without replacing anything) and keeps it. A
  process killed between the rename and the unlink leaves the object under its quarantine
  name; the next ``Original`` of that name gives it its name back (its writer's pid is
  gone), so a crash there costs a retry, never a hidden original.

Names that are not valid UTF-8 (a Latin-1 ``caf\\xe9.jpg`` from an old camera or a
Windows zip) cannot go into SQLite as they are. ``stored_path`` writes them losslessly and
readably (``./caf\\xe9.jpg``: each non-UTF-8 byte as ``\\xNN``, a backslash as two backslashes,
behind a ``./`` (or ``/./``) prefix that no path imgq records otherwise has);
``fs_path`` turns that back into the name the file system holds, and ``Original`` accepts
either form, so every reader going through it opens such files.

Linux (and other POSIX systems with ``O_NOFOLLOW`` and ``dir_fd``) only.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import stat

from imgq.errors import Permanent, StorageError
from imgq.store import pid_alive

CHUNK = 1 << 20
QUARANTINE_MARK = ".imgq-collect"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


_ESCAPE = re.compile(rb"\\(\\|x([0-9a-fA-F]{2}))")


def stored_path(path: str) -> str:
    """How a file-system path (a str, with surrogate escapes for undecodable bytes) is
    written in the journal: unchanged if it is valid UTF-8; otherwise escaped as the module
    docstring says, behind a ``./`` (relative) or ``/./`` (absolute) prefix. A naive
    reader joining it to the inbox finds no file (never a different one outside it)."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        pass
    text = os.fsencode(path).replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")
    return "/." + text if text.startswith("/") else "./" + text


def fs_path(text: str) -> str:
    """The file-system path (surrogate-escaped str, as os functions take it) for a path
    as ``stored_path`` wrote it; any other text is returned unchanged."""
    if text.startswith("./"):
        body = text[2:]
    elif text.startswith("/./"):
        body = text[2:]
    else:
        return text
    raw = _ESCAPE.sub(lambda m: b"\\" if m.group(2) is None else bytes([int(m.group(2), 16)]), body.encode("utf-8"))
    return os.fsdecode(raw)


def shown_path(path: str) -> str:
    """A path as messages, logs and JSON show it: undecodable bytes as ``\\xNN``, never a
    lone surrogate (which could not be printed or stored)."""
    return os.fsencode(fs_path(path)).decode("utf-8", "backslashreplace")


class Unsafe(Permanent):
    """The recorded path cannot be used safely: it leaves the inbox, goes through a
    symlink, or names something that is not a regular file (a symlink, FIFO, device)."""


class ChangedInInbox(Permanent):
    """The file at the recorded path is not the one that was scanned (size or sha256
    differ): scan again to record the new content."""


def split_rel(rel: str) -> list[str]:
    """The components of an inbox-relative path; Unsafe unless each is a plain name."""
    parts = rel.split("/")
    for p in parts:
        if not p or p in (".", "..") or "\0" in p:
            raise Unsafe(f"{shown_path(rel)}: the recorded path leaves the inbox; refusing")
    return parts


def open_dir(root: str | os.PathLike, parts: list[str], *, shown: str) -> int:
    """An fd on ``root/parts...`` reached without following a symlink below ``root``.

    ``root`` itself may be a symlink (an inbox that is a link to a mounted share is
    legitimate); nothing below it may be."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    walked = os.fspath(root)
    try:
        for p in parts:
            walked = f"{walked}/{p}"
            try:
                nxt = os.open(p, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise Unsafe(f"{shown_path(walked)} is a symlink or not a folder; imgq never reads or deletes through one ({shown})") from e
                raise
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


class Original:
    """An inbox file opened by identity (see the module docstring). Use as a context
    manager, or call ``close``."""

    def __init__(self, inbox: str | os.PathLike, rel: str):
        self.inbox, self.rel = fs_path(os.fspath(inbox)), fs_path(rel)
        self.path = os.path.join(self.inbox, self.rel)
        self.shown = shown_path(self.path)  # for messages: printable and storable
        parts = split_rel(self.rel)
        self.name = parts[-1]
        self.dir_fd: int | None = None
        self.fd: int | None = None
        self.dir_fd = open_dir(self.inbox, parts[:-1], shown=self.shown)
        try:
            try:
                try:
                    self.fd = os.open(self.name, _FILE_FLAGS, dir_fd=self.dir_fd)
                except FileNotFoundError:
                    if not restore_quarantined(self.dir_fd, self.name):
                        raise
                    self.fd = os.open(self.name, _FILE_FLAGS, dir_fd=self.dir_fd)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise Unsafe(f"{self.shown} is a symlink; imgq reads and deletes only regular files") from e
                if e.errno == errno.ENXIO:  # a FIFO with no writer, a socket
                    raise Unsafe(f"{self.shown} is not a regular file (a FIFO or socket)") from e
                raise
            self.stat = os.fstat(self.fd)
            if not stat.S_ISREG(self.stat.st_mode):
                raise Unsafe(f"{self.shown} is not a regular file")
            os.set_blocking(self.fd, True)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ reading
    @property
    def identity(self) -> tuple[int, int]:
        return (self.stat.st_dev, self.stat.st_ino)

    def read_all(self) -> bytes:
        """Every byte of the opened file, read from its start."""
        os.lseek(self.fd, 0, os.SEEK_SET)
        # the size is known: one read takes it all, with no chunks to join (a copy of a
        # whole photo less); the loop only runs if the file has grown since it was opened
        chunks = [os.read(self.fd, max(self.stat.st_size + 1, CHUNK))]
        while chunks[-1] and (chunk := os.read(self.fd, CHUNK)):
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def hash(self) -> tuple[int, str]:
        """(size, sha256) of the opened file's bytes now, read in full."""
        h = hashlib.sha256()
        n = 0
        os.lseek(self.fd, 0, os.SEEK_SET)
        while chunk := os.read(self.fd, CHUNK):
            h.update(chunk)
            n += len(chunk)
        return n, h.hexdigest()

    def read_verified(self, sha256: str, size: int | None = None) -> bytes:
        """The file's bytes, if they are the ones the journal recorded; else ChangedInInbox.
        The caller must use these bytes, not read the file again."""
        if size is not None and self.stat.st_size != size:
            raise ChangedInInbox(f"{self.shown}: changed in the inbox since it was scanned (size {self.stat.st_size}, recorded {size}); scan again")
        data = self.read_all()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ChangedInInbox(f"{self.shown}: changed in the inbox since it was scanned (sha256 differs); scan again")
        return data

    # ------------------------------------------------------------------ deleting
    def still_named(self) -> bool:
        """Whether the name points at the opened object now."""
        try:
            now = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return (now.st_dev, now.st_ino) == self.identity

    def unlink_if_same(self) -> bool:
        """Remove the name if it is the opened object at this moment; True if removed.

        The name is first renamed to a private quarantine name (so no one can swap the
        object under it any more), the quarantined object compared by (device, inode) with
        the handle, then unlinked; a different object is renamed back, never over anything,
        and False returned. Raises OSError if the folder cannot be changed."""
        quarantine = f"{quarantine_prefix(self.name)}{os.getpid()}-{secrets.token_hex(6)}{QUARANTINE_MARK}"
        os.rename(self.name, quarantine, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        try:
            now = os.stat(quarantine, dir_fd=self.dir_fd, follow_symlinks=False)
            same = (now.st_dev, now.st_ino) == self.identity
        except BaseException:
            _put_back(self.dir_fd, quarantine, self.name)
            raise
        if not same:
            _put_back(self.dir_fd, quarantine, self.name)
            return False
        os.unlink(quarantine, dir_fd=self.dir_fd)
        os.fsync(self.dir_fd)
        return True

    def close(self) -> None:
        for fd in (self.fd, self.dir_fd):
            if fd is not None:
                os.close(fd)
        self.fd = self.dir_fd = None

    def __enter__(self) -> "Original":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def quarantine_prefix(name: str) -> str:
    """The start of every quarantine name of ``name``: short whatever the name's length,
    and telling apart names that share their first 40 characters."""
    tag = hashlib.sha256(os.fsencode(name)).hexdigest()[:8]
    return f".{name[:40]}~{tag}."


def restore_quarantined(dir_fd: int, name: str) -> bool:
    """Give ``name`` back its object if a collect that was killed between its quarantine
    rename and its unlink left it under a quarantine name (the journal did not record the
    deletion, so the original must be in the inbox again). True if one was restored."""
    prefix = quarantine_prefix(name)
    restored = False
    for entry in os.listdir(dir_fd):
        if not (entry.startswith(prefix) and entry.endswith(QUARANTINE_MARK)):
            continue
        pid_text = entry[len(prefix):].split("-", 1)[0]
        if pid_text.isdigit() and pid_alive(int(pid_text)) and int(pid_text) != os.getpid():
            continue  # a live collect is between its rename and its check: not ours to touch
        if _exists(dir_fd, name):
            continue  # the name was taken again meanwhile: both are kept
        _put_back(dir_fd, entry, name)
        restored = _exists(dir_fd, name)
    return restored


def _put_back(dir_fd: int, quarantine: str, name: str) -> None:
    """Give a quarantined object its name back without replacing whatever took the name
    meanwhile: link (which refuses an existing name) then drop the quarantine name. A
    non-regular object that cannot be hard-linked keeps its quarantine name if the name
    was taken again; it is never deleted."""
    try:
        os.link(quarantine, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError:
        return  # someone wrote a new file under the name: both are kept
    except OSError:
        try:
            if not _exists(dir_fd, name):
                os.rename(quarantine, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError:
            pass
        return
    os.unlink(quarantine, dir_fd=dir_fd)


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


def open_original(inbox: str | os.PathLike, rel: str) -> Original:
    """``Original(inbox, rel)`` with OSErrors other than a missing file turned into
    imgq errors naming the file: a full or failing disk is transient."""
    try:
        return Original(inbox, rel)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise StorageError(f"{shown_path(os.path.join(fs_path(os.fspath(inbox)), fs_path(rel)))}: cannot open it: {e.strerror or e}") from e


