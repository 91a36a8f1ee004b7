"""Reading and writing image files: the only module that does.

- ``sniff`` names a format from the first bytes of a file;
- ``probe`` reads the header and EXIF of an original without decoding pixels;
- an original is given as a ``Source``: bytes its caller read once through
  ``imgq.original.Original`` and checked against the journal's sha256 (or an open file
  descriptor read with pread), so what is decoded is exactly what was verified and no path
  is ever reopened; a plain path is accepted for imgq's own files (artifacts, tests);
- ``render`` decodes an original once (DCT-scaled for JPEG when every output is much
  smaller), applies EXIF orientation and runs every chain of a recipe on the result;
- ``save`` encodes a rendered artifact as JPEG atomically and verifies it;
- ``verify`` checks that a file on disk decodes fully to the expected size.

Errors are classified here: a bad input is ``BadImage`` or ``TooLarge`` (permanent), a
failing disk is ``StorageError`` (transient).

Pillow keeps its safety switches in module globals (``Image.MAX_IMAGE_PIXELS``,
``ImageFile.LOAD_TRUNCATED_IMAGES``). They are set for the duration of each call and
restored after, so imgq's limit is the one in force; workers are processes, not threads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import errno as _errno
import hashlib
import io
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError

from imgq.errors import BadImage, MissingExtra, NameTooLong, StorageError, TooLarge
from imgq.store import temp_name
from imgq.ops import fit_size, get, parse_chain, run_steps
from imgq.ops.chain import Step
from imgq.ops.size import resize_to

# Decode JPEGs at the smallest DCT scale giving at least DRAFT_MARGIN times the largest
# output. Measured on a 20 MP sample (thumb+web): margin 1 decodes at 1/8 in ~114 ms with
# the web version at 42 dB PSNR against an exact Lanczos resize of the full decode;
# margin 2 decodes at 1/4 in ~162 ms for 52 dB. 42 dB is indistinguishable by eye, so
# speed wins; raise this for archival-quality derivatives.
DRAFT_MARGIN = 1.0
# A smaller fit is derived from an already computed larger one only when that is at
# least this many times bigger on both sides, so resampling twice never shows: thumb
# from web is 54 dB from thumb made directly, and takes 5 ms instead of 33 ms from 20 MP.
DERIVE_RATIO = 2.0

_EXIF_IFD = 0x8769
_TAG_ORIENTATION = 0x0112
_TAG_MAKE = 0x010F
_TAG_MODEL = 0x0110
_TAG_DATETIME = 0x0132
_TAG_DATETIME_ORIGINAL = 0x9003

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

FORMATS = ("JPEG", "PNG", "TIFF", "WEBP", "BMP", "GIF", "HEIF", "AVIF", "RAW")

# ISO base media brands of HEIF stills and sequences (HEVC-coded or generic)
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}

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
    has_icc: bool = False
    progressive: bool = False

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def upright_size(self) -> tuple[int, int]:
        """(width, height) once EXIF orientation is applied."""
        return (self.height, self.width) if self.orientation >= 5 else (self.width, self.height)


@dataclasses.dataclass
class Rendered:
    """One artifact in memory: upright pixels, the colour profile and a minimal EXIF.

    ``exif`` carries only DateTimeOriginal, Make and Model (no Orientation: the pixels
    are already upright). ``source_size`` is the size the original was decoded at,
    smaller than stored when a JPEG was decoded at reduced DCT scale.
    """

    image: Image.Image
    icc: bytes | None = None
    exif: bytes | None = None
    source_size: tuple[int, int] | None = None
    # what operations found, e.g. {"faces": [(x, y, w, h), ...]} in this image's pixels
    facts: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Saved:
    """A verified file written by ``save``."""

    sha256: str
    bytes: int
    width: int
    height: int


# ---- recognising and opening -----------------------------------------------------------


class Source:
    """An original's content for imaging, with the name messages show for it.

    ``Source(data, name)``: bytes already read (and checked) by the caller; every decode
    reads them from memory (a BytesIO shares the buffer, nothing is copied).
    ``Source.from_fd(fd, name)``: an open file descriptor, read with pread from offset 0
    each time (scan: the file is hashed as a stream, then only its header is probed; the
    descriptor's own offset is never moved). Neither reopens a path."""

    __slots__ = ("data", "fd", "name")

    def __init__(self, data: bytes, name: str):
        self.data, self.fd, self.name = data, None, name

    @classmethod
    def from_fd(cls, fd: int, name: str) -> "Source":
        src = cls(b"", name)
        src.fd = fd
        return src

    def open(self) -> io.BufferedIOBase:
        if self.fd is not None:
            return io.BufferedReader(_PreadFile(self.fd), buffer_size=1 << 16)
        return io.BytesIO(self.data)

    def __str__(self) -> str:
        return self.name


class _PreadFile(io.RawIOBase):
    """A read-only, seekable view of an open fd with its own position (pread)."""

    def __init__(self, fd: int):
        self._fd, self._pos = fd, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        data = os.pread(self._fd, len(buf), self._pos)
        buf[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: os.fstat(self._fd).st_size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


def _source(original: "str | os.PathLike | bytes | Source") -> "Path | Source":
    """A Source as given, bytes as a nameless Source, anything else as a Path."""
    if isinstance(original, Source):
        return original
    if isinstance(original, (bytes, bytearray, memoryview)):
        return Source(bytes(original), "<bytes>")
    return Path(original)


def _open_binary(src: "Path | Source"):
    return src.open() if isinstance(src, Source) else open(src, "rb")



def sniff(head: bytes) -> str | None:
    """The image format named by the magic bytes at the start of a file, or None.

    Recognises JPEG, PNG, TIFF (also BigTIFF), WEBP, BMP, GIF, HEIF (HEIC), AVIF and
    camera RAW files with their own signature (Canon CR2/CR3, Fuji RAF, Olympus ORF,
    Panasonic RW2). RAW formats built on plain TIFF (DNG, NEF, ARW, PEF) sniff as TIFF;
    ``probe`` and ``render`` tell them apart from the TIFF tags. ``head`` should be the
    first 32 bytes or more; BMP needs 18 to tell it from text starting with "BM".
    """
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"FUJIFILMCCD-RAW") or head[:4] in (b"IIRO", b"IIRS", b"MMOR", b"IIU\x00"):
        return "RAW"
    if head[:4] == b"II*\x00" and head[8:10] == b"CR":
        return "RAW"  # Canon CR2
    if head[4:8] == b"ftyp":
        brands = {head[i : i + 4] for i in range(8, min(len(head), 64) - 3, 4)}
        if head[8:12] == b"crx ":
            return "RAW"  # Canon CR3
        if head[8:12] in _AVIF_BRANDS or (head[8:12] in (b"mif1", b"msf1") and brands & _AVIF_BRANDS and not brands & {b"heic", b"heix"}):
            return "AVIF"
        if head[8:12] in _HEIF_BRANDS:
            return "HEIF"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    # "BM" alone is too weak; the DIB header size that follows is one of a few values
    if head[:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in (12, 40, 52, 56, 64, 108, 124):
        return "BMP"
    return None


def _storage_error(action: str, path: Path, e: OSError) -> StorageError | NameTooLong:
    code = _errno.errorcode.get(e.errno or 0, "")
    if e.errno == _errno.ENAMETOOLONG:
        return NameTooLong(f"cannot {action} {path}: the name is too long for the file system ({code})")
    return StorageError(f"cannot {action} {path}: {e.strerror or e}" + (f" ({code})" if code else ""))


def _read_head(path: Path | Source) -> bytes:
    try:
        with _open_binary(path) as f:
            return f.read(64)
    except OSError as e:
        raise _storage_error("read", path, e) from None


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.3g} MP" if n >= 100_000 else f"{n} pixels"


def _too_large(path: Path, size: tuple[int, int], max_pixels: int) -> TooLarge:
    w, h = size
    return TooLarge(
        f"decompression bomb: {w}x{h} = {_megapixels(w * h)} exceeds the limit of "
        f"{_megapixels(max_pixels)} (max_pixels): {path}"
    )


def _decode_error(path: Path, fmt: str, e: BaseException) -> BadImage | StorageError:
    """Classify an exception raised while Pillow parsed or decoded ``path``."""
    if isinstance(e, OSError) and e.errno is not None:
        return _storage_error("read", path, e)  # the disk, not the data
    text = str(e)
    if "truncated" in text:
        return BadImage(f"truncated {fmt}: {path} ({text})")
    if isinstance(e, UnidentifiedImageError):
        return BadImage(f"cannot identify image: {path} (damaged {fmt} header)")
    return BadImage(f"corrupt {fmt}: {path} ({type(e).__name__}: {text})")


@contextlib.contextmanager
def _pillow_limits(max_pixels: int | None) -> Iterator[None]:
    """Pillow's bomb check at imgq's limit (warnings are errors) and truncation fatal."""
    old = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS = max_pixels
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            # Pillow's "Corrupt EXIF data" and friends: broken metadata never fails a photo
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = old


def _header_size(path: Path | Source, fmt: str) -> tuple[int, int]:
    with _pillow_limits(None), _open_binary(path) as f, Image.open(f, formats=[fmt]) as im:
        return im.size


def _format_of(path: Path | Source) -> str:
    """The format of the file at ``path`` by content; BadImage if it is empty or none."""
    head = _read_head(path)
    if not head:
        raise BadImage(f"empty file: {path}")
    fmt = sniff(head)
    if fmt is None:
        raise BadImage(f"not an image: {path} (content is not {', '.join(FORMATS)})")
    if fmt == "TIFF" and _tiff_is_raw(path):
        return "RAW"
    return fmt


def _tiff_tags(path: Path | Source) -> Image.Exif:
    """The tags of the first IFD of a TIFF-structured file (empty if unreadable).

    Read directly: Pillow's TIFF reader refuses sensor data it cannot decode.
    """
    exif = Image.Exif()
    try:
        with _open_binary(path) as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exif.load_from_fp(f)
    except Exception:
        return Image.Exif()
    return exif


def _tiff_is_raw(path: Path | Source) -> bool:
    # DNG says so; NEF, ARW and PEF put a small preview first (NewSubfileType 1, "reduced
    # resolution") with the sensor data in sub-IFDs, which no ordinary TIFF writer does
    tags = _tiff_tags(path)
    return 0xC612 in tags or (tags.get(0x00FE) == 1 and 0x014A in tags)


def _heif_support(path: Path | Source) -> None:
    try:
        import pillow_heif
    except ImportError:
        raise MissingExtra(f"{path} is a HEIF/HEIC photo: reading it needs pillow-heif: pip install 'imgq[heic]'") from None
    if "HEIF" not in Image.OPEN:
        pillow_heif.register_heif_opener()


def _rawpy(path: Path | Source):
    try:
        import rawpy
    except ImportError:
        raise MissingExtra(f"{path} is a camera RAW file: reading it needs rawpy: pip install 'imgq[raw]'") from None
    return rawpy


@contextlib.contextmanager
def _opened(path: Path | Source, max_pixels: int, fmt: str | None = None) -> Iterator[tuple[Image.Image, str]]:
    """The image at ``path`` with only its header read, and its format (not RAW).

    Raises BadImage for an empty or unrecognisable file, TooLarge when the header
    declares more than ``max_pixels``, MissingExtra for HEIF without pillow-heif.
    Decoding inside the block stays under the limits.
    """
    fmt = fmt or _format_of(path)
    if fmt == "HEIF":
        _heif_support(path)
    with _pillow_limits(max_pixels), _open_binary(path) as fp:
        try:
            im = Image.open(fp, formats=[fmt])
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _too_large(path, _header_size(path, fmt), max_pixels) from None
        except Exception as e:  # Pillow raises many types for damaged headers
            raise _decode_error(path, fmt, e) from None
        with im:
            w, h = im.size
            if w < 1 or h < 1:
                raise BadImage(f"corrupt {fmt}: {path} (declares {w}x{h} pixels)")
            if w * h > max_pixels:
                raise _too_large(path, im.size, max_pixels)
            yield im, fmt


# ---- metadata --------------------------------------------------------------------------


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
    """orientation, taken_at, make, model from EXIF; every lookup may fail harmlessly."""
    out: dict = {"orientation": 1, "taken_at": None, "make": None, "model": None}
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
            taken = _exif_datetime(exif.get_ifd(_EXIF_IFD).get(_TAG_DATETIME_ORIGINAL))
        except Exception:
            pass
        out["taken_at"] = taken or _exif_datetime(exif.get(_TAG_DATETIME))
    except Exception:
        pass


def probe(path: str | os.PathLike | Source, *, max_pixels: int) -> Probe:
    """Format, stored size, orientation and capture metadata of an original.

    Reads only the header (no pixel decoding). Raises BadImage ("empty file", "not an
    image", "cannot identify image", ...) or TooLarge ("decompression bomb: ...") naming
    the file; StorageError if the file cannot be read. Broken EXIF is ignored.
    """
    path = _source(path)
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


# ---- decoding and rendering ------------------------------------------------------------


def _icc_space(icc: bytes | None) -> bytes | None:
    """The data colour space of an ICC profile: b'RGB ', b'GRAY', b'CMYK', ..."""
    return icc[16:20] if icc and len(icc) >= 128 else None


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


def _upright(im: Image.Image, orientation: int) -> Image.Image:
    t = _UPRIGHT.get(orientation)
    return im.transpose(t) if t is not None else im


def _leading_box(steps: tuple[Step, ...]) -> tuple[int, int] | None:
    op = get(steps[0].op)
    return op.fit_box(steps[0].params) if op.fit_box else None


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


def _decode(path: Path | Source, boxes: list[tuple[int, int] | None], max_pixels: int) -> _Decoded:
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


def render(path: str | os.PathLike | Source, chains: dict[str, str], *, max_pixels: int) -> dict[str, Rendered]:
    """Every chain of a recipe run on one decode of the original at ``path``.

    ``chains`` maps artifact name -> chain text. The pixels are made upright from EXIF
    orientation before any operation. A JPEG is decoded at reduced DCT scale, and a RAW
    file's embedded preview is used, when every chain starts by shrinking to a box
    below the stored size; smaller fits are made from larger ones already computed.
    Raises UnknownOperation before touching the file, BadImage/TooLarge for a bad
    original, MissingExtra for HEIF/RAW without their extra, StorageError when the
    file cannot be read. Give the original as a ``Source`` of checked bytes.
    """
    path = _source(path)
    plans = {name: parse_chain(text) for name, text in chains.items()}
    boxes = {name: _leading_box(steps) for name, steps in plans.items()}
    d = _decode(path, list(boxes.values()), max_pixels)
    orientation, upright, base = d.meta["orientation"], d.upright, d.image
    swap = orientation >= 5
    exif = minimal_exif(d.meta["taken_at"], d.meta["make"], d.meta["model"])
    source_size = base.size

    # Fits are made in stored orientation (cheaper: the transpose then moves few pixels),
    # largest first, each from the smallest earlier result at least DERIVE_RATIO bigger.
    made: list[Image.Image] = []
    upright_of: dict[int, Image.Image] = {}  # id -> upright copy; `made` keeps ids alive

    def upright_copy(img: Image.Image) -> Image.Image:
        if id(img) not in upright_of:
            upright_of[id(img)] = _upright(img, orientation)
        return upright_of[id(img)]

    def stored_fit(box: tuple[int, int]) -> Image.Image:
        w, h = fit_size(upright, box)
        target = (h, w) if swap else (w, h)
        fits = [m for m in made if m.width >= target[0] * DERIVE_RATIO and m.height >= target[1] * DERIVE_RATIO]
        out = resize_to(min(fits, key=lambda m: m.width * m.height) if fits else base, target)
        made.append(out)
        return out

    def area(name: str) -> int:
        box = boxes[name]
        return 0 if box is None else fit_size(upright, box)[0] * fit_size(upright, box)[1]

    results: dict[str, Rendered] = {}
    for name in sorted(plans, key=area, reverse=True):
        steps, box = plans[name], boxes[name]
        if box:
            image, facts = run_steps(upright_copy(stored_fit(box)), steps[1:])
        else:
            image, facts = run_steps(upright_copy(base), steps)
        results[name] = Rendered(image=image, icc=d.icc, exif=exif, source_size=source_size, facts=facts)
    return {name: results[name] for name in chains}


# ---- camera RAW (the raw extra: rawpy) -------------------------------------------------


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


def _raw_meta(path: Path | Source, flip: int) -> dict:
    # TIFF-based RAW (CR2, NEF, ARW, DNG, ...) keeps ordinary EXIF in IFD0; the other
    # containers yield nothing here (rawpy does not expose their capture metadata)
    meta = _metadata(_tiff_tags(path))
    meta["orientation"] = _FLIP_ORIENTATION.get(flip, 1)
    return meta


def _raw_probe(path: Path | Source, max_pixels: int) -> Probe:
    with _raw_opened(path, max_pixels) as raw:
        s = raw.sizes
        meta = _raw_meta(path, s.flip)
    return Probe(format="RAW", width=s.width, height=s.height, mode="RGB", **meta)


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


# ---- encoding and verifying ------------------------------------------------------------


def jpeg_ready(image: Image.Image, icc: bytes | None) -> tuple[Image.Image, bytes | None]:
    """``image`` as L or RGB for a JPEG encoder, and the ICC profile if it still fits.

    Transparency is composited on white; 16-bit grey is scaled (not clipped) to 8 bits;
    CMYK becomes RGB. A profile whose colour space does not match the result is dropped.
    """
    image, icc = working_image(image, icc)
    if image.mode == "I;16":
        import numpy as np

        a = np.asarray(image).astype(np.uint32)
        image = Image.fromarray(((a + 128) // 257).astype(np.uint8), "L")
    elif image.mode in ("RGBA", "LA"):
        flat = Image.new(image.mode[:-1], image.size, 255 if image.mode == "LA" else (255, 255, 255))
        flat.paste(image.convert(image.mode[:-1]), mask=image.getchannel("A"))
        image = flat
    wanted = b"GRAY" if image.mode == "L" else b"RGB "
    return image, (icc if _icc_space(icc) == wanted else None)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(rendered: Rendered, dest: str | os.PathLike, *, quality: int = 85) -> Saved:
    """Write ``rendered`` as a JPEG at ``dest`` atomically, and return what was written.

    The bytes go to a temporary name (containing ".imgq-tmp") in dest's folder, are
    flushed and fsynced, then verified: read back and compared by sha256 with the bytes
    the encoder produced, the header's size checked, and (for outputs up to
    FULL_VERIFY_PIXELS) decoded in full. Then they are renamed into place and the folder
    fsynced. A reader never sees a partial file. On failure the temporary file is
    removed and StorageError names the path and the reason.
    """
    dest = Path(dest)
    image, icc = jpeg_ready(rendered.image, rendered.icc)
    extra = {}
    if icc:
        extra["icc_profile"] = icc
    if rendered.exif:
        extra["exif"] = rendered.exif
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality, **extra)
    data = buf.getvalue()
    tmp = dest.with_name(temp_name(dest.name))
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        digest = hashlib.sha256(data).hexdigest()
        try:
            _verify_written(tmp, digest, image.width, image.height)
        except BadImage as e:
            # we just wrote good bytes: if they do not read back, the storage is at fault
            raise StorageError(f"cannot write {dest}: written file did not verify ({e})") from None
        os.replace(tmp, dest)
    except OSError as e:
        _remove_quietly(tmp)
        raise _storage_error("write", dest, e) from None
    except BaseException:
        _remove_quietly(tmp)
        raise
    try:
        _fsync_dir(dest.parent)
    except OSError as e:
        raise _storage_error("sync the folder of", dest, e) from None
    return Saved(digest, len(data), image.width, image.height)


# Decoding a just-written output again costs as much as decoding the original once for a
# full-size output (0.25 s for 27 MP here). Above this size the read-back sha256 (the
# bytes on disk are exactly the encoder's) plus the header's size stand in for it.
FULL_VERIFY_PIXELS = 4_000_000


def _verify_written(path: Path, digest: str, width: int, height: int) -> None:
    with open(path, "rb") as f:
        back = hashlib.sha256(f.read()).hexdigest()
    if back != digest:
        raise BadImage(f"{path} does not read back as written (sha256 {back[:12]}, expected {digest[:12]})")
    if width * height <= FULL_VERIFY_PIXELS:
        verify(path, width, height)
        return
    with _opened(path, width * height) as (im, _):
        if im.size != (width, height):
            raise BadImage(f"wrong size: {path} is {im.width}x{im.height}, expected {width}x{height}")


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def verify(path: str | os.PathLike, width: int, height: int) -> bool:
    """True when ``path`` is an image that decodes completely to ``width`` x ``height``.

    Otherwise raises BadImage with the reason (empty, not an image, truncated, wrong
    size), or StorageError when the file cannot be read. The size is checked from the
    header before decoding, so a wrong or hostile file is never decoded in full.
    """
    path = Path(path)
    if _format_of(path) == "RAW":
        with _raw_opened(path, max(width * height, 1)) as raw:
            if (raw.sizes.width, raw.sizes.height) != (width, height):
                raise BadImage(f"wrong size: {path} is {raw.sizes.width}x{raw.sizes.height}, expected {width}x{height}")
        return True
    try:
        with _opened(path, max(width * height, 1)) as (im, fmt):
            if im.size != (width, height):
                raise BadImage(f"wrong size: {path} is {im.width}x{im.height}, expected {width}x{height}")
            try:
                im.load()
            except Exception as e:
                raise _decode_error(path, fmt, e) from None
    except TooLarge:
        w, h = _header_size(path, sniff(_read_head(path)) or "JPEG")
        raise BadImage(f"wrong size: {path} is {w}x{h}, expected {width}x{height}") from None
    return True


# ---- one huge image in stripes (see imgq/split.py) --------------------------------------


def render_stripe(path: str | os.PathLike | Source, prefixes: dict[str, str], index: int, count: int, halo: int, *, max_pixels: int) -> dict[str, Image.Image]:
    """Stripe ``index`` of ``count`` of each chain prefix run on the upright original: its
    own rows, computed from those rows widened by ``halo`` so every output pixel sees the
    neighbours it has in the whole image (split.plan decides the rows)."""
    from imgq.split import plan

    d = _decode(_source(path), [None], max_pixels)
    upright = _upright(d.image, d.meta["orientation"])
    st = plan(upright.height, count, halo)[index]
    y0, y1, top, bottom = st.y0, st.y1, st.top, st.bottom
    band = upright.crop((0, top, upright.width, bottom))
    del upright, d
    out = {}
    for name, prefix in prefixes.items():
        image, _ = run_steps(band, parse_chain(prefix))
        out[name] = image.crop((0, y0 - top, image.width, y1 - top))
    return out


def save_part(image: Image.Image, dest: str | os.PathLike) -> Saved:
    """Write a stripe losslessly (a NumPy array: no compression to pay for) under a
    temporary name, fsync, and rename into place."""
    import numpy as np

    dest = Path(dest)
    arr = np.asarray(image)
    tmp = dest.with_name(temp_name(dest.name))
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)
            f.write(image.mode.encode().ljust(8))  # the mode, after the array
            f.flush()
            os.fsync(f.fileno())
        size = tmp.stat().st_size
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except OSError as e:
        _remove_quietly(tmp)
        raise _storage_error("write", dest, e) from None
    return Saved(sha256="", bytes=size, width=image.width, height=image.height)


def load_part(path: str | os.PathLike, width: int, height: int) -> Image.Image:
    """A stripe written by save_part; StorageError when it is missing or not whole."""
    import numpy as np

    path = Path(path)
    try:
        with open(path, "rb") as f:
            arr = np.load(f, allow_pickle=False)
            mode = f.read(8).decode().strip()
    except (OSError, ValueError) as e:
        raise StorageError(f"stripe {path} is missing or damaged ({e}); the stripe job will run again") from None
    if arr.shape[1] != width or arr.shape[0] != height or not mode:
        raise StorageError(f"stripe {path} is {arr.shape[1]}x{arr.shape[0]}, expected {width}x{height}")
    return Image.fromarray(arr, mode=mode) if mode in ("L", "RGB", "RGBA", "LA") else Image.fromarray(arr)


def render_join(path: str | os.PathLike | Source, load_parts, rests: dict[str, str], others: dict[str, str], *, max_pixels: int) -> dict[str, Rendered]:
    """The outputs of a split job: each chain's stripes (``load_parts(upright_size)`` ->
    {name: [stripe images]}) stacked and the rest of its chain run on the whole; chains
    with nothing to split (``others``) are rendered from the original as usual.
    Metadata (profile, capture date) comes from the original's header."""
    path = _source(path)
    results = render(path, others, max_pixels=max_pixels) if others else {}
    fmt = _format_of(path)
    with _opened(path, max_pixels, fmt) as (im, fmt):
        icc = im.info.get("icc_profile")
        meta = _metadata(_exif_of(im, fmt))
        size = (im.height, im.width) if meta.get("orientation", 1) >= 5 else im.size
    parts = load_parts(size)
    exif = minimal_exif(meta.get("taken_at"), meta.get("make"), meta.get("model"))
    for name, stripes in parts.items():
        whole = Image.new(stripes[0].mode, (stripes[0].width, sum(s.height for s in stripes)))
        y = 0
        for s in stripes:
            whole.paste(s, (0, y))
            y += s.height
        image, facts = run_steps(whole, parse_chain(rests[name])) if rests.get(name) else (whole, {})
        results[name] = Rendered(image=image, icc=icc, exif=exif, source_size=whole.size, facts=facts)
    return results
