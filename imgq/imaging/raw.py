"""Camera RAW originals (the raw extra, rawpy/LibRaw): opening under the pixel limit,
the embedded preview when it is large enough, demosaicing otherwise."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from PIL import Image

from imgq.errors import BadImage, MissingExtra, StorageError
from imgq.imaging.formats import _too_large
from imgq.imaging.metadata import _raw_meta
from imgq.imaging.pixels import DRAFT_MARGIN, _Decoded, _largest_output, working_image
from imgq.imaging.source import Source


def _rawpy(path: Path | Source):
    try:
        import rawpy
    except ImportError:
        raise MissingExtra(f"{path} is a camera RAW file: reading it needs rawpy: pip install 'imgq[raw]'") from None
    return rawpy


@contextlib.contextmanager
def _raw_opened(path: Path | Source, max_pixels: int):
    """rawpy's reader on ``path`` (metadata parsed, nothing decoded), pixel limit checked."""
    rawpy = _rawpy(path)
    try:
        raw = rawpy.imread(path.open() if isinstance(path, Source) else str(path))
    except rawpy.LibRawIOError as e:
        raise StorageError(f"cannot read {path}: {e}") from None
    except (rawpy.LibRawError, ValueError) as e:
        raise BadImage(f"corrupt RAW: {path} ({e})") from None
    with raw:
        w, h = raw.sizes.width, raw.sizes.height
        if w < 1 or h < 1:
            raise BadImage(f"corrupt RAW: {path} (declares {w}x{h} pixels)")
        if w * h > max_pixels:
            raise _too_large(path, (w, h), max_pixels)
        try:
            yield raw
        except rawpy.LibRawIOError as e:
            raise StorageError(f"cannot read {path}: {e}") from None
        except rawpy.LibRawError as e:
            raise BadImage(f"corrupt RAW: {path} ({e})") from None


def _raw_preview(raw, path: Path | Source, need: tuple[int, int], stored: tuple[int, int]) -> Image.Image | None:
    """The embedded preview when it shows the whole frame at least ``need`` large."""
    rawpy = _rawpy(path)
    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawError, ValueError):
        return None  # no preview, or one LibRaw cannot unpack: demosaic instead
    if thumb.format == rawpy.ThumbFormat.JPEG:
        try:
            im = Image.open(io.BytesIO(thumb.data), formats=["JPEG"])
            im.draft("RGB", (round(need[0] * DRAFT_MARGIN), round(need[1] * DRAFT_MARGIN)))
            im.load()
        except Exception:
            return None
    else:
        im = Image.fromarray(thumb.data)
    w, h = stored
    # a preview of another aspect is cropped or letterboxed: it would not match the RAW
    if im.width < need[0] or im.height < need[1] or abs(im.width * h - im.height * w) > 0.01 * w * im.height:
        return None
    return im


def _raw_decode(path: Path | Source, boxes: list[tuple[int, int] | None], max_pixels: int) -> _Decoded:
    with _raw_opened(path, max_pixels) as raw:
        s = raw.sizes
        meta = _raw_meta(path, s.flip)
        swap = meta["orientation"] >= 5
        upright = (s.height, s.width) if swap else (s.width, s.height)
        need = _largest_output(upright, boxes)
        if need is not None:
            preview = _raw_preview(raw, path, (need[1], need[0]) if swap else need, (s.width, s.height))
            if preview is not None:
                base, _ = working_image(preview, None)
                return _Decoded(base, None, meta, upright)
        # LibRaw applies the flip itself when demosaicing: the result is already upright
        rgb = raw.postprocess(use_camera_wb=True, output_bps=8)
    meta["orientation"] = 1
    return _Decoded(Image.fromarray(rgb), None, meta, (rgb.shape[1], rgb.shape[0]))
