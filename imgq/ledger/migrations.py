"""The schema, as versioned steps: ``MIGRATIONS[n - 1]`` takes a database from version
``n - 1`` to ``n`` (``PRAGMA user_version`` holds the version reached). Migrations are
append-only: never edit one that has shipped, add the next (in schema_growth, or a new
schema_* module when that grows long).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from imgq.ledger.schema_growth import (
    FILE_NAME,
    _m9_views,
    _m10_journal_at_scale,
    _m11_owner_spellings,
    _m12_retry_for_a_time,
    _m13_run_of_each_event,
    _m14_video,
    _m15_photos_of_every_kind,
    _m16_archive_hooks,
    _m17_route_answers,
)
from imgq.ledger.schema_tables import (
    _m1_core,
    _m2_archive,
    _m3_faces,
    _m4_job_stages,
    _m5_hosts,
    _m6_destination_identity,
    _m7_meta,
    _m8_archive_target_states,
)

__all__ = ["FILE_NAME", "MIGRATIONS", "migrate", "schema_version"]


MIGRATIONS: list[Callable[["sqlite_utils.Database"], None]] = [
    _m1_core, _m2_archive, _m3_faces, _m4_job_stages, _m5_hosts, _m6_destination_identity, _m7_meta, _m8_archive_target_states,
    _m9_views, _m10_journal_at_scale, _m11_owner_spellings, _m12_retry_for_a_time, _m13_run_of_each_event, _m14_video,
    _m15_photos_of_every_kind, _m16_archive_hooks, _m17_route_answers,
]


def schema_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to the newest version; safe to call from many processes at once."""
    if schema_version(conn) >= len(MIGRATIONS):
        return schema_version(conn)
    import sqlite_utils  # only needed to migrate; it is slow to import

    conn.execute("BEGIN IMMEDIATE")
    try:
        version = schema_version(conn)  # re-read under the write lock
        db = sqlite_utils.Database(conn)
        for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
            step(db)
            conn.execute(f"PRAGMA user_version = {number}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return schema_version(conn)
