"""Artifacts arriving from a host: checked and written into the coordinator's store.

An agent's ``done`` message carries each artifact's name, sha256, size, width and height,
then the bytes end to end. Nothing it says is trusted: each artifact must be one the job's
recipe makes, hash and measure as stated, and decode at the stated size before it is
renamed into the store, under the name the coordinator computes (never one sent to it).
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from imgq import imaging, queue, recipes, store
from imgq.errors import BadImage, ImgqError


class ArtifactRejected(ImgqError):
    """What an agent sent does not check out (damaged in transit, wrong size, not a JPEG)."""


def receive(claim: queue.Claim, header: dict, blob: memoryview, store_dir: Path) -> list[queue.Artifact]:
    """Check and store the artifacts of a ``done`` message: each is an artifact of the
    job's recipe, has the sha256 and size stated, decodes at the stated width and height,
    and lands in the store atomically (temporary name, fsync, rename, folder fsync)."""
    chains, _ = recipes.split_spec(claim.spec)
    out, offset = [], 0
    for a in header.get("artifacts") or []:
        name = a.get("name")
        if name not in chains:
            raise ArtifactRejected(f"the agent sent an artifact {name!r} the recipe does not make")
        size = int(a["bytes"])
        data = blob[offset : offset + size]
        offset += size
        if len(data) != size or hashlib.sha256(data).hexdigest() != a["sha256"]:
            raise ArtifactRejected(f"artifact {name} arrived damaged (sha256 or size differs from what the host sent)")
        rel = store.artifact_path(claim.file_id, name, claim.spec_hash)
        # written under this attempt's staged name: queue.settle moves it onto ``rel``
        # only if the lease still holds (a late reply never replaces a recorded result)
        staged = store.staged_path(rel, claim.token)
        _write_verified(store_dir / staged, data, int(a["width"]), int(a["height"]))
        out.append(queue.Artifact(name, rel, a["sha256"], size, int(a["width"]), int(a["height"]), staged=staged))
    if offset != len(blob):
        raise ArtifactRejected(f"the agent sent {len(blob) - offset} bytes more than its artifacts")
    return out


# imaging sets Pillow's pixel limit and warning filters process-wide while it decodes: two
# threads verifying at once would see each other's limits (a 160x120 web version failed
# against a 120x90 thumb's limit as "wrong size"). Verifications take turns.
_VERIFY = threading.Lock()


def _write_verified(dest: Path, data, width: int, height: int) -> None:
    # the temporary name carries our pid, like imaging.save's, for store.sweep_temp
    tmp = dest.with_name(store.temp_name(dest.name))
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            with _VERIFY:
                imaging.verify(tmp, width, height)
        except BadImage as e:
            raise ArtifactRejected(f"artifact from the host does not verify: {e}") from None
        os.replace(tmp, dest)
        dfd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        if tmp.exists():
            tmp.unlink(missing_ok=True)
