"""What an original's header says: EXIF (orientation, capture time, camera), the ICC
profile's colour space, and the minimal EXIF imgq writes into its outputs. Nothing here
decodes pixels."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import warnings
from pathlib import Path

from PIL import Image

from imgq.imaging.formats import _format_of, _opened, _tiff_tags
from imgq.imaging.source import Source

_EXIF_IFD = 0x8769
_TAG_ORIENTATION = 0x0112
_TAG_MAKE = 0x010F
_TAG_MODEL = 0x0110
_TAG_DATETIME = 0x0132
_TAG_DATETIME_ORIGINAL = 0x9003
_TAG_EXPOSURE_TIME = 0x829A
_TAG_FNUMBER = 0x829D
_TAG_ISO = 0x8827
_TAG_FOCAL_LENGTH = 0x920A
_TAG_LENS_MODEL = 0xA434

# LibRaw's flip -> the EXIF orientation meaning the same turn
_FLIP_ORIENTATION = {3: 3, 5: 8, 6: 6}


@dataclasses.dataclass(frozen=True)
class Probe:
    """What the header of an original says. ``width``/``height`` are as stored."""

    format: str
    width: int
    height: int
    mode: str
    orientation: int = 1  # EXIF 1-8; 1 when absent or nonsense
    taken_at: str | None = None  # "YYYY-MM-DDTHH:MM:SS" (DateTimeOriginal, else DateTime)
    make: str | None = None
    model: str | None = None
    lens: str | None = None  # EXIF LensModel
    exposure: str | None = None  # "1/250 s · f/5.6 · ISO 200 · 35 mm", what EXIF tells of it
    has_icc: bool = False
    progressive: bool = False

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def upright_size(self) -> tuple[int, int]:
        """(width, height) once EXIF orientation is applied."""
        return (self.height, self.width) if self.orientation >= 5 else (self.width, self.height)


def _exif_of(im: Image.Image, fmt: str) -> Image.Exif:
    """The EXIF of an opened image without decoding pixels; empty when absent or broken."""
    exif = Image.Exif()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns "Corrupt EXIF data": ignored
            raw = im.info.get("exif")
            if raw:
                exif.load(raw)
            elif fmt in ("TIFF", "JPEG", "WEBP"):
                # PNG's getexif() would decode the whole image to find a late eXIf chunk
                exif = im.getexif()
    except Exception:
        return Image.Exif()  # bad EXIF never fails an image
    return exif


def _text_tag(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        return None
    value = "".join(c for c in value if c.isprintable()).strip()
    return value[:64] or None


def _exif_datetime(value: object) -> str | None:
    """'2021:07:04 12:30:00' (or with dashes) -> '2021-07-04T12:30:00'; None when invalid."""
    text = _text_tag(value)
    if not text or len(text) < 19:
        return None
    text = text[:19].replace("-", ":", 2)
    try:
        return _dt.datetime.strptime(text, "%Y:%m:%d %H:%M:%S").isoformat()
    except ValueError:
        return None  # '0000:00:00 00:00:00' and other placeholders


def _metadata(exif: Image.Exif) -> dict:
    """orientation, taken_at, make, model, lens, exposure from EXIF; every lookup may
    fail harmlessly."""
    out: dict = {"orientation": 1, "taken_at": None, "make": None, "model": None, "lens": None, "exposure": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _read_metadata(exif, out)
    return out


def _read_metadata(exif: Image.Exif, out: dict) -> None:
    try:
        o = exif.get(_TAG_ORIENTATION)
        if isinstance(o, int) and 1 <= o <= 8:
            out["orientation"] = o
        out["make"] = _text_tag(exif.get(_TAG_MAKE))
        out["model"] = _text_tag(exif.get(_TAG_MODEL))
        taken = None
        try:
            ifd = exif.get_ifd(_EXIF_IFD)
            taken = _exif_datetime(ifd.get(_TAG_DATETIME_ORIGINAL))
            out["lens"] = _text_tag(ifd.get(_TAG_LENS_MODEL))
            out["exposure"] = _exposure(ifd)
        except Exception:
            pass
        out["taken_at"] = taken or _exif_datetime(exif.get(_TAG_DATETIME))
    except Exception:
        pass


def _number(value: object) -> float | None:
    try:
        n = float(value[0]) / float(value[1]) if isinstance(value, tuple) and len(value) == 2 else float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return n if 0 < n < 1e6 else None


def _exposure(ifd) -> str | None:
    """Exposure time, aperture, ISO and focal length as one line; None if none is known."""
    parts = []
    t = _number(ifd.get(_TAG_EXPOSURE_TIME))
    if t:
        parts.append(f"1/{round(1 / t)} s" if t < 0.5 else f"{t:g} s")
    f = _number(ifd.get(_TAG_FNUMBER))
    if f:
        parts.append(f"f/{f:.1f}".replace(".0", ""))
    iso = ifd.get(_TAG_ISO)
    iso = iso[0] if isinstance(iso, tuple) and iso else iso
    if isinstance(iso, int) and 0 < iso < 10_000_000:
        parts.append(f"ISO {iso}")
    mm = _number(ifd.get(_TAG_FOCAL_LENGTH))
    if mm:
        parts.append(f"{mm:g} mm")
    return " · ".join(parts) or None


def minimal_exif(taken_at: str | None, make: str | None, model: str | None) -> bytes | None:
    """EXIF bytes holding only DateTimeOriginal, Make and Model; None if all are unknown."""
    if not (taken_at or make or model):
        return None
    exif = Image.Exif()
    if make:
        exif[_TAG_MAKE] = make
    if model:
        exif[_TAG_MODEL] = model
    if taken_at:
        exif.get_ifd(_EXIF_IFD)[_TAG_DATETIME_ORIGINAL] = taken_at.replace("-", ":").replace("T", " ")
    return exif.tobytes()


def _icc_space(icc: bytes | None) -> bytes | None:
    """The data colour space of an ICC profile: b'RGB ', b'GRAY', b'CMYK', ..."""
    return icc[16:20] if icc and len(icc) >= 128 else None


def _raw_meta(path: Path | Source, flip: int) -> dict:
    # TIFF-based RAW (CR2, NEF, ARW, DNG, ...) keeps ordinary EXIF in IFD0; the other
    # containers yield nothing here (rawpy does not expose their capture metadata)
    meta = _metadata(_tiff_tags(path))
    meta["orientation"] = _FLIP_ORIENTATION.get(flip, 1)
    return meta


def header_metadata(path: Path | Source, *, max_pixels: int) -> tuple[bytes | None, dict, tuple[int, int]]:
    """The ICC profile, the EXIF metadata (``_metadata``) and the upright size of an
    original, from its header alone."""
    fmt = _format_of(path)
    with _opened(path, max_pixels, fmt) as (im, fmt):
        icc = im.info.get("icc_profile")
        meta = _metadata(_exif_of(im, fmt))
        size = (im.height, im.width) if meta.get("orientation", 1) >= 5 else im.size
    return icc, meta, size
