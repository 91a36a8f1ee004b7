"""recipes: chain parsing, canonical forms, recipe hashes and artifact names."""

from __future__ import annotations

import re

import pytest

from imgq.errors import UnknownOperation
from imgq.recipes import Step, artifact_name_for, normalize_recipe, parse_chain, spec_hash


def test_parse_chain_fills_parameters():
    assert parse_chain("thumb") == (Step("thumb", {}),)
    assert parse_chain("fit:800x600") == (Step("fit", {"size": (800, 600)}),)
    assert parse_chain(" fit = 800X600 ") == parse_chain("fit:size=800x600") == parse_chain("fit:800x600")
    steps = parse_chain("web|fit:100x100")
    assert [s.op for s in steps] == ["web", "fit"]


@pytest.mark.parametrize(
    "text, words",
    [
        ("nope", ["unknown operation 'nope'", "valid:", "fit", "thumb", "web"]),
        ("web|nope", ["'nope'"]),
        ("fit", ["'fit' needs size", "fit:"]),
        ("fit:800", ["'fit'", "bad size", "'800'"]),
        ("fit:0x10", ["'fit'", "1..65535"]),
        ("fit:colour=red", ["no parameter 'colour'", "size"]),
        ("thumb:3", ["'thumb' takes no parameters"]),
        ("fit:1x1,2x2", ["at most 1"]),
        ("", ["empty"]),
        ("web||thumb", ["cannot read"]),
    ],
)
def test_bad_chains_name_the_problem(text, words):
    with pytest.raises(UnknownOperation) as e:
        parse_chain(text)
    for w in words:
        assert w in str(e.value)


def test_equivalent_spellings_hash_the_same():
    a = {"thumb": "thumb", "web": "web"}
    b = {"web": "fit:640x480", "thumb": " fit = size=120X90 "}
    assert normalize_recipe(a) == normalize_recipe(b) == {"thumb": "fit:120x90", "web": "fit:640x480"}
    assert spec_hash(a) == spec_hash(b)
    assert re.fullmatch(r"[0-9a-f]{16}", spec_hash(a))
    assert spec_hash(a) != spec_hash({"thumb": "thumb", "web": "fit:641x480"})
    assert spec_hash(a) != spec_hash({"small": "thumb", "web": "web"})


def test_normalize_recipe_rejects_unsafe_artifact_names_and_names_bad_chains():
    with pytest.raises(UnknownOperation, match="artifact name '../x'"):
        normalize_recipe({"../x": "thumb"})
    with pytest.raises(UnknownOperation, match="artifact 'web'.*nope"):
        normalize_recipe({"web": "nope"})


def test_artifact_names_are_safe_and_stable():
    assert artifact_name_for("thumb") == "thumb"
    assert artifact_name_for("fit:800x600") == artifact_name_for("fit=size=800X600") == "fit800x600"
    assert artifact_name_for("web|thumb") == "web-thumb"
    long = "|".join(["fit:1000x1000"] * 20)
    name = artifact_name_for(long)
    assert len(name) <= 80 and name != artifact_name_for("|".join(["fit:1000x1000"] * 21))
    for text in ["web", "fit:10x10|thumb", long]:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", artifact_name_for(text))
