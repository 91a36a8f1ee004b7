"""What archive writes besides target states: copies, reserved names, destinations seen.

A ``copies`` row is a verified copy (one name at one destination holds one copy); an
``archive_paths`` row is a name reserved for a file at a destination before anything is
written there; a ``destinations`` row says what a destination url was found to be. None
of these is a state machine, except that a copy whose record is withdrawn (it went
missing or bad and could not be repaired) writes an event, so the file's history says
why it is no longer counted.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from imgq.ledger.database import DB
from imgq.ledger.journal import Actor, _event


def record_copy(
    db: DB,
    file_id: str,
    *,
    artifact_id: int | None,
    destination: str,
    path: str,
    sha256: str,
    size: int,
    now: float,
    ident: str | None = None,
) -> None:
    """Record a verified copy (one row per name at a destination), with the identity of
    the destination it landed on (``ident``: what it is, not how it was spelled)."""
    with db.transaction():
        db.execute(
            "INSERT INTO copies (file_id, artifact_id, destination, path, sha256, bytes, verified_at, created_at, destination_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (destination, path) DO UPDATE SET file_id = excluded.file_id, artifact_id = excluded.artifact_id,"
            " sha256 = excluded.sha256, bytes = excluded.bytes, verified_at = excluded.verified_at, created_at = excluded.created_at,"
            " destination_id = coalesce(excluded.destination_id, copies.destination_id)",
            (file_id, artifact_id, destination, path, sha256, size, now, now, ident),
        )


def mark_verified(db: DB, copy_ids: Iterable[int], *, now: float) -> None:
    """Give the copies ``copy_ids``, just read back and found good, a fresh ``verified_at``."""
    rows = [(now, i) for i in copy_ids]
    if rows:
        with db.transaction():
            db.conn.executemany("UPDATE copies SET verified_at = ? WHERE id = ?", rows)


def unrecord_copy(db: DB, copy: Mapping, reason: str, *, now: float, actor: Actor = Actor()) -> None:
    """Withdraw the record of a copy that is no copy (missing, or bad and not repaired),
    with an event (entity 'copy', recorded -> unrecorded) saying where and why. Runs in
    the caller's transaction."""
    if not db.conn.in_transaction:
        raise RuntimeError("unrecord_copy must run inside db.transaction()")
    db.execute("DELETE FROM copies WHERE id = ?", (copy["id"],))
    _event(
        db, now=now, entity="copy", file_id=copy["file_id"], job_id=None, from_state="recorded", to_state="unrecorded", actor=actor,
        detail={"destination": copy["destination"], "path": copy["path"], "reason": reason},
    )


def reserve_paths(db: DB, file_id: str, destination: str, paths: Mapping[str, str], *, now: float, ident: str | None = None) -> None:
    """Reserve ``paths`` (role -> destination-relative path) for a file at a destination;
    names are also kept case-folded, as FAT, SMB and macOS compare them."""
    with db.transaction():
        db.conn.executemany(
            "INSERT INTO archive_paths (file_id, destination, role, path, created_at, destination_id, folded) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(file_id, destination, role, path, now, ident, path.casefold()) for role, path in paths.items()],
        )


def release_paths(db: DB, destination: str, file_id: str) -> None:
    """Give up this file's reserved names at a destination that hold no recorded copy of
    it (the name turned out taken or refused), so the next plan chooses again."""
    with db.transaction():
        db.execute(
            "DELETE FROM archive_paths WHERE file_id = ? AND destination = ? AND NOT EXISTS"
            " (SELECT 1 FROM copies c WHERE c.destination = archive_paths.destination AND c.path = archive_paths.path AND c.file_id = archive_paths.file_id)",
            (file_id, destination),
        )


def record_destinations(db: DB, identities: Mapping[str, str], *, now: float) -> None:
    """Remember what each destination url was found to be (imgq status, the audit)."""
    rows = [(url, ident, _real(url), now) for url, ident in identities.items()]
    if rows:
        with db.transaction():
            db.conn.executemany(
                "INSERT INTO destinations (url, identity, real, seen_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (url) DO UPDATE SET identity = excluded.identity, real = excluded.real, seen_at = excluded.seen_at",
                rows,
            )


def _real(url: str) -> str:
    return url if url.startswith("ssh://") else os.path.realpath(url)
