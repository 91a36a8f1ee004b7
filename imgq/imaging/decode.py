"""Reading an original: ``probe`` (its header only) and one decode of its pixels, no
larger than the outputs need (JPEG DCT scaling, a RAW file's preview)."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from imgq.imaging.formats import _decode_error, _format_of, _opened, _too_large
from imgq.imaging.metadata import Probe, _exif_of, _metadata, _raw_meta
from imgq.imaging.pixels import DRAFT_MARGIN, _Decoded, _largest_output, working_image
from imgq.imaging.raw import _raw_decode, _raw_opened
from imgq.imaging.source import Source, as_source


def probe(path: str | os.PathLike | Source, *, max_pixels: int) -> Probe:
    """Format, stored size, orientation and capture metadata of an original.

    Reads only the header (no pixel decoding). Raises BadImage ("empty file", "not an
    image", "cannot identify image", ...) or TooLarge ("decompression bomb: ...") naming
    the file; StorageError if the file cannot be read. Broken EXIF is ignored.
    """
    path = as_source(path)
    fmt = _format_of(path)
    if fmt == "RAW":
        return _raw_probe(path, max_pixels)
    with _opened(path, max_pixels, fmt) as (im, fmt):
        meta = _metadata(_exif_of(im, fmt))
        return Probe(
            format=fmt,
            width=im.width,
            height=im.height,
            mode=im.mode,
            has_icc=bool(im.info.get("icc_profile")),
            progressive=bool(im.info.get("progressive") or im.info.get("progression")),
            **meta,
        )


def _raw_probe(path: Path | Source, max_pixels: int) -> Probe:
    with _raw_opened(path, max_pixels) as raw:
        s = raw.sizes
        meta = _raw_meta(path, s.flip)
    return Probe(format="RAW", width=s.width, height=s.height, mode="RGB", **meta)


def decode_original(path: Path | Source, boxes: list[tuple[int, int] | None], max_pixels: int) -> _Decoded:
    """Decode the original once, no larger than the outputs need (JPEG DCT scaling)."""
    fmt = _format_of(path)
    if fmt == "RAW":
        return _raw_decode(path, boxes, max_pixels)
    with _opened(path, max_pixels, fmt) as (im, fmt):
        meta = _metadata(_exif_of(im, fmt))
        swap = meta["orientation"] >= 5
        upright = (im.height, im.width) if swap else im.size
        need = _largest_output(upright, boxes)
        if fmt == "JPEG" and need is not None:
            need = (need[1], need[0]) if swap else need
            # draft() picks the smallest DCT scale (1/2, 1/4, 1/8) still >= the request
            im.draft(im.mode, (round(need[0] * DRAFT_MARGIN), round(need[1] * DRAFT_MARGIN)))
        try:
            im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _too_large(path, im.size, max_pixels) from None
        except Exception as e:
            raise _decode_error(path, fmt, e) from None
        base, icc = working_image(im, im.info.get("icc_profile"))
        return _Decoded(base, icc, meta, upright)
