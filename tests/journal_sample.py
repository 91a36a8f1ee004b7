"""A database as a site has it after years: many files, jobs and events, built directly.

``build(path, files=100_000)`` makes an imgq database (the real schema, migrated by imgq)
holding what years of runs leave behind, written straight into SQLite in bulk so that a
100,000-photo journal takes seconds instead of the hours a real pipeline would: most
files collected, some archived, processed, queued or failed; one job per file (a few
failed, a few waiting); two artifacts per done job; verified copies at two destinations;
about eight events per file. ``inbox_files`` then lists the files still in the inbox
(not collected), so a caller can put matching bytes on disk for a no-op scan.

Used by ``bin/bench journal`` and tests/test_query_plans.py; it lives with the tests
because it writes rows no imgq step would write this way (the ledger is the only writer
of state in imgq itself). The schema is the one imgq's own migrations make. Needs
nothing but imgq (no pytest), so bin/bench can use it.
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
from pathlib import Path

DAY = 86_400.0
# the newest files (``active``) are at every stage; the older ones are history
ACTIVE_STATES = [("collected", 0.40), ("archived", 0.30), ("processed", 0.12), ("queued", 0.08), ("seen", 0.04), ("failed", 0.03), ("duplicate", 0.03)]
HISTORY_STATES = [("collected", 0.99), ("failed", 0.01)]
DESTINATIONS = ("/mnt/backup", "ssh://nas/srv/photos")
RECIPE_SPEC = json.dumps({"thumb": "thumb", "web": "web"}, sort_keys=True)


def content(file_id: str) -> bytes:
    """The bytes of a file still in the inbox (what ``inbox_files`` describes)."""
    return f"photo {file_id}\n".encode()


def build(path: Path, *, files: int = 100_000, active: int = 5_000, every: float = 950.0, inbox: str = "/srv/inbox",
          owners: int = 12, end: float = 1_800_000_000.0, seed: int = 1) -> dict:
    """Create the database at ``path`` (it must not exist); returns the counts written.

    One photo arrived every ``every`` seconds until ``end`` (100,000 at 950 s: three
    years); the newest ``active`` are at every stage of the pipeline, the older ones are
    history (collected, a few failed). Two journals built with the same ``active`` and
    ``every`` differ only in history: what a command should not pay for. ``inbox`` is the
    inbox root the files were found under."""
    from imgq.ledger.database import connect  # the real schema, by the real migrations

    path = Path(path)
    if path.exists():
        raise FileExistsError(path)
    connect(path).close()
    rnd = random.Random(seed)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    start = end - files * every
    rows = {"files": [], "jobs": [], "artifacts": [], "copies": [], "events": [], "archive_targets": [], "collect_checks": []}
    job_id = artifact_id = 0
    for i in range(files):
        at = start + every * i
        mix = ACTIVE_STATES if i >= files - active else HISTORY_STATES
        owner = f"photographer{i % owners:02d}"
        name = f"IMG_{i:06d}.jpg"
        file_id = f"{owner}_{int(at)}_{name}"
        state = rnd.choices([s for s, _ in mix], [w for _, w in mix])[0]
        body = content(file_id)
        sha = hashlib.sha256(body if state != "duplicate" else f"twin {i}".encode()).hexdigest()
        rows["files"].append((
            file_id, inbox, f"{owner}/{name}", owner, len(body), int(at * 1e9), sha,
            _iso(at), "exif", "JPEG", 4000, 3000, "{}", state,
            "not an image: starts with 'photo'" if state == "failed" else None, None, at, at + 600,
        ))
        ev = rows["events"]
        ev.append((at, "file", file_id, None, None, "seen" if state != "failed" else "failed", "scanhost", "scan", None))
        if state in ("failed", "duplicate", "seen"):
            continue
        job_id += 1
        job_state = "done" if state in ("collected", "archived", "processed") else rnd.choice(["ready", "failed", "ready"])
        error = "disk full on /srv: free some space" if job_state == "failed" else None
        rows["jobs"].append((
            job_id, file_id, "default", RECIPE_SPEC, "d" * 64, job_state, 1, 5, 0.0, None, None, None,
            "worker1", error, "transient" if error else None, None, at + 60, at + 120, "",
        ))
        ev.append((at + 60, "file", file_id, None, "seen", "queued", "scanhost", "enqueue", None))
        ev.append((at + 60, "job", file_id, job_id, None, "ready", "scanhost", "enqueue", "default"))
        ev.append((at + 90, "job", file_id, job_id, "ready", "leased", "worker1", "work", None))
        ev.append((at + 120, "job", file_id, job_id, "leased", job_state if job_state != "ready" else "ready", "worker1", "work", error))
        if job_state != "done":
            continue
        ev.append((at + 120, "file", file_id, job_id, "queued", "processed", "worker1", "work", None))
        for artifact in ("thumb", "web"):
            artifact_id += 1
            rows["artifacts"].append((artifact_id, job_id, file_id, artifact, f"{owner}/{file_id}.{artifact}.jpg", "e" * 64, 20_000, 640, 480, at + 120))
        if state == "processed":
            rows["collect_checks"].append((file_id, at + 300, "wait", "not archived yet", 0))
            continue
        for d in DESTINATIONS:
            rows["archive_targets"].append((file_id, d, 0, 0.0, None, None, at + 200, at + 300, "done"))
            rows["copies"].append((file_id, None, d, f"{owner}/{name}", sha, len(body), at + 300, at + 300, d))
        ev.append((at + 300, "file", file_id, None, "processed", "archived", "scanhost", "archive", None))
        if state == "collected":
            ev.append((at + 900, "file", file_id, None, "archived", "collected", "scanhost", "collect", None))
        else:
            rows["collect_checks"].append((file_id, at + 900, "wait", "a copy is missing", 1))
    # the runs of the last day: a `work` and an `imgq run` (what report and status read)
    rows["runs"] = [
        ("work", json.dumps({"processes": 2}), "worker1", 4242, end - DAY, end - DAY / 2, 0, json.dumps({"done": 100})),
        ("run", json.dumps({"inboxes": ["/srv/inbox"]}), "scanhost", 4343, end - 3600, end - 3000, 0, json.dumps({})),
    ]
    _insert(conn, rows)
    conn.execute("COMMIT")  # no ANALYZE: imgq never runs it, so neither does a real journal
    conn.close()
    return {table: len(r) for table, r in rows.items()}


def inbox_files(path: Path) -> list[tuple[str, int, int]]:
    """(path in the inbox, size, mtime_ns) of each file ``build`` left in the inbox."""
    conn = sqlite3.connect(path)
    try:
        return [tuple(r) for r in conn.execute("SELECT path, size, mtime_ns FROM files WHERE state != 'collected' ORDER BY path")]
    finally:
        conn.close()


def _insert(conn: sqlite3.Connection, rows: dict) -> None:
    conn.executemany(
        "INSERT INTO files (id, inbox, path, owner, size, mtime_ns, sha256, taken_at, taken_source, format, width, height, meta,"
        " state, error, duplicate_of, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        rows["files"],
    )
    conn.executemany(
        "INSERT INTO jobs (id, file_id, recipe, spec, spec_hash, state, attempts, max_attempts, not_before, lease_owner,"
        " lease_until, lease_token, host, error, error_kind, result, created_at, updated_at, stage)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        rows["jobs"],
    )
    conn.executemany(
        "INSERT INTO artifacts (id, job_id, file_id, name, path, sha256, bytes, width, height, created_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
        rows["artifacts"],
    )
    conn.executemany(
        "INSERT INTO copies (file_id, artifact_id, destination, path, sha256, bytes, verified_at, created_at, destination_id)"
        " VALUES (?,?,?,?,?,?,?,?,?)",
        rows["copies"],
    )
    conn.executemany(
        "INSERT INTO events (at, entity, file_id, job_id, from_state, to_state, host, actor, detail) VALUES (?,?,?,?,?,?,?,?,?)",
        rows["events"],
    )
    conn.executemany(
        "INSERT INTO archive_targets (file_id, destination, attempts, not_before, error, error_kind, created_at, updated_at, state)"
        " VALUES (?,?,?,?,?,?,?,?,?)",
        rows["archive_targets"],
    )
    conn.executemany(
        "INSERT INTO runs (command, args, host, pid, started_at, ended_at, exit_code, counts) VALUES (?,?,?,?,?,?,?,?)", rows["runs"]
    )
    conn.executemany(
        "INSERT INTO collect_checks (file_id, checked_at, verdict, reason, verified_copies) VALUES (?,?,?,?,?)",
        rows["collect_checks"],
    )


def _iso(at: float) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
