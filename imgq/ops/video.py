"""The video operation: a chain that starts with ``video`` (or its alias ``preview``)
makes a video artifact rather than a still.

``video:size=640x480,fps=30,crf=28,kbps=0,start=0,end=0,codec=auto`` fits every frame within
``size`` (aspect kept, never enlarged; even sides, as H.264 and VP8 need), caps the frame
rate at ``fps`` (0 keeps the original's), sets the quality (``crf``, lower is better) or,
when ``kbps`` is not 0, a bitrate, and keeps the time range ``start``..``end`` seconds
(``end`` 0: to the end), and picks the ``codec``: H.264/AAC MP4 through the ffmpeg
program, VP8 or VP9 WebM (no audio) through OpenCV; ``auto`` is H.264 where ffmpeg is
installed, else VP8. Steps after it run on every frame (``video|brightness=1.2``).

As a pure operation on one image (a poster frame) ``video`` is a fit to ``size``: the
video itself is made by imgq.imaging.video, which reads these parameters.
"""

from __future__ import annotations

from PIL import Image

from imgq.ops.registry import Param, format_size, parse_float, parse_int, parse_size, register
from imgq.ops.size import WEB_BOX, fit_image

VIDEO_OPS = ("video", "preview")  # a chain starting with one of these makes a video


def _seconds(v: float) -> str:
    return f"{v:g}"


CODECS = ("auto", "h264", "vp8", "vp9")


def _parse_codec(text: str) -> str:
    if text not in CODECS:
        raise ValueError(f"{text!r} is not one of {', '.join(CODECS)}")
    return text


PARAMS = (
    Param("size", parse_size, WEB_BOX, format_size, "fit every frame within WxH"),
    Param("fps", parse_float(0, 240), 30.0, _seconds, "frame-rate cap; 0 keeps the original's"),
    Param("crf", parse_int(0, 51), 28, str, "quality, 0 (best) to 51; used when kbps is 0"),
    Param("kbps", parse_int(0, 100_000), 0, str, "video bitrate in kbit/s; 0: by crf"),
    Param("start", parse_float(0, 1e7), 0.0, _seconds, "first second kept"),
    Param("end", parse_float(0, 1e7), 0.0, _seconds, "last second kept; 0: to the end"),
    Param("codec", _parse_codec, "auto", str, "auto (h264 with the ffmpeg program, else vp8), h264, vp8 or vp9"),
)
DEFAULTS = {p.name: p.default for p in PARAMS}


@register("video", *PARAMS, fit_box=lambda p: p["size"])
def video(image: Image.Image, size=WEB_BOX, fps=30.0, crf=28, kbps=0, start=0.0, end=0.0, codec="auto") -> Image.Image:
    """A video: every frame fit within size, frame rate capped at fps, quality crf (or
    kbps), the seconds start..end; steps after it run on every frame. On a photo the
    chain is skipped; as a still it is a fit.

    Example chain: ``video:size=1280x720,fps=25,crf=23``
    """
    return fit_image(image, size)


@register("preview", fit_box=lambda p: WEB_BOX, alias_of=("video", dict(DEFAULTS)))
def preview(image: Image.Image) -> Image.Image:
    """A web preview video: within 640x480, at most 30 fps, crf 28 (same as ``video``
    with its defaults). On a photo the chain is skipped.

    Example chain: ``preview``
    """
    return fit_image(image, WEB_BOX)
