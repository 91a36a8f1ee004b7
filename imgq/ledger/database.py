"""Opening the database and migrating its schema.

One SQLite file is both the job queue and the journal. It is opened in WAL mode with a
busy timeout and foreign keys on, and migrated with versioned steps (``PRAGMA
user_version`` holds the version reached). Migrations are append-only: never edit one
that has shipped, add the next.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path


BUSY_TIMEOUT_MS = 30_000


def _m1_core(db: "sqlite_utils.Database") -> None:
    db["files"].create(
        {
            "id": str,  # OWNER_EPOCH_BASENAME, unique, human-readable
            "inbox": str,  # absolute inbox root the file was found under
            "path": str,  # path relative to the inbox root
            "owner": str,
            "size": int,
            "mtime_ns": int,
            "sha256": str,
            "taken_at": str,  # ISO 8601, EXIF DateTimeOriginal else mtime (UTC)
            "taken_source": str,  # 'exif' or 'mtime'
            "format": str,
            "width": int,
            "height": int,
            "meta": str,  # JSON: camera make/model, orientation, ...
            "state": str,
            "error": str,
            "duplicate_of": str,
            "created_at": float,
            "updated_at": float,
        },
        pk="id",
        foreign_keys=[("duplicate_of", "files", "id")],
        not_null={"inbox", "path", "owner", "state", "created_at", "updated_at"},
    )
    db["files"].create_index(["inbox", "path"])
    db["files"].create_index(["sha256"])
    db["files"].create_index(["state"])

    db["jobs"].create(
        {
            "id": int,
            "file_id": str,
            "recipe": str,
            "spec": str,  # JSON {artifact: chain}; part of the job's identity
            "spec_hash": str,
            "state": str,
            "attempts": int,
            "max_attempts": int,
            "not_before": float,
            "lease_owner": str,
            "lease_until": float,
            "lease_token": str,
            "host": str,
            "error": str,
            "error_kind": str,
            "result": str,
            "created_at": float,
            "updated_at": float,
        },
        pk="id",
        foreign_keys=[("file_id", "files", "id")],
        not_null={"file_id", "recipe", "spec", "spec_hash", "state", "attempts", "max_attempts", "not_before"},
        defaults={"attempts": 0, "not_before": 0},
    )
    db["jobs"].create_index(["file_id", "recipe", "spec_hash"], unique=True)
    db["jobs"].create_index(["state", "not_before"])

    db["artifacts"].create(
        {
            "id": int,
            "job_id": int,
            "file_id": str,
            "name": str,
            "path": str,  # relative to the store
            "sha256": str,
            "bytes": int,
            "width": int,
            "height": int,
            "created_at": float,
        },
        pk="id",
        foreign_keys=[("job_id", "jobs", "id"), ("file_id", "files", "id")],
        not_null={"job_id", "file_id", "name", "path", "sha256", "bytes"},
    )
    db["artifacts"].create_index(["job_id", "name"], unique=True)
    db["artifacts"].create_index(["file_id"])

    db["copies"].create(
        {
            "id": int,
            "file_id": str,
            "artifact_id": int,  # NULL for the original
            "destination": str,
            "path": str,
            "sha256": str,
            "bytes": int,
            "verified_at": float,
            "created_at": float,
        },
        pk="id",
        foreign_keys=[("file_id", "files", "id"), ("artifact_id", "artifacts", "id")],
        not_null={"file_id", "destination", "path", "sha256", "bytes", "created_at"},
    )
    db["copies"].create_index(["file_id", "destination"])

    db["events"].create(
        {
            "id": int,
            "at": float,
            "entity": str,  # 'file', 'job', 'target' or 'copy' (the last two: archive)
            "file_id": str,
            "job_id": int,
            "from_state": str,
            "to_state": str,
            "host": str,
            "actor": str,
            "detail": str,
        },
        pk="id",
        not_null={"at", "entity", "to_state"},
    )
    db["events"].create_index(["file_id"])
    db["events"].create_index(["job_id"])
    db["events"].create_index(["at"])

    db["runs"].create(
        {
            "id": int,
            "command": str,
            "args": str,  # JSON
            "host": str,
            "pid": int,
            "started_at": float,
            "ended_at": float,
            "exit_code": int,
            "counts": str,  # JSON
        },
        pk="id",
        not_null={"command", "started_at"},
    )


def _m2_archive(db: "sqlite_utils.Database") -> None:
    # One row per file per archive destination: how copying it there is going. A
    # destination that is down or full fails only its own rows, which wait out a backoff.
    db["archive_targets"].create(
        {
            "id": int,
            "file_id": str,
            "destination": str,  # canonical: absolute local path or ssh://[user@]host[:port]/path
            "attempts": int,  # failed attempts in a row; 0 after a success
            "not_before": float,  # backoff: not tried again before this time
            "error": str,  # the last failure, for status
            "error_kind": str,
            "created_at": float,
            "updated_at": float,
        },
        pk="id",
        foreign_keys=[("file_id", "files", "id")],
        not_null={"file_id", "destination", "attempts", "not_before", "created_at", "updated_at"},
        defaults={"attempts": 0, "not_before": 0},
    )
    db["archive_targets"].create_index(["file_id", "destination"], unique=True)
    db["archive_targets"].create_index(["destination", "not_before"])

    # The names a file owns at a destination (its original and each artifact), reserved
    # before anything is written, so two photos can never be given the same name.
    db["archive_paths"].create(
        {
            "id": int,
            "file_id": str,
            "destination": str,
            "role": str,  # 'original' or the artifact's name (thumb, web, ...)
            "path": str,  # relative to the destination root
            "created_at": float,
        },
        pk="id",
        foreign_keys=[("file_id", "files", "id")],
        not_null={"file_id", "destination", "role", "path", "created_at"},
    )
    db["archive_paths"].create_index(["destination", "path"], unique=True)
    db["archive_paths"].create_index(["file_id", "destination", "role"], unique=True)

    # A copy row is a verified copy; one file name at a destination holds one copy.
    db["copies"].create_index(["destination", "path"], unique=True)

    # The latest verdict of `imgq collect` on each original still in the inbox.
    db["collect_checks"].create(
        {
            "file_id": str,
            "checked_at": float,
            "verdict": str,  # 'wait' (not archived yet) or 'keep' (a problem: see reason)
            "reason": str,
            "verified_copies": int,
        },
        pk="file_id",
        foreign_keys=[("file_id", "files", "id")],
        not_null={"checked_at", "verdict", "reason"},
    )


def _m3_faces(db: "sqlite_utils.Database") -> None:
    # One row per artifact of a done job whose chain ran a `faces` step: how many faces
    # it found, in a frame of width x height pixels (the image the boxes refer to). A
    # scan with 0 faces is a fact too: "looked, nobody there".
    db["face_scans"].create(
        {
            "id": int,
            "file_id": str,
            "job_id": int,
            "artifact": str,
            "faces": int,
            "width": int,
            "height": int,
            "at": float,
        },
        pk="id",
        foreign_keys=[("file_id", "files", "id"), ("job_id", "jobs", "id")],
        not_null={"file_id", "job_id", "artifact", "faces", "at"},
    )
    db["face_scans"].create_index(["job_id", "artifact"], unique=True)
    db["face_scans"].create_index(["file_id"])
    # One row per face found: its box in the scan's frame.
    db["faces"].create(
        {"id": int, "scan_id": int, "file_id": str, "job_id": int, "x": int, "y": int, "w": int, "h": int},
        pk="id",
        foreign_keys=[("scan_id", "face_scans", "id"), ("file_id", "files", "id"), ("job_id", "jobs", "id")],
        not_null={"scan_id", "file_id", "job_id", "x", "y", "w", "h"},
    )
    db["faces"].create_index(["file_id"])
    db["faces"].create_index(["scan_id"])
    # Labels on a file that are not states (its lifecycle is fixed): e.g. no_faces, set by
    # a recipe with on_no_faces = "tag" or "skip". `source` names what set it (a recipe).
    db["tags"].create(
        {"id": int, "file_id": str, "tag": str, "source": str, "job_id": int, "detail": str, "at": float},
        pk="id",
        foreign_keys=[("file_id", "files", "id"), ("job_id", "jobs", "id")],
        not_null={"file_id", "tag", "source", "at"},
    )
    db["tags"].create_index(["file_id", "tag", "source"], unique=True)
    db["tags"].create_index(["tag"])


def _m4_job_stages(db: "sqlite_utils.Database") -> None:
    # A huge image can be split: its job becomes stripe jobs ('stripe:I/N') and, once they
    # are all done, a 'join' job; '' is an ordinary job. The stage is part of the job's
    # identity, so the unique index moves to include it ('' rather than NULL, because
    # NULLs never collide in a unique index).
    db.execute("ALTER TABLE jobs ADD COLUMN stage TEXT NOT NULL DEFAULT ''")
    db.execute("DROP INDEX idx_jobs_file_id_recipe_spec_hash")
    db["jobs"].create_index(["file_id", "recipe", "spec_hash", "stage"], unique=True)


def _m5_hosts(db: "sqlite_utils.Database") -> None:
    # One row per host a fleet coordinator (`imgq work --hosts`) has used: its state
    # (connecting, up, benched, draining, removed, stopped), why it is benched and until
    # when, and counters. Written by imgq.hosts only; `imgq status` reads it.
    db["hosts"].create(
        {
            "name": str,  # [user@]host[:port] as written in --hosts or the hosts file
            "slots": int,
            "state": str,
            "reason": str,  # why benched (or the last trouble), for status
            "benched_until": float,  # not tried again before this time
            "failures": int,  # connect, preflight or loss failures in a row
            "done": int,  # jobs completed on the host, all runs
            "failed": int,  # jobs that failed on it
            "lost": int,  # times it was lost mid-run (died, hung, cut off)
            "version": str,  # imgq version its agent reported
            "cores": int,
            "free_disk": int,  # bytes free in the agent's folder at its last hello/beat
            "coordinator": str,  # hostname:pid of the coordinator that wrote the row
            "seen_at": float,  # last heartbeat from its agent
            "updated_at": float,
        },
        pk="name",
        not_null={"state", "updated_at"},
        defaults={"failures": 0, "done": 0, "failed": 0, "lost": 0},
    )


def _m6_destination_identity(db: "sqlite_utils.Database") -> None:
    # A destination is identified by what it is, not how it was spelled: a local folder by
    # the (device, inode) of its root, a remote one by the random id in the marker file
    # imgq writes there at first use (imgq.destinations). Two spellings of one folder
    # (a symlink, ssh://nas/x and ssh://u@nas:22/x) then count as one copy, not two.
    db["destinations"].create(
        {
            "url": str,  # the canonical spelling used in --to / imgq.toml
            "identity": str,  # 'local:DEV:INO' or 'marker:HEX'
            "real": str,  # the real path (local) or the url, for people
            "seen_at": float,
        },
        pk="url",
        not_null={"identity", "seen_at"},
    )
    db["destinations"].create_index(["identity"])
    db.execute("ALTER TABLE copies ADD COLUMN destination_id TEXT")
    db.execute("ALTER TABLE archive_paths ADD COLUMN destination_id TEXT")
    # Reserved names compared case-folded: on FAT/exFAT, SMB and macOS two names that
    # differ only in case are one file.
    db.execute("ALTER TABLE archive_paths ADD COLUMN folded TEXT")
    rows = db.execute("SELECT id, path FROM archive_paths").fetchall()
    db.conn.executemany("UPDATE archive_paths SET folded = ? WHERE id = ?", [(path.casefold(), i) for i, path in rows])
    db["archive_paths"].create_index(["destination", "folded"])
    db["archive_paths"].create_index(["destination_id", "folded"])
    db["copies"].create_index(["destination_id"])


def _m7_meta(db: "sqlite_utils.Database") -> None:
    # Facts about the database itself. 'database_id' is a random id made once, here: the
    # artifact store carries it in a marker, so a second database pointed at the same
    # store is refused instead of overwriting the first one's artifacts (store.own).
    import secrets

    db["meta"].create({"key": str, "value": str}, pk="key", not_null={"value"})
    db["meta"].insert({"key": "database_id", "value": secrets.token_hex(16)})


def _m8_archive_target_states(db: "sqlite_utils.Database") -> None:
    # An archive target is a state machine like a job (imgq.ledger.archive_targets):
    # pending, waiting (failed, in backoff) or done, each change checked and evented.
    # Existing rows: waiting if their last attempt failed, else pending (the next
    # archive that copies what they lack makes them done).
    db.execute("ALTER TABLE archive_targets ADD COLUMN state TEXT NOT NULL DEFAULT 'pending'")
    db.execute("UPDATE archive_targets SET state = 'waiting' WHERE error IS NOT NULL")


MIGRATIONS: list[Callable[["sqlite_utils.Database"], None]] = [
    _m1_core, _m2_archive, _m3_faces, _m4_job_stages, _m5_hosts, _m6_destination_identity, _m7_meta, _m8_archive_target_states,
]


def schema_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def connect(path: Path | str, *, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """A connection to the database at ``path``, created and migrated if needed.

    Autocommit mode (``isolation_level=None``): every write transaction is explicit,
    so the queue can use ``BEGIN IMMEDIATE`` and the journal can keep a state change and
    its event in one transaction.
    """
    path = Path(path)
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA foreign_keys = ON")
    migrate(conn)
    return conn


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


class DB:
    """A connection plus the write discipline every writer of imgq shares.

    ``transaction()`` takes a ``flock`` on ``<db>-writelock`` before ``BEGIN IMMEDIATE``.
    SQLite's own busy handler sleeps with growing back-off, so under contention the
    process that just committed wins again and again (measured here: one process did
    34,000 claims while the other did 1 in 5 s). The kernel's flock wakes a waiter
    as soon as the lock is free, which keeps claims fair between processes.
    """

    def __init__(self, path: Path | str, *, synchronous: str = "NORMAL"):
        self.path = Path(path)
        if not self.path.parent.is_dir():
            from imgq.errors import UsageError

            raise UsageError(f"cannot create database {self.path}: folder {self.path.parent} does not exist")
        self.conn = connect(self.path, synchronous=synchronous)
        self._lock_path = str(self.path) + "-writelock"
        self._lock_fd: int | None = None

    def execute(self, sql: str, params=()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def one(self, sql: str, params=()) -> sqlite3.Row | None:
        return self.conn.execute(sql, params).fetchone()

    def all(self, sql: str, params=()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, params).fetchall()

    def transaction(self, *, timeout: float | None = None):
        """A write transaction (``BEGIN IMMEDIATE`` under the flock). With ``timeout``,
        waiting for the write lock (the flock, then SQLite's) gives up after that many
        seconds with ``DatabaseBusy``; without, the flock is waited for as long as it takes
        (fair between workers) and SQLite's lock for the busy timeout."""
        return _Transaction(self, timeout)

    def now(self) -> float:
        """The database's clock, in seconds since the epoch: the time the filesystem
        holding the database stamps on a one-byte write to its lock file.

        Leases are compared between processes, so they must come from one clock, not
        from each process's own: a process whose clock runs an hour ahead would see every
        fresh lease as expired, and its own leases would last an hour. Every process
        that opens the database runs on the machine that holds it (SQLite is never used
        over a network filesystem), and that machine's kernel stamps the write whatever
        a process believes the time is. Resolution is the filesystem's (a few ms here).
        """
        fd = self._lock_file()
        os.pwrite(fd, b"\0", 0)
        return os.fstat(fd).st_mtime_ns / 1e9

    @property
    def id(self) -> str:
        """The random id this database was given when it was created (or migrated)."""
        return self.one("SELECT value FROM meta WHERE key = 'database_id'")["value"]

    def close(self) -> None:
        self.conn.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _lock_file(self) -> int:
        if self._lock_fd is None:
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        return self._lock_fd

    def _lock(self, deadline: float | None = None) -> None:
        fd = self._lock_file()
        if deadline is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return
        # No timed flock exists: poll. Only bounded transactions (rare ones, such as
        # collect's deletions) do this; the queue keeps the fair blocking wait.
        pause = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise self._busy() from None
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                pause = min(pause * 2, 0.05)

    def _busy(self):
        from imgq.errors import DatabaseBusy

        return DatabaseBusy(
            f"the database {self.path} stayed locked by another process (its write lock was not free in time);"
            f" the change this step was about to make was not made: run it again, or find the process holding it (fuser {self.path})"
        )

    def _unlock(self) -> None:
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)


