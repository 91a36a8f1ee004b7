"""The one writer of state.

Every change of a file's or a job's state goes through this module: it is checked
against the lifecycle below and written together with its ``events`` row, inside the
caller's transaction (``db.transaction()``). A change that is not on the diagram raises
``InvalidTransition``: that is always a bug, never bad input. Times: the ``now`` given,
or the database's clock when it is None (see ``imgq.ledger``).

File lifecycle::

    seen ─▶ queued ─▶ processed ─▶ archived ─▶ collected
      │        │          │                        ▲
      │        │          └────────────────────────┘ (collect --min-copies N: N verified
      │        │                                      copies, not every destination)
      ├─▶ duplicate ─▶ collected   (same sha256 as a known file)
      │      └──▶ seen             (promoted: its twin failed, so it is processed itself)
      └─▶ failed                   (not an image, corrupt, too large, or changed in the
                                    inbox before it was archived; with the reason)

When a file fails, its content may exist only in its duplicates, which wait for it for
ever: in the same transaction the oldest is promoted to ``seen`` (an ordinary file the
next enqueue picks up) and the others become its duplicates.

Job lifecycle::

    ready ─claim─▶ leased ─complete─▶ done
      ▲              │  ├─transient error─▶ ready (later, with backoff)
      └──released────┘  └─permanent error, attempts exhausted─▶ failed ─retry─▶ ready
                  leased ─lease expired, reclaimed─▶ leased
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence

from imgq.ledger.database import DB
from imgq.errors import InvalidTransition

NEW = None  # the "from" state of a row being created

FILE_TRANSITIONS: dict[str | None, set[str]] = {
    NEW: {"seen", "duplicate", "failed"},
    "seen": {"queued", "failed"},
    "queued": {"processed", "failed", "queued"},
    "processed": {"archived", "queued", "failed", "collected"},  # collected: by collect --min-copies N
    "archived": {"collected", "queued", "processed"},
    "duplicate": {"collected", "seen", "duplicate"},  # seen: promoted; duplicate: of another twin
    "failed": {"queued"},
    "collected": set(),
}

JOB_TRANSITIONS: dict[str | None, set[str]] = {
    NEW: {"ready"},
    "ready": {"leased"},
    "leased": {"done", "ready", "failed", "leased"},
    "failed": {"ready"},
    "done": set(),
}

FILE_STATES = [s for s in FILE_TRANSITIONS if s is not None]
JOB_STATES = [s for s in JOB_TRANSITIONS if s is not None]


def check(kind: str, from_state: str | None, to_state: str) -> None:
    """Raise InvalidTransition unless ``from_state -> to_state`` is on the diagram."""
    table = FILE_TRANSITIONS if kind == "file" else JOB_TRANSITIONS
    if from_state not in table or to_state not in table[from_state]:
        raise InvalidTransition(f"{kind} state change {from_state or 'new'} -> {to_state} is not allowed")


@dataclasses.dataclass(frozen=True)
class Actor:
    """Who makes a change: recorded with every event."""

    host: str | None = None
    name: str | None = None


def record_events(db: DB, rows) -> None:
    """Append events: rows of (at, entity, file_id, job_id, from_state, to_state, host,
    actor, detail), each naming the run the database is working for (``db.run_id``)."""
    run_id = getattr(db, "run_id", None)
    db.conn.executemany(
        "INSERT INTO events (at, entity, file_id, job_id, from_state, to_state, host, actor, detail, run_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(*row, run_id) for row in rows],
    )


def _event(db: DB, *, now: float, entity: str, file_id, job_id, from_state, to_state, actor: Actor, detail) -> None:
    record_events(db, [(now, entity, file_id, job_id, from_state, to_state, actor.host, actor.name, _text(detail))])


def _text(detail) -> str | None:
    if detail is None or isinstance(detail, str):
        return detail
    return json.dumps(detail, sort_keys=True)


def _require_tx(db: DB) -> None:
    if not db.conn.in_transaction:
        raise RuntimeError("journal changes must run inside db.transaction()")


# --- files -----------------------------------------------------------------------------


def add_file(db: DB, row: dict, *, state: str, now: float | None = None, actor: Actor = Actor(), detail=None) -> None:
    """Record a newly found file in ``state`` (seen, duplicate or failed)."""
    _require_tx(db)
    now = db.when(now)
    check("file", NEW, state)
    row = dict(row, state=state, created_at=now, updated_at=now)
    cols = ", ".join(row)
    db.execute(f"INSERT INTO files ({cols}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
    _event(db, now=now, entity="file", file_id=row["id"], job_id=None, from_state=None, to_state=state, actor=actor, detail=detail)


def move_file(
    db: DB,
    file_id: str,
    to_state: str,
    *,
    now: float | None = None,
    actor: Actor = Actor(),
    detail=None,
    job_id: int | None = None,
    error: str | None = None,
    expect: Iterable[str] | None = None,
    fields: dict | None = None,
) -> str:
    """Move one file to ``to_state``; returns the state it left.

    ``expect`` narrows the states the caller is prepared to move from; a file in any other
    state raises. ``error`` is stored (and cleared when None on a move out of failed).
    """
    _require_tx(db)
    now = db.when(now)
    row = db.one("SELECT state FROM files WHERE id = ?", (file_id,))
    if row is None:
        raise InvalidTransition(f"file {file_id} does not exist")
    from_state = row["state"]
    if expect is not None and from_state not in set(expect):
        raise InvalidTransition(f"file {file_id} is {from_state}, expected {'/'.join(expect)}")
    check("file", from_state, to_state)
    sets = dict(fields or {}, state=to_state, error=error, updated_at=now)
    db.execute(
        f"UPDATE files SET {', '.join(f'{k} = ?' for k in sets)} WHERE id = ? AND state = ?",
        (*sets.values(), file_id, from_state),
    )
    _event(db, now=now, entity="file", file_id=file_id, job_id=job_id, from_state=from_state, to_state=to_state, actor=actor, detail=detail or error)
    if to_state == "failed":
        _promote_duplicates(db, file_id, now=now, actor=actor)
    return from_state


def move_files(db: DB, changes: Sequence[tuple[str, str, str, int | None, Actor]], *, now: float | None = None) -> None:
    """Move many files at once, each ``(file id, from, to, job id, actor)``, with one
    event each: the batch form of ``move_file`` for a caller that has read every file's
    state in this transaction (settling a batch of completed jobs). Each update is fenced
    by its ``from`` state; one that does not apply is a bug (RuntimeError: the
    transaction rolls back). Not for moves to ``failed`` (those promote duplicates:
    ``move_file``)."""
    _require_tx(db)
    if not changes:
        return
    now = db.when(now)
    for _, from_state, to_state, _, _ in changes:
        check("file", from_state, to_state)
        if to_state == "failed":
            raise InvalidTransition("move_files does not fail files: use move_file (duplicates are promoted)")
    cur = db.conn.executemany(
        "UPDATE files SET state = ?, error = NULL, updated_at = ? WHERE id = ? AND state = ?",
        [(to_state, now, file_id, from_state) for file_id, from_state, to_state, _, _ in changes],
    )
    if cur.rowcount != len(changes):
        raise RuntimeError(f"move_files: {cur.rowcount} of {len(changes)} files were in the state the caller read")
    record_events(db, [(now, "file", file_id, job_id, from_state, to_state, actor.host, actor.name, None) for file_id, from_state, to_state, job_id, actor in changes])


def refresh_stat(db: DB, file_id: str, *, size: int, mtime_ns: int) -> None:
    """Remember a new size and mtime for a file whose content did not change (a sync
    client re-wrote it): no state change, so no event."""
    _require_tx(db)
    db.execute("UPDATE files SET size = ?, mtime_ns = ? WHERE id = ?", (size, mtime_ns, file_id))


def _promote_duplicates(db: DB, twin_id: str, *, now: float, actor: Actor) -> None:
    """The twin of some duplicates failed: promote the oldest (``seen``, no longer a
    duplicate) and make the others its duplicates, so the content is processed, archived
    and collected without anyone re-arming anything."""
    dups = [r["id"] for r in db.all("SELECT id FROM files WHERE duplicate_of = ? AND state = 'duplicate' ORDER BY created_at, id", (twin_id,))]
    if not dups:
        return
    heir, others = dups[0], dups[1:]
    move_file(db, heir, "seen", now=now, actor=actor, fields={"duplicate_of": None}, detail=f"promoted: {twin_id}, which has the same content, failed; processed on its own")
    for other in others:
        move_file(db, other, "duplicate", now=now, actor=actor, fields={"duplicate_of": heir}, detail=f"same content as {heir} (promoted after {twin_id} failed)")


# --- jobs ------------------------------------------------------------------------------


def add_job(db: DB, row: dict, *, now: float | None = None, actor: Actor = Actor()) -> int | None:
    """Create a ready job; None if the same file, recipe and spec already has one."""
    _require_tx(db)
    now = db.when(now)
    check("job", NEW, "ready")
    row = dict(row, state="ready", attempts=0, not_before=0, created_at=now, updated_at=now)
    cols = ", ".join(row)
    cur = db.execute(
        f"INSERT INTO jobs ({cols}) VALUES ({', '.join('?' * len(row))})"
        " ON CONFLICT (file_id, recipe, spec_hash, stage) DO NOTHING",
        tuple(row.values()),
    )
    if cur.rowcount == 0:
        return None
    job_id = cur.lastrowid
    _event(db, now=now, entity="job", file_id=row["file_id"], job_id=job_id, from_state=None, to_state="ready", actor=actor, detail=row["recipe"])
    return job_id


@dataclasses.dataclass
class JobChange:
    """One job state change. ``token`` fences it: the change applies only while the job
    still holds that lease token (None: no fence)."""

    job_id: int
    file_id: str
    from_state: str
    to_state: str
    sets: dict = dataclasses.field(default_factory=dict)
    token: str | None = None
    detail: object = None
    actor: Actor | None = None  # who makes it, when not the batch's actor


def move_jobs(db: DB, changes: Sequence[JobChange], *, now: float | None = None, actor: Actor = Actor(), checked: bool = False) -> list[bool]:
    """Apply job changes in the caller's transaction; one event per applied change
    (naming the change's actor, else ``actor``).

    Returns, per change, whether it applied: a fenced change whose job has moved on
    (another worker reclaimed it) does not apply and writes nothing.

    ``checked``: the caller has read in this transaction that every change applies (its
    job is in ``from_state``, with its token); the updates then run as one statement
    per shape of change instead of one per job, and one that does not apply is a bug
    (RuntimeError: the transaction rolls back).
    """
    _require_tx(db)
    now = db.when(now)
    if checked:
        return _move_jobs_checked(db, changes, now=now, actor=actor)
    applied: list[bool] = []
    events = []
    for c in changes:
        check("job", c.from_state, c.to_state)
        sets = dict(c.sets, state=c.to_state, updated_at=now)
        sql = f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in sets)} WHERE id = ? AND state = ?"
        params = [*sets.values(), c.job_id, c.from_state]
        if c.token is not None:
            sql += " AND lease_token = ?"
            params.append(c.token)
        ok = db.execute(sql, params).rowcount == 1
        applied.append(ok)
        if ok:
            who = c.actor or actor
            events.append((now, "job", c.file_id, c.job_id, c.from_state, c.to_state, who.host, who.name, _text(c.detail)))
    record_events(db, events)
    return applied


def _move_jobs_checked(db: DB, changes: Sequence[JobChange], *, now: float, actor: Actor) -> list[bool]:
    groups: dict[tuple, list] = {}
    for c in changes:
        check("job", c.from_state, c.to_state)
        sets = dict(c.sets, state=c.to_state, updated_at=now)
        shape = (tuple(sets), c.token is not None)
        groups.setdefault(shape, []).append([*sets.values(), c.job_id, c.from_state] + ([c.token] if c.token is not None else []))
    for (keys, fenced), rows in groups.items():
        sql = f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in keys)} WHERE id = ? AND state = ?" + (" AND lease_token = ?" if fenced else "")
        cur = db.conn.executemany(sql, rows)
        if cur.rowcount != len(rows):
            raise RuntimeError(f"move_jobs: {cur.rowcount} of {len(rows)} checked job changes applied")
    record_events(db, [(now, "job", c.file_id, c.job_id, c.from_state, c.to_state, (c.actor or actor).host, (c.actor or actor).name, _text(c.detail)) for c in changes])
    return [True] * len(changes)


def history(db: DB, file_id: str) -> list[dict]:
    """Every event of a file and of its jobs, oldest first."""
    rows = db.all("SELECT * FROM events WHERE file_id = ? ORDER BY id", (file_id,))
    return [dict(r) for r in rows]


def unknown_ids(db: DB, ids: Iterable[str], *, job_numbers: bool = False) -> list[str]:
    """The ids among ``ids`` that name no file, in their order, each once. With
    ``job_numbers``, an id of digits names a job (its number) instead of a file."""
    wanted = list(dict.fromkeys(ids))
    numbers = [int(x) for x in wanted if job_numbers and x.isdigit()]
    names = [x for x in wanted if not (job_numbers and x.isdigit())]
    known = {r[0] for r in db.all("SELECT id FROM files WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(names),))}
    known |= {str(r[0]) for r in db.all("SELECT id FROM jobs WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(numbers),))}
    return [x for x in wanted if x not in known]
