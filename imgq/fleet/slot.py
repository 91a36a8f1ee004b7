"""One worker slot of an agent: what runs in the slot process (``imgq.fleet.agent``
starts N of them, forked): its set-up, and one job run with exactly the local worker's
``process``, its outputs described for the reply.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import signal
from pathlib import Path

from imgq.fleet import protocol


def die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # not Linux: the slot still exits when its task pipe closes
        pass


def slot_init(channel_fd: int | None = None) -> None:
    """In each slot process: never touch the protocol channel, die with the agent."""
    die_with_parent()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)  # a slot holding the channel open would hide the agent's death
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the frames
    if channel_fd is not None:  # the connection to the coordinator (--connect): the same
        try:
            os.close(channel_fd)
        except OSError:
            pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from imgq import work

    work.tune_worker_process()


def slot_job(job_id: int, spec: dict, spec_hash: str, max_pixels: int, quality: int, src_root: str, src_rel: str, out_dir: str,
              stage: str = "", sha256: str | None = None, size: int | None = None, stored: tuple[str, str] | None = None) -> dict:
    """Run one job in a slot: the local worker's own ``process`` with the store in the
    session folder and a file id made from the job id. ``stage``: a chunk of a split
    video; ``sha256`` and ``size``: an input read in place (a video under the shared
    root), which ``process`` checks as a stream before it decodes a frame. ``stored``
    (file id, lease token: the coordinator's, ``--shared-store``, a photo's job):
    ``out_dir`` is the shared store itself, and the slot writes the staged names a local
    worker would (the agent fsyncs them before its reply says they are there)."""
    import dataclasses

    from imgq import recipes
    from imgq import split as splitting
    from imgq.ledger import queue
    from imgq import work
    from imgq.config import Settings

    file_id, token = stored or (f"job{job_id}", "")
    claim = queue.Claim(job_id, file_id, "", spec, spec_hash, token, 1, 1, src_root, src_rel, stage, sha256, size)
    settings = Settings(store=Path(out_dir), max_pixels=max_pixels, jpeg_quality=quality)
    # The outputs stay under their staged names in the agent's private session folder:
    # the reply is read from there, and the coordinator stages what arrives and moves it
    # into place only in the fenced completion.
    # only the chains' parts travel back (videos.check_parts): no poster candidate, no audio part
    o = work.process(claim, settings, side_parts=False)
    chains, _ = recipes.split_spec(spec)
    artifacts = []
    for a in o.artifacts or []:
        entry = dataclasses.asdict(a)
        if recipes.is_video_chain(chains.get(a.name, "thumb")):
            entry["ext"] = a.path.rpartition(".")[2]  # mp4 or webm: the container it is
        artifacts.append(entry)
    parts = []
    if o.parts:  # a chunk of a split video: one part per video chain, named by its chain
        _, index, count = splitting.parse_stage(stage)
        finals = {splitting.part_path(file_id, n, spec_hash, index, count, ext="vpart"): n for n in chains}
        parts = [{"name": finals[final], "staged": staged} for staged, final in o.parts]
    return {"error": o.error, "kind": o.kind, "result": o.result, "artifacts": artifacts, "parts": parts, "stored": bool(stored)}


def file_digest(path: Path) -> tuple[int, str]:
    """(size, sha256) of a file, read in pieces."""
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(protocol.CHUNK):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()
