"""Pure image operations, registered by name and composed into chains.

``OPS`` maps a name to an :class:`Op`; ``parse_chain`` turns ``web|brightness=1.2`` into
steps; ``apply_steps`` runs steps on an image. Importing this package registers every
operation.
"""

from __future__ import annotations

from PIL import Image

from imgq.ops.registry import OPS, Op, Param, get, register
from imgq.ops import size as _size  # noqa: F401  (registers thumb, web, fit)
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
    for step in steps:
        image = get(step.op).func(image, **step.params)
    return image


__all__ = [
    "OPS", "Op", "Param", "Step", "THUMB_BOX", "WEB_BOX", "apply_steps", "canonical_chain",
    "canonical_step", "chain_reach", "fit_size", "format_step", "get", "parse_chain",
    "parse_step", "register",
]
