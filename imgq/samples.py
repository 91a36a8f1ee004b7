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
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import io
import json
import os
import struct
import sys
import time
import zlib
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from imgq.store import write_atomically

__all__ = [
    "render",
    "is_upright",
    "make_photo",
    "make_png",
    "make_png16",
    "make_grayscale_jpeg",
    "make_palette_png",
    "make_rgba_png",
    "make_tiff",
    "make_webp",
    "make_bmp",
    "make_gif",
    "make_cmyk_jpeg",
    "make_truncated_jpeg",
    "make_zero_byte",
    "make_text_as_jpg",
    "make_random_png",
    "make_decompression_bomb",
    "make_inbox",
    "InboxSample",
    "HOSTILE_NAMES",
    "HOSTILE_OWNER",
]

# The share of the upright picture's height taken by the bright top band and the dark
# bottom band: the "up" marker.
TOP_BAND = 0.08
BOTTOM_BAND = 0.05
TOP_COLOUR = (246, 246, 240)
BOTTOM_COLOUR = (22, 20, 18)

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

# Names that break anything which pastes a file name into a shell or splits on spaces.
HOSTILE_NAMES = (
    "with space.jpg",
    "it's \"quoted\".jpg",
    "$(touch x).jpg",
    "`touch y`.jpg",
    "-leading-dash.jpg",
    "Ängström ✓.jpg",
    "semi;colon && echo.jpg",
    "star*glob?[1].jpg",
)
HOSTILE_OWNER = "Zoë O'Brien & co"


# --------------------------------------------------------------------------- rendering


