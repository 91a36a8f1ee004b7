"""The table of image operations: name -> function, parameter specs, defaults, reach.

An operation is a pure function ``op(image, **params) -> image``. It is registered with
the parameters a chain may give it (each with a parser from text, a default and a check),
and with ``reach(params)``: how many pixels of neighbourhood one output pixel depends on,
so that a later split feature can process an image in stripes with that much halo.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from PIL import Image

from imgq.errors import UnknownOperation


@dataclasses.dataclass(frozen=True)
class Param:
    """One parameter of an operation.

    ``parse`` turns chain text into a value and raises ValueError with a reason when the
    text is not acceptable; ``format`` turns a value back into canonical chain text.
    """

    name: str
    parse: Callable[[str], Any]
    default: Any = None  # None: the parameter is required
    format: Callable[[Any], str] = str
    help: str = ""


@dataclasses.dataclass(frozen=True)
class Op:
    """A registered operation."""

    name: str
    func: Callable[..., Image.Image]
    params: tuple[Param, ...]
    reach: Callable[[dict[str, Any]], int]
    # A size operation (thumb, web, fit) only shrinks the image to fit a box; render()
    # plans DCT-scaled decoding and derives smaller fits from larger ones around these.
    fit_box: Callable[[dict[str, Any]], tuple[int, int]] | None = None
    # An alias is canonicalised to another operation (thumb -> fit:120x90) for hashing.
    alias_of: tuple[str, dict[str, Any]] | None = None
    # Said beside an error in a chain that uses the operation (a changed meaning, say).
    note: str | None = None

    @property
    def array_func(self) -> Callable[..., Any] | None:
        """The same operation on ``cv.Arrays`` when it is written with OpenCV, else None."""
        return getattr(self.func, "array_func", None)

    @property
    def doc(self) -> str:
        return (self.func.__doc__ or "").strip()

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        valid = ", ".join(p.name for p in self.params) or "none"
        raise UnknownOperation(f"operation {self.name!r} has no parameter {name!r} (parameters: {valid})")

    def __call__(self, image: Image.Image, **params: Any) -> Image.Image:
        return self.func(image, **params)


OPS: dict[str, Op] = {}

# The reach of an operation that looks at the whole image (a global mean, histogram,
# hysteresis, detection): a halo this large means "every stripe needs the whole image".
WHOLE_IMAGE = 2**31 - 1


def zero_reach(params: dict[str, Any]) -> int:
    """Reach of a point operation: each output pixel depends only on its own input pixel."""
    return 0


def register(
    name: str,
    *params: Param,
    reach: Callable[[dict[str, Any]], int] = zero_reach,
    fit_box: Callable[[dict[str, Any]], tuple[int, int]] | None = None,
    alias_of: tuple[str, dict[str, Any]] | None = None,
    note: str | None = None,
) -> Callable[[Callable[..., Image.Image]], Callable[..., Image.Image]]:
    """Decorator: register ``func`` as the operation ``name``; the function is returned unchanged."""

    def deco(func: Callable[..., Image.Image]) -> Callable[..., Image.Image]:
        if name in OPS:
            raise ValueError(f"operation {name!r} registered twice")
        OPS[name] = Op(name, func, tuple(params), reach, fit_box, alias_of, note)
        return func

    return deco


def get(name: str) -> Op:
    """The operation called ``name``, or UnknownOperation listing the valid names."""
    try:
        return OPS[name]
    except KeyError:
        raise UnknownOperation(f"unknown operation {name!r} (valid: {', '.join(sorted(OPS))})") from None


# ---- parameter parsers: each raises ValueError saying what is acceptable ----------------


def parse_float(lo: float, hi: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
        if not lo <= v <= hi:  # also rejects nan
            raise ValueError(f"{text} is outside {lo:g}..{hi:g}")
        return v

    return parse


def parse_int(lo: int, hi: int, odd: bool = False) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
        if not lo <= v <= hi:
            raise ValueError(f"{text} is outside {lo}..{hi}")
        if odd and v % 2 == 0:
            raise ValueError(f"{text} must be odd")
        return v

    return parse


def parse_size(text: str) -> tuple[int, int]:
    """'800x600' -> (800, 600); both sides 1..65535."""
    w, sep, h = text.lower().partition("x")
    try:
        size = (int(w), int(h))
    except ValueError:
        raise ValueError(f"{text!r} is not a size like 800x600") from None
    if not sep or not all(1 <= s <= 65535 for s in size):
        raise ValueError(f"{text!r} is not a size like 800x600 (each side 1..65535)")
    return size


def parse_factor(text: str) -> float:
    """A factor: '1.2', or a percentage on the 0-100 slider scale where 50% = 1.0.

    The slider maps linearly: 0% = 0.0 (the degenerate image: black, flat grey or
    smoothed), 50% = 1.0 (unchanged), 100% = 2.0; values up to 500% (10.0) are accepted.
    """
    text = text.strip()
    if text.endswith("%"):
        try:
            pct = float(text[:-1])
        except ValueError:
            raise ValueError(f"{text!r} is not a percentage") from None
        if not 0.0 <= pct <= 500.0:
            raise ValueError(f"{text} is outside 0%..500% (50% = unchanged)")
        return pct / 50.0
    return parse_float(0.0, 10.0)(text)


def format_size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def format_float(v: float) -> str:
    # repr of a float is the shortest text that round-trips: 1.2 -> "1.2", 2.0 -> "2"
    text = repr(float(v))
    return text[:-2] if text.endswith(".0") else text
