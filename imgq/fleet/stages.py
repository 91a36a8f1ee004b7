"""A split video's chunks and join on an agent: which stages a job may have there, and
the parts a join brings after its input, written where the slot's join reads them.
The stripes and joins of split images stay on the coordinator.

Imaging (``imgq.recipes``, ``imgq.split``: Pillow underneath) is imported inside the
functions: an agent must start, and say in its hello what fails to import, even on a
host where Pillow is broken.
"""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

from imgq.fleet import protocol


def parts_size(header: dict) -> int:
    """The bytes of the parts a video's join lists (ProtocolError for a malformed list)."""
    parts = header.get("parts")
    if parts is None:
        return 0
    if not isinstance(parts, list) or not all(isinstance(p, dict) and type(p.get("bytes")) is int and p["bytes"] >= 0
                                              and isinstance(p.get("sha256"), str) for p in parts):
        raise protocol.ProtocolError(f"job {header.get('job')!r}: its parts are not a list of {{name, index, sha256, bytes}}")
    return sum(p["bytes"] for p in parts)


def check_stage(header: dict) -> None:
    """A job's stage may only be a chunk of a split video or their join (ValueError
    otherwise): the stripes and joins of split images run on the coordinator."""
    stage = header.get("stage") or ""
    if not stage:
        return
    from imgq import split as splitting

    try:
        kind, index, count = splitting.parse_stage(str(stage))
    except ValueError:
        raise ValueError(f"bad stage {str(stage)[:40]!r}") from None
    if header.get("kind") != "video" or kind not in ("stripe", splitting.JOIN) or not 0 <= index < max(1, count):
        raise ValueError(f"stage {str(stage)[:40]!r} is not a chunk of a video or their join")
    if (kind == splitting.JOIN) != bool(header.get("parts")):
        raise ValueError("a video's join, and only a join, comes with its parts")


def take_parts(session: Path, job_id: int, header: dict, blob: protocol.Blob, offset: int) -> None:
    """Write a join's parts (after the input in ``blob``, from ``offset``) where the
    slot's join reads them (``split.part_path`` in out/, under the job's file id),
    each checked against the header's sha256 (OSError: damaged, a transient error)."""
    from imgq import recipes
    from imgq import split as splitting

    _, _, count = splitting.parse_stage(str(header.get("stage") or ""))
    chains, _ = recipes.split_spec(header["spec"])
    for p in header["parts"]:
        name, index = p["name"], p["index"]
        if name not in chains or not recipes.is_video_chain(chains[name]) or type(index) is not int or not 0 <= index < count:
            raise ValueError(f"part {str(name)[:40]!r} {index!r} is not a chunk of this join")
        dest = session / "out" / splitting.part_path(f"job{job_id}", name, str(header["spec_hash"]), index, count, ext="vpart")
        dest.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        with open(dest, "wb") as f:
            for chunk in blob.chunks(offset, p["bytes"]):
                h.update(chunk)
                f.write(chunk)
        if h.hexdigest() != p["sha256"]:
            raise OSError(errno.EIO, f"chunk {index + 1} of {count} of {name} for job {job_id} arrived damaged")
        offset += p["bytes"]
