"""Opening the database: the connection, its write discipline and its clock.

One SQLite file is both the job queue and the journal. It is opened in WAL mode with a
busy timeout and foreign keys on, and migrated on opening to the newest schema (the
steps are in ``imgq.ledger.migrations``).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from pathlib import Path

from imgq.ledger.migrations import migrate


BUSY_TIMEOUT_MS = 30_000


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

    def when(self, now: float | None) -> float:
        """``now`` if given, else the database's clock (``now()``): how every ledger
        function turns its ``now`` keyword into the time it writes."""
        return self.now() if now is None else now

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
