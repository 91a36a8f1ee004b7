"""The route command's answers, one per file (``route_answers``): asked once, kept for
archive and collect. A cache of what the command said, not a state: no lifecycle."""

from __future__ import annotations

import json

from imgq.ledger.database import DB


def answer(db: DB, file_id: str, command: list[str]) -> dict[str, list[str] | None] | None:
    """What ``command`` answered for ``file_id`` (destination -> items, None: all), or None
    if it was not asked yet (or another command answered)."""
    row = db.one("SELECT answer FROM route_answers WHERE file_id = ? AND command = ?", (file_id, json.dumps(command)))
    return None if row is None else json.loads(row["answer"])


def remember(db: DB, file_id: str, command: list[str], routes: dict[str, list[str] | None], *, now: float) -> None:
    """Keep a validated answer of ``command`` for ``file_id`` (replacing another command's)."""
    with db.transaction():
        db.execute(
            "INSERT INTO route_answers (file_id, command, answer, decided_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (file_id) DO UPDATE SET command = excluded.command, answer = excluded.answer, decided_at = excluded.decided_at",
            (file_id, json.dumps(command), json.dumps(routes, sort_keys=True), now),
        )
