"""Archive targets: how copying one file to one destination is going.

A second retry machine beside the jobs, kept to the same discipline: every change is
checked against the lifecycle below and written with its ``events`` row (entity
'target', the destination in its detail) in one transaction. A destination that is down
or full fails only its own targets, which wait out a backoff while the others proceed.

Target lifecycle::

    pending ─copies verified─▶ done ─something missing again─▶ pending
       │  ▲                                   (a new artifact, a copy gone bad)
       │  └────────┐
       └─failed─▶ waiting ─failed again─▶ waiting   (attempts, error, not_before)
                     └──copies verified─▶ done

A change that is not on the diagram raises ``InvalidTransition``: always a bug.
"""

from __future__ import annotations

import sqlite3

from imgq.errors import InvalidTransition
from imgq.ledger.database import DB
from imgq.ledger.journal import NEW, Actor, _event

TARGET_TRANSITIONS: dict[str | None, set[str]] = {
    NEW: {"pending"},
    "pending": {"done", "waiting"},
    "waiting": {"done", "waiting"},
    "done": {"pending"},
}

TARGET_STATES = [s for s in TARGET_TRANSITIONS if s is not None]


def check(from_state: str | None, to_state: str) -> None:
    """Raise InvalidTransition unless ``from_state -> to_state`` is on the diagram."""
    if from_state not in TARGET_TRANSITIONS or to_state not in TARGET_TRANSITIONS[from_state]:
        raise InvalidTransition(f"archive target state change {from_state or 'new'} -> {to_state} is not allowed")


def _get(db: DB, file_id: str, destination: str) -> sqlite3.Row | None:
    return db.one("SELECT * FROM archive_targets WHERE file_id = ? AND destination = ?", (file_id, destination))


def open_target(db: DB, file_id: str, destination: str, *, now: float, actor: Actor = Actor(), detail: str | None = None) -> sqlite3.Row:
    """The target of ``file_id`` at ``destination``, to be worked on: created (pending)
    if there is none; a done one is pending again (``detail``: what is missing)."""
    row = _get(db, file_id, destination)
    if row is not None and row["state"] != "done":
        return row
    with db.transaction():
        row = _get(db, file_id, destination)  # again, under the write lock
        if row is None:
            check(NEW, "pending")
            db.execute(
                "INSERT INTO archive_targets (file_id, destination, state, attempts, not_before, created_at, updated_at) VALUES (?, ?, 'pending', 0, 0, ?, ?)",
                (file_id, destination, now, now),
            )
            _target_event(db, file_id, destination, None, "pending", now=now, actor=actor, detail=detail)
        elif row["state"] == "done":
            _move(db, row, "pending", now=now, actor=actor, detail=detail)
    return _get(db, file_id, destination)


def succeeded(db: DB, target: sqlite3.Row, *, now: float, actor: Actor = Actor()) -> None:
    """Every copy of the file is verified at the target's destination: done, the failure
    count and backoff cleared."""
    with db.transaction():
        _move(db, target, "done", now=now, actor=actor, sets={"attempts": 0, "not_before": 0, "error": None, "error_kind": None})


def failed(db: DB, target: sqlite3.Row, error: str, kind: str, *, attempts: int, not_before: float, now: float, actor: Actor = Actor()) -> None:
    """A failed attempt: waiting, not tried again before ``not_before``."""
    with db.transaction():
        _move(
            db, target, "waiting", now=now, actor=actor, detail=error,
            sets={"attempts": attempts, "not_before": not_before, "error": error, "error_kind": kind},
        )


def history(db: DB, file_id: str, destination: str) -> list[dict]:
    """Every event of one target, oldest first."""
    rows = db.all(
        "SELECT * FROM events WHERE entity = 'target' AND file_id = ? AND json_extract(detail, '$.destination') = ? ORDER BY id",
        (file_id, destination),
    )
    return [dict(r) for r in rows]


def _move(db: DB, target: sqlite3.Row, to_state: str, *, now: float, actor: Actor, sets: dict | None = None, detail: str | None = None) -> None:
    """Move one target, in the caller's transaction, from the state it has now."""
    row = db.one("SELECT state FROM archive_targets WHERE id = ?", (target["id"],))
    if row is None:
        raise InvalidTransition(f"archive target {target['id']} does not exist")
    from_state = row["state"]
    check(from_state, to_state)
    values = dict(sets or {}, state=to_state, updated_at=now)
    db.execute(
        f"UPDATE archive_targets SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ? AND state = ?",
        (*values.values(), target["id"], from_state),
    )
    _target_event(db, target["file_id"], target["destination"], from_state, to_state, now=now, actor=actor, detail=detail)


def _target_event(db: DB, file_id: str, destination: str, from_state, to_state: str, *, now: float, actor: Actor, detail: str | None) -> None:
    info = {"destination": destination}
    if detail:
        info["detail"] = detail
    _event(db, now=now, entity="target", file_id=file_id, job_id=None, from_state=from_state, to_state=to_state, actor=actor, detail=info)
