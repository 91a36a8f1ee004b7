"""The ``runs`` table: one row per invocation of a step, for reports and status."""

from __future__ import annotations

import json
import os
import socket

from imgq.ledger.database import DB


def start(db: DB, command: str, args: dict, *, now: float | None = None) -> int:
    """Record that ``command`` started with ``args`` (on this host, in this process);
    returns the run's id for ``finish``."""
    with db.transaction():
        now = db.when(now)
        cur = db.execute(
            "INSERT INTO runs (command, args, host, pid, started_at) VALUES (?, ?, ?, ?, ?)",
            (command, json.dumps(args, sort_keys=True, default=str), socket.gethostname(), os.getpid(), now),
        )
    return cur.lastrowid


def finish(db: DB, run_id: int, *, exit_code: int, counts: dict, now: float | None = None) -> None:
    """Record how run ``run_id`` ended: its exit code and what it counted."""
    with db.transaction():
        now = db.when(now)
        db.execute(
            "UPDATE runs SET ended_at = ?, exit_code = ?, counts = ? WHERE id = ?",
            (now, exit_code, json.dumps(counts, sort_keys=True, default=str), run_id),
        )
