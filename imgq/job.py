"""One claimed job processed: its original read once (by identity, checked against the
journal's sha256), every artifact rendered, written and verified under its per-attempt
staged name, or the job's error classified. ``process`` is all a worker runs per job,
local (``imgq.work``) or remote (``imgq.fleet.agent``); settling the outcome is
``imgq.outcomes``.
"""

from __future__ import annotations

import errno
import os
import time
import traceback
from pathlib import Path

from imgq import split as splitting
from imgq import faces, imaging, original, recipes, store
from imgq.ledger import queue
from imgq.config import Settings
from imgq.errors import ImgqError, classify
from imgq.split.run import join_job, stripe_job


def read_original(claim: queue.Claim) -> imaging.Source:
    """The original's bytes, opened once by identity (no symlink, regular files only, a
    FIFO cannot block) and, when the claim carries the journal's sha256, checked against
    it (ChangedInInbox otherwise). Imaging decodes exactly these bytes, never the path."""
    with original.open_original(claim.inbox, claim.path) as orig:
        # an agent's staged copy comes without the journal's sha256: its coordinator checks it
        data = orig.read_verified(claim.sha256, claim.size) if claim.sha256 else orig.read_all()
        return imaging.Source(data, orig.shown)


def _video_original(claim: queue.Claim) -> original.Original | None:
    """The original opened by identity if it is a video (its caller closes it), else None.
    Its content is checked against the journal's sha256 as a stream: a video is never
    held in memory."""
    orig = original.open_original(claim.inbox, claim.path)
    try:
        head = os.pread(orig.fd, 64, 0)
        if imaging.sniff(head) is not None or imaging.sniff_video(head) is None:
            orig.close()
            return None
        if claim.sha256:
            size, digest = orig.hash()
            if (claim.size is not None and size != claim.size) or digest != claim.sha256:
                raise original.ChangedInInbox(f"{orig.shown}: changed in the inbox since it was scanned (sha256 differs); scan again")
        return orig
    except BaseException:
        orig.close()
        raise


# the part a chunk job leaves its poster candidate in (not an artifact name: those start
# with a letter or digit)
POSTER_PART = "_poster"
AUDIO_PART = "_audio."  # + the artifact: chunk 0 encodes each video chain's audio, the join copies it


def _video_chunk(claim: queue.Claim, settings: Settings, orig: original.Original, chains: dict[str, str], index: int, count: int, staged: list[str], threads: int, side_parts: bool) -> tuple[dict, list]:
    """Chunk ``index`` of ``count`` of a long video: each video chain's share of the
    frames encoded as a part, staged like an artifact, and where the recipe has stills,
    the best poster candidate of the chunk's share (the join job makes the stills and
    joins the parts). Returns the job's result and the parts' (staged, final) moves."""
    movies = {n: c for n, c in chains.items() if recipes.is_video_chain(c)}
    moves = []

    def dest_for(name: str) -> Path:
        final = splitting.part_path(claim.file_id, name, claim.spec_hash, index, count, ext="vpart")
        staged.append(store.staged_path(final, claim.token))
        moves.append((staged[-1], final))
        return settings.store_dir / staged[-1]

    if not movies:
        return {"chunk": [index, count], "parts": {}}, moves
    poster = dest_for(POSTER_PART) if side_parts and len(movies) < len(chains) else None
    audio = (lambda name: dest_for(AUDIO_PART + name)) if side_parts and index == 0 else None
    made = imaging.encode_chunks(orig.fd, orig.shown, movies, index, count, dest_for, scratch=settings.store_dir, threads=threads, poster_dest=poster, audio_dest=audio)
    # a poster candidate or an audio part is made only by ffmpeg alone, and audio only where
    # there is some: what was not written is not moved (the join then does without)
    for move in [m for m in moves if not (settings.store_dir / m[0]).exists()]:
        moves.remove(move)
        staged.remove(move[0])
    return {"chunk": [index, count], "parts": made}, moves


def _process_video(claim: queue.Claim, settings: Settings, orig: original.Original, chains: dict[str, str], staged: list[str], *, chunks: int = 0, threads: int = 0) -> tuple[list, dict]:
    """A video's artifacts: its stills from a representative frame, its video chains
    encoded (``imaging.encode_videos``: with the poster frame from the same decode where
    ffmpeg makes them alone), or with ``chunks`` joined from the parts of that many
    chunk jobs (the poster among their candidates); (artifacts, result) with the encoder
    of each."""
    stills = {n: c for n, c in chains.items() if not recipes.is_video_chain(c)}
    movies = {n: c for n, c in chains.items() if recipes.is_video_chain(c)}
    artifacts, result = [], {}
    rels: dict[str, tuple[str, str]] = {}  # artifact -> (final, staged)

    def dest_for(name: str, ext: str) -> Path:
        rel = store.artifact_path(claim.file_id, name, claim.spec_hash, ext)
        staged.append(store.staged_path(rel, claim.token))
        rels[name] = (rel, staged[-1])
        return settings.store_dir / staged[-1]

    poster = None
    if chunks:
        made = {}
        for name, chain in movies.items():
            parts = [settings.store_dir / splitting.part_path(claim.file_id, name, claim.spec_hash, i, chunks, ext="vpart") for i in range(chunks)]
            audio = settings.store_dir / splitting.part_path(claim.file_id, AUDIO_PART + name, claim.spec_hash, 0, chunks, ext="vpart")
            made[name] = imaging.join_chunks(orig.fd, orig.shown, chain, parts, lambda ext, name=name: dest_for(name, ext), scratch=settings.store_dir, audio=audio)
        if stills and movies:
            poster = imaging.pick_poster([settings.store_dir / splitting.part_path(claim.file_id, POSTER_PART, claim.spec_hash, i, chunks, ext="vpart") for i in range(chunks)])
    elif movies and stills:
        made, poster = imaging.encode_videos_and_poster(orig.fd, orig.shown, movies, dest_for, scratch=settings.store_dir, threads=threads)
    else:
        made = imaging.encode_videos(orig.fd, orig.shown, movies, dest_for, scratch=settings.store_dir, threads=threads) if movies else {}  # one decode for all
    if stills:
        for name, r in imaging.render_stills(orig.fd, orig.shown, stills, max_pixels=settings.max_pixels, poster=poster).items():
            rel = store.artifact_path(claim.file_id, name, claim.spec_hash)
            staged.append(store.staged_path(rel, claim.token))
            saved = imaging.save(r, settings.store_dir / staged[-1], quality=settings.jpeg_quality)
            artifacts.append(queue.Artifact(name, rel, saved.sha256, saved.bytes, saved.width, saved.height, staged=staged[-1]))
    for name, saved in made.items():
        rel, staged_as = rels[name]
        artifacts.append(queue.Artifact(name, rel, saved.sha256, saved.bytes, saved.width, saved.height, staged=staged_as))
        result[name] = {"encoder": saved.encoder, "frames": saved.frames, "duration": saved.duration}
    return artifacts, result


