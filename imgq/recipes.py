"""Recipes: a set of named operation chains, one artifact each, run from one decode.

A recipe's identity (``spec_hash``) is part of a job's identity, so equivalent spellings
(``thumb`` and ``fit:120x90``, ``canny:50,150`` and ``canny:high=150,low=50``) must
hash the same: everything is hashed in its canonical form.
"""

from __future__ import annotations

import hashlib
import json
import re

from imgq.errors import UnknownOperation
from imgq.ops import Step, canonical_chain, get, parse_chain

__all__ = ["Step", "artifact_name_for", "normalize_recipe", "parse_chain", "spec_hash"]

_ARTIFACT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*$")
_MAX_NAME = 80


def normalize_recipe(chains: dict[str, str]) -> dict[str, str]:
    """Artifact name -> canonical chain text, sorted by artifact name.

    Raises UnknownOperation for a bad chain (naming the artifact) or an artifact name
    that is not a safe file name.
    """
    out: dict[str, str] = {}
    for name in sorted(chains):
        if not isinstance(name, str) or not _ARTIFACT_NAME.match(name) or len(name) > _MAX_NAME:
            raise UnknownOperation(f"artifact name {name!r} must be 1-{_MAX_NAME} characters of A-Z a-z 0-9 . _ - and not start with . or -")
        try:
            out[name] = canonical_chain(chains[name])
        except UnknownOperation as e:
            raise UnknownOperation(f"artifact {name!r}: {e}") from None
    return out


def spec_hash(chains: dict[str, str]) -> str:
    """16 hex digits of the sha256 of the canonical recipe as compact, sorted JSON."""
    canon = json.dumps(normalize_recipe(chains), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def artifact_name_for(chain_text: str) -> str:
    """A file-system-safe artifact name for an ad-hoc ``--op`` chain.

    Built from the parsed steps, so equivalent spellings get the same name:
    ``web|brightness=1.2`` -> ``web-brightness1.2``, ``fit:800x600`` -> ``fit800x600``,
    ``canny:low=50`` -> ``canny_low50``. Only parameters that differ from their defaults
    are named. Characters outside [A-Za-z0-9._-] become ``_``; a name longer than 80
    characters is cut and suffixed with a hash of the whole chain so it stays unique.
    """
    parts = []
    for step in parse_chain(chain_text):
        op = get(step.op)
        changed = [p for p in op.params if p.default is None or step.params[p.name] != p.default]
        if len(op.params) == 1 and changed:
            parts.append(op.name + changed[0].format(step.params[changed[0].name]))
        else:
            parts.append("_".join([op.name] + [p.name + p.format(step.params[p.name]) for p in changed]))
    name = re.sub(r"[^A-Za-z0-9._-]", "_", "-".join(parts))
    if len(name) > _MAX_NAME:
        digest = hashlib.sha256(canonical_chain(chain_text).encode()).hexdigest()[:10]
        name = name[: _MAX_NAME - 11] + "-" + digest
    return name
