"""The agent protocol: messages between the coordinator and ``imgq agent`` on a host.

One message is one frame on the agent's stdin or stdout (the SSH channel the coordinator
started it on)::

    frame   = length (8 bytes, big-endian) + body          (imgq.remote's framing)
    body    = header length (4 bytes, big-endian) + header (UTF-8 JSON object) + blob

The header says what the message is (``type``) and describes the blob: the input photo of
a ``job``, the artifacts of a ``done`` reply laid end to end. Raw bytes never go through
JSON, so a 6 MB photo costs one copy into the channel, not a base64 pass.

Coordinator to agent:
  ``job``     {job, spec, spec_hash, max_pixels, quality[, path]} + the input's bytes
              (``path``, relative to the agent's shared root, replaces the bytes when
              the host sees the same files; the blob is then empty)
  ``cancel``  {job}: the coordinator lost the job's lease; drop it if not started
  ``ping``    {}: the coordinator is alive (an agent that hears nothing for a while exits)

Agent to coordinator:
  ``hello``   {protocol, version, python, cores, slots, free_disk, libs, errors, ...}
  ``beat``    {running, waiting, free_disk}, every second
  ``done``    {job, artifacts: [{name, sha256, bytes, width, height}], result} + bytes
  ``error``   {job, kind: permanent|transient, message}
  ``fatal``   {message}: the agent cannot go on (it exits after sending it)

Job ids are the only names that cross: no file or owner name is ever sent, except the
path under the shared root in ``--shared-root`` mode, and that travels in JSON, never
through a shell.
"""

from __future__ import annotations

import json
import struct
from typing import BinaryIO

PROTOCOL = 1
FRAME = struct.Struct("!Q")  # the same 8-byte length as imgq.remote.FRAME_HEADER
HEAD = struct.Struct("!I")
MAX_HEADER = 1 << 24  # a JSON header over 16 MB is a corrupt stream, not a message


class ProtocolError(Exception):
    """The other side sent something that is not a message of this protocol."""


def encode(header: dict, blob: bytes | memoryview = b"") -> list[bytes | memoryview]:
    """The pieces of one frame (length, header, blob) to be written in order."""
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    return [FRAME.pack(HEAD.size + len(head) + len(blob)) + HEAD.pack(len(head)) + head, memoryview(blob)]


def decode(body: bytes) -> tuple[dict, memoryview]:
    """(header, blob) of one frame's body; ProtocolError if it is not a message."""
    view = memoryview(body)
    if len(view) < HEAD.size:
        raise ProtocolError(f"a frame of {len(view)} bytes is too short for a message")
    (n,) = HEAD.unpack_from(view)
    if n > MAX_HEADER or HEAD.size + n > len(view):
        raise ProtocolError(f"bad header length {n} in a frame of {len(view)} bytes")
    try:
        header = json.loads(bytes(view[HEAD.size : HEAD.size + n]))
    except ValueError as e:
        raise ProtocolError(f"header is not JSON: {e}") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise ProtocolError("header is not an object with a type")
    return header, view[HEAD.size + n :]


def read_frame(stream: BinaryIO, max_frame: int = 1 << 34) -> bytes | None:
    """The next frame's body from a binary stream; None at a clean end of the stream."""
    first = stream.read(FRAME.size)
    if not first:
        return None
    if len(first) < FRAME.size:
        raise ProtocolError("stream ended inside a frame header")
    (size,) = FRAME.unpack(first)
    if size > max_frame:
        raise ProtocolError(f"frame of {size} bytes is larger than the limit")
    body = stream.read(size)
    if len(body) < size:
        raise ProtocolError(f"stream ended inside a frame ({len(body)} of {size} bytes)")
    return body


def write_message(stream: BinaryIO, header: dict, blob: bytes | memoryview = b"") -> None:
    """Write one message to a binary stream and flush it (the caller serialises writers)."""
    for piece in encode(header, blob):
        stream.write(piece)
    stream.flush()
