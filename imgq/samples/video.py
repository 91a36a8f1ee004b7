"""Sample videos: clips written by OpenCV (MJPG AVI, mp4v MP4, VP8 WebM), and by the
``ffmpeg`` program when installed (H.264 with AAC audio, rotation, creation time).

Each frame is a picture with detail (a gradient, moving shapes, grain) and a frame
number drawn in; ``black_frames`` makes the first N frames black, as many cameras record
before the exposure settles, so a poster must be chosen rather than taken first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

FOURCC = {".avi": "MJPG", ".mp4": "mp4v", ".mov": "mp4v", ".webm": "VP80", ".mkv": "MJPG"}


def frame(width: int, height: int, n: int, *, seed: int = 0) -> np.ndarray:
    """Frame ``n`` of a sample clip, BGR uint8 (what OpenCV writes)."""
    rng = np.random.default_rng(seed * 100_003 + n)
    y, x = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = (x * 255 // max(1, width - 1) + 3 * n) % 256
    img[..., 1] = (y * 255 // max(1, height - 1)) % 256
    img[..., 2] = ((x + y + 5 * n) % 64) * 4
    # a moving square and grain: motion and detail for codecs and poster choice
    s = max(4, min(width, height) // 4)
    cx = (n * 7) % max(1, width - s)
    img[height // 3 : height // 3 + s, cx : cx + s] = (255 - seed * 40 % 256, 255, 255)
    img = np.clip(img.astype(np.int16) + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
    return img


def make_clip(
    path: str | os.PathLike, *, width: int = 160, height: int = 120, frames: int = 30, fps: float = 25.0,
    fourcc: str | None = None, black_frames: int = 0, seed: int = 0,
) -> Path:
    """Write a clip with OpenCV (codec from the suffix: MJPG .avi/.mkv, mp4v .mp4/.mov,
    VP8 .webm, or ``fourcc``) and return its path. Raises RuntimeError if OpenCV cannot."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    code = fourcc or FOURCC[path.suffix.lower()]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*code), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {code} to {path}")
    try:
        for n in range(frames):
            writer.write(np.zeros((height, width, 3), np.uint8) if n < black_frames else frame(width, height, n, seed=seed))
    finally:
        writer.release()
    return path


def have_ffmpeg() -> bool:
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


def make_clip_ffmpeg(
    path: str | os.PathLike, *, width: int = 160, height: int = 120, seconds: float = 2.0, fps: int = 25,
    audio: bool = True, rotate: int = 0, creation_time: str | None = None,
) -> Path:
    """Write an H.264 clip (AAC audio unless ``audio`` is False) with the ``ffmpeg``
    program: lavfi's testsrc, a sine tone, the rotation a phone held sideways records
    (``rotate`` clockwise degrees) and the container's ``creation_time`` (ISO 8601 UTC)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".unrotated" + path.suffix)
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size={width}x{height}:rate={fps}:duration={seconds}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}", "-c:a", "aac", "-shortest"]
    cmd += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", str(fps)]
    if creation_time:
        cmd += ["-metadata", f"creation_time={creation_time}"]
    subprocess.run([*cmd, str(tmp if rotate else path)], check=True, capture_output=True)
    if rotate:
        # ffmpeg 5 keeps the rotate tag only on a stream copy
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-i", str(tmp), "-c", "copy", "-map_metadata", "0", "-metadata:s:v:0", f"rotate={rotate}", str(path)],
            check=True, capture_output=True,
        )
        tmp.unlink()
    return path
