"""Making video artifacts: every video chain of a recipe from one decode of the original
(chunks of a long video and their join: video_chunks.py, on the pieces here).

The original is decoded once by OpenCV (frames upright: the container's rotation
applied), through its open descriptor. Each video chain reads the frames it needs from
that one pass: its time range, thinned to its frame-rate cap by a rule on the frame's
index alone (so chunks pick exactly the frames one pass picks), fit within its size
(even sides), run through its per-frame steps, and pushed into its encoder: the
``ffmpeg`` program (H.264, with the original's audio over the range, AAC) or OpenCV's
writer (VP8/VP9 WebM, no audio). What is written is read back before it is kept.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

from imgq.errors import BadVideo, MissingExtra
from imgq.imaging.video import _cv2, _ffprobe, fd_path, ffprobe_path
from imgq.store import scratch_dir, write_atomically


@dataclasses.dataclass(frozen=True)
class VideoSaved:
    """A verified video written by ``encode_videos``: what the artifact row and the job's
    result record (``encoder`` names the program and codecs that made it)."""

    sha256: str
    bytes: int
    width: int
    height: int
    frames: int
    duration: float
    encoder: str
    ext: str


def video_params(chain_text: str) -> tuple[dict, tuple]:
    """(the ``video`` step's parameters, the steps run on every frame after it)."""
    from imgq.ops import canonical_step, parse_chain

    steps = parse_chain(chain_text)
    return dict(canonical_step(steps[0]).params), tuple(steps[1:])


@dataclasses.dataclass
class _Reading:
    """What one video chain takes from the source: source frames [begin, stop) (stop
    None: to the end), those whose index from ``first`` ``keep`` accepts, at ``size``."""

    params: dict
    steps: tuple
    first: int
    begin: int
    stop: int | None
    keep: object
    size: tuple[int, int]
    fps: float
    ratio: Fraction = Fraction(1)  # output over source frame rate, at most 1 (``_thinning``)


def _source(fd: int, name: str):
    cv2 = _cv2()
    cap = cv2.VideoCapture(fd_path(fd), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        raise BadVideo(f"corrupt video: {name} (cannot be opened as a video)")
    return cap


def _thinning(src_fps: float, out_fps: float) -> Fraction:
    """The share of the source's frames kept (1 when none is dropped), exact."""
    return min(Fraction(1), Fraction(out_fps).limit_denominator(1001) / Fraction(src_fps).limit_denominator(1001))


def _keeps(src_fps: float, out_fps: float):
    """Whether frame ``j`` (counted from the start of the time range) is kept when
    ``src_fps`` is thinned to ``out_fps``: the frames where the output clock ticks."""
    r = _thinning(src_fps, out_fps)
    if r >= 1:
        return lambda j: True
    return lambda j: j == 0 or (j * r).__floor__() > ((j - 1) * r).__floor__()


def _reading(cap, chain_text: str, chunk: tuple[int, int] | None) -> _Reading:
    from imgq.ops import fit_size

    cv2 = _cv2()
    params, steps = video_params(chain_text)
    src_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0) or 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    out_fps = min(src_fps, params["fps"]) if params["fps"] > 0 else src_fps
    first = int(round(params["start"] * src_fps))
    last = int(round(params["end"] * src_fps)) if params["end"] > 0 else None
    begin, stop = first, last
    if chunk is not None:
        index, count = chunk
        span = (last if last is not None else total) - first
        begin = first + span * index // count
        if index < count - 1:
            stop = first + span * (index + 1) // count  # the last chunk reads to the end
    fw, fh = fit_size((w, h), params["size"])
    return _Reading(params, steps, first, begin, stop, _keeps(src_fps, out_fps), (max(2, fw - fw % 2), max(2, fh - fh % 2)), out_fps, _thinning(src_fps, out_fps))


def _shape(frame, r: _Reading):
    """``frame`` (BGR) at the chain's size, through its per-frame steps."""
    import numpy as np
    from PIL import Image

    from imgq.ops import run_steps

    cv2 = _cv2()
    fw, fh = r.size
    if frame.shape[1] != fw or frame.shape[0] != fh:
        frame = cv2.resize(frame, (fw, fh), interpolation=cv2.INTER_AREA)
    if r.steps:
        img, _ = run_steps(Image.fromarray(np.ascontiguousarray(frame[..., ::-1]), "RGB"), r.steps)
        img = img.convert("RGB")
        if img.size != (fw, fh):
            img = img.resize((fw, fh))
        frame = np.ascontiguousarray(np.asarray(img)[..., ::-1])
    return frame


def _decode(cap, readings: dict, sinks: dict) -> None:
    """One pass over the source: each frame goes to every chain that takes it."""
    begin = min(r.begin for r in readings.values())
    stops = [r.stop for r in readings.values()]
    stop = None if None in stops else max(stops)
    cv2 = _cv2()
    if begin:
        cap.set(cv2.CAP_PROP_POS_FRAMES, begin)
    index = begin
    while stop is None or index < stop:
        ok, frame = cap.read()
        if not ok or frame is None:
            break
        for name, r in readings.items():
            if r.begin <= index and (r.stop is None or index < r.stop) and r.keep(index - r.first):
                sinks[name].write(_shape(frame, r))
        index += 1


class _FfmpegSink:
    """Raw frames piped into the ffmpeg program; its errors go to a file (no pipe to fill)."""

    def __init__(self, cmd: list[str], name: str, fd: int | None, err_path: Path):
        self.name, self.count = name, 0
        self.err = open(err_path, "w+b")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self.err, pass_fds=(fd,) if fd is not None else ())

    def write(self, frame) -> None:
        if self.proc.stdin.closed:
            return
        try:
            self.proc.stdin.write(frame.tobytes())
            self.count += 1
        except BrokenPipeError:
            self.proc.stdin.close()

    def close(self) -> int:
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        code = self.proc.wait()
        self.err.seek(0)
        text = self.err.read().decode(errors="replace").strip()
        self.err.close()
        if code != 0 or self.count == 0:
            raise BadVideo(f"cannot make a video of {self.name}: ffmpeg failed ({text[-300:] or 'no frames in the range asked for'})")
        return self.count

    def abort(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.err.close()


class _OpenCVSink:
    def __init__(self, out: Path, fourcc: str, fps: float, size: tuple[int, int], name: str):
        cv2 = _cv2()
        self.name, self.count = name, 0
        self.writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*fourcc), fps, size)
        if not self.writer.isOpened():
            raise BadVideo(f"cannot make a video of {name}: OpenCV cannot write {fourcc} here")

    def write(self, frame) -> None:
        self.writer.write(frame)
        self.count += 1

    def close(self) -> int:
        self.writer.release()
        if self.count == 0:
            raise BadVideo(f"cannot make a video of {self.name}: no frame in the range asked for")
        return self.count

    def abort(self) -> None:
        self.writer.release()


