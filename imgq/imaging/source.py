"""The original as imaging reads it: checked bytes or an open descriptor, never a path
reopened; and how a failing disk is reported (StorageError, transient)."""

from __future__ import annotations

import errno as _errno
import io
import os
from pathlib import Path

from imgq.errors import NameTooLong, StorageError


class Source:
    """An original's content for imaging, with the name messages show for it.

    ``Source(data, name)``: bytes already read (and checked) by the caller; every decode
    reads them from memory (a BytesIO shares the buffer, nothing is copied).
    ``Source.from_fd(fd, name)``: an open file descriptor, read with pread from offset 0
    each time (scan: the file is hashed as a stream, then only its header is probed; the
    descriptor's own offset is never moved). Neither reopens a path."""

    __slots__ = ("data", "fd", "name")

    def __init__(self, data: bytes, name: str):
        self.data, self.fd, self.name = data, None, name

    @classmethod
    def from_fd(cls, fd: int, name: str) -> "Source":
        src = cls(b"", name)
        src.fd = fd
        return src

    def open(self) -> io.BufferedIOBase:
        if self.fd is not None:
            return io.BufferedReader(_PreadFile(self.fd), buffer_size=1 << 16)
        return io.BytesIO(self.data)

    def __str__(self) -> str:
        return self.name


class _PreadFile(io.RawIOBase):
    """A read-only, seekable view of an open fd with its own position (pread)."""

    def __init__(self, fd: int):
        self._fd, self._pos = fd, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        data = os.pread(self._fd, len(buf), self._pos)
        buf[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: os.fstat(self._fd).st_size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


def as_source(original: "str | os.PathLike | bytes | Source") -> "Path | Source":
    """A Source as given, bytes as a nameless Source, anything else as a Path."""
    if isinstance(original, Source):
        return original
    if isinstance(original, (bytes, bytearray, memoryview)):
        return Source(bytes(original), "<bytes>")
    return Path(original)


def _open_binary(src: "Path | Source"):
    return src.open() if isinstance(src, Source) else open(src, "rb")


def storage_error(action: str, path: Path, e: OSError) -> StorageError | NameTooLong:
    """The error to raise when the disk failed to ``action`` ``path``: StorageError
    (transient) naming the errno, or NameTooLong (permanent) for ENAMETOOLONG."""
    code = _errno.errorcode.get(e.errno or 0, "")
    if e.errno == _errno.ENAMETOOLONG:
        return NameTooLong(f"cannot {action} {path}: the name is too long for the file system ({code})")
    return StorageError(f"cannot {action} {path}: {e.strerror or e}" + (f" ({code})" if code else ""))
