"""The agent protocol: messages between the coordinator and ``imgq agent`` on a host.

One message is one frame on the agent's stdin or stdout (the SSH channel the coordinator
started it on)::

    frame   = length (8 bytes, big-endian) + body          (FRAME)
    body    = header length (4 bytes, big-endian) + header (UTF-8 JSON object) + blob   (HEAD)

The header says what the message is (``type``) and describes the blob: the input photo of
a ``job``, the artifacts of a ``done`` reply laid end to end. Raw bytes never go through
JSON, so a 6 MB photo costs one copy into the channel, not a base64 pass. A blob's size
is in the frame's length before its first byte, so a video of any size is streamed in
``CHUNK`` pieces from disk and into a file on the other side (``encode_streamed``,
``FilesBlob``, spilling): neither side ever holds it whole in memory.

Coordinator to agent:
  ``job``     {job, spec, spec_hash, max_pixels, quality, sha256, size[, path][, kind]
              [, stage][, parts]} + the input's bytes, then the bytes of each of
              ``parts`` (``path``, relative to the agent's shared root, replaces the
              input's bytes when the host sees the same files; ``kind`` "video" and
              ``stage`` "stripe:I/N" or "join:N" for a chunk or the join of a split
              video; ``parts`` [{name, index, sha256, bytes}]: the chunks a join joins)
  ``cancel``  {job}: the coordinator lost the job's lease; drop it if not started
  ``ping``    {}: the coordinator is alive (an agent that hears nothing for a while exits)

Agent to coordinator:
  ``hello``   {protocol, version, python, cores, slots, free_disk, libs, errors, ...}
  ``beat``    {running, waiting, free_disk}, every second
  ``done``    {job, artifacts: [{name, sha256, bytes, width, height[, ext]}], result
              [, parts: [{name, sha256, bytes}]]} + the artifacts' bytes, then the
              parts' (a video artifact names its ``ext``, mp4 or webm; a chunk of a
              split video sends ``parts`` and no artifact)
  ``error``   {job, kind: permanent|transient, message}
  ``fatal``   {message}: the agent cannot go on (it exits after sending it)

Every frame is checked against what its message may carry before its body is read: the
header is at most ``max_header`` bytes, and the blob at most what the reader's ``limit``
allows for that header (a ``done`` reply: what the job's recipe can make at the
settings' pixel limit, and of a video its running time; a ``job``: the input's recorded
size plus the parts a join lists; anything else: nothing).
A frame over its limit is a protocol error from the sender, refused before a byte of
its blob is held. Large blobs are streamed into a temporary file (``spill_dir``) rather
than held in memory.

Job ids are the only names that cross: no file or owner name is ever sent, except the
path under the shared root in ``--shared-root`` mode, and that travels in JSON, never
through a shell.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from imgq.store import temp_name

PROTOCOL = 1
FRAME = struct.Struct("!Q")  # the frame: its length, then its body (the one definition)
HEAD = struct.Struct("!I")
MAX_HEADER = 1 << 24  # a JSON header over 16 MB is a corrupt stream, not a message
REPLY_HEADER = 1 << 20  # an agent's header (hello, beat, done with a few artifacts) is a few kB
SPILL_BYTES = 8 << 20  # blobs larger than this go to a temporary file, not memory
CHUNK = 1 << 20


class ProtocolError(Exception):
    """The other side sent something that is not a message of this protocol."""


class Blob:
    """The bytes after a message's header: in memory, or spilled to a temporary file."""

    size: int = 0

    def chunks(self, offset: int = 0, size: int | None = None) -> Iterator[memoryview]:
        raise NotImplementedError

    def close(self) -> None:
        """Forget the bytes (a spilled blob's file is removed)."""


class MemoryBlob(Blob):
    def __init__(self, data: bytes | bytearray | memoryview = b""):
        self.view = memoryview(data)
        self.size = len(self.view)

    def chunks(self, offset: int = 0, size: int | None = None) -> Iterator[memoryview]:
        end = self.size if size is None else min(self.size, offset + size)
        for i in range(offset, end, CHUNK):
            yield self.view[i : min(end, i + CHUNK)]

    def __bytes__(self) -> bytes:
        return bytes(self.view)


class FilesBlob(Blob):
    """Files laid end to end, streamed from disk in ``CHUNK`` pieces when sent: an
    agent's artifacts and parts, a join's parts (never read whole into memory).
    ``parts`` is a list of (path, size); each file must still have its size."""

    def __init__(self, parts: list[tuple[Path, int]]):
        self.parts = [(Path(p), n) for p, n in parts]
        self.size = sum(n for _, n in self.parts)

    def chunks(self, offset: int = 0, size: int | None = None) -> Iterator[memoryview]:
        if offset or size is not None:
            raise ValueError("a FilesBlob is streamed whole")
        for path, n in self.parts:
            left = n
            with open(path, "rb") as f:
                while left > 0:
                    data = f.read(min(CHUNK, left))
                    if not data:
                        raise OSError(f"{path} is shorter than the {n} bytes it had")
                    left -= len(data)
                    yield memoryview(data)


