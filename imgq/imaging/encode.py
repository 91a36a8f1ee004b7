"""Writing: a rendered artifact encoded as JPEG atomically and verified, and ``verify``
for any file that must decode fully to an expected size."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from pathlib import Path

from PIL import Image

from imgq.errors import BadImage, StorageError, TooLarge
from imgq.imaging.formats import _decode_error, _format_of, _header_size, _opened, _read_head, sniff
from imgq.imaging.metadata import _icc_space
from imgq.imaging.pixels import working_image
from imgq.imaging.raw import _raw_opened
from imgq.imaging.render import Rendered
from imgq.imaging.source import storage_error
from imgq.store import write_atomically


@dataclasses.dataclass(frozen=True)
class Saved:
    """A verified file written by ``save``."""

    sha256: str
    bytes: int
    width: int
    height: int


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


def save(rendered: Rendered, dest: str | os.PathLike, *, quality: int = 85, durable: bool = True) -> Saved:
    """Write ``rendered`` as a JPEG at ``dest`` atomically, and return what was written.

    The bytes go to a temporary name (containing ".imgq-tmp") in dest's folder, are
    flushed and fsynced, then verified: read back and compared by sha256 with the bytes
    the encoder produced, the header's size and the end marker checked (not decoded
    again: the bytes are the encoder's, see ``_verify_written``). Then they are renamed
    into place and the folder fsynced. ``durable=False`` skips both fsyncs, for a staged
    file whose caller makes it durable later, before relying on it (``store.sync_files``
    and ``store.place``, as settling does). A reader never sees a partial file. On failure the temporary file is
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
    digest = hashlib.sha256(data).hexdigest()

    def verify(tmp: Path) -> None:
        try:
            _verify_written(tmp, digest, image.width, image.height)
        except BadImage as e:
            # we just wrote good bytes: if they do not read back, the storage is at fault
            raise StorageError(f"cannot write {dest}: written file did not verify ({e})") from None

    try:
        write_atomically(dest, lambda f: f.write(data), check=verify, sync=durable)
    except OSError as e:
        raise storage_error("write", dest, e) from None
    return Saved(digest, len(data), image.width, image.height)


def _verify_written(path: Path, digest: str, width: int, height: int) -> None:
    # The bytes read back are exactly the encoder's (sha256), and they are a whole JPEG of
    # the expected size (header and end marker). Decoding them again would only test
    # Pillow's decoder against its own encoder, at the cost of a decode (as much as the
    # original's for a full-size output: the enhancement workload paid every decode twice).
    with open(path, "rb") as f:
        back = hashlib.sha256(f.read()).hexdigest()
    if back != digest:
        raise BadImage(f"{path} does not read back as written (sha256 {back[:12]}, expected {digest[:12]})")
    verify(path, width, height, decode=False)


def verify(path: str | os.PathLike, width: int, height: int, *, decode: bool = True) -> bool:
    """True when ``path`` is an image that decodes completely to ``width`` x ``height``.

    Otherwise raises BadImage with the reason (empty, not an image, truncated, wrong
    size), or StorageError when the file cannot be read. The size is checked from the
    header before decoding, so a wrong or hostile file is never decoded in full.
    ``decode=False`` checks the header's size and, for a JPEG, that the file ends with
    the end-of-image marker, without decoding pixels: for files whose bytes are known
    (by sha256) to be what an encoder produced.
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
            if not decode:
                if fmt == "JPEG" and not _ends_with_eoi(path):
                    raise BadImage(f"truncated JPEG: {path} (no end-of-image marker)")
                return True
            try:
                im.load()
            except Exception as e:
                raise _decode_error(path, fmt, e) from None
    except TooLarge:
        w, h = _header_size(path, sniff(_read_head(path)) or "JPEG")
        raise BadImage(f"wrong size: {path} is {w}x{h}, expected {width}x{height}") from None
    return True


def _ends_with_eoi(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            if f.seek(0, os.SEEK_END) < 2:
                return False
            f.seek(-2, os.SEEK_END)
            return f.read(2) == b"\xff\xd9"
    except OSError as e:
        raise storage_error("read", path, e) from None
