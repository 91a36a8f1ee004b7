"""Camera-like JPEGs with real EXIF (``make_photo``), and the writing helpers every
maker here shares: atomic saves and hand-built PNG chunks.

``make_photo(..., orientation=6)`` stores the pixels rotated the way a camera held
sideways does, so only a reader that applies the EXIF orientation sees the picture upright.
"""

from __future__ import annotations

import struct
import zlib
from datetime import datetime
from pathlib import Path

from PIL import Image

from imgq.store import write_atomically

from imgq.samples.scene import render

# Where Pillow's exif_transpose sends each orientation, and its inverse: what a camera
# stores so that applying the orientation gives the upright picture back.
_STORE_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}

# EXIF tags written by make_photo.
_MAKE, _MODEL, _ORIENTATION, _DATETIME, _SOFTWARE = 0x010F, 0x0110, 0x0112, 0x0132, 0x0131
_EXIF_IFD = 0x8769
_DATETIME_ORIGINAL, _DATETIME_DIGITIZED, _OFFSET_TIME_ORIGINAL = 0x9003, 0x9004, 0x9011


def _exif_bytes(*, taken, make, model, orientation) -> bytes:
    exif = Image.Exif()
    if make is not None:
        exif[_MAKE] = make
    if model is not None:
        exif[_MODEL] = model
    if orientation is not None:
        exif[_ORIENTATION] = int(orientation)
    exif[_SOFTWARE] = "imgq.samples"
    if taken is not None:
        stamp = taken.strftime("%Y:%m:%d %H:%M:%S")
        exif[_DATETIME] = stamp
        ifd = exif.get_ifd(_EXIF_IFD)
        ifd[_DATETIME_ORIGINAL] = stamp
        ifd[_DATETIME_DIGITIZED] = stamp
        offset = taken.utcoffset()
        if offset is not None:
            minutes = int(offset.total_seconds()) // 60
            sign = "+" if minutes >= 0 else "-"
            ifd[_OFFSET_TIME_ORIGINAL] = f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    return exif.tobytes()


def _srgb_icc() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _write_atomically(path: Path, data: bytes) -> None:
    # no fsync: samples are made by the thousand and a crash only means making them again
    write_atomically(path, lambda f: f.write(data), sync=False, mode=0o666)


def _save(img: Image.Image, path: Path, fmt: str, **params) -> Path:
    path = Path(path)
    write_atomically(path, lambda f: img.save(f, fmt, **params), sync=False, mode=0o666)
    return path


def make_photo(
    path,
    *,
    width: int = 1600,
    height: int = 1200,
    seed: int = 0,
    taken: datetime | None = None,
    make: str | None = "imgqCam",
    model: str | None = "Field 1",
    orientation: int | None = 1,
    quality: int = 90,
    progressive: bool = False,
    icc: bool = False,
) -> Path:
    """Write a camera-like JPEG to ``path`` and return the path.

    ``width`` x ``height`` are the stored pixel dimensions, as a camera's sensor gives them;
    with orientation 5-8 the upright picture is ``height`` x ``width``. The pixels are stored
    so that applying ``orientation`` shows the picture upright (see ``is_upright``).

    EXIF: Make, Model, Orientation (each omitted when None), and, when ``taken`` is given,
    DateTime plus DateTimeOriginal/DateTimeDigitized in the Exif IFD (and OffsetTimeOriginal
    if ``taken`` is timezone-aware). With ``taken=None`` the photo has no capture date.
    ``icc`` embeds an sRGB profile.
    """
    rotated = orientation in (5, 6, 7, 8)
    upright = render(height if rotated else width, width if rotated else height, seed)
    stored = upright.transpose(_STORE_TRANSPOSE[orientation]) if orientation in _STORE_TRANSPOSE else upright
    params = dict(
        quality=quality,
        progressive=progressive,
        exif=_exif_bytes(taken=taken, make=make, model=model, orientation=orientation),
    )
    if icc:
        params["icc_profile"] = _srgb_icc()
    return _save(stored, Path(path), "JPEG", **params)


def _png_bytes(chunks) -> bytes:
    out = [b"\x89PNG\r\n\x1a\n"]
    for kind, body in chunks:
        out.append(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body)))
    return b"".join(out)
