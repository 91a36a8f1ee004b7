"""The one writer of the ``hosts`` table: each host a fleet coordinator uses, its state,
why it is benched, and its counters (``imgq status`` reads them).

A host's state changes like a file's or a job's: checked against the lifecycle below
(``InvalidTransition`` otherwise: always a bug) and written in one transaction with an
``events`` row (``entity = 'host'``, ``host`` its name, ``detail`` the reason)::

    (any, a run lists it) ─▶ new ─▶ connecting ─▶ up ─▶ draining ─▶ removed
                                        │  ▲      │        │
                                        ▼  │      ▼        ▼
                                      benched ◀───┴── (lost, misbehaved, failing)
    connecting, up, draining ─▶ stopped (the coordinator ends)
    new, connecting, up, benched ─▶ removed (no longer listed)
    benched ─▶ benched (more of why: how a lost agent's Slurm job ended, told after the loss)

``new`` may follow any state: the table outlives a coordinator, and each run starts its
hosts afresh. Counters and heartbeat times (``add_counts``) are not state changes and
write no event.
"""

from __future__ import annotations

import os
import socket

from imgq.errors import InvalidTransition
from imgq.ledger import journal
from imgq.ledger.database import DB

NEW = None  # the "from" state of a host the table has never seen

TRANSITIONS: dict[str | None, set[str]] = {
    NEW: {"new"},
    "new": {"new", "connecting", "removed"},
    "connecting": {"new", "up", "benched", "removed", "stopped"},
    "up": {"new", "draining", "benched", "removed", "stopped"},
    "draining": {"new", "up", "benched", "removed", "stopped"},
    "benched": {"new", "connecting", "removed", "benched"},
    "removed": {"new"},
    "stopped": {"new"},
}
STATES = [s for s in TRANSITIONS if s is not None]

FIELDS = ("slots", "reason", "benched_until", "failures", "version", "cores", "free_disk", "seen_at")
COUNTERS = ("done", "failed", "lost")


def coordinator_name() -> str:
    """hostname:pid of this coordinator: who wrote a host's row and its events."""
    return f"{socket.gethostname()}:{os.getpid()}"


def check(from_state: str | None, to_state: str) -> None:
    """Raise InvalidTransition unless ``from_state -> to_state`` is on the diagram."""
    if from_state not in TRANSITIONS or to_state not in TRANSITIONS[from_state]:
        raise InvalidTransition(f"host state change {from_state or 'new'} -> {to_state} is not allowed")


def move(db: DB, name: str, to_state: str, *, now: float, add: dict[str, int] | None = None, **fields) -> str | None:
    """Move host ``name`` to ``to_state``, setting the given fields and adding ``add`` to
    its counters (done, failed, lost), with one event whose detail is ``reason`` if given;
    returns the state it left (None: a host not in the table before)."""
    bad = (set(fields) - set(FIELDS)) | (set(add or {}) - set(COUNTERS))
    if bad:
        raise ValueError(f"unknown host fields {sorted(bad)}")
    coordinator = coordinator_name()
    sets = dict(fields, state=to_state, coordinator=coordinator, updated_at=now)
    with db.transaction():
        row = db.one("SELECT state FROM hosts WHERE name = ?", (name,))
        from_state = row["state"] if row is not None else NEW
        check(from_state, to_state)
        if row is None:
            db.execute(f"INSERT INTO hosts (name, {', '.join(sets)}) VALUES (?, {', '.join('?' * len(sets))})", (name, *sets.values()))
        else:
            db.execute(f"UPDATE hosts SET {', '.join(f'{k} = ?' for k in sets)} WHERE name = ?", (*sets.values(), name))
        for key, n in (add or {}).items():
            db.execute(f"UPDATE hosts SET {key} = coalesce({key}, 0) + ? WHERE name = ?", (n, name))
        journal.record_events(db, [(now, "host", None, None, from_state, to_state, name, coordinator, fields.get("reason"))])
    return from_state


def add_counts(db: DB, counts: dict[str, dict[str, int]], seen: dict[str, float], *, now: float) -> None:
    """Per host, add to its counters (``{name: {"done": n, ...}}``) and set when its agent
    was last heard, in one transaction."""
    with db.transaction():
        for name, add in counts.items():
            for key, n in add.items():
                if key not in COUNTERS:
                    raise ValueError(f"unknown host counter {key!r}")
                db.execute(f"UPDATE hosts SET {key} = coalesce({key}, 0) + ?, updated_at = ? WHERE name = ?", (n, now, name))
        for name, at in seen.items():
            db.execute("UPDATE hosts SET seen_at = ?, updated_at = ? WHERE name = ?", (at, now, name))