def _ffmpeg_raw_input(ffmpeg: str, size: tuple[int, int], fps: float) -> list[str]:
    return [ffmpeg, "-v", "error", "-nostdin", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{size[0]}x{size[1]}", "-r", f"{fps:.6g}", "-i", "pipe:0"]


def _audio_of(fd: int, params: dict) -> list[str]:
    """ffmpeg arguments adding the original's audio (if any) over the time range."""
    cut = ["-ss", f"{params['start']:g}"] + (["-to", f"{params['end']:g}"] if params["end"] > 0 else [])
    return [*cut, "-i", f"/dev/fd/{fd}", "-map", "0:v", "-map", "1:a?", "-c:a", "aac", "-b:a", "128k"]


def _x264(params: dict) -> list[str]:
    """The H.264 encoder's arguments. One thread: x264's output depends on its thread
    count, and with one it is the same bytes on every host and with any ``-j`` (its own
    choice, 1.5 a core, also oversubscribed one worker a core); a preview is small
    beside the decoding, which takes the threads a job is given, exactly."""
    out = ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-profile:v", "high", "-threads", "1"]
    return out + (["-b:v", f"{params['kbps']}k"] if params["kbps"] else ["-crf", str(params["crf"])])


def _has_audio(fd: int) -> bool:
    return bool(ffprobe_path()) and any(s.get("codec_type") == "audio" for s in _ffprobe(fd, "").get("streams", []))


def _program(ffmpeg: str | None) -> str | None:
    return shutil.which(ffmpeg) if ffmpeg else None


def _uses_ffmpeg(params: dict, program: str | None, name: str) -> bool:
    codec = params.get("codec", "auto")
    if codec == "h264" and program is None:
        raise MissingExtra(f"{name}: codec=h264 needs the ffmpeg program (apt-get install ffmpeg)")
    return codec in ("auto", "h264") and program is not None


def _check_written(path, frames: int, name: str) -> None:
    """The written video opens and holds ``frames`` frames (within one: WebM's count is
    an estimate from its duration)."""
    cv2 = _cv2()
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if not cap.isOpened() or abs(n - frames) > 1:
            raise BadVideo(f"the video made of {name} did not verify: {n} frames read back, {frames} written")
    finally:
        cap.release()


def check_video(path, *, frames: int, width: int | None = None, height: int | None = None, name: str) -> None:
    """The video at ``path`` (made elsewhere: an agent's reply) opens, holds ``frames``
    frames (within one, as ``_check_written`` allows) and, when given, is ``width`` x
    ``height``; BadVideo naming ``name`` otherwise."""
    cv2 = _cv2()
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        if not cap.isOpened():
            raise BadVideo(f"{name} does not open as a video")
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if abs(n - frames) > 1:
            raise BadVideo(f"{name} holds {n} frames, {frames} stated")
        if width is not None and (w, h) != (width, height):
            raise BadVideo(f"{name} is {w}x{h}, {width}x{height} stated")
        ok, frame = cap.read()
        if not ok or frame is None:
            raise BadVideo(f"{name}: no frame decodes")
    finally:
        cap.release()


def _keep(out: Path, frames: int, size: tuple[int, int], fps: float, encoder: str, ext: str, dest, name: str) -> VideoSaved:
    """Verify the encoded file ``out`` and copy it, hashed, atomically to ``dest``."""
    _check_written(out, frames, name)
    digest = hashlib.sha256()

    def copy(f) -> None:
        with open(out, "rb") as src:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                f.write(chunk)

    write_atomically(Path(dest), copy)
    return VideoSaved(digest.hexdigest(), out.stat().st_size, size[0], size[1], frames, round(frames / fps, 3) if fps else 0.0, encoder, ext)


def _run_sinks(cap, readings: dict, sinks: dict) -> dict[str, int]:
    try:
        _decode(cap, readings, sinks)
    except BaseException:
        for s in sinks.values():
            s.abort()
        raise
    finally:
        cap.release()
    counts, failure = {}, None
    for n, s in sinks.items():
        try:
            counts[n] = s.close()
        except BadVideo as e:
            failure = failure or e
    if failure:
        raise failure
    return counts


def encode_videos(fd: int, name: str, chains: dict[str, str], dest_for, *, ffmpeg: str | None = "ffmpeg", scratch=None, threads: int = 0) -> dict[str, VideoSaved]:
    """Every video chain of ``chains`` (artifact -> a chain starting with ``video`` or
    ``preview``) made from one decode of the video at ``fd``, each verified and written
    atomically to ``dest_for(artifact, ext)`` (the extension depends on the encoder:
    mp4 through the ``ffmpeg`` program, looked up on PATH, or webm through OpenCV where
    it is missing, None, or the chain asks for vp8/vp9). The encoders write under
    ``scratch`` (``store.scratch_dir``: give a folder on the store's file system).
    Plain H.264 chains (no per-frame steps) are made by the ffmpeg program alone
    (``video_pass``); ``threads`` > 0 fixes the threads their ffmpeg decodes and
    scales with (0: its own choice); x264 always encodes with one (``_x264``)."""
    program = _program(ffmpeg)
    if _plain(chains, program):
        return _video_pass().encode_plain(fd, name, chains, dest_for, program=program, scratch=scratch, threads=threads)[0]
    cap = _source(fd, name)
    with scratch_dir(scratch) as tmpdir:
        readings, sinks, outs = {}, {}, {}
        try:
            for art, chain in chains.items():
                r = readings[art] = _reading(cap, chain, None)
                if _uses_ffmpeg(r.params, program, name):
                    outs[art] = (Path(tmpdir) / f"{art}.mp4", "mp4", "ffmpeg libx264" + ("/aac" if _has_audio(fd) else "") + " mp4")
                    cmd = _ffmpeg_raw_input(program, r.size, r.fps) + _audio_of(fd, r.params) + _x264(r.params)
                    sinks[art] = _FfmpegSink(cmd + ["-movflags", "+faststart", "-f", "mp4", str(outs[art][0])], name, fd, Path(tmpdir) / f"{art}.err")
                else:
                    fourcc = "VP90" if r.params.get("codec") == "vp9" else "VP80"
                    outs[art] = (Path(tmpdir) / f"{art}.webm", "webm", f"opencv {fourcc[:2].lower()}{fourcc[2]} webm")
                    sinks[art] = _OpenCVSink(outs[art][0], fourcc, r.fps, r.size, name)
        except BaseException:
            cap.release()
            for s in sinks.values():
                s.abort()
            raise
        counts = _run_sinks(cap, readings, sinks)
        return {
            art: _keep(out, counts[art], readings[art].size, readings[art].fps, encoder, ext, dest_for(art, ext), name)
            for art, (out, ext, encoder) in outs.items()
        }


def encode_videos_and_poster(fd: int, name: str, chains: dict[str, str], dest_for, *, ffmpeg: str | None = "ffmpeg", scratch=None, threads: int = 0) -> tuple[dict[str, VideoSaved], object]:
    """``encode_videos``, and the poster frame (an RGB PIL image, chosen as
    ``video.poster_frame`` chooses it) from the same decode when the ffmpeg program makes
    the chains alone; None otherwise (the caller samples it: ``render_stills``)."""
    program = _program(ffmpeg)
    if _plain(chains, program):
        return _video_pass().encode_plain(fd, name, chains, dest_for, program=program, scratch=scratch, threads=threads, poster=True)
    return encode_videos(fd, name, chains, dest_for, ffmpeg=ffmpeg, scratch=scratch, threads=threads), None


def encode_video(fd: int, name: str, chain_text: str, dest_for, *, ffmpeg: str | None = "ffmpeg", scratch=None, threads: int = 0) -> VideoSaved:
    """One video chain (``encode_videos``); ``dest_for(ext)`` gives the path to write."""
    return encode_videos(fd, name, {"video": chain_text}, lambda art, ext: dest_for(ext), ffmpeg=ffmpeg, scratch=scratch, threads=threads)["video"]


def _plain(chains: dict[str, str], program: str | None) -> bool:
    """Whether every chain is one the ffmpeg program makes alone: H.264 (``auto`` or
    ``h264`` with the program installed) and no per-frame step after ``video``."""
    if not chains or program is None or not _selects_exactly(program):
        return False
    for chain in chains.values():
        params, steps = video_params(chain)
        if steps or params.get("codec", "auto") not in ("auto", "h264"):
            return False
    return True


@functools.lru_cache(maxsize=8)
def _selects_exactly(program: str) -> bool:
    """Whether the ffmpeg program has ``-fps_mode`` (5.1 and later; a build from git
    names no version and is taken as recent): ``video_pass`` passes the frames it picks
    through as they are, where an older one would fill the gaps between them."""
    import re

    try:
        out = subprocess.run([program, "-version"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    m = re.match(r"ffmpeg version n?(\d+)\.(\d+)", out)
    return m is None or (int(m.group(1)), int(m.group(2))) >= (5, 1)


def _video_pass():
    # imported when used: video_pass builds on this module's readings and checks
    from imgq.imaging import video_pass

    return video_pass