def process(claim: queue.Claim, settings: Settings, *, threads: int = 0, side_parts: bool = True) -> queue.Outcome:
    """Run one claimed job: one decode, every artifact written and verified under its
    per-attempt name (store.staged_path with the lease token). Nothing is renamed onto a
    final name here: queue.settle does that if this attempt still holds its lease.
    ``threads`` > 0: the threads a video job's ffmpeg decodes and scales with (the
    cores over the workers that share them); 0 leaves ffmpeg its own choice.
    ``side_parts``: a video chunk also leaves its poster candidate and (chunk 0) the
    audio for the join; False where only the chains' parts travel (an agent's chunk: the
    join then samples the poster and encodes the audio itself)."""
    src = original.shown_path(os.path.join(original.fs_path(claim.inbox), original.fs_path(claim.path)))  # named in every error
    started = time.monotonic()
    staged: list[str] = []  # written so far, removed if the job fails
    try:
        chains, options = recipes.split_spec(claim.spec)
        kind, index, count = splitting.parse_stage(claim.stage)
        video = _video_original(claim)
        if video is not None:
            with video:
                if kind == "stripe":
                    result, parts = _video_chunk(claim, settings, video, chains, index, count, staged, threads, side_parts)
                    result["seconds"] = round(time.monotonic() - started, 4)
                    return queue.Outcome(claim, artifacts=[], result=result, parts=parts)
                artifacts, result = _process_video(claim, settings, video, chains, staged, chunks=count if kind == splitting.JOIN else 0, threads=threads)
            result["seconds"] = round(time.monotonic() - started, 4)
            return queue.Outcome(claim, artifacts=artifacts, result=result)
        if kind == "stripe":
            result, parts = stripe_job(claim, settings, read_original(claim), chains, index, count, started, staged)
            return queue.Outcome(claim, artifacts=[], result=result, parts=parts)
        if kind == splitting.JOIN:
            rendered = join_job(claim, settings, read_original(claim), chains, count)
        else:
            rendered = imaging.render(read_original(claim), chains, max_pixels=settings.max_pixels)
        result: dict = {}
        for name, r in rendered.items():
            facts = getattr(r, "facts", None)
            if facts:
                # face boxes are in the rendered image's pixels: say which frame that is
                result[name] = dict(facts, frame=list(r.image.size)) if "faces" in facts else facts
        artifacts = []
        if faces.skips(options, result):
            result["skipped"] = "no faces found (on_no_faces = skip): no artifacts kept"
        else:
            for name, r in rendered.items():
                rel = store.artifact_path(claim.file_id, name, claim.spec_hash)
                staged.append(store.staged_path(rel, claim.token))
                # not fsynced here: settle() syncs a batch's files together before
                # recording them, and the folder once the final name is set (store.place)
                saved = imaging.save(r, settings.store_dir / staged[-1], quality=settings.jpeg_quality, durable=False)
                artifacts.append(queue.Artifact(name, rel, saved.sha256, saved.bytes, saved.width, saved.height, staged=staged[-1]))
        result["seconds"] = round(time.monotonic() - started, 4)
        return queue.Outcome(claim, artifacts=artifacts, result=result)
    except ImgqError as e:
        text = str(e) if str(src) in str(e) else f"{src}: {e}"  # always name the file, once
        return _failed(claim, settings, staged, text, classify(e))
    except OSError as e:
        # a name too long stays too long: failing for good beats five useless retries
        kind = "permanent" if e.errno == errno.ENAMETOOLONG else "transient"
        return _failed(claim, settings, staged, f"{src}: {e.strerror or e}", kind)
    except MemoryError:
        return _failed(claim, settings, staged, f"{src}: out of memory", "transient")
    except Exception as e:  # a bug: retried up to max_attempts, then failed with the trace
        return _failed(claim, settings, staged, f"{src}: internal error {type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}", "transient")


def _failed(claim: queue.Claim, settings: Settings, staged: list[str], error: str, kind: str) -> queue.Outcome:
    store.discard(settings.store_dir, staged)
    return queue.Outcome(claim, error=error, kind=kind)
