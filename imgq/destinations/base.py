"""The interface every destination keeps, its errors, and the helpers they share.

A destination is given paths relative to its root, made of plain components (no ``..``,
no ``/`` inside a component: ``check_component``, ``split_rel``). ``put`` never replaces a
final name: locally through ``rename_noreplace``; a name the file system refuses raises
``NameRefused``, a taken one ``NameTaken``. See the package docstring for the promises.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

from imgq.errors import ImgqError, StorageError
from imgq.store import TEMP_MARK, rename_noreplace  # noqa: F401 (destinations import it from here)

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


def copy_hashing(src, out, source_name: str = "the source", *, h=None, n: int = 0) -> tuple[int, str]:
    """Copy src to out; (bytes, sha256) of what was read (after the first ``n`` bytes
    hashed into ``h``, when a copy is continued). A failure to read is the source's
    (SourceUnavailable), a failure to write is the caller's to classify."""
    h = hashlib.sha256() if h is None else h
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



NAME_REFUSALS = (errno.EINVAL, errno.ENAMETOOLONG, errno.EILSEQ, errno.EPERM)  # FAT says EINVAL or EPERM


def hash_fd(fd: int, *, read_ahead: int = 0) -> Found:
    """Size and sha256 of an open file, read from its start. ``read_ahead`` > 0 asks the
    device for that many bytes ahead of the reads (POSIX_FADV_WILLNEED: many reads in
    flight, not the kernel's cautious readahead one after another)."""
    h = hashlib.sha256()
    n = asked = 0
    os.lseek(fd, 0, os.SEEK_SET)
    while True:
        if read_ahead and n >= asked - read_ahead // 2:
            os.posix_fadvise(fd, asked, read_ahead, os.POSIX_FADV_WILLNEED)
            asked += read_ahead
        chunk = os.read(fd, CHUNK)
        if not chunk:
            return Found(n, h.hexdigest())
        h.update(chunk)
        n += len(chunk)


def open_source(source):
    """A binary file object for ``source``: a path, or a callable that opens one (so a
    caller can open an inbox original by identity, imgq.original)."""
    if callable(source):
        return source()
    try:
        return open(source, "rb")
    except OSError as e:
        raise SourceUnavailable(f"cannot read {source}: {e.strerror or e}") from e


def source_changed(source, written: int, digest: str, size: int, sha256: str) -> SourceChanged:
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

    def listdir(self, rel: str, *, folders: bool = False) -> list[str]:
        """The names of the regular files (or, with ``folders``, of the folders) in the
        folder ``rel``, sorted; none if it is missing. Temporary files of copies in
        progress are not listed; symlinks never are."""
        raise NotImplementedError

    def remove(self, rel: str) -> None:
        """Delete the file at ``rel`` (gone already: nothing to do). Used only for what
        imgq keeps for itself there (journal snapshots), never for copies."""
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