class ChainedBlob(Blob):
    """Blobs laid end to end, streamed one after the other (a join's input: the original,
    then the chunks it joins); closing it closes each."""

    def __init__(self, blobs: list[Blob]):
        self.blobs = blobs
        self.size = sum(b.size for b in blobs)

    def chunks(self, offset: int = 0, size: int | None = None) -> Iterator[memoryview]:
        if offset or size is not None:
            raise ValueError("a ChainedBlob is streamed whole")
        for b in self.blobs:
            yield from b.chunks()

    def close(self) -> None:
        for b in self.blobs:
            b.close()


class FileBlob(Blob):
    """A blob written to ``path`` as it arrived (the file is this blob's: close removes it)."""

    def __init__(self, path: Path, size: int):
        self.path, self.size = path, size

    def chunks(self, offset: int = 0, size: int | None = None) -> Iterator[memoryview]:
        left = self.size - offset if size is None else min(size, self.size - offset)
        with open(self.path, "rb") as f:
            f.seek(offset)
            while left > 0:
                data = f.read(min(CHUNK, left))
                if not data:
                    return
                left -= len(data)
                yield memoryview(data)

    def __bytes__(self) -> bytes:
        return b"".join(bytes(c) for c in self.chunks())

    def close(self) -> None:
        self.path.unlink(missing_ok=True)


def sha256_of(blob: Blob, offset: int = 0, size: int | None = None) -> str:
    h = hashlib.sha256()
    for c in blob.chunks(offset, size):
        h.update(c)
    return h.hexdigest()


def no_blob(header: dict, blob_size: int) -> int:
    """The default limit: control messages carry no blob."""
    return 0


def read_message(
    read: Callable[[int], bytes], *, limit: Callable[[dict, int], int] = no_blob, max_header: int = MAX_HEADER,
    spill_dir: Path | None = None, spill_over: int = SPILL_BYTES, spill_name: Callable[[], str] | None = None,
) -> tuple[dict, Blob] | None:
    """The next message, or None at a clean end of the stream (between frames).

    ``read(n)`` returns exactly n bytes, or fewer only when the stream ended. The header
    is read first (at most ``max_header`` bytes), then ``limit(header, blob_size)`` says
    how many blob bytes that message may carry (it may raise ProtocolError for a header
    it refuses); a bigger blob is a ProtocolError before any of it is read. A blob over
    ``spill_over`` bytes is streamed into a new file in ``spill_dir`` (named by
    ``spill_name()``), never held whole in memory.
    """
    first = read(FRAME.size)
    if not first:
        return None
    if len(first) < FRAME.size:
        raise ProtocolError("stream ended inside a frame header")
    (size,) = FRAME.unpack(first)
    if size < HEAD.size:
        raise ProtocolError(f"a frame of {size} bytes is too short for a message")
    (n,) = HEAD.unpack(_exactly(read, HEAD.size))
    if n > max_header or HEAD.size + n > size:
        raise ProtocolError(f"bad header length {n} in a frame of {size} bytes (at most {max_header})")
    header = _parse_header(_exactly(read, n))
    blob_size = size - HEAD.size - n
    cap = limit(header, blob_size)
    if blob_size > cap:
        raise ProtocolError(f"a {header['type']!r} message of {blob_size} bytes is more than it can carry ({cap} bytes at most)")
    if spill_dir is not None and blob_size > spill_over:
        return header, _spill(read, blob_size, Path(spill_dir), spill_name)
    return header, MemoryBlob(_exactly(read, blob_size))


def _exactly(read: Callable[[int], bytes], n: int) -> bytes:
    data = read(n) if n else b""
    if len(data) < n:
        raise ProtocolError(f"stream ended inside a frame ({len(data)} of {n} bytes)")
    return data


def _spill(read, size: int, folder: Path, name: Callable[[], str] | None) -> FileBlob:
    path = folder / (name() if name else temp_name("blob"))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            left = size
            while left:
                data = _exactly(read, min(CHUNK, left))
                f.write(data)
                left -= len(data)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return FileBlob(path, size)


def _parse_header(raw: bytes) -> dict:
    try:
        header = json.loads(raw)
    except ValueError as e:
        raise ProtocolError(f"header is not JSON: {e}") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise ProtocolError("header is not an object with a type")
    return header


def encode(header: dict, blob: bytes | memoryview = b"") -> list[bytes | memoryview]:
    """The pieces of one frame (length, header, blob) to be written in order."""
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    return [FRAME.pack(HEAD.size + len(head) + len(blob)) + HEAD.pack(len(head)) + head, memoryview(blob)]


def encode_streamed(header: dict, blob: Blob) -> tuple[bytes, Iterator[memoryview]]:
    """One frame whose blob is streamed: the frame's length and header (the blob's size
    is known before its first byte goes), then the blob's pieces of at most ``CHUNK``
    bytes. A video of any size is sent without being held in memory."""
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    return FRAME.pack(HEAD.size + len(head) + blob.size) + HEAD.pack(len(head)) + head, blob.chunks()


def write_message(stream: BinaryIO, header: dict, blob: bytes | memoryview | Blob = b"") -> None:
    """Write one message to a binary stream and flush it (the caller serialises writers).
    A ``Blob`` is streamed piece by piece."""
    if isinstance(blob, Blob):
        first, pieces = encode_streamed(header, blob)
        stream.write(first)
        for piece in pieces:
            stream.write(piece)
    else:
        for piece in encode(header, blob):
            stream.write(piece)
    stream.flush()
