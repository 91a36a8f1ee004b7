"""Operation chains: the text a user writes (``web|brightness=1.2``) parsed into steps.

Grammar::

    chain := step ("|" step)*
    step  := NAME [(":" | "=") arg ("," arg)*]
    arg   := VALUE | PARAM "=" VALUE

Positional values fill the operation's parameters in order, so ``fit:800x600``,
``fit=800x600`` and ``fit:size=800x600`` are the same step, as are ``canny:50,150`` and
``canny:high=150,low=50``. Parameters not given take their defaults.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from imgq.errors import UnknownOperation
from imgq.ops.registry import Op, get


class Step(NamedTuple):
    """One operation of a chain with every parameter filled in (defaults included)."""

    op: str
    params: dict[str, Any]


def parse_step(text: str) -> Step:
    """One step of a chain; UnknownOperation naming the operation and what went wrong."""
    text = text.strip()
    m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:[:=](.*))?$", text, re.S)
    if not m:
        raise UnknownOperation(f"cannot read operation {text!r}: expected NAME or NAME:VALUE")
    op = get(m.group(1))
    raw = m.group(2)
    given: dict[str, str] = {}
    if raw is not None:
        args = [a.strip() for a in raw.split(",")]
        if not op.params:
            note = f" ({op.note})" if op.note else ""
            raise UnknownOperation(f"operation {op.name!r} takes no parameters, got {raw!r}{note}")
        for i, arg in enumerate(args):
            key, eq, value = arg.partition("=")
            if eq:
                key = key.strip()
                op.param(key)  # raises, listing the valid parameter names
            elif i < len(op.params):
                key, value = op.params[i].name, arg
            else:
                raise UnknownOperation(f"operation {op.name!r} takes at most {len(op.params)} value(s), got {raw!r}")
            if key in given:
                raise UnknownOperation(f"operation {op.name!r}: parameter {key!r} given twice")
            given[key] = value.strip()
    params: dict[str, Any] = {}
    for p in op.params:
        if p.name in given:
            try:
                params[p.name] = p.parse(given[p.name])
            except ValueError as e:
                raise UnknownOperation(f"operation {op.name!r}: bad {p.name}: {e}") from None
        elif p.default is None:
            raise UnknownOperation(f"operation {op.name!r} needs {p.name} ({p.help}), e.g. {op.name}:{_example(op)}")
        else:
            params[p.name] = p.default
    return Step(op.name, params)


def _example(op: Op) -> str:
    for line in op.doc.splitlines():
        m = re.search(r"``" + re.escape(op.name) + r"[:=]([^|`]*)", line)
        if m:
            return m.group(1)
    return "VALUE"


def parse_chain(text: str) -> tuple[Step, ...]:
    """The steps of a chain such as ``web|brightness=1.2``; UnknownOperation if any is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise UnknownOperation("empty operation chain: expected e.g. 'thumb' or 'web|brightness=1.2'")
    return tuple(parse_step(part) for part in text.split("|"))


def canonical_step(step: Step) -> Step:
    """The step with aliases resolved (``thumb`` -> ``fit`` with size 120x90)."""
    op = get(step.op)
    if op.alias_of is not None:
        name, params = op.alias_of
        return Step(name, dict(params))
    return step


def format_step(step: Step) -> str:
    """Chain text for a step that parses back to the same step.

    A one-parameter operation is written ``name:value``; otherwise every parameter is
    written ``name:key=value,...`` in the registered order.
    """
    op = get(step.op)
    if not op.params:
        return op.name
    values = [(p.name, p.format(step.params[p.name])) for p in op.params]
    if len(values) == 1:
        return f"{op.name}:{values[0][1]}"
    return f"{op.name}:" + ",".join(f"{k}={v}" for k, v in values)


def canonical_chain(text: str) -> str:
    """One spelling per meaning: aliases resolved, every parameter explicit, no spaces."""
    return "|".join(format_step(canonical_step(s)) for s in parse_chain(text))


def chain_reach(steps: tuple[Step, ...]) -> int:
    """Pixels of halo a stripe needs so that running ``steps`` on it matches the whole image."""
    return sum(get(s.op).reach(s.params) for s in steps)
