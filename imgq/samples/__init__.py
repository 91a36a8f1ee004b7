"""Sample photos and sample inboxes, generated on the spot (nothing is downloaded).

Used by ``bin/demo``, ``bin/bench`` and the tests. The pictures are built to behave like
real photographs where it matters to imgq: smooth skies and gradients, hard-edged shapes,
and fine plus medium-scale grain, so that JPEG sizes (a 12 MP photo at quality 90 is a few
MB) and decode costs resemble a camera's. Each picture is rendered at 1/16 scale with
numpy, upscaled by Pillow, and textured by adding a tiled grain image in C, so a 20 MP
photo takes a fraction of a second, mostly JPEG encoding.

Every picture carries an "up" marker: in its upright form the top band is near-white and
the bottom band near-black (see ``is_upright``). ``make_photo(..., orientation=6)`` stores
the pixels rotated the way a camera held sideways does, so only a reader that applies the
EXIF orientation sees the bright band on top.

Run ``python -m imgq.samples DIR --count N --size WxH`` to generate an inbox.

Lives here: the scenes and the "up" marker (``scene``), camera JPEGs with EXIF and the
shared writers (``photo``), the other formats and modes (``formats``), broken files and
decompression bombs (``broken``), video clips (``video``: OpenCV, and the ffmpeg program
for audio, rotation and creation time), whole inboxes (``inbox``) and the command line
(``command``, run by ``__main__``). This is tooling for bin/demo, bin/bench and the tests:
it imports numpy and Pillow, nothing else of imgq, and nothing in imgq imports it.
"""

from __future__ import annotations

from imgq.samples.broken import (
    make_decompression_bomb,
    make_random_png,
    make_text_as_jpg,
    make_truncated_jpeg,
    make_zero_byte,
)
from imgq.samples.command import main
from imgq.samples.formats import (
    make_bmp,
    make_cmyk_jpeg,
    make_gif,
    make_grayscale_jpeg,
    make_palette_png,
    make_png,
    make_png16,
    make_rgba_png,
    make_tiff,
    make_webp,
)
from imgq.samples.inbox import HOSTILE_NAMES, HOSTILE_OWNER, InboxSample, make_inbox
from imgq.samples.photo import make_photo
from imgq.samples.scene import BOTTOM_BAND, BOTTOM_COLOUR, TOP_BAND, TOP_COLOUR, is_upright, render

__all__ = [
    "render", "is_upright", "make_photo", "make_png", "make_png16",
    "make_grayscale_jpeg", "make_palette_png", "make_rgba_png", "make_tiff",
    "make_webp", "make_bmp", "make_gif", "make_cmyk_jpeg", "make_truncated_jpeg",
    "make_zero_byte", "make_text_as_jpg", "make_random_png", "make_decompression_bomb",
    "make_inbox", "InboxSample", "HOSTILE_NAMES", "HOSTILE_OWNER",
]
