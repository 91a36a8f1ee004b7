"""Filters: ``blur``, ``gaussian``, ``median``, ``bilateral``, ``canny``, ``invert``,
``gray``, ``bw``, ``stretch``, ``equalize``.

Neighbourhood filters extend the image at its edges by reflection (OpenCV's default,
``BORDER_REFLECT_101``; ``median`` replicates the edge), so a stripe cut out with a halo
of ``reach`` rows on each side gives exactly the rows of the whole-image result.
Alpha is filtered along with colour by blur, gaussian and median (edges of a cut-out
soften with it) and kept unchanged by the others, except canny whose output is an
edge map. 16-bit grey stays 16-bit except where said.
"""

from __future__ import annotations

import math

from imgq.ops.lazy import cv2, np

from imgq.ops import cv
from imgq.ops.registry import WHOLE_IMAGE, Param, format_float, parse_float, parse_int, register


def _filtered(a: cv.Arrays, fn, *, alpha_too: bool) -> cv.Arrays:
    alpha = fn(a.alpha) if alpha_too and a.alpha is not None else a.alpha
    return cv.Arrays(fn(a.colour), alpha)


# ---- neighbourhood filters -------------------------------------------------------------

_KSIZE = Param("size", parse_int(1, 255, odd=True), 5, str, "odd kernel size in pixels")


