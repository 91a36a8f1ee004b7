"""Pixels in memory: the working modes every operation handles, EXIF orientation, and
an original decoded once (``_Decoded``)."""

from __future__ import annotations

import dataclasses
import io

from PIL import Image

from imgq.imaging.metadata import _icc_space
from imgq.ops import fit_size

# Decode JPEGs at the smallest DCT scale giving at least DRAFT_MARGIN times the largest
# output. A DCT-scaled decode is a block average: kept within a few percent of the output
# size (margin 1: 6000x4000 decoded at 1/8, 750x500, for a 640x427 web version) it shows
# as aliasing on text and fine lines, 27-33 dB from an exact Lanczos resize of the full
# decode (tests/test_quality.py); at 1.5 every output is resampled from at least 1.5x
# its size, 38-45 dB on the same pictures and 46-53 dB on ordinary photos. The price,
# on bin/bench's 12-24 MP photos (1/4 scale instead of 1/8 for the larger ones): 4% more
# CPU to decode (44.4 -> 46.3 ms; entropy decoding, most of the work, is the same at
# every scale) and a larger resize, about what the faster resampler saves there.
DRAFT_MARGIN = 1.5

# orientation -> the transpose that makes the stored pixels upright (EXIF 2.3, 4.6.4)
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def working_image(im: Image.Image, icc: bytes | None) -> tuple[Image.Image, bytes | None]:
    """``im`` in a mode every operation and resampler handles, and the profile that fits it.

    Results are L, LA, RGB, RGBA or I;16 (16-bit grey, kept for precision until saved).
    CMYK is converted to sRGB through its ICC profile when it has one.
    """
    mode = im.mode
    if mode in ("L", "LA", "RGB", "RGBA", "I;16"):
        return im, icc
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        return im.convert("RGBA" if has_alpha else "RGB"), icc
    if mode == "1":
        return im.convert("L"), icc
    if mode in ("La", "RGBa"):
        return im.convert(mode.upper()), icc
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _to_uint16(im), icc
    if mode == "CMYK":
        if _icc_space(icc) == b"CMYK":
            try:
                from PIL import ImageCms

                srgb = ImageCms.createProfile("sRGB")
                src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                out = ImageCms.profileToProfile(im, src, srgb, outputMode="RGB")
                return out, ImageCms.ImageCmsProfile(srgb).tobytes()
            except Exception:
                pass  # a broken profile: fall back to the naive conversion below
        return im.convert("RGB"), None
    return im.convert("RGB"), (icc if _icc_space(icc) == b"RGB " else None)


def _to_uint16(im: Image.Image) -> Image.Image:
    import numpy as np

    a = np.asarray(im)
    if a.dtype.kind == "f":
        # float images are taken as 0..1 when they stay in that range, else 0..65535
        a = a * 65535.0 if a.size and float(np.nanmax(a)) <= 1.0 else a
    return Image.fromarray(np.clip(np.nan_to_num(a), 0, 65535).astype(np.uint16))


def to_upright(im: Image.Image, orientation: int) -> Image.Image:
    """``im`` turned as EXIF ``orientation`` (1-8) says, so its pixels stand upright."""
    t = _UPRIGHT.get(orientation)
    return im.transpose(t) if t is not None else im


@dataclasses.dataclass
class _Decoded:
    """An original decoded once: pixels in a working mode, still in stored orientation."""

    image: Image.Image
    icc: bytes | None
    meta: dict  # orientation (to apply), taken_at, make, model
    upright: tuple[int, int]  # the original's full size once upright, which outputs refer to


def _largest_output(upright: tuple[int, int], boxes: list[tuple[int, int] | None]) -> tuple[int, int] | None:
    """The upright size that covers every output, or None if some chain needs full size."""
    if not boxes or not all(boxes):
        return None
    outs = [fit_size(upright, box) for box in boxes]
    return (max(o[0] for o in outs), max(o[1] for o in outs))
