"""The formats imgq reads: the one list of them, recognising a file by its first bytes,
opening it header-first under imgq's pixel limit, and classifying what Pillow raises.

Pillow keeps its safety switches in module globals (``Image.MAX_IMAGE_PIXELS``,
``ImageFile.LOAD_TRUNCATED_IMAGES``). Setting them around each call and restoring them
after raced between threads (scan examines files on several): one thread's restore put a
limit under another's header read. So they are set once, here, and never touched again:
Pillow's own bomb check is off, and imgq's limit is checked on the header's declared size
by ``_opened`` before any pixel is decoded (Pillow's check reads the same size).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError

from imgq.errors import BadImage, MissingExtra, StorageError, TooLarge
from imgq.imaging.source import Source, _open_binary, storage_error

# Every format imgq reads, as ``sniff`` names it -> the name people know it by. The one
# list: error messages and `imgq scan --help` (so the man page) are built from it, and
# tests/test_docs.py checks the README against it.
SUPPORTED: dict[str, str] = {
    "JPEG": "JPEG",
    "PNG": "PNG",
    "TIFF": "TIFF",
    "WEBP": "WebP",
    "BMP": "BMP",
    "GIF": "GIF",
    "HEIF": "HEIF/HEIC",
    "AVIF": "AVIF",
    "RAW": "camera RAW",
}
FORMATS = tuple(SUPPORTED)
FORMAT_NAMES = ", ".join(SUPPORTED.values())  # "JPEG, PNG, ..., camera RAW": for people

# ISO base media brands of HEIF stills and sequences (HEVC-coded or generic)
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}


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


def _read_head(path: Path | Source) -> bytes:
    try:
        with _open_binary(path) as f:
            return f.read(64)
    except OSError as e:
        raise storage_error("read", path, e) from None


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
        return storage_error("read", path, e)  # the disk, not the data
    text = str(e)
    if "truncated" in text:
        return BadImage(f"truncated {fmt}: {path} ({text})")
    if isinstance(e, UnidentifiedImageError):
        return BadImage(f"cannot identify image: {path} (damaged {fmt} header)")
    return BadImage(f"corrupt {fmt}: {path} ({type(e).__name__}: {text})")


Image.MAX_IMAGE_PIXELS = None  # imgq's own limit is checked on the header (_opened)
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never half a photo
# Pillow's "Corrupt EXIF data" and friends: broken metadata never fails a photo
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\.|$)")


def _header_size(path: Path | Source, fmt: str) -> tuple[int, int]:
    with _open_binary(path) as f, Image.open(f, formats=[fmt]) as im:
        return im.size


def _format_of(path: Path | Source) -> str:
    """The format of the file at ``path`` by content; BadImage if it is empty or none."""
    head = _read_head(path)
    if not head:
        raise BadImage(f"empty file: {path}")
    fmt = sniff(head)
    if fmt is None:
        raise BadImage(f"not an image: {path} (content is not {FORMAT_NAMES})")
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
    with _open_binary(path) as fp:
        try:
            im = Image.open(fp, formats=[fmt])
        except Exception as e:  # Pillow raises many types for damaged headers
            raise _decode_error(path, fmt, e) from None
        with im:
            w, h = im.size
            if w < 1 or h < 1:
                raise BadImage(f"corrupt {fmt}: {path} (declares {w}x{h} pixels)")
            if w * h > max_pixels:
                raise _too_large(path, im.size, max_pixels)
            yield im, fmt
