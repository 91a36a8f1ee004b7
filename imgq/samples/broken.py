"""Broken inputs: files that look like images (by name or by header) and do not decode,
and decompression bombs whose header declares a huge picture."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from imgq.samples.photo import _png_bytes, _write_atomically, make_photo


def make_truncated_jpeg(path, *, keep: float = 0.5, **photo_kwargs) -> Path:
    """A camera JPEG cut off after ``keep`` of its bytes, as an interrupted copy leaves it.
    Its header (and EXIF) is intact, so it is recognised as a JPEG; decoding it fails."""
    path = Path(path)
    photo_kwargs.setdefault("width", 640)
    photo_kwargs.setdefault("height", 480)
    make_photo(path, **photo_kwargs)
    data = path.read_bytes()
    _write_atomically(path, data[: max(64, int(len(data) * keep))])
    return path


def make_zero_byte(path) -> Path:
    """An empty file (a copy that never started)."""
    path = Path(path)
    _write_atomically(path, b"")
    return path


def make_text_as_jpg(path, text: str = "This is not a photo.\nIt only has a .jpg name.\n") -> Path:
    """A text file with an image's name: content sniffing must say it is not an image."""
    path = Path(path)
    _write_atomically(path, text.encode())
    return path


def make_random_png(path, *, size: int = 4096, seed: int = 0) -> Path:
    """A PNG signature and a valid IHDR chunk followed by random bytes: it looks like a
    PNG to anything that sniffs the header, and fails to decode."""
    rng = np.random.default_rng(seed)
    head = _png_bytes([(b"IHDR", struct.pack(">IIBBBBB", 640, 480, 8, 2, 0, 0, 0))])
    path = Path(path)
    _write_atomically(path, head + rng.integers(0, 256, max(0, size - len(head)), dtype=np.uint8).tobytes())
    return path


def make_decompression_bomb(path, *, width: int = 40000, height: int = 40000, kind: str = "png",
                            complete: bool = False) -> Path:
    """A small file that declares a huge picture (40000x40000 = 1.6 gigapixels by default).

    ``kind="png"``: a 1-bit grayscale PNG of one colour. By default only its first rows of
    pixel data are present (a few KB, made instantly); ``complete=True`` writes all of them
    (about 200 KB, under a second) so that a careless decoder really can expand it to
    ``width`` x ``height`` pixels.
    ``kind="jpeg"``: a small real JPEG whose frame header is patched to declare the huge size
    (about 1 KB; decoding it yields garbage or an error, after allocating the huge buffer).
    Either way the header alone tells a careful reader the size, before any pixel is decoded.
    """
    path = Path(path)
    if kind == "png":
        row = b"\x00" * (1 + (width + 7) // 8)
        rows_per_chunk = max(1, (1 << 20) // len(row))
        chunk = row * rows_per_chunk
        z = zlib.compressobj(9)
        parts, left = [], height if complete else min(height, 64)
        while left > 0:
            n = min(left, rows_per_chunk)
            parts.append(z.compress(chunk if n == rows_per_chunk else row * n))
            left -= n
        parts.append(z.flush() if complete else z.flush(zlib.Z_SYNC_FLUSH))
        ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
        data = _png_bytes([(b"IHDR", ihdr), (b"IDAT", b"".join(parts)), (b"IEND", b"")])
    elif kind == "jpeg":
        if not (0 < width < 65536 and 0 < height < 65536):
            raise ValueError("a JPEG cannot declare more than 65535 pixels a side")
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (120, 130, 140)).save(buf, "JPEG", quality=50)
        data = bytearray(buf.getvalue())
        sof = data.find(b"\xff\xc0")
        if sof < 0:
            raise RuntimeError("baseline JPEG without SOF0 marker")
        data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
        data = bytes(data)
    else:
        raise ValueError(f"unknown bomb kind {kind!r}; use 'png' or 'jpeg'")
    _write_atomically(path, data)
    return path
