"""Recipes: a set of named operation chains, one artifact each, run from one decode.

A recipe's identity (``spec_hash``) is part of a job's identity, so equivalent spellings
(``thumb`` and ``fit:120x90``, ``canny:50,150`` and ``canny:high=150,low=50``) must
hash the same: everything is hashed in its canonical form.

Besides its chains a recipe may carry options, under names that can never be artifact
names only by being reserved (``OPTIONS``): ``on_no_faces = "keep" | "tag" | "skip"``
says what happens to a photo in which the recipe's ``faces`` steps found nobody. Options
are part of the canonical recipe (and so of the hash and the job's spec); a worker splits
them off with ``split_spec`` before rendering.
"""

from __future__ import annotations

import hashlib
import json
import re

from imgq.errors import UnknownOperation
from imgq.ops import Step, canonical_chain, get, parse_chain
from imgq.ops.video import VIDEO_OPS

__all__ = [
    "KINDS", "OPTIONS", "Step", "artifact_name_for", "for_kind", "is_video_chain", "normalize_recipe", "parse_chain", "spec_hash", "split_spec",
]

KINDS = ("photo", "video")

_ARTIFACT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*$")
_MAX_NAME = 80

# Recipe options: name -> (allowed values, the default). The default is left out of the
# canonical form, so writing it out does not change the recipe's hash.
OPTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    # keep: artifacts kept, nothing more; tag: kept, the file tagged no_faces;
    # skip: the recipe writes no artifacts for the photo, and the file is tagged no_faces
    "on_no_faces": (("keep", "tag", "skip"), "keep"),
}


def split_spec(spec: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """A recipe (or a job's spec) split into its chains and its options, each with the
    options' defaults filled in: ({artifact: chain}, {option: value})."""
    chains = {k: v for k, v in spec.items() if k not in OPTIONS}
    options = {k: spec.get(k, default) for k, (_, default) in OPTIONS.items()}
    return chains, options


def is_video_chain(chain_text: str) -> bool:
    """Whether the chain makes a video (it starts with ``video`` or ``preview``)."""
    return parse_chain(chain_text)[0].op in VIDEO_OPS


def for_kind(spec: dict[str, str], kind: str) -> dict[str, str]:
    """The part of a recipe (or a job's spec) that applies to a file of ``kind``: a photo
    gets every chain but the video ones, a video every chain (its stills are made from a
    poster frame). Options are kept. So adding a video chain to a recipe leaves the
    recipe's photo jobs, and their hash, as they were."""
    if kind == "video":
        return dict(spec)
    return {k: v for k, v in spec.items() if k in OPTIONS or not is_video_chain(v)}


def has_chains(spec: dict[str, str]) -> bool:
    return any(k not in OPTIONS for k in spec)


def normalize_recipe(chains: dict[str, str]) -> dict[str, str]:
    """Artifact name -> canonical chain text, sorted by artifact name, plus any option
    (``OPTIONS``) that differs from its default.

    Raises UnknownOperation for a bad chain (naming the artifact), an artifact name
    that is not a safe file name, or a bad option value.
    """
    chains, options = split_spec(chains)
    out: dict[str, str] = {}
    for key, value in sorted(options.items()):
        allowed, default = OPTIONS[key]
        if value not in allowed:
            raise UnknownOperation(f"{key} = {value!r}: expected one of {', '.join(map(repr, allowed))}")
        if value != default:
            out[key] = value
    for name in sorted(chains):
        if not isinstance(name, str) or not _ARTIFACT_NAME.match(name) or len(name) > _MAX_NAME:
            raise UnknownOperation(f"artifact name {name!r} must be 1-{_MAX_NAME} characters of A-Z a-z 0-9 . _ - and not start with . or -")
        try:
            out[name] = canonical_chain(chains[name])
            steps = parse_chain(chains[name])
            if any(s.op in VIDEO_OPS for s in steps[1:]):
                raise UnknownOperation("video (or preview) must be the first step of a chain: it says the artifact is a video")
        except UnknownOperation as e:
            raise UnknownOperation(f"artifact {name!r}: {e}") from None
    if "on_no_faces" in out and not any(s.op == "faces" for c in chains.values() for s in parse_chain(c)):
        raise UnknownOperation(f"on_no_faces = {out['on_no_faces']!r} needs a chain with a faces step, e.g. web = \"web|faces\"")
    return dict(sorted(out.items()))


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
    # not names.slug: an artifact name must match _ARTIFACT_NAME (ASCII only), since it
    # ends up in store, archive and gallery file names on any file system
    name = re.sub(r"[^A-Za-z0-9._-]", "_", "-".join(parts))
    if len(name) > _MAX_NAME:
        digest = hashlib.sha256(canonical_chain(chain_text).encode()).hexdigest()[:10]
        name = name[: _MAX_NAME - 11] + "-" + digest
    return name


def describe_recipe(name: str, recipe: dict[str, str]) -> dict:
    """A recipe as ``imgq recipes`` shows it: ``name``, ``spec_hash``, ``chains`` (artifact
    -> canonical chain), ``options`` (non-default ones) and ``given`` (as written).

    A recipe that does not parse gets ``error`` (the reason) instead of a hash.
    """
    out = {"name": name, "given": dict(recipe), "spec_hash": None, "chains": {}, "options": {}, "error": None}
    try:
        canon = normalize_recipe(recipe)
    except UnknownOperation as e:
        out["error"] = str(e)
        return out
    out["chains"] = {k: v for k, v in canon.items() if k not in OPTIONS}
    out["options"] = {k: v for k, v in canon.items() if k in OPTIONS}
    out["spec_hash"] = spec_hash(recipe)
    return out


def describe_operations() -> list[dict]:
    """Every registered operation, sorted by name, from the registry itself: ``name``,
    ``summary`` (first line of its doc), ``doc``, ``params`` (name, default or None when
    required, help), ``example`` (a chain from its doc) and ``alias_of`` (the canonical
    chain an alias stands for)."""
    from imgq.ops import OPS, Step, format_step

    out = []
    for name in sorted(OPS):
        op = OPS[name]
        m = re.search(r"Example chain: ``([^`]+)``", op.doc)
        doc = re.sub(r"\s*Example chain: ``[^`]+``\s*", " ", op.doc).strip()
        doc = doc.replace("``", "")  # the docstrings' literal markup, for plain text
        paragraphs = [" ".join(line.strip() for line in p.splitlines()) for p in re.split(r"\n\s*\n", doc)]
        out.append({
            "name": name,
            "summary": paragraphs[0].split(". ")[0].rstrip(".") if paragraphs else "",
            "doc": "\n\n".join(paragraphs),
            "params": [
                {"name": p.name, "default": None if p.default is None else p.format(p.default), "required": p.default is None, "help": p.help}
                for p in op.params
            ],
            "example": m.group(1) if m else name,
            "alias_of": format_step(Step(*op.alias_of)) if op.alias_of else None,
        })
    return out
