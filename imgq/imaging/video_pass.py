"""Plain video chains made by the ffmpeg program alone: one process per job, no frame
through Python.

A chain is plain when it is H.264 and has no per-frame step (``video_encode._plain``).
One ffmpeg process then decodes the original (through its descriptor, in its own
threads), keeps for each chain exactly the frames the frame loop of ``video_encode``
keeps (by index in the time range, thinned to the frame-rate cap: the same rule, as a
``select`` expression), scales them (area averaging, as the loop does) and encodes each
chain; and it hands over on a pipe, as raw BGR, the few frames the poster is chosen
among (``video.poster_samples``), scored as they come. The clip is decoded once for its
previews and its stills: sampling the poster by seeking costs about a second decode
(each seek decodes from the keyframe before the sample).

A chunk is the same over its share of the source frames: its ffmpeg seeks to the
keyframe before the share's first frame, drops the frames before it (an exact trim),
stops after its last, and leaves the best poster candidate among the samples in its
share (``save_candidate``); the join picks among the chunks' candidates
(``pick_poster``) as one pass picks among all the samples, so both give the same poster.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
from fractions import Fraction
from pathlib import Path

from imgq.errors import BadVideo
from imgq.imaging.video import _cv2, frame_image, poster_samples, poster_score
from imgq.imaging.video_encode import VideoSaved, _has_audio, _keep, _Reading, _reading, _source, _x264
from imgq.store import scratch_dir, write_atomically

POSTER_KEY = "imgq-poster"  # the PNG text chunk of a chunk's poster candidate: {"score", "at"}
# frames read back from an output may differ this much from those expected: a Matroska
# or WebM source's frame count is an estimate from its duration
SLACK = 2


@dataclasses.dataclass
class Candidate:
    """A sampled frame (BGR) at source index ``at``; ``score`` None: no poster (dark, flat)."""

    frame: object
    at: int
    score: float | None


def encode_plain(fd: int, name: str, chains: dict[str, str], dest_for, *, program: str, scratch=None, threads: int = 0, poster: bool = False) -> tuple[dict[str, VideoSaved], object]:
    """Every chain of ``chains`` (all plain) from one ffmpeg process, each verified and
    written atomically to ``dest_for(artifact, "mp4")`` with the original's audio over
    its range; with ``poster`` also the poster frame (an RGB PIL image, as
    ``video.poster_frame`` chooses it; None if no sample decoded), else None.
    Returns ({artifact: VideoSaved}, poster)."""
    readings, info = _readings(fd, name, chains, None)
    total = info["frames"]
    expected = {art: _kept(r, total) for art, r in readings.items()}
    if total > 0 and not all(expected.values()):
        raise BadVideo(f"cannot make a video of {name}: no frame in the range asked for")
    samples = sorted(set(poster_samples(total))) if poster else []
    encoder = "ffmpeg libx264" + ("/aac" if _has_audio(fd) else "") + " mp4"
    with scratch_dir(scratch) as tmpdir:
        outs = {art: Path(tmpdir) / f"{art}.mp4" for art in readings}
        # the audio is mapped where there is some, whatever ffprobe (which may be missing) said
        cands = _run(program, fd, name, readings, outs, info, samples, Path(tmpdir) / "ffmpeg.err", whole=True, audio=True, threads=threads)
        made = {}
        for art, r in readings.items():
            n = _frames_of(outs[art])
            if n < 1 or (total > 0 and abs(n - expected[art]) > SLACK):
                raise BadVideo(f"the video made of {name} did not verify: {n} frames read back, {expected[art]} expected")
            made[art] = _keep(outs[art], n, r.size, r.fps, encoder, "mp4", dest_for(art, "mp4"), name)
    best = _best(cands) if poster else None
    return made, (frame_image(best.frame) if best is not None else None)


def encode_plain_chunk(fd: int, name: str, chains: dict[str, str], index: int, count: int, dest_for, *, program: str, scratch=None, threads: int = 0, poster_dest=None, audio_dest=None) -> dict[str, dict]:
    """Chunk ``index`` of ``count`` of every chain (all plain) from one ffmpeg process
    over the chunk's share of the source frames: each written atomically to
    ``dest_for(artifact)`` as an H.264 MP4 part without audio (empty where the chain
    keeps no frame of the share); with ``poster_dest``, the best poster candidate among
    the samples in the chunk's share of the whole clip written there (``save_candidate``);
    with ``audio_dest``, each chain's audio over its range as AAC at ``audio_dest(artifact)``
    (nothing where the original has none), which the join copies.
    Returns {artifact: {frames, encoder}} as ``video_chunks.encode_chunks``."""
    readings, info = _readings(fd, name, chains, (index, count))
    total = info["frames"]
    # the poster samples in [lo, hi) of the whole clip cut in the same proportions: each to one chunk
    lo, hi = total * index // count, (total * (index + 1) // count if index < count - 1 else total)
    samples = sorted({s for s in poster_samples(total) if lo <= s < hi}) if poster_dest is not None else []
    expected = {art: _kept(r, total) for art, r in readings.items()}
    wanted = {art: r for art, r in readings.items() if expected[art] > 0}
    sounds = list(readings) if audio_dest is not None and _has_audio(fd) else []
    with scratch_dir(scratch) as tmpdir:
        outs = {art: Path(tmpdir) / f"{art}.mp4" for art in wanted}
        extra = {art: Path(tmpdir) / f"{art}.m4a" for art in sounds}
        cands = _run(program, fd, name, wanted, outs, info, samples, Path(tmpdir) / "ffmpeg.err", whole=False, audio=False, threads=threads,
                     sounds={art: (readings[art], extra[art]) for art in sounds}) if wanted or samples or sounds else []
        made = {}
        for art, r in readings.items():
            n = _frames_of(outs[art]) if art in wanted else 0
            if art in wanted and (n < 1 or abs(n - expected[art]) > (SLACK if r.stop is None else 0)):
                raise BadVideo(f"chunk {index + 1} of {count} of {name} did not verify: {n} frames read back, {expected[art]} expected")

            def copy(f, out=outs.get(art)) -> None:
                if out is None:
                    return  # nothing kept in this chunk: an empty part
                with open(out, "rb") as src:
                    while chunk := src.read(1 << 20):
                        f.write(chunk)

            write_atomically(Path(dest_for(art)), copy)
            made[art] = {"frames": n, "encoder": "ffmpeg libx264 mp4"}
        if poster_dest is not None:
            save_candidate(poster_dest, _best(cands))
        for art, out in extra.items():
            if not out.is_file() or not out.stat().st_size:
                raise BadVideo(f"chunk {index + 1} of {count} of {name}: ffmpeg wrote no audio")

            def copy(f, out=out) -> None:
                with open(out, "rb") as src:
                    while chunk := src.read(1 << 20):
                        f.write(chunk)

            write_atomically(Path(audio_dest(art)), copy)
    return made


def _readings(fd: int, name: str, chains: dict[str, str], chunk) -> tuple[dict[str, _Reading], dict]:
    cv2 = _cv2()
    cap = _source(fd, name)
    try:
        readings = {art: _reading(cap, chain, chunk) for art, chain in chains.items()}
        info = {
            "frames": int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0),
            "fps": float(cap.get(cv2.CAP_PROP_FPS) or 0) or 25.0,
            "size": (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))),  # upright
        }
    finally:
        cap.release()
    return readings, info


def save_candidate(dest, cand: Candidate | None) -> None:
    """A chunk's poster candidate written atomically as a PNG (lossless) carrying its
    score and frame index; an empty file when the chunk had no sample."""
    from PIL.PngImagePlugin import PngInfo

    def write(f) -> None:
        if cand is None:
            return
        meta = PngInfo()
        meta.add_text(POSTER_KEY, json.dumps({"score": cand.score, "at": cand.at}))
        frame_image(cand.frame).save(f, "PNG", pnginfo=meta, compress_level=1)

    write_atomically(Path(dest), write)


def pick_poster(paths: list) -> object:
    """The poster (an RGB PIL image) among the candidates the chunks left at ``paths``,
    chosen as one pass chooses among all samples: the most detailed that qualifies (the
    earliest among equals), else the first sample that decoded. None when a chunk left
    no candidate file (it was made without ffmpeg) or no sample decoded: the caller
    samples the poster itself."""
    from PIL import Image

    cands = []
    for p in map(Path, paths):
        if not p.is_file():
            return None
        if not p.stat().st_size:
            continue
        with Image.open(p) as im:
            meta = json.loads(im.text[POSTER_KEY])
            cands.append(Candidate(im.convert("RGB"), int(meta["at"]), meta["score"]))
    best = _best(cands)
    return best.frame if best is not None else None


def _best(cands: list[Candidate]) -> Candidate | None:
    """The qualifying candidate of highest score (the earliest of equals), else the
    earliest; None for none. Chunks keep only this of theirs, and it stays the choice."""
    cands = sorted(cands, key=lambda c: c.at)
    best = None
    for c in cands:
        if c.score is not None and (best is None or c.score > best.score):
            best = c
    return best if best is not None else (cands[0] if cands else None)


def _kept(r: _Reading, total: int) -> int:
    """How many source frames chain ``r`` keeps (of ``total``): those of [begin, stop)
    whose index j from its range's start makes the output clock tick (floor(j x ratio)
    steps up), the rule ``video_encode._keeps`` applies frame by frame."""
    a, b = r.begin, total if r.stop is None else min(total, r.stop)
    if b <= a:
        return 0
    j0, j1 = a - r.first, b - r.first
    if r.ratio >= 1:
        return j1 - j0
    return math.floor((j1 - 1) * r.ratio) - math.floor((j0 - 1) * r.ratio)


def _select(r: _Reading, lo: int) -> str:
    """ffmpeg's ``select`` expression for the frames ``r`` keeps, in a pass whose first
    decoded frame is source frame ``lo`` (``n`` counts the pass's frames from 0)."""
    idx = f"(n+{lo})"
    terms = [f"gte({idx},{r.begin})"] + ([f"lt({idx},{r.stop})"] if r.stop is not None else [])
    if r.ratio < 1:
        p, q, j = r.ratio.numerator, r.ratio.denominator, f"({idx}-{r.first})"
        terms.append(f"gt(floor({j}*{p}/{q}),floor(({j}-1)*{p}/{q}))")
    return "*".join(terms)


def _rate(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


def _span(readings: dict[str, _Reading], samples: list[int]) -> tuple[int, int | None]:
    """The source frames [lo, hi) one pass decodes (hi None: to the end): every chain's
    frames and every poster sample."""
    lo = min([r.begin for r in readings.values()] + samples)
    if any(r.stop is None for r in readings.values()):
        return lo, None
    return lo, max([r.stop for r in readings.values()] + [s + 1 for s in samples])


def _command(program: str, fd: int, readings: dict[str, _Reading], outs: dict[str, Path], src_fps: float, samples: list[int], *, whole: bool, audio: bool, threads: int,
             sounds: dict | None = None) -> list[str]:
    """The ffmpeg command: input 0 the video over the span the pass decodes, then one
    input per chain's audio range (``audio``: mapped into each chain's output; or
    ``sounds``, {artifact: (reading, path)}: each written alone as AAC)."""
    lo, hi = _span(readings, samples) if readings or samples else (0, 1)
    cmd = [program, "-v", "error", "-nostdin", "-y"]
    if threads > 0:
        cmd += ["-filter_complex_threads", str(threads), "-threads", str(threads)]  # the decoder's
    start = (lo - 0.5) / src_fps if lo > 0 else 0.0  # half a frame before the first: timestamps jitter
    if lo > 0:
        cmd += ["-ss", f"{start:.6f}"]  # to the keyframe before it, then decoded on to it and trimmed exactly
    if hi is not None:
        cmd += ["-t", f"{(hi + 0.5) / src_fps - start:.6f}"]  # a frame more than needed: select drops it
    cmd += ["-i", f"/dev/fd/{fd}"]
    arts = list(readings)
    ranges = [readings[art] for art in arts] if audio else [r for r, _ in (sounds or {}).values()]
    for r in ranges:  # each chain's audio over its own time range, as another reading of the file
        cmd += ["-ss", f"{r.params['start']:g}", *(["-to", f"{r.params['end']:g}"] if r.params["end"] > 0 else []), "-i", f"/dev/fd/{fd}"]
    branches = len(arts) + (1 if samples else 0)
    if branches:
        graph = [f"[0:v]split={branches}" + "".join(f"[s{i}]" for i in range(branches))]
        for i, art in enumerate(arts):
            r, rate = readings[art], _rate(readings[art].fps)
            graph.append(f"[s{i}]select='{_select(r, lo)}',setpts='N*{rate.denominator}/({rate.numerator}*TB)',"
                         f"scale={r.size[0]}:{r.size[1]}:flags=area,setsar=1[o{i}]")
        if samples:
            graph.append(f"[s{len(arts)}]select='" + "+".join(f"eq((n+{lo}),{s})" for s in samples) + "'[poster]")
        cmd += ["-filter_complex", ";".join(graph)]
    for i, art in enumerate(arts):
        r, rate = readings[art], _rate(readings[art].fps)
        cmd += ["-map", f"[o{i}]"] + (["-map", f"{i + 1}:a?", "-c:a", "aac", "-b:a", "128k"] if audio else ["-an"])
        cmd += _x264(r.params) + ["-fps_mode", "passthrough", "-r", f"{rate.numerator}/{rate.denominator}"]
        cmd += (["-movflags", "+faststart"] if whole else []) + ["-f", "mp4", str(outs[art])]
    if samples:
        cmd += ["-map", "[poster]", "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "bgr24", "pipe:1"]
    for k, (_, out) in enumerate((sounds or {}).values()):
        cmd += ["-map", f"{k + 1}:a", "-vn", "-c:a", "aac", "-b:a", "128k", "-f", "mp4", str(out)]
    return cmd


def _run(program: str, fd: int, name: str, readings: dict[str, _Reading], outs: dict[str, Path], info: dict, samples: list[int], err_path: Path,
         *, whole: bool, audio: bool, threads: int, sounds: dict | None = None) -> list[Candidate]:
    """Run the one ffmpeg process; returns the poster samples it decoded that can still
    be chosen, scored (the best that qualifies and the first: no more in memory)."""
    import numpy as np

    cmd = _command(program, fd, readings, outs, info["fps"], samples, whole=whole, audio=audio, threads=threads, sounds=sounds)
    w, h = info["size"]
    first = best = None
    with open(err_path, "w+b") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE if samples else subprocess.DEVNULL, stderr=err, pass_fds=(fd,))
        try:
            for at in samples:
                data = proc.stdout.read(w * h * 3)
                if len(data) < w * h * 3:
                    break  # this sample (and those after it) did not decode
                frame = np.frombuffer(data, np.uint8).reshape(h, w, 3)
                c = Candidate(frame, at, poster_score(frame))
                if first is None:
                    first = c
                if c.score is not None and (best is None or c.score > best.score):
                    best = c
            if samples:
                proc.stdout.read()  # nothing more should come; never leave ffmpeg blocked on the pipe
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            if proc.stdout:
                proc.stdout.close()
        if code != 0:
            err.seek(0)
            text = err.read().decode(errors="replace").strip()
            raise BadVideo(f"cannot make a video of {name}: ffmpeg failed ({text[-300:] or f'exit status {code}'})")
    return [c for c in (first, best) if c is not None and (c is first or best is not first)]


def _frames_of(path: Path) -> int:
    """The frames an MP4 written here holds, from its index (0 if it does not open)."""
    cv2 = _cv2()
    if not path.is_file() or not path.stat().st_size:
        return 0
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if cap.isOpened() else 0
    finally:
        cap.release()
