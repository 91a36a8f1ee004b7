"""Rendering: every chain of a recipe run on one decode of an original."""

from __future__ import annotations

import dataclasses
import os

from PIL import Image

from imgq.imaging.decode import decode_original
from imgq.imaging.metadata import minimal_exif
from imgq.imaging.pixels import to_upright
from imgq.imaging.source import Source, as_source
from imgq.ops import fit_size, get, parse_chain, run_steps
from imgq.ops.chain import Step
from imgq.ops.size import resize_to

# A smaller fit is derived from an already computed larger one only when that is at
# least this many times bigger on both sides, so resampling twice never shows: thumb
# from web is 54 dB from thumb made directly, and takes 5 ms instead of 33 ms from 20 MP.
DERIVE_RATIO = 2.0


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


def _leading_box(steps: tuple[Step, ...]) -> tuple[int, int] | None:
    op = get(steps[0].op)
    return op.fit_box(steps[0].params) if op.fit_box else None


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
    path = as_source(path)
    plans = {name: parse_chain(text) for name, text in chains.items()}
    boxes = {name: _leading_box(steps) for name, steps in plans.items()}
    d = decode_original(path, list(boxes.values()), max_pixels)
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
            upright_of[id(img)] = to_upright(img, orientation)
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
