"""The on_archived hook's queue: one row per verified copy of an original at a destination.

Each row (``archive_hooks``) is pending until its command exits 0, then done; a failed
run keeps its reason, counts the attempt and waits out a backoff (``not_before``). Each
change writes an event (entity 'hook', the destination in its detail), so ``imgq log``
tells when the catalogue was told. Nothing here touches ``copies``: a hook's failure
never undoes or withdraws the copy it is about.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from imgq.ledger.database import DB
from imgq.ledger.journal import Actor, _event


def queue(db: DB, file_id: str, destination: str, path: str, command: Sequence[str], *, now: float, actor: Actor = Actor()) -> bool:
    """Queue the hook for the original of ``file_id`` copied to ``destination`` at
    ``path`` (``command``: the whole argv). Once per (file, destination): False if it
    was already queued (the copy was found again, or re-made by verify)."""
    with db.transaction():
        cur = db.execute(
            "INSERT OR IGNORE INTO archive_hooks (file_id, destination, path, command, state, attempts, not_before, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, 'pending', 0, 0, ?, ?)",
            (file_id, destination, path, json.dumps(list(command)), now, now),
        )
        if cur.rowcount:
            _hook_event(db, file_id, destination, None, "pending", now=now, actor=actor, detail=path)
        return bool(cur.rowcount)


def due(db: DB, *, now: float, file_id: str | None = None, ignore_backoff: bool = False) -> list[sqlite3.Row]:
    """The pending hooks whose backoff is over (all pending ones with ``ignore_backoff``),
    oldest first; only ``file_id``'s if given."""
    sql = "SELECT * FROM archive_hooks WHERE state = 'pending'"
    params: list = []
    if not ignore_backoff:
        sql += " AND not_before <= ?"
        params.append(now)
    if file_id is not None:
        sql += " AND file_id = ?"
        params.append(file_id)
    return db.all(sql + " ORDER BY created_at, file_id, destination", params)


def waiting(db: DB) -> int:
    """How many hooks are pending (not yet run, or failed and in backoff)."""
    return db.one("SELECT count(*) FROM archive_hooks WHERE state = 'pending'")[0]


def succeeded(db: DB, hook: sqlite3.Row, *, now: float, actor: Actor = Actor()) -> None:
    """The command exited 0: done."""
    with db.transaction():
        db.execute(
            "UPDATE archive_hooks SET state = 'done', error = NULL, not_before = 0, updated_at = ? WHERE file_id = ? AND destination = ?",
            (now, hook["file_id"], hook["destination"]),
        )
        _hook_event(db, hook["file_id"], hook["destination"], "pending", "done", now=now, actor=actor, detail=hook["path"])


def failed(db: DB, hook: sqlite3.Row, error: str, *, not_before: float, now: float, actor: Actor = Actor()) -> None:
    """The command failed (``error`` says how): still pending, one more attempt counted,
    not run again before ``not_before``."""
    with db.transaction():
        db.execute(
            "UPDATE archive_hooks SET attempts = attempts + 1, error = ?, not_before = ?, updated_at = ? WHERE file_id = ? AND destination = ?",
            (error, not_before, now, hook["file_id"], hook["destination"]),
        )
        _hook_event(db, hook["file_id"], hook["destination"], "pending", "pending", now=now, actor=actor, detail=error)


def _hook_event(db: DB, file_id: str, destination: str, from_state, to_state: str, *, now: float, actor: Actor, detail: str | None) -> None:
    info = {"destination": destination}
    if detail:
        info["detail"] = detail
    _event(db, now=now, entity="hook", file_id=file_id, job_id=None, from_state=from_state, to_state=to_state, actor=actor, detail=info)
