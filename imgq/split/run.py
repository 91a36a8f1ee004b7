"""Stripes and joins on disk: the I/O of splitting one huge image (the plan is pure, in
imgq.split.plan).

A stripe job decodes the original, runs each chain's prefix on its rows plus halo and
keeps its own rows as a lossless part under the attempt's staged name (store.staged_path
with the lease token: the fenced completion moves it into place, like an artifact). The
join job loads every part, stacks them and runs the rest of each chain on the whole.

May import: imaging, ops, store, config, errors. Never the ledger (which imports the
plan), the fleet, the steps or the CLI.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from PIL import Image

from imgq import store
from imgq.config import Settings
from imgq.errors import StorageError
from imgq.imaging import Rendered, Saved, Source, minimal_exif, render
from imgq.imaging.decode import decode_original
from imgq.imaging.metadata import header_metadata
from imgq.imaging.pixels import to_upright
from imgq.imaging.source import as_source, storage_error
from imgq.ops import parse_chain, run_steps
from imgq.split.plan import divide, halo as halo_of, part_path, plan
from imgq.store import write_atomically


def stripe_job(claim, settings: Settings, src: Source, chains: dict[str, str], index: int, count: int, started: float, staged: list[str]) -> tuple[dict, list[tuple[str, str]]]:
    """One stripe of a split image: the chains' neighbourhood prefixes on its rows, kept
    losslessly in the store until the join job stacks them (staged like artifacts).
    ``claim`` is the job's (file_id, spec_hash, token); each staged name is appended to
    ``staged`` before it is written, so a failure removes it. Returns the job's result
    and the (staged, final) moves of its parts for the fenced completion."""
    halo = halo_of(chains)
    prefixes = {name: p for name, p in ((n, divide(c)[0]) for n, c in chains.items()) if p}
    parts = render_stripe(src, prefixes, index, count, halo, max_pixels=settings.max_pixels)
    moves = []
    for name, image in parts.items():
        final = part_path(claim.file_id, name, claim.spec_hash, index, count)
        staged.append(store.staged_path(final, claim.token))
        save_part(image, settings.store_dir / staged[-1])
        moves.append((staged[-1], final))
    return {"stripe": [index, count], "halo": halo, "seconds": round(time.monotonic() - started, 4)}, moves


def join_job(claim, settings: Settings, src: Source, chains: dict[str, str], count: int) -> dict[str, Rendered]:
    """The outputs of a join job (``claim``: its file_id and spec_hash): the parts of the
    ``count`` stripes stacked and each chain finished on the whole."""
    halo = halo_of(chains)
    divided = {name: divide(c) for name, c in chains.items()}
    rests = {name: rest for name, (prefix, rest) in divided.items() if prefix}
    others = {name: chains[name] for name, (prefix, _) in divided.items() if not prefix}

    def load(size):
        width, height = size
        rows = plan(height, count, halo)
        return {
            name: [load_part(settings.store_dir / part_path(claim.file_id, name, claim.spec_hash, st.index, count), width, st.y1 - st.y0) for st in rows]
            for name in rests
        }

    return render_join(src, load, rests, others, max_pixels=settings.max_pixels)


def render_stripe(path: str | os.PathLike | Source, prefixes: dict[str, str], index: int, count: int, halo: int, *, max_pixels: int) -> dict[str, Image.Image]:
    """Stripe ``index`` of ``count`` of each chain prefix run on the upright original: its
    own rows, computed from those rows widened by ``halo`` so every output pixel sees the
    neighbours it has in the whole image (split.plan decides the rows)."""
    d = decode_original(as_source(path), [None], max_pixels)
    upright = to_upright(d.image, d.meta["orientation"])
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

    def write(f) -> int:
        np.save(f, arr, allow_pickle=False)
        f.write(image.mode.encode().ljust(8))  # the mode, after the array
        return f.tell()

    try:
        size = write_atomically(dest, write, mode=0o666)
    except OSError as e:
        raise storage_error("write", dest, e) from None
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
    path = as_source(path)
    results = render(path, others, max_pixels=max_pixels) if others else {}
    icc, meta, size = header_metadata(path, max_pixels=max_pixels)
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
