"""What goes to an agent for a video: its original streamed in bounded pieces (any
size, never whole in memory), from the handle ``imgq.original`` opened it by, hashed as
it goes.

A frame's length is sent before its blob, so the bytes must be exactly the recorded
size whatever happens to the file meanwhile: a file that shrinks mid-send is padded
with zeros, one that cannot be read further likewise. Either way, and when the bytes
sent do not hash to the journal's sha256, ``on_changed(message, kind)`` is told before
the last piece leaves, so the coordinator knows why the agent's own check of the
sha256 (which then fails) failed: changed in the inbox (permanent, scan again), or an
I/O error here (transient), not the host's fault.

A split video's join also takes the parts its chunk jobs made (``join_parts``), hashed
here and checked there as they arrive.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from imgq import original
from imgq import split as splitting
from imgq.errors import StorageError
from imgq.fleet import protocol


class StreamedOriginal(protocol.Blob):
    """``size`` bytes of the opened ``orig`` (an ``original.Original``, closed by
    ``close``), read with ``pread`` in ``protocol.CHUNK`` pieces."""

    def __init__(self, orig: original.Original, sha256: str, size: int, on_changed: Callable[[str, str], None]):
        if orig.stat.st_size != size:
            raise original.ChangedInInbox(f"{orig.shown}: changed in the inbox since it was scanned (size {orig.stat.st_size}, recorded {size}); scan again")
        self.orig, self.sha256, self.size, self.on_changed = orig, sha256, size, on_changed

    def chunks(self, offset: int = 0, size: int | None = None) -> Iterator[memoryview]:
        if offset or size is not None:
            raise ValueError("an original is streamed whole")
        h, pos, why = hashlib.sha256(), 0, None
        while pos < self.size:
            try:
                data = os.pread(self.orig.fd, min(protocol.CHUNK, self.size - pos), pos)
            except OSError as e:
                data, why = b"", (f"{self.orig.shown}: cannot read it: {e.strerror or e}", "transient")
            if not data:  # shorter now than when it was opened (or unreadable): pad the frame
                why = why or (f"{self.orig.shown}: changed in the inbox since it was scanned (it shrank while it was sent); scan again", "permanent")
                self.on_changed(*why)
                while pos < self.size:
                    n = min(protocol.CHUNK, self.size - pos)
                    pos += n
                    yield memoryview(bytes(n))
                return
            h.update(data)
            pos += len(data)
            if pos == self.size and h.hexdigest() != self.sha256:
                # told before the last piece goes: the agent's reply cannot come first
                self.on_changed(f"{self.orig.shown}: changed in the inbox since it was scanned (sha256 differs); scan again", "permanent")
            yield memoryview(data)

    def close(self) -> None:
        self.orig.close()


def join_parts(store_dir, claim, movies: dict[str, str]) -> tuple[list[dict], list[tuple]]:
    """What a split video's join takes to its host besides the original: every chunk's
    part of each video chain, from this store, in order: (header entries {name, index,
    sha256, bytes}, [(path, size)] to stream). StorageError (transient) when a part is
    missing, as a local join says."""
    _, _, count = splitting.parse_stage(claim.stage)
    entries, files = [], []
    for name in movies:
        for i in range(count):
            path = Path(store_dir) / splitting.part_path(claim.file_id, name, claim.spec_hash, i, count, ext="vpart")
            h, n = hashlib.sha256(), 0
            try:
                with open(path, "rb") as f:
                    while chunk := f.read(protocol.CHUNK):
                        h.update(chunk)
                        n += len(chunk)
            except FileNotFoundError:
                raise StorageError(f"chunk {path} of the video is missing; its chunk job will run again") from None
            entries.append({"name": name, "index": i, "sha256": h.hexdigest(), "bytes": n})
            files.append((path, n))
    return entries, files
