"""Migrations 9-17 of the ledger's schema: the views for people who open the database,
the indexes a large journal needs (with ``FILE_NAME``), and the columns and tables
added since (owner spellings, retry for a time, runs, video, archive hooks, route
answers). Listed in order in ``imgq.ledger.migrations.MIGRATIONS``; append-only.
"""

from __future__ import annotations


# The ISO 8601 form, in UTC, that each view gives beside an epoch time: X_at -> X_iso.
_ISO = "strftime('%Y-%m-%dT%H:%M:%fZ', {}, 'unixepoch')"
# Now, in seconds since the epoch with milliseconds (strftime('%s') has whole seconds
# only, unixepoch() needs SQLite 3.38).
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"


def _m9_views(db: "sqlite_utils.Database") -> None:
    # Views for people who open the database with sqlite-utils, Datasette or sqlite3:
    # one row per photo, the failures standing now, the queue, throughput per minute.
    # Described column by column in imgq/ledger/catalog.toml (`imgq datasette-metadata`).
    # Every epoch time X_at has its ISO 8601 UTC text X_iso beside it. Each view reads
    # through indexes (tests/test_views.py checks the plans): throughput covers the 24
    # hours up to the journal's latest event, a range of the index on events.at, rather
    # than the whole journal. Views are part of the schema: a later change drops and
    # recreates one in a new migration, never edits this one.
    iso = _ISO.format
    db.execute(f"""
CREATE VIEW photos AS
SELECT
    f.id,
    f.owner,
    f.state,
    f.error,
    f.duplicate_of,
    f.inbox,
    f.path,
    f.inbox || '/' || f.path AS inbox_path,
    f.taken_at AS taken,
    f.taken_source,
    f.format,
    f.width,
    f.height,
    nullif(trim(coalesce(json_extract(f.meta, '$.make'), '') || ' ' || coalesce(json_extract(f.meta, '$.model'), '')), '') AS camera,
    f.size AS bytes,
    f.sha256,
    (SELECT count(*) FROM artifacts a WHERE a.file_id = f.id) AS artifacts,
    (SELECT group_concat(name, ',') FROM (SELECT DISTINCT a.name FROM artifacts a WHERE a.file_id = f.id ORDER BY a.name)) AS artifact_names,
    (SELECT count(DISTINCT coalesce(c.destination_id, c.destination)) FROM copies c WHERE c.file_id = f.id AND c.artifact_id IS NULL) AS copies,
    (SELECT group_concat(destination, ',') FROM (SELECT DISTINCT c.destination FROM copies c WHERE c.file_id = f.id AND c.artifact_id IS NULL ORDER BY c.destination)) AS copied_to,
    (SELECT count(*) FROM copies c WHERE c.file_id = f.id AND c.artifact_id IS NOT NULL) AS artifact_copies,
    (SELECT max(s.faces) FROM face_scans s WHERE s.file_id = f.id) AS faces,
    (SELECT group_concat(tag, ',') FROM (SELECT DISTINCT t.tag FROM tags t WHERE t.file_id = f.id ORDER BY t.tag)) AS tags,
    f.mtime_ns / 1e9 AS modified_at,
    {iso("f.mtime_ns / 1e9")} AS modified_iso,
    f.created_at AS seen_at,
    {iso("f.created_at")} AS seen_iso,
    f.updated_at AS changed_at,
    {iso("f.updated_at")} AS changed_iso,
    (SELECT max(c.verified_at) FROM copies c WHERE c.file_id = f.id) AS verified_at,
    {iso("(SELECT max(c.verified_at) FROM copies c WHERE c.file_id = f.id)")} AS verified_iso
FROM files f
""")
    # Newest photos first (Datasette's default order for the view) without computing
    # every photo's row to sort them.
    db.execute("CREATE INDEX idx_files_created_at ON files (created_at)")
    # Partial indexes, so that failures reads only the rows that are failures.
    db.execute("CREATE INDEX idx_archive_targets_waiting ON archive_targets (updated_at) WHERE state = 'waiting'")
    db.execute("CREATE INDEX idx_collect_checks_keep ON collect_checks (checked_at) WHERE verdict = 'keep'")
    # `+j.state`: the NOT EXISTS looks the file's jobs up by file_id, not every failed job.
    db.execute(f"""
CREATE VIEW failures AS
SELECT
    step, file_id, job_id, destination, inbox_path, reason, kind, attempts, max_attempts, retrying,
    failed_at, {iso("failed_at")} AS failed_iso,
    next_try_at, {iso("next_try_at")} AS next_try_iso
FROM (
    SELECT 'work' AS step, j.file_id, j.id AS job_id, NULL AS destination, f.inbox || '/' || f.path AS inbox_path,
           j.error AS reason, j.error_kind AS kind, j.attempts, j.max_attempts, 0 AS retrying,
           j.updated_at AS failed_at, NULL AS next_try_at
      FROM jobs j JOIN files f ON f.id = j.file_id
     WHERE j.state = 'failed'
    UNION ALL
    SELECT 'work', j.file_id, j.id, NULL, f.inbox || '/' || f.path,
           j.error, j.error_kind, j.attempts, j.max_attempts, 1,
           j.updated_at, j.not_before
      FROM jobs j JOIN files f ON f.id = j.file_id
     WHERE j.state = 'ready' AND j.error IS NOT NULL
    UNION ALL
    SELECT 'scan', f.id, NULL, NULL, f.inbox || '/' || f.path,
           f.error, 'permanent', NULL, NULL, 0,
           f.updated_at, NULL
      FROM files f
     WHERE f.state = 'failed' AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.file_id = f.id AND +j.state = 'failed')
    UNION ALL
    SELECT 'archive', t.file_id, NULL, t.destination, f.inbox || '/' || f.path,
           t.error, t.error_kind, t.attempts, NULL, 1,
           t.updated_at, t.not_before
      FROM archive_targets t JOIN files f ON f.id = t.file_id
     WHERE t.state = 'waiting'
    UNION ALL
    SELECT 'collect', k.file_id, NULL, NULL, f.inbox || '/' || f.path,
           k.reason, NULL, NULL, NULL, 1,
           k.checked_at, NULL
      FROM collect_checks k JOIN files f ON f.id = k.file_id
     WHERE k.verdict = 'keep' AND f.state != 'collected'
)
""")
    db.execute(f"""
CREATE VIEW queue AS
SELECT
    j.id AS job_id,
    j.file_id,
    f.inbox || '/' || f.path AS inbox_path,
    j.recipe,
    j.stage,
    j.spec,
    j.state,
    CASE WHEN j.state = 'ready' AND j.not_before <= {_NOW} THEN 1 ELSE 0 END AS due,
    j.attempts,
    j.max_attempts,
    j.error AS last_error,
    j.lease_owner AS leased_by,
    j.not_before AS due_at,
    {iso("j.not_before")} AS due_iso,
    j.lease_until AS lease_ends_at,
    {iso("j.lease_until")} AS lease_ends_iso,
    j.created_at AS queued_at,
    {iso("j.created_at")} AS queued_iso
FROM jobs j JOIN files f ON f.id = j.file_id
WHERE j.state IN ('ready', 'leased')
""")
    db.execute(f"""
CREATE VIEW throughput AS
SELECT
    CAST(e.at / 60 AS INTEGER) * 60 AS minute_at,
    {iso("CAST(e.at / 60 AS INTEGER) * 60")} AS minute_iso,
    e.host,
    sum(e.entity = 'job' AND e.to_state = 'done') AS jobs_done,
    sum(e.entity = 'job' AND e.to_state = 'failed') AS jobs_failed,
    sum(e.entity = 'file' AND e.to_state = 'processed') AS photos_processed
FROM events e
WHERE e.at >= (SELECT max(at) FROM events) - 86400
  AND ((e.entity = 'job' AND e.to_state IN ('done', 'failed')) OR (e.entity = 'file' AND e.to_state = 'processed'))
GROUP BY minute_at, e.host
""")


