"""The ``runs`` table: one row per invocation of a step, for reports and status."""

from __future__ import annotations

import json
import os
import socket

from imgq.ledger.database import DB


def start(db: DB, command: str, args: dict, *, now: float) -> int:
    with db.transaction():
        cur = db.execute(
            "INSERT INTO runs (command, args, host, pid, started_at) VALUES (?, ?, ?, ?, ?)",
            (command, json.dumps(args, sort_keys=True, default=str), socket.gethostname(), os.getpid(), now),
        )
    return cur.lastrowid


def finish(db: DB, run_id: int, *, exit_code: int, counts: dict, now: float) -> None:
    with db.transaction():
        db.execute(
            "UPDATE runs SET ended_at = ?, exit_code = ?, counts = ? WHERE id = ?",
            (now, exit_code, json.dumps(counts, sort_keys=True, default=str), run_id),
        )