def _grain_tile(rng: np.random.Generator, size: int = 512) -> np.ndarray:
    """A square RGB tile of zero-centred grain (offset by 128): fine sensor-like noise,
    mostly luminance, plus a medium-scale mottle like foliage or fabric."""
    fine_luma = rng.normal(0.0, 7.0, (size, size, 1))
    fine_chroma = rng.normal(0.0, 2.5, (size, size, 3))
    coarse = rng.normal(0.0, 9.0, (size // 4, size // 4, 1)).astype(np.float32)
    coarse_img = Image.fromarray(np.clip(coarse[:, :, 0] + 128, 0, 255).astype(np.uint8))
    coarse_up = np.asarray(coarse_img.resize((size, size), Image.Resampling.BILINEAR), np.float32) - 128
    grain = fine_luma + fine_chroma + coarse_up[:, :, None]
    return np.clip(grain + 128.0, 0, 255).astype(np.uint8)


def _smooth_scene(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """Sky, horizon, ground and soft blobs at 1/16 scale, upscaled: the low frequencies."""
    lw, lh = max(8, width // 16), max(8, height // 16)
    y = np.linspace(0.0, 1.0, lh, dtype=np.float32)[:, None, None]
    x = np.linspace(0.0, 1.0, lw, dtype=np.float32)[None, :, None]
    horizon = rng.uniform(0.4, 0.6)
    sky_top = rng.uniform([40, 90, 160], [110, 150, 230]).astype(np.float32)
    sky_low = rng.uniform([170, 180, 190], [240, 220, 210]).astype(np.float32)
    ground_near = rng.uniform([30, 50, 20], [90, 110, 60]).astype(np.float32)
    ground_far = rng.uniform([80, 100, 60], [150, 150, 110]).astype(np.float32)
    t_sky = np.clip(y / horizon, 0, 1)
    t_ground = np.clip((y - horizon) / (1 - horizon), 0, 1)
    sky = sky_top * (1 - t_sky) + sky_low * t_sky
    ground = ground_far * (1 - t_ground) + ground_near * t_ground
    scene = np.where(y < horizon, sky, ground) + 0 * x
    # Soft blobs of colour: hills, clouds, out-of-focus things.
    for _ in range(int(rng.integers(4, 9))):
        cx, cy = rng.uniform(0, 1), rng.uniform(0.15, 1.0)
        r = rng.uniform(0.05, 0.3)
        colour = rng.uniform(-60, 60, 3).astype(np.float32)
        weight = np.exp(-(((x - cx) ** 2) + ((y - cy) * height / width) ** 2) / (2 * r * r))
        scene = scene + weight * colour
    small = Image.fromarray(np.clip(scene, 0, 255).astype(np.uint8), "RGB")
    return small.resize((width, height), Image.Resampling.BILINEAR)


def _draw_shapes(img: Image.Image, rng: np.random.Generator) -> None:
    """Hard-edged shapes (buildings, trees, a sun) in the middle of the frame."""
    w, h = img.size
    draw = ImageDraw.Draw(img)
    top, bottom = int(h * (TOP_BAND + 0.04)), int(h * (1 - BOTTOM_BAND - 0.02))
    span = max(1, bottom - top)

    def colour() -> tuple[int, int, int]:
        return tuple(int(c) for c in rng.integers(20, 235, 3))

    # A row of "buildings" standing on the horizon.
    base = top + int(span * rng.uniform(0.45, 0.7))
    x = int(rng.integers(0, max(1, w // 10)))
    while x < w:
        bw = int(w * rng.uniform(0.04, 0.12))
        bh = int(span * rng.uniform(0.1, 0.4))
        draw.rectangle([x, max(top, base - bh), x + bw, base], fill=colour())
        # Windows: small rectangles give the encoder some edges to chew on.
        step = max(4, bw // 5)
        for wx in range(x + step // 2, x + bw - step // 2, step):
            for wy in range(max(top, base - bh) + step // 2, base - step, step * 2):
                draw.rectangle([wx, wy, wx + step // 3, wy + step // 2], fill=colour())
        x += bw + int(w * rng.uniform(0.0, 0.05))
    # Trees and stones in front.
    for _ in range(int(rng.integers(3, 8))):
        cx, cy = int(rng.uniform(0, w)), int(base + rng.uniform(0, 1) * (bottom - base))
        r = int(min(w, h) * rng.uniform(0.03, 0.12))
        draw.ellipse([cx - r, max(top, cy - 2 * r), cx + r, min(bottom, cy)], fill=colour())
    # Mountains behind, as polygons.
    for _ in range(int(rng.integers(1, 3))):
        x0 = rng.uniform(-0.2, 0.8) * w
        peak = (x0 + rng.uniform(0.1, 0.3) * w, top + span * rng.uniform(0.0, 0.3))
        draw.polygon([(x0, base), peak, (x0 + rng.uniform(0.3, 0.6) * w, base)], fill=colour())
    # A sun, below the top band.
    r = int(min(w, h) * 0.04)
    sx, sy = int(rng.uniform(0.1, 0.9) * w), top + r + 1
    draw.ellipse([sx - r, sy - r, sx + r, sy + r], fill=(255, 236, 160))


def render(width: int, height: int, seed: int = 0) -> Image.Image:
    """An upright, photo-like RGB picture of ``width`` x ``height``, the same for the same seed.

    The top ``TOP_BAND`` of the height is near-white and the bottom ``BOTTOM_BAND`` near-black.
    """
    if width < 16 or height < 16:
        raise ValueError(f"sample pictures must be at least 16x16, not {width}x{height}")
    rng = np.random.default_rng(seed)
    img = _smooth_scene(width, height, rng)
    _draw_shapes(img, rng)
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, width, max(1, int(height * TOP_BAND)) - 1], fill=TOP_COLOUR)
    draw.rectangle([0, height - max(1, int(height * BOTTOM_BAND)), width, height], fill=BOTTOM_COLOUR)
    tile = _grain_tile(rng)
    reps = (-(-height // tile.shape[0]), -(-width // tile.shape[1]), 1)
    grain = np.tile(tile, reps)[:height, :width]
    return ImageChops.add(img, Image.fromarray(grain, "RGB"), scale=1.0, offset=-128)


def is_upright(img: Image.Image) -> bool:
    """Whether a picture made here is shown the right way up (bright band on top, dark at
    the bottom), after whatever transposition the caller applied. Works on thumbnails."""
    gray = img.convert("L")
    w, h = gray.size
    top_rows = max(1, int(h * TOP_BAND * 0.6))
    bottom_rows = max(1, int(h * BOTTOM_BAND * 0.6))
    a = np.asarray(gray, dtype=np.float32)
    top, bottom = a[:top_rows].mean(), a[h - bottom_rows:].mean()
    left = a[:, : max(1, w // 20)].mean()
    right = a[:, w - max(1, w // 20):].mean()
    return top > 190 and bottom < 80 and top > left + 30 and top > right + 30


# --------------------------------------------------------------------------- writers


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


def _png_bytes(chunks) -> bytes:
    out = [b"\x89PNG\r\n\x1a\n"]
    for kind, body in chunks:
        out.append(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body)))
    return b"".join(out)


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


# --------------------------------------------------------------------------- broken inputs


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


# --------------------------------------------------------------------------- inboxes


class InboxSample(dict):
    """What ``make_inbox`` made: a dict, which also stands for the inbox root as a path
    (``str(inbox)``, ``os.fspath(inbox)`` and ``inbox / "alice"`` work).

    Keys:
      root        Path of the inbox root
      owners      photographer folder names, in order
      photos      every decodable photo (including the rotated one, the duplicate copy,
                  the loose one at the root and the hostile-named ones)
      unique      ``photos`` minus the duplicate copy: distinct contents
      by_owner    {owner: [paths]} for photos inside an owner folder (the loose file is not)
      loose       photos directly in the root (no owner folder)
      rotated     the photo stored rotated with EXIF orientation 6, or None
      duplicate   {"original": path, "copy": path} (same bytes, other owner), or None
      broken      files that look like images by their header but do not decode
      hostile     photos with hostile names (empty unless asked for)
      junk        hidden and temporary files a scan must skip (empty unless asked for)
      taken       {path: datetime or None} capture date written into each photo's EXIF
      sha256      {path: hex digest} of every file made
      files       every file made, in creation order
    """

    @property
    def root(self) -> Path:
        return self["root"]

    def __fspath__(self) -> str:
        return str(self["root"])

    def __str__(self) -> str:
        return str(self["root"])

    def __truediv__(self, other) -> Path:
        return self["root"] / other


def _photo_job(args: tuple[str, dict]) -> str:
    path, kwargs = args
    make_photo(path, **kwargs)
    return path


def make_inbox(
    root,
    *,
    photographers=("alice", "bob", "carol"),
    per_owner: int = 4,
    count: int | None = None,
    size=(1600, 1200),
    with_rotated: bool = True,
    with_duplicate: bool = True,
    with_broken: bool = True,
    with_hostile_names: bool = False,
    with_junk: bool = False,
    with_loose: bool = True,
    progressive: bool = False,
    seed: int = 0,
    age: float = 120.0,
    jobs: int = 1,
) -> InboxSample:
    """Generate a sample inbox under ``root`` and describe it (see ``InboxSample``).

    One folder per photographer with ``per_owner`` photos each (or ``count`` photos in all,
    spread evenly); camera-style names repeat across owners (IMG_0001.jpg in each), and the
    first owner's last photo sits in a sub-folder. Extras, each optional: a photo loose at
    the root without a capture date, a portrait stored rotated with EXIF orientation 6, an
    exact duplicate of one photo under another owner and name, a truncated JPEG, hostile
    names (in a folder with a hostile owner name too), hidden/temporary junk files.

    Capture dates are spread over two days from 2024-05-17 08:00. Every file's mtime is set
    ``age`` seconds in the past so a scan's settle check accepts it at once. ``jobs`` > 1
    renders photos in that many processes.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    width, height = size
    owners = list(photographers)
    if not owners:
        raise ValueError("make_inbox needs at least one photographer")
    if count is not None:
        base, extra = divmod(count, len(owners))
        counts = [base + (1 if i < extra else 0) for i in range(len(owners))]
    else:
        counts = [per_owner] * len(owners)

    start = datetime(2024, 5, 17, 8, 0, 0)
    info = InboxSample(
        root=root, owners=owners, photos=[], unique=[], by_owner={o: [] for o in owners},
        loose=[], rotated=None, duplicate=None, broken=[], hostile=[], junk=[], taken={},
        sha256={}, files=[],
    )
    plans: list[tuple[Path, dict, str | None]] = []  # (path, make_photo kwargs, owner)
    n = 0

    def plan(path: Path, owner: str | None, **kwargs) -> Path:
        nonlocal n
        kwargs.setdefault("width", width)
        kwargs.setdefault("height", height)
        kwargs.setdefault("seed", seed * 100_003 + n)
        kwargs.setdefault("taken", start + timedelta(minutes=37 * n) if n % 2 == 0 else start + timedelta(days=1, minutes=23 * n))
        kwargs.setdefault("progressive", progressive)
        kwargs.setdefault("model", f"Field {1 + n % 3}")
        n += 1
        plans.append((path, kwargs, owner))
        return path

    for owner, k in zip(owners, counts):
        for i in range(1, k + 1):
            sub = "day2" if owner == owners[0] and i == k and k > 1 else ""
            plan(root / owner / sub / f"IMG_{i:04d}.jpg", owner)
    if with_loose:
        plan(root / "loose-at-root.jpg", None, taken=None)
    if with_rotated:
        info["rotated"] = plan(root / owners[0] / "portrait_rotated.jpg", owners[0], orientation=6)
    if with_hostile_names:
        for i, name in enumerate(HOSTILE_NAMES):
            where = root / HOSTILE_OWNER if i % 2 else root / owners[-1]
            plan(where / name, HOSTILE_OWNER if i % 2 else owners[-1],
                 width=min(width, 640), height=min(height, 480))

    made = _render_all([(str(p), kw) for p, kw, _ in plans], jobs)
    for (path, kwargs, owner), _ in zip(plans, made):
        info["photos"].append(path)
        info["unique"].append(path)
        info["taken"][path] = kwargs["taken"]
        if owner is None:
            info["loose"].append(path)
        else:
            info["by_owner"].setdefault(owner, []).append(path)
        if path.name in HOSTILE_NAMES and with_hostile_names:
            info["hostile"].append(path)

    if with_duplicate and plans:
        original = plans[0][0]
        other = owners[1] if len(owners) > 1 else owners[0]
        copy = root / other / f"copy of {original.stem}.jpg"
        _write_atomically(copy, original.read_bytes())
        info["duplicate"] = {"original": original, "copy": copy}
        info["photos"].append(copy)
        info["by_owner"][other].append(copy)
        info["taken"][copy] = info["taken"][original]
    if with_broken:
        broken = root / owners[-1] / "IMG_9999_truncated.jpg"
        make_truncated_jpeg(broken, keep=0.4, width=min(width, 800), height=min(height, 600),
                            seed=seed + 999, taken=start)
        info["broken"].append(broken)
    if with_junk:
        for rel, data in (
            (".DS_Store", b"\x00\x00\x00\x01Bud1"),
            (f"{owners[0]}/.hidden.jpg", None),
            (f"{owners[0]}/IMG_0100.jpg.part", None),
            (f"{owners[0]}/~IMG_0101.jpg.tmp", None),
        ):
            p = root / rel
            if data is None:
                make_photo(p, width=64, height=48, seed=seed + 7)
            else:
                _write_atomically(p, data)
            info["junk"].append(p)

    all_files = [p for p, _, _ in plans]
    if info["duplicate"]:
        all_files.append(info["duplicate"]["copy"])
    all_files += info["broken"] + info["junk"]
    past = time.time() - age
    for i, p in enumerate(all_files):
        # Slightly different mtimes, all comfortably older than any settle window.
        os.utime(p, (past - i, past - i))
        info["sha256"][p] = hashlib.sha256(p.read_bytes()).hexdigest()
    info["files"] = all_files
    return info


def _render_all(tasks: list[tuple[str, dict]], jobs: int) -> list[str]:
    if jobs <= 1 or len(tasks) <= 1:
        return [_photo_job(t) for t in tasks]
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(_photo_job, tasks))


# --------------------------------------------------------------------------- command line


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 4000x3000, not {text!r}")
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError("size must be at least 16x16")
    return w, h


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imgq.samples",
        description="Generate a sample inbox of photo-like JPEGs with real EXIF (one folder per photographer).",
    )
    parser.add_argument("dir", type=Path, help="inbox root to create or add to")
    parser.add_argument("--count", type=int, default=None, help="good photos in all, spread over the photographers (default: 4 each)")
    parser.add_argument("--size", type=_size, default=(1600, 1200), help="pixel size WxH of each photo (default 1600x1200; 5472x3648 is 20 MP)")
    parser.add_argument("--owners", default="alice,bob,carol", help="comma-separated photographer names")
    parser.add_argument("--seed", type=int, default=0, help="vary the pictures")
    parser.add_argument("--progressive", action="store_true", help="write progressive JPEGs")
    parser.add_argument("--hostile", action="store_true", help="add hostile file and folder names")
    parser.add_argument("--junk", action="store_true", help="add hidden and temporary files a scan must skip")
    parser.add_argument("--clean", action="store_true", help="only good photos: no rotated, duplicate, broken or loose extras")
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1, help="processes to render with (default: all cores)")
    parser.add_argument("--json", action="store_true", help="print a JSON description of what was made on stdout")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    info = make_inbox(
        args.dir,
        photographers=[o for o in args.owners.split(",") if o],
        count=args.count,
        size=args.size,
        with_rotated=not args.clean,
        with_duplicate=not args.clean,
        with_broken=not args.clean,
        with_loose=not args.clean,
        with_hostile_names=args.hostile,
        with_junk=args.junk,
        progressive=args.progressive,
        seed=args.seed,
        jobs=args.jobs,
    )
    elapsed = time.perf_counter() - t0
    total = sum(p.stat().st_size for p in info["files"])
    print(
        f"imgq.samples: {len(info['files'])} files ({len(info['photos'])} photos, "
        f"{len(info['broken'])} broken) in {info['root']}, {total / 1e6:.1f} MB, {elapsed:.1f} s",
        file=sys.stderr,
    )
    if args.json:
        print(json.dumps(_jsonable(info), ensure_ascii=False, sort_keys=True))
    return 0


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (Path, datetime)):
        return str(value)
    return value


if __name__ == "__main__":
    sys.exit(main())
