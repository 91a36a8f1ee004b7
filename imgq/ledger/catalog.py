"""The database described for people: every table and view, its columns, and canned
queries, kept in ``catalog.toml`` beside this module (package data) and given as
Datasette metadata (``imgq datasette-metadata``, docs/datasette-metadata.json).

Reads nothing but that file: no database is opened. tests/test_views.py checks the
catalogue against a freshly migrated database both ways (nothing described is missing,
nothing is left undescribed) and runs every canned query.
"""

from __future__ import annotations

import json
import tomllib
from importlib import resources


def catalog() -> dict:
    """The catalogue as written: title, description, tables (views too) and queries."""
    return tomllib.loads(resources.files(__package__).joinpath("catalog.toml").read_text(encoding="utf-8"))


def datasette_metadata(database: str = "imgq") -> dict:
    """Datasette metadata (the ``--metadata`` file of Datasette 0.x) for a database that
    Datasette names ``database``: the file's name without ``.db``, as Datasette names it."""
    c = catalog()
    queries = {name: dict(q, sql=q["sql"].strip()) for name, q in c["queries"].items()}
    return {
        "title": c["title"],
        "description": c["description"],
        "databases": {database: {"description": c["description"], "tables": c["tables"], "queries": queries}},
    }


def datasette_json(database: str = "imgq") -> str:
    """``datasette_metadata`` as the JSON text imgq prints and ships in docs/ (stable: a
    test compares the two byte for byte)."""
    return json.dumps(datasette_metadata(database), indent=2, ensure_ascii=False) + "\n"
