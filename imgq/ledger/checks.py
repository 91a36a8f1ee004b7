"""What collect found when it checked: the ``collect_checks`` rows (the copies it found
good get their time in ``imgq.ledger.copies.mark_verified``, as archive's do).

Not a state change: a check is kept for ``imgq status`` (why an original is still in the
inbox). Times: the
``now`` given, or the database's clock when it is None (see ``imgq.ledger``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from imgq.ledger.database import DB


def remember(db: DB, kept: Sequence[tuple[str, str, str, int]], done: Iterable[str], *, now: float | None = None) -> None:
    """Keep each verdict on a file still in the inbox, ``(file_id, verdict, reason,
    verified copies)``, and forget the checks of the ``done`` files (deleted or gone).

    A row changes only when the verdict does, so an idle rerun writes nothing.
    """
    with db.transaction():
        now = db.when(now)
        db.conn.executemany(
            "INSERT INTO collect_checks (file_id, checked_at, verdict, reason, verified_copies) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (file_id) DO UPDATE SET checked_at = excluded.checked_at, verdict = excluded.verdict,"
            " reason = excluded.reason, verified_copies = excluded.verified_copies"
            " WHERE verdict != excluded.verdict OR reason != excluded.reason OR verified_copies IS NOT excluded.verified_copies",
            [(file_id, now, verdict, reason, verified) for file_id, verdict, reason, verified in kept],
        )
        db.conn.executemany("DELETE FROM collect_checks WHERE file_id = ?", [(file_id,) for file_id in done])