@register("blur", _KSIZE, reach=lambda p: p["size"] // 2)
@cv.image_op
def blur(a: cv.Arrays, *, size: int = 5) -> cv.Arrays:
    """Box blur: each pixel becomes the mean of the size x size square around it.

    Example chain: ``blur:9``
    """
    return _filtered(a, lambda c: cv2.blur(c, (size, size), borderType=cv2.BORDER_REFLECT_101), alpha_too=True)


def gaussian_ksize(sigma: float) -> int:
    """The odd kernel size used for ``sigma``: the Gaussian cut at 3 sigma each side."""
    return 2 * math.ceil(3.0 * sigma) + 1


@register(
    "gaussian",
    Param("sigma", parse_float(0.1, 100.0), 2.0, format_float, "standard deviation in pixels"),
    reach=lambda p: gaussian_ksize(p["sigma"]) // 2,
)
@cv.image_op
def gaussian(a: cv.Arrays, *, sigma: float = 2.0) -> cv.Arrays:
    """Gaussian blur with standard deviation ``sigma`` pixels (kernel cut at 3 sigma).

    Example chain: ``gaussian=2|canny``
    """
    k = gaussian_ksize(sigma)
    return _filtered(
        a, lambda c: cv2.GaussianBlur(c, (k, k), sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101), alpha_too=True
    )


def _median_slow(c: np.ndarray, size: int) -> np.ndarray:
    # OpenCV's median of 16-bit data stops at 5x5; this exact fallback works row band by
    # row band so the size x size window copies stay small
    r = size // 2
    pad = [(r, r), (r, r)] + [(0, 0)] * (c.ndim - 2)
    p = np.pad(c, pad, mode="edge")
    out = np.empty_like(c)
    band = max(1, 4_000_000 // (c.shape[1] * size * size * (c.shape[2] if c.ndim == 3 else 1)))
    for y in range(0, c.shape[0], band):
        win = np.lib.stride_tricks.sliding_window_view(p[y : y + band + 2 * r], (size, size), axis=(0, 1))
        out[y : y + band] = np.median(win, axis=(-2, -1)).astype(c.dtype)
    return out


def _median(c: np.ndarray, size: int) -> np.ndarray:
    if c.dtype == np.uint8 or size <= 5:
        return cv2.medianBlur(c, size)
    return _median_slow(c, size)


@register("median", Param("size", parse_int(3, 255, odd=True), 5, str, "odd window size in pixels"), reach=lambda p: p["size"] // 2)
@cv.image_op
def median(a: cv.Arrays, *, size: int = 5) -> cv.Arrays:
    """Median filter: each pixel becomes the median of the size x size square around it;
    removes speckle while keeping edges. Example chain: ``median:5``
    """
    return _filtered(a, lambda c: _median(c, size), alpha_too=True)


def _bilateral_radius(p: dict) -> int:
    d = p["diameter"]
    return d // 2 if d > 0 else round(p["sigma_space"] * 1.5)


@register(
    "bilateral",
    Param("diameter", parse_int(0, 31), 9, str, "neighbourhood diameter in pixels (0: from sigma_space)"),
    Param("sigma_color", parse_float(0.1, 1000.0), 75.0, format_float, "how different (in 8-bit levels) values may be and still mix"),
    Param("sigma_space", parse_float(0.1, 100.0), 75.0, format_float, "how far (in pixels) values mix"),
    reach=_bilateral_radius,
)
@cv.image_op
def bilateral(a: cv.Arrays, *, diameter: int = 9, sigma_color: float = 75.0, sigma_space: float = 75.0) -> cv.Arrays:
    """Edge-preserving smoothing: neighbours mix only when close in both place and value.

    16-bit input is filtered in floating point with ``sigma_color`` scaled to 16 bits;
    OpenCV then quantises its value table over the image's own range, so for 16-bit
    input a stripe matches the whole image only to within rounding.
    Example chain: ``bilateral:9,50,50``
    """

    def run(c: np.ndarray) -> np.ndarray:
        if c.dtype == np.uint8:
            return cv2.bilateralFilter(c, diameter, sigma_color, sigma_space, borderType=cv2.BORDER_REFLECT_101)
        f = cv2.bilateralFilter(c.astype(np.float32), diameter, sigma_color * 257.0, sigma_space, borderType=cv2.BORDER_REFLECT_101)
        return np.clip(np.rint(f), 0, 65535).astype(np.uint16)

    return _filtered(a, run, alpha_too=False)


@register(
    "canny",
    Param("low", parse_float(0.0, 2000.0), 100.0, format_float, "lower hysteresis threshold (8-bit gradient units)"),
    Param("high", parse_float(0.0, 2000.0), 200.0, format_float, "upper hysteresis threshold"),
    reach=lambda p: WHOLE_IMAGE,
)
@cv.image_op
def canny(a: cv.Arrays, *, low: float = 100.0, high: float = 200.0) -> cv.Arrays:
    """Canny edges of the grey image: an L image of 0 (no edge) and 255 (edge).

    The gradient (3x3 Sobel) and thinning need only 2 pixels around each pixel, but
    hysteresis follows weak edges from strong ones across any distance, so the result
    is not local: splitting an image for canny needs the whole image (its reach), or a
    two-pass scheme that resolves edge chains across stripe borders.
    Example chain: ``gaussian=1.5|canny:50,150``
    """
    grey = cv.to_uint8(cv.luminance(a))
    return cv.Arrays(cv2.Canny(grey, low, high, apertureSize=3, L2gradient=False), None)


# ---- point operations ------------------------------------------------------------------


@register("invert")
@cv.image_op
def invert(a: cv.Arrays) -> cv.Arrays:
    """A negative: each value v becomes max - v (alpha kept). Example chain: ``invert``"""
    return cv.Arrays(a.max_value - a.colour, a.alpha)


@register("gray")
@cv.image_op
def gray(a: cv.Arrays) -> cv.Arrays:
    """Grey with Pillow's ITU-R 601 weights (L, LA with alpha, 16-bit grey unchanged).

    Example chain: ``web|gray``
    """
    return cv.Arrays(cv.luminance(a), a.alpha)


@register("bw", Param("threshold", parse_int(0, 255), 128, str, "grey level (0-255) from which a pixel is white"))
@cv.image_op
def bw(a: cv.Arrays, *, threshold: int = 128) -> cv.Arrays:
    """Black and white: grey values at or above ``threshold`` become white, others black.

    The result is L (or LA with alpha) holding only 0 and 255. Example chain: ``bw:100``
    """
    grey = cv.luminance(a)
    limit = threshold * 257 if grey.dtype == np.uint16 else threshold
    return cv.Arrays(np.where(grey >= limit, 255, 0).astype(np.uint8), a.alpha)


@register(
    "stretch",
    Param("cutoff", parse_float(0.0, 49.0), 0.5, format_float, "percent of darkest and of brightest pixels clipped"),
    reach=lambda p: WHOLE_IMAGE,
)
@cv.image_op
def stretch(a: cv.Arrays, *, cutoff: float = 0.5) -> cv.Arrays:
    """Contrast stretching: the grey levels at the ``cutoff`` and 100 - ``cutoff``
    percentiles become black and white, everything between is spread linearly.

    One gain for all channels, so colours keep their hue. A flat image is unchanged.
    The percentiles are of the whole image, so this is not local.
    Example chain: ``stretch:1``
    """
    lo, hi = np.percentile(cv.luminance(a), [cutoff, 100.0 - cutoff])
    if hi - lo < 1:
        return a
    gain = a.max_value / (hi - lo)
    return cv.Arrays(cv.scale_add(a.colour, gain, -lo * gain), a.alpha)


@register(
    "equalize",
    reach=lambda p: WHOLE_IMAGE,
    note="equalize equalises the histogram; the linear percentile stretch it once was is stretch, e.g. stretch:1",
)
@cv.image_op
def equalize(a: cv.Arrays) -> cv.Arrays:
    """Histogram equalisation: grey levels are remapped through the image's cumulative
    histogram, so each part of the tonal range holds about as many pixels as any other
    (where ``stretch`` only spreads the range linearly, this also spreads crowded tones).

    Colour photos are equalised on their luma (Y of YCrCb), so hues stay; the remapping
    keeps the order of grey levels. A flat image is unchanged. Example chain: ``equalize``
    """
    if a.grey:
        return cv.Arrays(_equalized(a.colour, a.max_value), a.alpha)
    ycc = cv2.cvtColor(a.colour, cv2.COLOR_RGB2YCrCb)
    ycc[..., 0] = _equalized(np.ascontiguousarray(ycc[..., 0]), a.max_value)
    return cv.Arrays(cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB), a.alpha)


def _equalized(grey: np.ndarray, top: int) -> np.ndarray:
    """``grey`` remapped through its cumulative histogram onto 0..top (same dtype)."""
    counts = np.bincount(grey.ravel(), minlength=top + 1)
    cdf = np.cumsum(counts)
    first = cdf[np.flatnonzero(counts)[0]]  # pixels at the darkest level present
    if cdf[-1] == first:
        return grey  # one level only: nothing to spread
    lut = np.clip(np.round((cdf - first) * top / (cdf[-1] - first)), 0, top).astype(grey.dtype)
    return lut[grey]
