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


def poster_samples(frames: int) -> list[int]:
    """The frame indexes the poster is chosen among, in order (repeats possible in a
    clip of few frames): the middles of ``POSTER_SAMPLES`` equal spans."""
    if frames <= 1:
        return [0]
    return [int((i + 0.5) * frames / POSTER_SAMPLES) for i in range(POSTER_SAMPLES)]


def poster_score(frame) -> float | None:
    """How much detail a sampled frame (BGR) has, as the variance of the Laplacian of
    it shrunk to 160 pixels wide; None for a frame that cannot be a poster (near-black
    or near-uniform). The same frame always scores the same, wherever it was decoded."""
    cv2 = _cv2()
    small = cv2.resize(frame, (160, max(1, 160 * frame.shape[0] // frame.shape[1])), interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    if grey.mean() < DARK_MEAN or grey.std() < FLAT_STD:
        return None
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def frame_image(frame):
    """A BGR frame as an RGB PIL image."""
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(frame[..., ::-1]), "RGB")


def poster_frame(fd: int, name: str):
    """The representative frame of the video at ``fd``, upright (rotation applied), as
    an RGB PIL image: among a few frames sampled across it (``poster_samples``), the
    one with most detail (``poster_score``) that is neither near-black nor
    near-uniform; the first frame if none qualifies. Raises BadVideo when no frame
    decodes. Each sample is a seek (a decode from the keyframe before it): where the
    video is decoded whole anyway, ``video_pass`` scores the samples on the way."""
    cv2 = _cv2()
    cap = cv2.VideoCapture(fd_path(fd), cv2.CAP_FFMPEG)
    try:
        frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        best, best_score, first = None, -1.0, None
        for at in poster_samples(frames):
            cap.set(cv2.CAP_PROP_POS_FRAMES, at)
            ok, frame = cap.read()
            if not ok or frame is None:
                continue
            first = frame if first is None else first
            score = poster_score(frame)
            if score is not None and score > best_score:
                best, best_score = frame, score
    finally:
        cap.release()
    chosen = best if best is not None else first
    if chosen is None:
        raise BadVideo(f"corrupt video: {name} (no frame decodes)")
    return frame_image(chosen)


def render_stills(fd: int, name: str, chains: dict[str, str], *, max_pixels: int, poster=None) -> dict:
    """Every still chain of a recipe (thumb, web, ...) run on the video's poster frame
    (``poster``, an RGB PIL image already chosen, else ``poster_frame``), as ``render``
    runs them on a photo: {artifact: Rendered}."""
    import io

    from imgq.imaging.render import render
    from imgq.imaging.source import Source

    buf = io.BytesIO()
    (poster if poster is not None else poster_frame(fd, name)).save(buf, "BMP")  # lossless and quick; render decodes it once
    return render(Source(buf.getvalue(), name), chains, max_pixels=max_pixels)