# A file's name (the last component of its path in the inbox), as an expression SQLite can
# index: rtrim strips every character but '/' from the right, leaving the folder part.
FILE_NAME = "substr(path, length(rtrim(path, replace(path, '/', ''))) + 1)"


def _m10_journal_at_scale(db: "sqlite_utils.Database") -> None:
    # A site that has run for years holds 100,000 files and a million events: every query
    # a command runs must find its rows through an index (tests/test_query_plans.py).
    # Copies per destination (status): counted from this index alone, not the table.
    db.execute("CREATE INDEX IF NOT EXISTS idx_copies_destination_totals ON copies (destination, bytes, verified_at)")
    # Failing copy tasks (status): a handful among all the done ones.
    db.execute("CREATE INDEX IF NOT EXISTS idx_archive_targets_failing ON archive_targets (destination, updated_at) WHERE error IS NOT NULL")
    db.execute("CREATE INDEX IF NOT EXISTS idx_archive_targets_failing_recent ON archive_targets (updated_at) WHERE error IS NOT NULL")
    # A file's jobs in a given state (status's failures, retry): without it the planner,
    # which has no statistics, walks every failed job for every failed file.
    db.execute("CREATE INDEX IF NOT EXISTS idx_jobs_file_state ON jobs (file_id, state)")
    # What a run copied (report): the copies made in a window of time.
    db.execute("CREATE INDEX IF NOT EXISTS idx_copies_created ON copies (created_at, destination, bytes)")
    # `imgq log IMG_0001.jpg`: a file found by its name, in whatever folder.
    db.execute(f"CREATE INDEX IF NOT EXISTS idx_files_name ON files ({FILE_NAME})")