class _Transaction:
    def __init__(self, db: DB, timeout: float | None = None):
        self.db = db
        self.timeout = timeout
        self.nested = False

    def __enter__(self) -> sqlite3.Connection:
        if self.db.conn.in_transaction:
            self.nested = True  # the caller's transaction already covers us
            return self.db.conn
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        self.db._lock(deadline)
        try:
            if deadline is None:
                self.db.conn.execute("BEGIN IMMEDIATE")
            else:
                self._begin_by(deadline)
        except sqlite3.OperationalError as e:
            self.db._unlock()
            if e.sqlite_errorcode == sqlite3.SQLITE_BUSY:
                raise self.db._busy() from e
            raise
        except BaseException:
            self.db._unlock()
            raise
        return self.db.conn

    def _begin_by(self, deadline: float) -> None:
        """BEGIN IMMEDIATE with SQLite's busy wait cut to what is left until ``deadline``
        (a process outside imgq's flock, such as a sqlite3 shell, may hold the lock)."""
        left_ms = max(1, int((deadline - time.monotonic()) * 1000))
        self.db.conn.execute(f"PRAGMA busy_timeout = {min(left_ms, BUSY_TIMEOUT_MS)}")
        try:
            self.db.conn.execute("BEGIN IMMEDIATE")
        finally:
            self.db.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.nested:
            return
        try:
            if exc_type is None:
                self.db.conn.execute("COMMIT")
            else:
                self.db.conn.execute("ROLLBACK")
        finally:
            self.db._unlock()
