"""ops: the registry and each operation, on real images of every mode."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imgq import ops
from imgq.errors import UnknownOperation
from imgq.ops import OPS, apply_steps, fit_size, parse_chain


def sample(mode: str, size=(240, 160)) -> Image.Image:
    """A gradient with an edge in ``mode`` (RGB, L, RGBA, LA, I;16)."""
    w, h = size
    x = np.linspace(0, 1, w)[None, :]
    y = np.linspace(0, 1, h)[:, None]
    grey = np.clip(255 * (0.3 * x + 0.4 * y + 0.3 * (x > 0.5)), 0, 255)
    if mode == "I;16":
        return Image.fromarray((grey * 257).astype(np.uint16))
    rgb = np.stack([grey, 255 - grey, np.broadcast_to(128 * x, grey.shape)], -1).astype(np.uint8)
    return Image.fromarray(rgb).convert(mode)


@pytest.mark.parametrize(
    "size, box, expected",
    [
        ((4000, 3000), (120, 90), (120, 90)),
        ((6000, 4000), (640, 480), (640, 427)),
        ((3000, 4000), (640, 480), (360, 480)),
        ((600, 800), (120, 90), (68, 90)),
        ((100, 80), (640, 480), (100, 80)),  # never enlarged
        ((100000, 10), (640, 480), (640, 1)),  # at least one pixel
        ((640, 480), (640, 480), (640, 480)),
    ],
)
def test_fit_size(size, box, expected):
    assert fit_size(size, box) == expected


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA", "I;16", "P", "1"])
def test_size_ops_keep_aspect_and_mode(mode):
    img = sample("RGB").convert(mode) if mode in ("P", "1") else sample(mode)
    for chain, size in [("thumb", (120, 80)), ("web", (240, 160)), ("fit:60x60", (60, 40))]:
        out = apply_steps(img, parse_chain(chain))
        assert out.size == size
        if mode not in ("P", "1"):
            assert out.mode == mode  # P and 1 are widened so Lanczos can work


def test_thumb_web_and_fit_agree():
    img = sample("RGB", (1200, 900))
    assert ops.get("thumb")(img).tobytes() == ops.get("fit")(img, size=(120, 90)).tobytes()
    assert ops.get("web")(img).tobytes() == ops.get("fit")(img, size=(640, 480)).tobytes()


def test_ops_do_not_modify_their_input():
    img = sample("RGB")
    before = img.tobytes()
    apply_steps(img, parse_chain("thumb"))
    assert img.tobytes() == before


def test_registry_lists_valid_names_and_every_op_is_documented():
    with pytest.raises(UnknownOperation, match="valid: .*thumb"):
        ops.get("thumbnail")
    for op in OPS.values():
        assert op.doc, f"{op.name} has no docstring"
        assert "Example chain" in op.doc, op.name
        assert op.reach(parse_chain(op.name if not op.params or all(p.default is not None for p in op.params) else f"{op.name}:{_example(op)}")[0].params) >= 0


def _example(op):
    import re

    return re.search(r"``" + op.name + r"[:=]([^|`]*)", op.doc).group(1)
