"""Video originals: recognising a container by its first bytes and probing it.

A video is read through an open file descriptor, never a path that could be swapped:
OpenCV and ``ffprobe`` are given ``/proc/self/fd/N`` (``/dev/fd/N`` in a child), which
opens the very inode scan hashed. OpenCV gives the frame count, rate and size and proves
that frames decode (the first and the last: a file cut short loses its end); ``ffprobe``,
where installed, gives the codecs, the audio stream and the container's creation time.
An MP4/MOV's creation time is read from its ``mvhd`` box here, so it needs no ffprobe.

Errors: a file that is not a playable video raises ``BadVideo`` (permanent) naming it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import struct
import subprocess

from imgq.errors import BadVideo

# ffmpeg (inside OpenCV) logs damaged input on stderr; imgq reports it as BadVideo instead
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

# Every container imgq reads, as ``sniff_video`` names it -> the name people know it by.
VIDEO_FORMATS: dict[str, str] = {
    "MP4": "MP4",
    "MOV": "QuickTime MOV",
    "MKV": "Matroska",
    "WEBM": "WebM",
    "AVI": "AVI",
}
VIDEO_FORMAT_NAMES = ", ".join(VIDEO_FORMATS.values())

# ISO base media brands that are stills (HEIF/AVIF) or camera RAW, never video
_STILL_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1", b"avif", b"avis", b"crx "}
# ISO base media brands of sound only (iTunes audio, audiobooks): not videos
_AUDIO_BRANDS = {b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B "}
# QuickTime files from old cameras start with a movie atom rather than ftyp
_QT_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}
PROBE_TIMEOUT = 60.0


def sniff_video(head: bytes) -> str | None:
    """The video container named by the first bytes of a file (32 or more), or None:
    MP4 and MOV (ISO base media ``ftyp``, or a QuickTime movie atom), Matroska and WebM
    (EBML, told apart by the DocType when it is within ``head``), AVI (RIFF ... AVI)."""
    if head[4:8] == b"ftyp" and head[8:12] not in _STILL_BRANDS | _AUDIO_BRANDS:
        return "MOV" if head[8:12] == b"qt  " else "MP4"
    if head[4:8] in _QT_ATOMS and int.from_bytes(head[:4], "big") >= 8 and len(head) >= 16 and head[12:16] in _QT_ATOMS | {b"mvhd", b"ftyp"}:
        return "MOV"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "WEBM" if b"webm" in head[:64] else "MKV"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI"
    return None


@dataclasses.dataclass(frozen=True)
class VideoProbe:
    """What scan records of a video. ``width``/``height`` as stored (before ``rotation``,
    the clockwise degrees a player turns it by); ``created_at`` ISO 8601 UTC without a
    zone, from the container, or None."""

    format: str
    width: int
    height: int
    frames: int
    fps: float
    duration: float
    rotation: int = 0
    created_at: str | None = None
    codec: str | None = None
    audio: str | None = None  # the audio codec, None without audio (or without ffprobe)


def fd_path(fd: int) -> str:
    """A path that opens the file behind ``fd`` (this process's descriptor)."""
    return f"/proc/self/fd/{fd}" if os.path.isdir("/proc/self/fd") else f"/dev/fd/{fd}"


def ffprobe_path() -> str | None:
    return shutil.which("ffprobe")


def ffmpeg_path() -> str | None:
    return shutil.which("ffmpeg")


def probe_video(fd: int, name: str, fmt: str) -> VideoProbe:
    """Probe the video open at ``fd`` (read with pread; its offset is not used).

    Raises BadVideo naming ``name`` when it does not open as a video, declares no frames,
    or its first or last frame does not decode (truncated)."""
    cv2 = _cv2()
    cap = cv2.VideoCapture(fd_path(fd), cv2.CAP_FFMPEG)
    try:
        if not cap.isOpened():
            raise BadVideo(f"corrupt or truncated {VIDEO_FORMATS[fmt]} video: {name} (cannot be opened as a video)")
        frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        rotation = (-int(cap.get(cv2.CAP_PROP_ORIENTATION_META) or 0)) % 360
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if rotation in (90, 270):
            w, h = h, w  # OpenCV reports the turned size; the stored one is recorded
        ok, first = cap.read()
        if not ok or first is None:
            raise BadVideo(f"corrupt or truncated {VIDEO_FORMATS[fmt]} video: {name} (no frame decodes)")
        if frames > 1 and not _decodes_near_end(cap, frames, fps):
            raise BadVideo(f"truncated {VIDEO_FORMATS[fmt]} video: {name} (declares {frames} frames; its last ones do not decode)")
    finally:
        cap.release()
    if w < 1 or h < 1 or fps <= 0 or frames < 1:
        raise BadVideo(f"corrupt {VIDEO_FORMATS[fmt]} video: {name} (declares {w}x{h} pixels, {frames} frames at {fps:g} fps)")
    info = _ffprobe(fd, name) if ffprobe_path() else {}
    streams = info.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video"), {})
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    duration = _float(info.get("format", {}).get("duration")) or _float(video.get("duration")) or frames / fps
    created = _mvhd_created(fd) if fmt in ("MP4", "MOV") else None
    if created is None:
        created = _iso(info.get("format", {}).get("tags", {}).get("creation_time"))
    return VideoProbe(
        format=fmt, width=w, height=h, frames=frames, fps=round(fps, 3), duration=round(duration, 3), rotation=rotation,
        created_at=created, codec=video.get("codec_name"), audio=audio.get("codec_name") if audio else None,
    )


def _decodes_near_end(cap, frames: int, fps: float) -> bool:
    """Whether the last frame, or one of the two before it, decodes. Matroska and WebM
    declare no frame count: OpenCV estimates it from the duration, and may overshoot by
    a frame or two; a file cut short lacks more than that."""
    cv2 = _cv2()
    for at in sorted({frames - 1, max(0, frames - 3)}, reverse=True):
        cap.set(cv2.CAP_PROP_POS_FRAMES, at)
        ok, frame = cap.read()
        if ok and frame is not None:
            return True
    return False


def _cv2():
    """OpenCV, quiet: a video it cannot open is reported as BadVideo, not as its warnings."""
    import cv2

    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:
        pass
    return cv2


def _ffprobe(fd: int, name: str) -> dict:
    """ffprobe's streams and format of the file at ``fd`` ({} if ffprobe cannot say)."""
    try:
        out = subprocess.run(
            [ffprobe_path(), "-v", "error", "-print_format", "json", "-show_format", "-show_streams", f"/dev/fd/{fd}"],
            pass_fds=(fd,), capture_output=True, timeout=PROBE_TIMEOUT, check=False,
        )
        return json.loads(out.stdout or b"{}") if out.returncode == 0 else {}
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return {}


def _float(text) -> float | None:
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if v > 0 else None


def _iso(text: str | None) -> str | None:
    if not text:
        return None
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is not None:
        t = t.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return None if t.year < 1971 else t.isoformat(timespec="seconds")


_EPOCH_1904 = dt.datetime(1904, 1, 1)


def _mvhd_created(fd: int) -> str | None:
    """The creation time in an MP4/MOV's ``moov/mvhd`` box (seconds since 1904, UTC),
    found by walking the top-level boxes with pread; None when absent or zero."""
    size = os.fstat(fd).st_size
    pos = 0
    while pos + 8 <= size:
        box_size, kind = struct.unpack(">I4s", os.pread(fd, 8, pos))
        header = 8
        if box_size == 1:
            box_size, header = struct.unpack(">Q", os.pread(fd, 8, pos + 8))[0], 16
        elif box_size == 0:
            box_size = size - pos
        if box_size < header:
            return None
        if kind == b"moov":
            inner, end = pos + header, pos + box_size
            while inner + 8 <= end:
                sub_size, sub = struct.unpack(">I4s", os.pread(fd, 8, inner))
                if sub == b"mvhd":
                    body = os.pread(fd, 12, inner + 8)
                    if len(body) < 12:
                        return None
                    seconds = struct.unpack(">Q", body[4:12])[0] if body[0] == 1 else struct.unpack(">I", body[4:8])[0]
                    if seconds == 0:
                        return None
                    return _iso((_EPOCH_1904 + dt.timedelta(seconds=seconds)).isoformat())
                if sub_size < 8:
                    return None
                inner += sub_size
            return None
        pos += box_size
    return None


# ---------------------------------------------------------------- posters and previews

POSTER_SAMPLES = 8
# a frame this dark or this flat is no poster (a black first frame, a lens cap, a fade)
DARK_MEAN, FLAT_STD = 16.0, 6.0


@dataclasses.dataclass(frozen=True)
class VideoSaved:
    """A verified video written by ``encode_video``: what the artifact row and the job's
    result record (``encoder`` names the program and codecs that made it)."""

    sha256: str
    bytes: int
    width: int
    height: int
    frames: int
    duration: float
    encoder: str
    ext: str


def poster_frame(fd: int, name: str):
    """The representative frame of the video at ``fd``, upright (rotation applied), as
    an RGB PIL image: among a few frames sampled across it, the one with most detail
    (variance of the Laplacian) that is neither near-black nor near-uniform; the first
    frame if none qualifies. Raises BadVideo when no frame decodes."""
    import numpy as np
    from PIL import Image

    cv2 = _cv2()
    cap = cv2.VideoCapture(fd_path(fd), cv2.CAP_FFMPEG)
    try:
        frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        best, best_score, first = None, -1.0, None
        for i in range(POSTER_SAMPLES):
            at = int((i + 0.5) * frames / POSTER_SAMPLES) if frames > 1 else 0
            cap.set(cv2.CAP_PROP_POS_FRAMES, at)
            ok, frame = cap.read()
            if not ok or frame is None:
                continue
            first = frame if first is None else first
            small = cv2.resize(frame, (160, max(1, 160 * frame.shape[0] // frame.shape[1])), interpolation=cv2.INTER_AREA)
            grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
            if grey.mean() < DARK_MEAN or grey.std() < FLAT_STD:
                continue
            score = float(cv2.Laplacian(grey, cv2.CV_64F).var())
            if score > best_score:
                best, best_score = frame, score
            if frames <= 1:
                break
    finally:
        cap.release()
    chosen = best if best is not None else first
    if chosen is None:
        raise BadVideo(f"corrupt video: {name} (no frame decodes)")
    return Image.fromarray(np.ascontiguousarray(chosen[..., ::-1]), "RGB")


def video_params(chain_text: str) -> tuple[dict, tuple]:
    """(the ``video`` step's parameters, the steps run on every frame after it)."""
    from imgq.ops import canonical_step, parse_chain

    steps = parse_chain(chain_text)
    head = canonical_step(steps[0])
    return dict(head.params), tuple(steps[1:])


def encode_video(fd: int, name: str, chain_text: str, dest_for, *, ffmpeg: str | None = "ffmpeg") -> VideoSaved:
    """Make the video artifact of ``chain_text`` (a chain starting with ``video`` or
    ``preview``) from the video at ``fd`` and write it, verified, atomically.

    ``ffmpeg`` is the program looked up on PATH (None: behave as where it is not
    installed). ``dest_for(ext)`` gives the path to write (the extension depends on the
    encoder). The frames are decoded by OpenCV (upright), cut to the time range, thinned
    to the frame rate cap, fit within the size and run through the steps after
    ``video``; then encoded as H.264/AAC MP4 by the ``ffmpeg`` program (audio taken from
    the original), or, without it or with ``codec`` vp8/vp9, as WebM without audio by
    OpenCV. The result is decoded back: it must play and hold the frames written."""
    params, steps = video_params(chain_text)
    frames, w, h, fps = _frames(fd, name, params, steps)
    return _finish(fd, name, params, frames, w, h, fps, dest_for, shutil.which(ffmpeg) if ffmpeg else None)


def _finish(fd: int, name: str, params: dict, frames, w: int, h: int, fps: float, dest_for, ffmpeg: str | None) -> VideoSaved:
    """Encode ``frames`` (BGR arrays of w x h at fps) as the artifact ``params`` ask for,
    verify it and write it to ``dest_for(ext)``."""
    import tempfile
    from pathlib import Path

    codec = params.get("codec", "auto")
    use_ffmpeg = codec in ("auto", "h264") and ffmpeg is not None
    if codec == "h264" and ffmpeg is None:
        from imgq.errors import MissingExtra

        raise MissingExtra(f"{name}: codec=h264 needs the ffmpeg program (apt-get install ffmpeg)")
    ext = "mp4" if use_ffmpeg else "webm"
    with tempfile.TemporaryDirectory(prefix="imgq-video-") as tmpdir:
        out = Path(tmpdir) / f"out.{ext}"
        if use_ffmpeg:
            count = _pipe_to_ffmpeg(_ffmpeg_raw_input(ffmpeg, w, h, fps) + _audio_of(fd, params) + _x264(params) + ["-movflags", "+faststart", "-f", "mp4", str(out)], frames, name, fd)
            encoder = "ffmpeg libx264" + ("/aac" if _has_audio(fd) else "") + " mp4"
        else:
            fourcc = "VP90" if codec == "vp9" else "VP80"
            count = _write_opencv(frames, w, h, fps, out, fourcc, name)
            encoder = f"opencv {fourcc[:2].lower()}{fourcc[2]} webm"
        return _keep(out, count, w, h, fps, encoder, ext, dest_for(ext), name)


def _keep(out, frames: int, w: int, h: int, fps: float, encoder: str, ext: str, dest, name: str) -> VideoSaved:
    """Verify the encoded file ``out`` and copy it, hashed, atomically to ``dest``."""
    import hashlib
    from pathlib import Path

    from imgq.store import write_atomically

    _check_written(out, frames, name)
    digest = hashlib.sha256()

    def copy(f) -> None:
        with open(out, "rb") as src:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                f.write(chunk)

    write_atomically(Path(dest), copy)
    return VideoSaved(digest.hexdigest(), Path(out).stat().st_size, w, h, frames, round(frames / fps, 3) if fps else 0.0, encoder, ext)


def _ffmpeg_raw_input(ffmpeg: str, w: int, h: int, fps: float) -> list[str]:
    return [ffmpeg, "-v", "error", "-nostdin", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{w}x{h}", "-r", f"{fps:.6g}", "-i", "pipe:0"]


def _audio_of(fd: int, params: dict) -> list[str]:
    """ffmpeg arguments adding the original's audio (if any) over the time range."""
    cut = ["-ss", f"{params['start']:g}"] + (["-to", f"{params['end']:g}"] if params["end"] > 0 else [])
    return [*cut, "-i", f"/dev/fd/{fd}", "-map", "0:v", "-map", "1:a?", "-c:a", "aac", "-b:a", "128k"]


def _x264(params: dict) -> list[str]:
    out = ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-profile:v", "high"]
    return out + (["-b:v", f"{params['kbps']}k"] if params["kbps"] else ["-crf", str(params["crf"])])


def _pipe_to_ffmpeg(cmd: list[str], frames, name: str, fd: int | None = None) -> int:
    """Run ``cmd`` feeding it ``frames`` as raw video on stdin; the frames written."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(fd,) if fd is not None else ())
    count = 0
    try:
        for frame in frames:
            proc.stdin.write(frame.tobytes())
            count += 1
        proc.stdin.close()
    except BrokenPipeError:
        pass
    err = proc.stderr.read().decode(errors="replace")
    if proc.wait() != 0 or count == 0:
        raise BadVideo(f"cannot make a video of {name}: ffmpeg failed ({err.strip()[-300:] or 'no frames'})")
    return count


def _write_opencv(frames, w: int, h: int, fps: float, out, fourcc: str, name: str) -> int:
    cv2 = _cv2()
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    if not writer.isOpened():
        raise BadVideo(f"cannot make a video of {name}: OpenCV cannot write {fourcc} here")
    count = 0
    try:
        for frame in frames:
            writer.write(frame)
            count += 1
    finally:
        writer.release()
    if count == 0:
        raise BadVideo(f"cannot make a video of {name}: no frame in the range asked for")
    return count


# ---------------------------------------------------------------- chunks of a long video


def encode_chunk(fd: int, name: str, chain_text: str, index: int, count: int, dest, *, ffmpeg: str | None = "ffmpeg") -> dict:
    """Chunk ``index`` of ``count`` of a video chain: that share of the source frames
    (split on frame boundaries, chosen by the same rule as one pass: ``_frames``) encoded
    as a part at ``dest``: H.264 MP4 without audio through the ffmpeg program (the join
    copies it), else MJPG AVI through OpenCV (the join encodes it). A chunk whose frames
    the frame-rate cap all drops is an empty part. Returns its frames and encoder."""
    import tempfile
    from pathlib import Path

    from imgq.store import write_atomically

    params, steps = video_params(chain_text)
    frames, w, h, fps = _frames(fd, name, params, steps, chunk=(index, count))
    program = shutil.which(ffmpeg) if ffmpeg else None
    use_ffmpeg = params.get("codec", "auto") in ("auto", "h264") and program is not None
    with tempfile.TemporaryDirectory(prefix="imgq-chunk-") as tmpdir:
        out = Path(tmpdir) / ("part.mp4" if use_ffmpeg else "part.avi")
        try:
            if use_ffmpeg:
                n = _pipe_to_ffmpeg(_ffmpeg_raw_input(program, w, h, fps) + _x264(params) + ["-an", "-f", "mp4", str(out)], frames, name)
            else:
                n = _write_opencv(frames, w, h, fps, out, "MJPG", name)
        except BadVideo:
            if out.exists() and out.stat().st_size:
                raise
            out.write_bytes(b"")
            n = 0
        if n:
            _check_written(out, n, name)

        def copy(f) -> None:
            with open(out, "rb") as src:
                while chunk := src.read(1 << 20):
                    f.write(chunk)

        write_atomically(Path(dest), copy)
    return {"chunk": [index, count], "frames": n, "encoder": "ffmpeg libx264 mp4" if use_ffmpeg else "opencv mjpg avi"}


def join_chunks(fd: int, name: str, chain_text: str, parts: list, dest_for, *, ffmpeg: str | None = "ffmpeg") -> VideoSaved:
    """The video artifact of ``chain_text`` from the parts ``encode_chunk`` wrote, in
    order: H.264 parts are joined by stream copy (no second encode) with the original's
    audio over the whole range; otherwise every part's frames are encoded once more as
    ``encode_video`` would. The frames are exactly those of one pass."""
    import tempfile
    from pathlib import Path

    from imgq.errors import StorageError

    params, steps = video_params(chain_text)
    program = shutil.which(ffmpeg) if ffmpeg else None
    parts = [Path(os.path.abspath(p)) for p in parts]  # the concat list resolves names from its own folder
    for p in parts:
        if not p.is_file():
            raise StorageError(f"chunk {p} of {name} is missing; its chunk job will run again")
    parts = [p for p in parts if p.stat().st_size]
    if not parts:
        raise BadVideo(f"cannot make a video of {name}: no frame in the range asked for")
    kinds = set()
    for p in parts:
        with open(p, "rb") as f:
            kinds.add(sniff_video(f.read(64)))
    cv2 = _cv2()
    counts, size, fps = [], None, None
    for p in parts:
        cap = cv2.VideoCapture(str(p), cv2.CAP_FFMPEG)
        counts.append(int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))
        size = size or (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        fps = fps or float(cap.get(cv2.CAP_PROP_FPS))
        cap.release()
    w, h = size
    fps = _output_fps(fd, params)  # exactly as one pass computes it
    if kinds == {"MP4"} and program is not None and params.get("codec", "auto") in ("auto", "h264"):
        with tempfile.TemporaryDirectory(prefix="imgq-join-") as tmpdir:
            listing = Path(tmpdir) / "parts.txt"
            # each part's duration from its frames: the container's is rounded to the
            # millisecond, and the join would drift by that much at every boundary
            listing.write_text("".join(
                "file '" + str(p).replace("'", "'\\''") + f"'\nduration {n / fps:.6f}\n" for p, n in zip(parts, counts)
            ))
            out = Path(tmpdir) / "out.mp4"
            cmd = [program, "-v", "error", "-nostdin", "-y", "-f", "concat", "-safe", "0", "-i", str(listing), *_audio_of(fd, params)]
            cmd += ["-c:v", "copy", "-movflags", "+faststart", "-f", "mp4", str(out)]
            r = subprocess.run(cmd, capture_output=True, pass_fds=(fd,), check=False)
            if r.returncode != 0:
                raise BadVideo(f"cannot join the chunks of {name}: ffmpeg failed ({r.stderr.decode(errors='replace').strip()[-300:]})")
            encoder = "ffmpeg libx264" + ("/aac" if _has_audio(fd) else "") + " mp4, joined from chunks"
            return _keep(out, sum(counts), w, h, fps, encoder, "mp4", dest_for("mp4"), name)

    def frames():
        for p in parts:
            cap = cv2.VideoCapture(str(p), cv2.CAP_FFMPEG)
            try:
                while True:
                    ok, frame = cap.read()
                    if not ok:
                        break
                    yield frame
            finally:
                cap.release()

    return _finish(fd, name, params, frames(), w, h, fps, dest_for, program)


def _output_fps(fd: int, params: dict) -> float:
    cv2 = _cv2()
    cap = cv2.VideoCapture(fd_path(fd), cv2.CAP_FFMPEG)
    try:
        src_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0) or 25.0
    finally:
        cap.release()
    return min(src_fps, params["fps"]) if params["fps"] > 0 else src_fps


def _keeps(src_fps: float, out_fps: float):
    """Whether frame ``j`` (counted from the start of the time range) is kept when
    ``src_fps`` is thinned to ``out_fps``: the frames where the output clock ticks. A rule
    on ``j`` alone, so chunks decide their frames exactly as one pass would."""
    from fractions import Fraction

    r = Fraction(out_fps).limit_denominator(1001) / Fraction(src_fps).limit_denominator(1001)
    if r >= 1:
        return lambda j: True
    return lambda j: j == 0 or (j * r).__floor__() > ((j - 1) * r).__floor__()


def _frames(fd: int, name: str, params: dict, steps: tuple, chunk: tuple[int, int] | None = None):
    """(frame iterator of upright BGR arrays, output width, height, output fps).

    ``chunk`` (index, count): only that share of the time range's source frames, split on
    frame boundaries (the last chunk reads to the end, whatever the header's count)."""
    import numpy as np
    from PIL import Image

    from imgq.ops import fit_size, run_steps

    cv2 = _cv2()
    cap = cv2.VideoCapture(fd_path(fd), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        raise BadVideo(f"corrupt video: {name} (cannot be opened as a video)")
    src_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0) or 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    out_fps = min(src_fps, params["fps"]) if params["fps"] > 0 else src_fps
    keep = _keeps(src_fps, out_fps)
    first = int(round(params["start"] * src_fps))
    last = int(round(params["end"] * src_fps)) if params["end"] > 0 else None  # exclusive; None: to the end
    begin, stop = first, last
    if chunk is not None:
        index, count = chunk
        span = (last if last is not None else total) - first
        begin = first + span * index // count
        if index < count - 1:
            stop = first + span * (index + 1) // count
    fw, fh = fit_size((w, h), params["size"])
    fw, fh = max(2, fw - fw % 2), max(2, fh - fh % 2)

    def frames():
        try:
            if begin:
                cap.set(cv2.CAP_PROP_POS_FRAMES, begin)
            index = begin
            while stop is None or index < stop:
                ok, frame = cap.read()
                if not ok or frame is None:
                    break
                if keep(index - first):
                    if frame.shape[1] != fw or frame.shape[0] != fh:
                        frame = cv2.resize(frame, (fw, fh), interpolation=cv2.INTER_AREA)
                    if steps:
                        img, _ = run_steps(Image.fromarray(np.ascontiguousarray(frame[..., ::-1]), "RGB"), steps)
                        img = img.convert("RGB")
                        if img.size != (fw, fh):
                            img = img.resize((fw, fh))
                        frame = np.ascontiguousarray(np.asarray(img)[..., ::-1])
                    yield frame
                index += 1
        finally:
            cap.release()

    return frames(), fw, fh, out_fps


def _has_audio(fd: int) -> bool:
    return bool(ffprobe_path()) and any(s.get("codec_type") == "audio" for s in _ffprobe(fd, "").get("streams", []))


def _check_written(path, frames: int, name: str) -> None:
    """The written video opens, holds ``frames`` frames (within one: WebM's count is an
    estimate from its duration) and its last frame decodes."""
    cv2 = _cv2()
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if not cap.isOpened() or abs(n - frames) > 1:
            raise BadVideo(f"the preview of {name} did not verify: {n} frames read back, {frames} written")
    finally:
        cap.release()


def render_stills(fd: int, name: str, chains: dict[str, str], *, max_pixels: int) -> dict:
    """Every still chain of a recipe (thumb, web, ...) run on the video's poster frame
    (``poster_frame``), as ``render`` runs them on a photo: {artifact: Rendered}."""
    import io

    from imgq.imaging.render import render
    from imgq.imaging.source import Source

    buf = io.BytesIO()
    poster_frame(fd, name).save(buf, "BMP")  # lossless and quick; render decodes it once
    return render(Source(buf.getvalue(), name), chains, max_pixels=max_pixels)
