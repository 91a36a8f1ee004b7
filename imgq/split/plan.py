"""The plan of a split image (pure: no I/O): which part of each chain runs in stripes,
the halo, the stripes' rows, the jobs' stages and the parts' paths.

A chain's *splittable prefix* is its longest leading run of operations that keep the
image size and look only at a bounded neighbourhood (blur, gaussian, median, bilateral,
sharpness, point operations). Each stripe job decodes the original, cuts its rows plus a
halo as wide as the prefix's reach, runs the prefix, and keeps only its own rows: every
output pixel then saw exactly the neighbours it sees in the whole image, so the joined
result is pixel-identical to processing the image at once (no seams). The join job
stacks the stripes and runs the rest of the chain (a fit, canny, equalize, faces: steps
that need the whole image). The I/O is in imgq.split.run.
"""

from __future__ import annotations

import dataclasses

from imgq.ops import WHOLE_IMAGE, Step, canonical_step, chain_reach, format_step, get, parse_chain

JOIN = "join"


@dataclasses.dataclass(frozen=True)
class Stripe:
    """Output rows [y0, y1) of stripe ``index`` of ``count``, computed from input rows
    [top, bottom) (the same rows widened by the halo, clipped to the image)."""

    index: int
    count: int
    y0: int
    y1: int
    top: int
    bottom: int


def plan(height: int, count: int, halo: int) -> list[Stripe]:
    """``count`` stripes of (nearly) equal height covering ``height`` rows."""
    count = max(1, min(count, height))
    edges = [round(i * height / count) for i in range(count + 1)]
    return [
        Stripe(i, count, edges[i], edges[i + 1], max(0, edges[i] - halo), min(height, edges[i + 1] + halo))
        for i in range(count)
    ]


def stage(index: int, count: int) -> str:
    return f"stripe:{index}/{count}"


def join_stage(count: int) -> str:
    return f"{JOIN}:{count}"


def parse_stage(text: str) -> tuple[str, int, int]:
    """('', 0, 0) for an ordinary job, ('stripe', i, n) or ('join', 0, n)."""
    if not text:
        return "", 0, 0
    kind, _, rest = text.partition(":")
    if kind == JOIN:
        return JOIN, 0, int(rest)
    i, _, n = rest.partition("/")
    return kind, int(i), int(n)


def _splittable_step(step: Step) -> bool:
    op = get(step.op)
    return op.fit_box is None and op.reach(step.params) < WHOLE_IMAGE


def divide(chain: str) -> tuple[str, str]:
    """(prefix, rest) of a chain: the prefix runs in stripes, the rest on the joined image."""
    steps = parse_chain(chain)
    n = 0
    while n < len(steps) and _splittable_step(steps[n]):
        n += 1
    fmt = lambda ss: "|".join(format_step(canonical_step(s)) for s in ss)  # noqa: E731
    return fmt(steps[:n]), fmt(steps[n:])


def halo(chains: dict[str, str]) -> int:
    """Rows of halo every stripe needs: the widest reach among the chains' prefixes."""
    reach = 0
    for chain in chains.values():
        prefix, _ = divide(chain)
        if prefix:
            reach = max(reach, chain_reach(parse_chain(prefix)))
    return reach


def worth_splitting(chains: dict[str, str]) -> bool:
    """True when some chain has work that stripes can share (a non-empty prefix that is
    more than point operations: splitting those costs more decoding than it saves)."""
    for chain in chains.values():
        prefix, _ = divide(chain)
        if prefix and chain_reach(parse_chain(prefix)) > 0:
            return True
    return False


def part_path(file_id: str, artifact: str, spec_hash: str, index: int, count: int, ext: str = "npy") -> str:
    """Store-relative path of one stripe's output (an intermediate, removed after the
    join): a NumPy array for an image's stripe, ``vpart`` for a video's chunk."""
    return f"{file_id}/parts/{artifact}-{spec_hash[:8]}.{index}of{count}.{ext}"
