"""Pictures in the other formats and modes a photo inbox meets: PNG (8 and 16 bit,
palette, alpha), grayscale and CMYK JPEG, TIFF, WebP, BMP and GIF."""

from __future__ import annotations

import struct
import zlib
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image

from imgq.samples.photo import _exif_bytes, _png_bytes, _save, _write_atomically
from imgq.samples.scene import render


def make_png(path, *, width: int = 640, height: int = 480, seed: int = 0, mode: str = "RGB") -> Path:
    """A PNG of a sample picture converted to ``mode`` (RGB, L, LA, P, RGBA, 1, I;16...)."""
    img = render(width, height, seed)
    if mode == "RGBA":
        img = _with_alpha(img)
    elif mode == "P":
        img = img.quantize(colors=64)
    elif mode == "I;16":
        a = np.asarray(img.convert("L"), dtype=np.uint16) * 257
        img = Image.fromarray(a)
    elif mode != "RGB":
        img = img.convert(mode)
    return _save(img, Path(path), "PNG")


def _with_alpha(img: Image.Image) -> Image.Image:
    """Add an alpha channel: opaque in the middle, fading out toward the left and right."""
    w, h = img.size
    ramp = np.minimum(np.linspace(0, 2, w), np.linspace(2, 0, w)).clip(0, 1)
    alpha = np.broadcast_to((ramp * 255).astype(np.uint8)[None, :], (h, w))
    out = img.convert("RGBA")
    out.putalpha(Image.fromarray(np.ascontiguousarray(alpha), "L"))
    return out


def make_png16(path, *, width: int = 640, height: int = 480, seed: int = 0, color: bool = True) -> Path:
    """A 16-bit-per-channel PNG (RGB, or grayscale with ``color=False``), as scanners and
    raw converters write. Written by hand: Pillow cannot save 16-bit RGB PNGs."""
    img = render(width, height, seed)
    a = np.asarray(img if color else img.convert("L"), dtype=np.uint16)
    # Spread 8 bits over 16 and add low-order detail so the extra bits are not all zero.
    rng = np.random.default_rng(seed + 16)
    a16 = (a * 257 + rng.integers(0, 256, a.shape, dtype=np.uint16) - 128).clip(0, 65535)
    rows = a16.astype(">u2").reshape(height, -1).tobytes()
    stride = len(rows) // height
    raw = b"".join(b"\x00" + rows[i * stride:(i + 1) * stride] for i in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2 if color else 0, 0, 0, 0)
    data = _png_bytes([(b"IHDR", ihdr), (b"IDAT", zlib.compress(raw, 6)), (b"IEND", b"")])
    path = Path(path)
    _write_atomically(path, data)
    return path


def make_grayscale_jpeg(path, *, width: int = 640, height: int = 480, seed: int = 0,
                        taken: datetime | None = None) -> Path:
    """A single-channel (L) JPEG, as black-and-white camera modes write."""
    img = render(width, height, seed).convert("L")
    exif = _exif_bytes(taken=taken, make="imgqCam", model="Mono", orientation=1)
    return _save(img, Path(path), "JPEG", quality=90, exif=exif)


def make_palette_png(path, **kwargs) -> Path:
    """A palette (P mode) PNG of 64 colours."""
    return make_png(path, mode="P", **kwargs)


def make_rgba_png(path, **kwargs) -> Path:
    """An RGBA PNG whose left and right edges are transparent."""
    return make_png(path, mode="RGBA", **kwargs)


def make_tiff(path, *, width: int = 640, height: int = 480, seed: int = 0, compression: str | None = "tiff_lzw") -> Path:
    """An RGB TIFF (LZW-compressed by default; ``compression=None`` for raw strips)."""
    params = {"compression": compression} if compression else {}
    return _save(render(width, height, seed), Path(path), "TIFF", **params)


def make_webp(path, *, width: int = 640, height: int = 480, seed: int = 0, lossless: bool = False) -> Path:
    """A WebP picture."""
    return _save(render(width, height, seed), Path(path), "WEBP", quality=85, lossless=lossless)


def make_bmp(path, *, width: int = 640, height: int = 480, seed: int = 0) -> Path:
    """A 24-bit BMP."""
    return _save(render(width, height, seed), Path(path), "BMP")


def make_gif(path, *, width: int = 320, height: int = 240, seed: int = 0, frames: int = 1) -> Path:
    """A GIF; with ``frames`` > 1 an animation whose frames differ (the first is the picture)."""
    pictures = [render(width, height, seed + i).quantize(colors=128) for i in range(max(1, frames))]
    params = {"save_all": True, "append_images": pictures[1:], "duration": 200, "loop": 0} if frames > 1 else {}
    return _save(pictures[0], Path(path), "GIF", **params)


def make_cmyk_jpeg(path, *, width: int = 640, height: int = 480, seed: int = 0) -> Path:
    """A CMYK JPEG, as print workflows produce (Pillow writes Adobe-style inverted CMYK)."""
    return _save(render(width, height, seed).convert("CMYK"), Path(path), "JPEG", quality=90)
