"""The values shell completion offers from the project: recipe names (the built-ins and
those of the config in force), operation names (the last step of a chain), and file ids
from the database (every file, or those with a failed job).

The generated completions (bin/gen-docs) ask for them with the hidden command
``imgq complete-values KIND [--db PATH] [--config PATH] [--] [PREFIX]`` on every Tab, so
this module imports nothing heavy (``imgq.__main__`` answers before the command line is
imported), opens the database read-only and never creates one, and turns every problem
(no database, a folder, not SQLite, a broken imgq.toml) into no values: a completion
must never write on the terminal or leave a file behind.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import urllib.parse
from pathlib import Path

KINDS = ("recipes", "ops", "ids", "failed-ids")
LIMIT = 1000  # ids offered at most: more is no help on a terminal; type a longer prefix


@dataclasses.dataclass(frozen=True)
class Request:
    kind: str
    prefix: str = ""
    db: str | None = None
    config: str | None = None


def parse(argv: list[str]) -> Request | None:
    """The request in ``KIND [--db PATH] [--config PATH] [--] [PREFIX]`` (``--db=PATH``
    too), or None if it is not one."""
    kind = prefix = None
    options: dict[str, str] = {}
    words = iter(argv)
    for word in words:
        if word == "--":
            rest = list(words)
            if len(rest) > 1 or (rest and prefix is not None):
                return None
            prefix = rest[0] if rest else prefix
            break
        name, eq, value = word.partition("=")
        if name in ("--db", "--config"):
            if not eq:
                value = next(words, None)
                if value is None:
                    return None
            options[name[2:]] = value
        elif word.startswith("-") and word != "-":
            return None
        elif kind is None:
            kind = word
        elif prefix is None:
            prefix = word
        else:
            return None
    if kind not in KINDS:
        return None
    return Request(kind, prefix or "", options.get("db"), options.get("config"))


def values(kind: str, prefix: str = "", *, db: str | None = None, config: str | None = None) -> list[str]:
    """The values of ``kind`` that start with ``prefix``, sorted; [] on any problem.

    ``ops`` completes the last step of a chain: ``web|bri`` gives ``web|brightness``.
    ``db`` and ``config`` are the command line's --db and --config (else $IMGQ_DB,
    $IMGQ_CONFIG and the files the commands themselves would use)."""
    try:
        if kind == "ops":
            return _ops(prefix)
        if kind == "recipes":
            return _recipes(prefix, config)
        if kind in ("ids", "failed-ids"):
            return _ids(prefix, _database_path(db, config), failed=kind == "failed-ids")
    except Exception:  # noqa: BLE001 -- a completion offers nothing rather than fail
        return []
    return []


def _ops(prefix: str) -> list[str]:
    from imgq.ops.registry import OPS  # importing imgq.ops registers every operation

    head, bar, step = prefix.rpartition("|")
    return sorted(head + bar + name for name in OPS if name.startswith(step))


def _settings(config: str | None, db: str | None = None):
    from imgq.config import find_config, load_settings

    return load_settings(find_config(config), db)


def _recipes(prefix: str, config: str | None) -> list[str]:
    return sorted(name for name in _settings(config).recipes if name.startswith(prefix))


def _database_path(db: str | None, config: str | None) -> Path:
    if db is not None:
        return Path(db)  # --db is enough: no need to read (or fail on) the settings
    return _settings(config).db


def _ids(prefix: str, path: Path, *, failed: bool) -> list[str]:
    if not path.is_file():
        return []  # mode=ro creates nothing either; this only spares SQLite the attempt
    # Read-only, and leaving nothing behind: a database in WAL mode gets a -wal and a
    # -shm from any reader, which a read-only one cannot remove again. With neither there,
    # every change is in the file itself and it is read as it is (immutable); a writer
    # starting meanwhile may make that read fail, which gives no values, once.
    idle = not any(os.path.exists(f"{path}{suffix}") for suffix in ("-wal", "-shm"))
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + ("?immutable=1" if idle else "?mode=ro")
    connection = sqlite3.connect(uri, uri=True, timeout=1.0)
    try:
        if failed:
            sql = "SELECT DISTINCT file_id FROM jobs WHERE state = 'failed' AND file_id >= ? ORDER BY file_id"
        else:
            sql = "SELECT id FROM files WHERE id >= ? ORDER BY id"
        found = []
        # ids sort after their prefix and before anything past it: read from the prefix on
        for (file_id,) in connection.execute(sql, (prefix,)):
            if not file_id.startswith(prefix) or len(found) == LIMIT:
                break
            found.append(file_id)
        return found
    finally:
        connection.close()
