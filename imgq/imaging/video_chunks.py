"""Chunks of a long video and their join: each chunk job decodes its share of the source
frames (from the keyframe before it, trimmed to its first frame exactly) and writes a
part per video chain; the join concatenates the parts (stream copy for H.264 parts, a
re-encode for OpenCV's MJPG ones) into exactly the frames and duration of one pass.
The frame reading, the encoders and the checks of what is written are video_encode's.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from imgq.errors import BadVideo, StorageError
from imgq.imaging.video import _cv2, sniff_video
from imgq.imaging.video_encode import (
    VideoSaved, _audio_of, _check_written, _decode, _FfmpegSink, _ffmpeg_raw_input, _has_audio, _keep, _OpenCVSink, _plain,
    _program, _Reading, _reading, _source, _uses_ffmpeg, _video_pass, _x264,
)
from imgq.store import scratch_dir, write_atomically


def encode_chunks(fd: int, name: str, chains: dict[str, str], index: int, count: int, dest_for, *, ffmpeg: str | None = "ffmpeg", scratch=None, threads: int = 0, poster_dest=None, audio_dest=None) -> dict[str, dict]:
    """Chunk ``index`` of ``count`` of every video chain, from one decode of that share
    of the source frames: each written atomically to ``dest_for(artifact)`` as a part,
    H.264 MP4 without audio through the ffmpeg program (the join copies it), else MJPG
    AVI through OpenCV (the join encodes it). A chunk whose frames the frame-rate cap
    all drops is an empty part. Returns {artifact: {frames, encoder}}.

    Plain H.264 chains are made by the ffmpeg program alone (``video_pass``), which
    seeks to the keyframe before the chunk's first frame; with ``poster_dest`` it also
    writes there the best poster candidate among the samples in this chunk's share
    (``video_pass.pick_poster`` chooses among the chunks'). Other chains leave nothing
    at ``poster_dest``: the join samples the poster itself. With ``audio_dest`` (chunk 0:
    ``audio_dest(artifact)``), plain chains' audio is encoded there too (where the
    original has audio), off the join's path: the join copies it."""
    program = _program(ffmpeg)
    if _plain(chains, program):
        return _video_pass().encode_plain_chunk(fd, name, chains, index, count, dest_for, program=program, scratch=scratch, threads=threads, poster_dest=poster_dest, audio_dest=audio_dest)
    cap = _source(fd, name)
    with scratch_dir(scratch) as tmpdir:
        readings, sinks, outs = {}, {}, {}
        try:
            for art, chain in chains.items():
                r = readings[art] = _reading(cap, chain, (index, count))
                if _uses_ffmpeg(r.params, program, name):
                    outs[art] = (Path(tmpdir) / f"{art}.mp4", "ffmpeg libx264 mp4")
                    cmd = _ffmpeg_raw_input(program, r.size, r.fps) + _x264(r.params) + ["-an", "-f", "mp4", str(outs[art][0])]
                    sinks[art] = _FfmpegSink(cmd, name, None, Path(tmpdir) / f"{art}.err")
                else:
                    outs[art] = (Path(tmpdir) / f"{art}.avi", "opencv mjpg avi")
                    sinks[art] = _OpenCVSink(outs[art][0], "MJPG", r.fps, r.size, name)
        except BaseException:
            cap.release()
            for s in sinks.values():
                s.abort()
            raise
        try:
            _decode(cap, readings, sinks)
        finally:
            cap.release()
        made = {}
        for art, (out, encoder) in outs.items():
            sink = sinks[art]
            if sink.count:
                n = sink.close()
                _check_written(out, n, name)
            else:
                sink.abort()  # nothing kept in this chunk: an empty part
                out.write_bytes(b"")
                n = 0

            def copy(f, out=out) -> None:
                with open(out, "rb") as src:
                    while chunk := src.read(1 << 20):
                        f.write(chunk)

            write_atomically(Path(dest_for(art)), copy)
            made[art] = {"frames": n, "encoder": encoder}
        return made


