"""Pure image operations, registered by name and composed into chains.

``OPS`` maps a name to an :class:`Op`; ``parse_chain`` turns ``web|brightness=1.2`` into
steps; ``apply_steps`` runs steps on an image. Importing this package registers every
operation.
"""

from __future__ import annotations

from PIL import Image

from imgq.ops.registry import OPS, WHOLE_IMAGE, Op, Param, get, register

# importing an operations module registers its operations
from imgq.ops import size as _size  # noqa: F401,E402
from imgq.ops import enhance as _enhance  # noqa: F401,E402
from imgq.ops import filters as _filters  # noqa: F401,E402
from imgq.ops import faces as _faces  # noqa: F401,E402
from imgq.ops import cv  # noqa: E402
from imgq.ops import video as _video  # noqa: F401,E402
from imgq.ops.faces import detect_faces  # noqa: E402
from imgq.ops.chain import (
    Step,
    canonical_chain,
    canonical_step,
    chain_reach,
    format_step,
    parse_chain,
    parse_step,
)
from imgq.ops.size import THUMB_BOX, WEB_BOX, fit_size


def apply_steps(image: Image.Image, steps: tuple[Step, ...] | list[Step]) -> Image.Image:
    """``image`` after each step in turn; the input image is not modified."""
    return run_steps(image, steps)[0]


def run_steps(image: Image.Image, steps: tuple[Step, ...] | list[Step]) -> tuple[Image.Image, dict]:
    """``image`` after each step in turn, and what the steps found along the way.

    The findings are ``{"faces": [(x, y, w, h), ...]}`` when a ``faces`` step ran (in the
    pixels of the image that step saw), else empty.
    """
    facts: dict = {}
    arrays = None  # consecutive OpenCV operations hand arrays to each other
    for step in steps:
        op = get(step.op)
        if op.array_func is not None:
            if arrays is None:
                arrays = cv.to_arrays(image)
            arrays = op.array_func(arrays, **step.params)
            continue
        if arrays is not None:
            image, arrays = cv.from_arrays(arrays), None
        image = op.func(image, **step.params)
        if "faces" in image.info:
            facts["faces"] = list(image.info["faces"])
    return (cv.from_arrays(arrays) if arrays is not None else image), facts


__all__ = [
    "OPS", "WHOLE_IMAGE", "detect_faces", "run_steps", "Op", "Param", "Step", "THUMB_BOX", "WEB_BOX", "apply_steps", "canonical_chain",
    "canonical_step", "chain_reach", "fit_size", "format_step", "get", "parse_chain",
    "parse_step", "register",
]
