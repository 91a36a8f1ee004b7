"""The house keeps its rules: only the ledger writes state.

Read from the source, not from running code: every SQL string literal in ``imgq`` that
inserts, updates or deletes rows of a table of the database, and every sqlite-utils write
call on one of its tables (``db["t"].insert(...)``, ``db.table("t").upsert(...)``, …),
must be in ``imgq/ledger/``. The tables are those of a freshly migrated database, so a
new table is covered the day its migration lands.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from imgq.ledger.database import DB

PACKAGE = Path(__file__).resolve().parent.parent / "imgq"
LEDGER = PACKAGE / "ledger"

# INSERT [OR x] INTO t, REPLACE INTO t, UPDATE [OR x] t SET, DELETE FROM t; the table name
# may be missing when the literal ends there (an f-string placing it): that counts too.
_WRITE = re.compile(
    r"\b(?:INSERT\s+(?:OR\s+\w+\s+)?INTO|REPLACE\s+INTO|UPDATE(?:\s+OR\s+\w+)?|DELETE\s+FROM)\s+(?:(\w+)|$)",
    re.IGNORECASE,
)
# sqlite-utils' Table methods that write rows
_TABLE_WRITES = {"insert", "insert_all", "upsert", "upsert_all", "update", "delete", "delete_where", "lookup"}


@pytest.fixture(scope="module")
def state_tables(tmp_path_factory) -> set[str]:
    db = DB(tmp_path_factory.mktemp("house") / "imgq.db")
    try:
        names = {r[0] for r in db.all("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
    finally:
        db.close()
    assert {"files", "jobs", "events", "artifacts", "runs"} <= names
    return names


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string nodes that are docstrings (prose, not SQL)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                out.add(id(body[0].value))
    return out


def _literal_texts(tree: ast.AST):
    """(line, text) of every string literal that is not a docstring; an f-string gives
    its literal parts, each ending where a placeholder begins."""
    prose = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            for part in node.values:
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    prose.add(id(part))
                    yield node.lineno, part.value
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
            yield node.lineno, node.value


def _table_name(node: ast.AST) -> str | None:
    """The table a sqlite-utils Table expression names: ``x["t"]`` or ``x.table("t")``."""
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
        return node.slice.value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "table":
        if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            return node.args[0].value
        return "?"  # a table named at run time: counts as any table
    return None


def writes_in(source: str, tables: set[str]) -> list[tuple[int, str]]:
    """(line, what) for each write to one of ``tables`` in this Python source."""
    tree = ast.parse(source)
    found = []
    for line, text in _literal_texts(tree):
        for m in _WRITE.finditer(text):
            table = m.group(1)
            if table is None and not m.group(0).split()[0].isupper():
                continue  # prose before a placeholder ("cannot update {name}"), not SQL
            if table is None or table in tables:
                found.append((line, " ".join(m.group(0).split()) + (" <table from a placeholder>" if table is None else "")))
    # names bound to a table: t = db["hosts"]
    bound = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and (name := _table_name(node.value)) is not None:
            for target in node.targets:
                if isinstance(target, ast.Name):
                    bound[target.id] = name
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _TABLE_WRITES:
            receiver = node.func.value
            name = bound.get(receiver.id) if isinstance(receiver, ast.Name) else _table_name(receiver)
            if name is not None and (name == "?" or name in tables):
                found.append((node.lineno, f"{name}.{node.func.attr}(...)"))
    return sorted(found)


def test_the_detector_finds_writes_and_only_writes():
    """The check below is only as good as this parser: it must see each way of writing
    and not mistake a dict's update or prose for one."""
    tables = {"hosts", "copies", "files"}
    source = '''
"""Docstring: UPDATE files SET prose is not code."""
def f(db, key, n, cols, rows, counts):
    """INSERT INTO hosts is prose here too."""
    db.execute("INSERT INTO hosts (name) VALUES (?)", ("a",))
    db.execute(
        "INSERT OR REPLACE INTO copies (id) VALUES (?)"
        " ON CONFLICT (id) DO UPDATE SET id = excluded.id", (1,))
    db.execute(f"UPDATE hosts SET {key} = coalesce({key}, 0) + ? WHERE name = ?", (n, "a"))
    db.execute(f"INSERT INTO {cols} VALUES (?)", (1,))
    db.conn.executemany("delete from files where id = ?", rows)
    db["hosts"].upsert({"name": "a"}, pk="name")
    t = db.table("copies")
    t.delete_where("id = ?", [1])
    db.execute("SELECT * FROM files WHERE state = 'seen'")
    db.execute("INSERT INTO scratch VALUES (1)")
    counts.update(a=1)
    counts["x"].update({"b": 2})
    print("Nothing to delete from the inbox; update the recipe")
    print(f"cannot update {key}")
'''
    got = [what for _, what in writes_in(source, tables)]
    assert got == [
        "INSERT INTO hosts",
        "INSERT OR REPLACE INTO copies",
        "UPDATE hosts",
        "INSERT INTO <table from a placeholder>",
        "delete from files",
        "hosts.upsert(...)",
        "copies.delete_where(...)",
    ]


def test_the_ledger_itself_is_seen_writing(state_tables):
    """The ledger writes (that is its job): seeing its writes shows the scan reaches them."""
    journal = writes_in((LEDGER / "journal.py").read_text(), state_tables)
    assert any("INSERT INTO events" in what for _, what in journal)
    assert any("UPDATE jobs" in what for _, what in journal)


def test_only_the_ledger_writes_state(state_tables):
    outside = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if LEDGER in path.parents:
            continue
        for line, what in writes_in(path.read_text(), state_tables):
            outside.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {what}")
    assert outside == [], "state written outside imgq/ledger/ (move it into a named ledger function):\n" + "\n".join(outside)


def test_the_layers_hold():
    """The import contracts in pyproject.toml ([tool.importlinter]): cli above the steps
    above the services above the base, pure operations, a pure split plan."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("lint-imports")
    tool = str(exe) if exe.exists() else shutil.which("lint-imports")
    assert tool, "import-linter is not installed (it is in the test extras)"
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([tool, "--no-cache"], cwd=root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout
