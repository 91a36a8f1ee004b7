"""Size operations: ``fit:WxH`` and its named boxes ``thumb`` (120x90) and ``web`` (640x480)."""

from __future__ import annotations

from PIL import Image

from imgq.ops import cv
from imgq.ops.lazy import np
from imgq.ops.registry import Param, format_size, parse_size, register

THUMB_BOX = (120, 90)
WEB_BOX = (640, 480)

# Pillow first shrinks by an integer factor with a box filter while the image is more
# than REDUCING_GAP times the target, then finishes with Lanczos: much faster than a
# full Lanczos from camera size, and indistinguishable at these gaps.
REDUCING_GAP = 3.0


# Shrinking by at least this factor on both sides uses the OpenCV Lanczos: filtered, then
# sampled by cubic interpolation, it stays within 1 dB of Pillow's on photos and at least
# 36 dB from it even on white noise (the worst case: 44 dB at 2x, 30 dB at 1.05x, where
# cubic sampling cannot follow detail at the old pixel pitch). imgq decodes JPEGs at
# least DRAFT_MARGIN (1.5) times as large as the largest output, so its fits shrink by
# 1.5x or more and take the fast path; smaller shrinks are cheap in Pillow anyway.
FAST_SHRINK = 1.5


def fit_size(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """The size of ``size`` scaled to fit within ``box``, aspect kept, never enlarged.

    Sides are rounded half up to the nearest pixel and are at least 1:
    (4000, 3000) in (120, 90) -> (120, 90); (6000, 4000) in (640, 480) -> (640, 427).
    """
    w, h = size
    bw, bh = box
    scale = min(bw / w, bh / h, 1.0)
    if scale >= 1.0:
        return (w, h)
    # the limiting side lands exactly on the box; the other is rounded (and so also fits)
    if bw * h <= bh * w:  # width is the limiting side
        return (bw, max(1, min(bh, _ratio_half_up(h * bw, w))))
    return (max(1, min(bw, _ratio_half_up(w * bh, h))), bh)


def _ratio_half_up(num: int, den: int) -> int:
    # num/den rounded half up in integers: round() rounds halves to even (66.5 -> 66,
    # 67.5 -> 68) and floats can land a hair below .5; sizes must be exact and stable
    return (2 * num + den) // (2 * den)


def resize_to(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` resampled to exactly ``size`` with Lanczos (alpha handled premultiplied).

    Shrinking an 8-bit grey or RGB image (every JPEG) by FAST_SHRINK or more goes through
    OpenCV (``cv.lanczos_shrink``): the same Lanczos-3 filter in vectorised code, about
    2.5 times faster than Pillow's; other modes, smaller shrinks and enlargements go
    through Pillow.
    """
    if image.size == size:
        return image
    if image.mode in ("L", "RGB") and image.width >= FAST_SHRINK * size[0] and image.height >= FAST_SHRINK * size[1]:
        a = cv.lanczos_shrink(np.asarray(image), size)
        return Image.fromarray(a, image.mode)
    if image.mode in ("P", "PA", "1"):
        # Pillow resizes palette and bilevel images with nearest neighbour only
        image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else ("L" if image.mode == "1" else "RGB"))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)


def fit_image(image: Image.Image, box: tuple[int, int]) -> Image.Image:
    return resize_to(image, fit_size(image.size, box))


_SIZE = Param("size", parse_size, None, format_size, "the box WxH to fit within")


@register("fit", _SIZE, fit_box=lambda p: p["size"])
def fit(image: Image.Image, *, size: tuple[int, int]) -> Image.Image:
    """Shrink to fit within WxH, keeping the aspect ratio; never enlarges.

    Example chain: ``fit:1600x1200``
    """
    return fit_image(image, size)


@register("thumb", fit_box=lambda p: THUMB_BOX, alias_of=("fit", {"size": THUMB_BOX}))
def thumb(image: Image.Image) -> Image.Image:
    """A thumbnail: shrink to fit within 120x90 (same as ``fit:120x90``).

    Example chain: ``thumb``
    """
    return fit_image(image, THUMB_BOX)


@register("web", fit_box=lambda p: WEB_BOX, alias_of=("fit", {"size": WEB_BOX}))
def web(image: Image.Image) -> Image.Image:
    """A web version: shrink to fit within 640x480 (same as ``fit:640x480``).

    Example chain: ``web|sharpness=1.3``
    """
    return fit_image(image, WEB_BOX)