def _m11_owner_spellings(db: "sqlite_utils.Database") -> None:
    # One photographer, one name: a folder synced from a Mac arrives in Unicode NFD, the
    # same name from Linux in NFC. Owners are compared and stored in NFC (scan.owner_of);
    # each spelling of an owner's folder found on disk is kept here, so status can say
    # which spellings were merged. Existing owners are normalised and their spellings
    # recorded from the paths they were found at.
    import unicodedata

    db.conn.create_function("imgq_nfc", 1, lambda t: None if t is None else unicodedata.normalize("NFC", t), deterministic=True)
    db["owner_spellings"].create(
        {"owner": str, "spelling": str, "first_seen_at": float},
        pk=("owner", "spelling"),
        not_null={"first_seen_at"},
    )
    db.execute("UPDATE files SET owner = imgq_nfc(owner) WHERE owner != imgq_nfc(owner)")
    db.execute(
        "INSERT OR IGNORE INTO owner_spellings (owner, spelling, first_seen_at)"
        " SELECT owner, substr(path, 1, instr(path, '/') - 1), min(created_at) FROM files"
        " WHERE instr(path, '/') > 0 AND imgq_nfc(substr(path, 1, instr(path, '/') - 1)) = owner"
        " GROUP BY owner, substr(path, 1, instr(path, '/') - 1)"
    )


def _m12_retry_for_a_time(db: "sqlite_utils.Database") -> None:
    # Transient failures are retried for a time (retry_for), not a count: a job keeps the
    # time its current run of failures began. Lost workers are counted apart (max_lost),
    # so a photo that kills its worker still fails after a few tries.
    db.execute("ALTER TABLE jobs ADD COLUMN failing_since REAL")
    db.execute("ALTER TABLE jobs ADD COLUMN lost INTEGER NOT NULL DEFAULT 0")


def _m13_run_of_each_event(db: "sqlite_utils.Database") -> None:
    # Every event records the run (one command invocation, a row of runs) that caused it,
    # so a report on a run is exact, whichever step or host wrote its events.
    db.execute("ALTER TABLE events ADD COLUMN run_id INTEGER")
    db.execute("CREATE INDEX IF NOT EXISTS idx_events_run_id ON events (run_id)")


def _m14_video(db: "sqlite_utils.Database") -> None:
    # Videos beside photos in the same table, states and journal: what kind of media a
    # file is, and a video's running time and frame rate (its frame size is width x
    # height; rotation, codecs and frame count are in meta).
    db.execute("ALTER TABLE files ADD COLUMN kind TEXT NOT NULL DEFAULT 'photo'")
    db.execute("ALTER TABLE files ADD COLUMN duration REAL")
    db.execute("ALTER TABLE files ADD COLUMN frame_rate REAL")
    # status and report count photos and videos, and hours of video, apart: from this index alone
    db.execute("CREATE INDEX IF NOT EXISTS idx_files_kind ON files (kind, state, duration)")


def _m15_photos_of_every_kind(db: "sqlite_utils.Database") -> None:
    # The photos view lists videos too (kind 'video'): it says which rows are videos and
    # their running time. Recreated whole from its migration-9 text with the two columns
    # inserted after format, so the view stays one definition a reader can find.
    (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE type = 'view' AND name = 'photos'").fetchone()
    marker = "    f.format,\n"
    if marker not in sql:
        raise RuntimeError("migration 15: the photos view is not the one migration 9 made")
    db.execute("DROP VIEW photos")
    db.execute(sql.replace(marker, marker + "    f.kind,\n    f.duration,\n", 1))


def _m16_archive_hooks(db: "sqlite_utils.Database") -> None:
    # on_archived: a site's command run once per verified copy of a file's original at a
    # destination (to update its catalogue). One row per (file, destination): pending
    # until the command exits 0 (done); a failure (exit status, timeout, cannot start)
    # keeps the reason and waits out a backoff before a later archive runs it again. The
    # copy itself is recorded in copies and never depends on this row.
    db["archive_hooks"].create(
        {
            "file_id": str, "destination": str, "path": str, "command": str, "state": str,
            "attempts": int, "error": str, "not_before": float, "created_at": float, "updated_at": float,
        },
        pk=("file_id", "destination"),
        not_null={"path", "command", "state", "attempts", "not_before", "created_at", "updated_at"},
        defaults={"state": "pending", "attempts": 0, "not_before": 0},
        foreign_keys=[("file_id", "files", "id")],
    )
    # the hooks due (pending or failed): a few among all the done ones
    db.execute("CREATE INDEX idx_archive_hooks_due ON archive_hooks (not_before) WHERE state = 'pending'")


def _m17_route_answers(db: "sqlite_utils.Database") -> None:
    # The route command's answer for each file (route_command in imgq.toml), kept so that
    # it is asked once per file and collect knows where the original was sent without
    # asking again; ``command`` is the argv (JSON) that answered: another command asks again.
    db.execute(
        "CREATE TABLE IF NOT EXISTS route_answers (file_id TEXT PRIMARY KEY REFERENCES files(id), command TEXT NOT NULL,"
        " answer TEXT NOT NULL, decided_at REAL NOT NULL)"
    )