def join_chunks(fd: int, name: str, chain_text: str, parts: list, dest_for, *, ffmpeg: str | None = "ffmpeg", scratch=None, audio=None) -> VideoSaved:
    """The video artifact of ``chain_text`` from the parts ``encode_chunks`` wrote, in
    order: H.264 parts are joined by stream copy (no second encode) with the original's
    audio over the whole range (copied from ``audio`` where a chunk encoded it there);
    otherwise every part's frames are encoded once more as ``encode_video`` would. The
    frames are exactly those of one pass."""
    cv2 = _cv2()
    program = _program(ffmpeg)
    parts = [Path(os.path.abspath(p)) for p in parts]  # the concat list resolves names from its own folder
    for p in parts:
        if not p.is_file():
            raise StorageError(f"chunk {p} of {name} is missing; its chunk job will run again")
    parts = [p for p in parts if p.stat().st_size]
    if not parts:
        raise BadVideo(f"cannot make a video of {name}: no frame in the range asked for")
    kinds, counts = set(), []
    for p in parts:
        with open(p, "rb") as f:
            kinds.add(sniff_video(f.read(64)))
        part = cv2.VideoCapture(str(p), cv2.CAP_FFMPEG)
        counts.append(int(part.get(cv2.CAP_PROP_FRAME_COUNT) or 0))
        part.release()
    cap = _source(fd, name)
    try:
        r = _reading(cap, chain_text, None)  # size and rate exactly as one pass has them
    finally:
        cap.release()
    if not (kinds == {"MP4"} and _uses_ffmpeg(r.params, program, name)):
        return _reencode(fd, name, r, parts, dest_for, program, scratch)
    with scratch_dir(scratch) as tmpdir:
        listing = Path(tmpdir) / "parts.txt"
        # each part's duration from its frames: the container's is rounded to the
        # millisecond, and the join would drift by that much at every boundary
        listing.write_text("".join("file '" + str(p).replace("'", "'\\''") + f"'\nduration {n / r.fps:.6f}\n" for p, n in zip(parts, counts)))
        out = Path(tmpdir) / "out.mp4"
        sound = _audio_of(fd, r.params)
        if audio is not None and Path(audio).is_file() and Path(audio).stat().st_size:
            sound = ["-i", str(audio), "-map", "0:v", "-map", "1:a", "-c:a", "copy"]  # encoded by chunk 0
        cmd = [program, "-v", "error", "-nostdin", "-y", "-f", "concat", "-safe", "0", "-i", str(listing), *sound]
        cmd += ["-c:v", "copy", "-movflags", "+faststart", "-f", "mp4", str(out)]
        done = subprocess.run(cmd, capture_output=True, pass_fds=(fd,), check=False)
        if done.returncode != 0:
            raise BadVideo(f"cannot join the chunks of {name}: ffmpeg failed ({done.stderr.decode(errors='replace').strip()[-300:]})")
        encoder = "ffmpeg libx264" + ("/aac" if _has_audio(fd) else "") + " mp4, joined from chunks"
        return _keep(out, sum(counts), r.size, r.fps, encoder, "mp4", dest_for("mp4"), name)


def _reencode(fd: int, name: str, r: _Reading, parts: list[Path], dest_for, program: str | None, scratch) -> VideoSaved:
    """The parts' frames, in order, encoded as ``encode_video`` encodes a whole video."""
    cv2 = _cv2()
    with scratch_dir(scratch) as tmpdir:
        if _uses_ffmpeg(r.params, program, name):
            out, ext, encoder = Path(tmpdir) / "out.mp4", "mp4", "ffmpeg libx264" + ("/aac" if _has_audio(fd) else "") + " mp4"
            cmd = _ffmpeg_raw_input(program, r.size, r.fps) + _audio_of(fd, r.params) + _x264(r.params)
            sink = _FfmpegSink(cmd + ["-movflags", "+faststart", "-f", "mp4", str(out)], name, fd, Path(tmpdir) / "err")
        else:
            fourcc = "VP90" if r.params.get("codec") == "vp9" else "VP80"
            out, ext, encoder = Path(tmpdir) / "out.webm", "webm", f"opencv {fourcc[:2].lower()}{fourcc[2]} webm"
            sink = _OpenCVSink(out, fourcc, r.fps, r.size, name)
        try:
            for p in parts:
                part = cv2.VideoCapture(str(p), cv2.CAP_FFMPEG)
                try:
                    while True:
                        ok, frame = part.read()
                        if not ok:
                            break
                        sink.write(frame)
                finally:
                    part.release()
        except BaseException:
            sink.abort()
            raise
        n = sink.close()
        return _keep(out, n, r.size, r.fps, encoder + ", joined from chunks", ext, dest_for(ext), name)
