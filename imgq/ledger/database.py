"""Opening the database: the connection, its write discipline and its clock.

One SQLite file is both the job queue and the journal. It is opened in WAL mode with a
busy timeout and foreign keys on, and migrated on opening to the newest schema (the
steps are in ``imgq.ledger.migrations``).

Beside the database sit only SQLite's own ``-wal`` and ``-shm`` files and one folder,
``<db>.locks/``, for imgq's advisory locks: ``write.lock`` (the writers' flock, whose
mtime is also the database's clock) and one ``<step>.lock`` per step (``lock_path``).
A file that cannot be used as the database (a folder, not SQLite, nowhere to write it,
or missing when the caller only reads) raises ``BadDatabase`` naming the path and the cause.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import tempfile
import time
from pathlib import Path

from imgq.errors import BadDatabase, NoDatabase
from imgq.ledger.migrations import migrate


BUSY_TIMEOUT_MS = 30_000
LOCKS_SUFFIX = ".locks"  # the folder of imgq's lock files: imgq.db -> imgq.db.locks/


def lock_path(db: Path | str, name: str) -> Path:
    """The lock file ``name`` of the database ``db`` (``<db>.locks/<name>.lock``), its
    folder created if needed. The locks live in one folder so that the folder holding
    the database shows the database, its -wal and -shm, and nothing else of imgq's."""
    folder = Path(str(db) + LOCKS_SUFFIX)
    try:
        folder.mkdir(mode=0o755, exist_ok=True)
    except OSError as e:
        raise BadDatabase(f"cannot create the lock folder {folder} of the database {db}: {e.strerror}") from None
    return folder / f"{name}.lock"


def connect(path: Path | str, *, synchronous: str = "NORMAL", create: bool = True) -> sqlite3.Connection:
    """A connection to the database at ``path``, migrated if needed, and created if it
    does not exist and ``create`` is true (else: ``NoDatabase``).

    Autocommit mode (``isolation_level=None``): every write transaction is explicit,
    so the queue can use ``BEGIN IMMEDIATE`` and the journal can keep a state change and
    its event in one transaction.
    """
    path = Path(path)
    _check_openable(path, create)
    try:
        return _connect(path, synchronous=synchronous, create=create)
    except sqlite3.Error as e:
        raise _unusable(path, e) from e


def _check_openable(path: Path, create: bool) -> None:
    """The mistakes that can be named before SQLite is asked (it says only "unable to
    open database file" for most of them)."""
    if path.is_dir():
        raise BadDatabase(f"the database {path} is a folder, not a database file (give the file inside it, e.g. {path / 'imgq.db'})")
    if path.exists():
        return
    if not create:
        raise NoDatabase(f"no database at {os.path.abspath(path)}")
    parent = path.parent
    if not parent.exists():
        raise BadDatabase(f"cannot create the database {path}: folder {parent} does not exist")
    if not parent.is_dir():
        raise BadDatabase(f"cannot create the database {path}: {parent} is not a folder")


def _unusable(path: Path, e: sqlite3.Error) -> BadDatabase | sqlite3.Error:
    """What SQLite's refusal to open ``path`` means, as a ``BadDatabase`` naming the path and
    the cause; other errors (a full disk, a lock held too long) are returned as they are."""
    code = getattr(e, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_NOTADB:
        return BadDatabase(f"the database {path} is not an SQLite database ({e}): is --db pointing at the wrong file?")
    if code == sqlite3.SQLITE_CORRUPT:
        return BadDatabase(f"the database {path} is damaged ({e}); check it with: sqlite3 {path} 'PRAGMA integrity_check'")
    if code in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH) or (
        code is not None and code & 0xFF in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY)
    ):
        return BadDatabase(f"cannot open the database {path}: {_why_not_writable(path) or e}")
    return e


def _why_not_writable(path: Path) -> str | None:
    """The operating system's reason why ``path`` (or a file beside it, where SQLite keeps
    its -wal and -shm) cannot be written, or None if both can."""
    try:
        if path.exists():
            os.close(os.open(path, os.O_RDWR))
        with tempfile.TemporaryFile(dir=path.parent or "."):
            pass
    except OSError as e:
        cause = e.strerror or errno.errorcode.get(e.errno, str(e))
        if path.exists() and e.filename == str(path):
            return f"it cannot be opened for writing ({cause})"
        return f"no file can be created in {path.parent or '.'} ({cause})"
    return None


def _connect(path: Path, *, synchronous: str, create: bool) -> sqlite3.Connection:
    # without create, mode=rw: SQLite itself refuses to make a file that vanished since the check
    target, uri = (str(path), False) if create else (path.absolute().as_uri() + "?mode=rw", True)
    conn = sqlite3.connect(target, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False, uri=uri)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


class DB:
    """A connection plus the write discipline every writer of imgq shares.

    ``transaction()`` takes a ``flock`` on ``<db>.locks/write.lock`` before ``BEGIN IMMEDIATE``.
    SQLite's own busy handler sleeps with growing back-off, so under contention the
    process that just committed wins again and again (measured here: one process did
    34,000 claims while the other did 1 in 5 s). The kernel's flock wakes a waiter
    as soon as the lock is free, which keeps claims fair between processes.
    """

    def __init__(self, path: Path | str, *, synchronous: str = "NORMAL", create: bool = True):
        """Open (and migrate) the database at ``path``; create it if it does not exist,
        unless ``create`` is false (commands that only read): then ``NoDatabase``."""
        self.path = Path(path)
        self.conn = connect(self.path, synchronous=synchronous, create=create)
        self._lock_fd: int | None = None
        # the run (a row of runs) whose events this connection writes: every event names it
        self.run_id: int | None = None

    def execute(self, sql: str, params=()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def one(self, sql: str, params=()) -> sqlite3.Row | None:
        return self.conn.execute(sql, params).fetchone()

    def all(self, sql: str, params=()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, params).fetchall()

    def distinct(self, table: str, column: str) -> list:
        """The distinct non-NULL values of ``column``, smallest first, each found by one
        step down an index that leads with ``column`` (there must be one), instead of
        reading every row: a journal holds a few destinations or inboxes and a million rows."""
        return [
            r[0]
            for r in self.all(
                f"WITH RECURSIVE v(x) AS (SELECT min({column}) FROM {table}"
                f" UNION ALL SELECT (SELECT min({column}) FROM {table} WHERE {column} > v.x) FROM v WHERE v.x IS NOT NULL)"
                " SELECT x FROM v WHERE x IS NOT NULL"
            )
        ]

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
            # made when first needed: a command that only reads leaves no lock folder behind
            path = lock_path(self.path, "write")
            try:
                self._lock_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise BadDatabase(f"cannot open the lock file {path} of the database {self.path}: {e.strerror}") from None
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


class ScratchDB(DB):
    """A dry run's database: an in-memory copy of the database at ``path`` (an empty,
    new one if there is no file there), migrated in memory. A step run on it does every
    write it would do, and the file, its -wal, and the lock folder are left exactly as
    they were: nothing is created, written or locked.

    The copy is read through SQLite's backup API on a read-only connection: one
    consistent snapshot. A copy of a large database costs its size in memory."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._lock_fd = None
        self.run_id: int | None = None  # as DB's: a dry run records its run in the copy
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        try:
            _check_openable(self.path, True)  # what a real run would refuse (a folder, no such folder), refused
            if self.path.exists():
                # Without a -wal beside it, no process has the database open and the file
                # is whole: read it as immutable, which makes no -wal or -shm either. With
                # one, read through it (read-only: the files are there already).
                live = os.path.exists(str(self.path) + "-wal")
                try:
                    source = sqlite3.connect(self.path.absolute().as_uri() + ("?mode=ro" if live else "?mode=ro&immutable=1"), uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
                    try:
                        source.backup(conn)
                    finally:
                        source.close()
                except sqlite3.Error as e:
                    raise _unusable(self.path, e) from e
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA foreign_keys = ON")
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        self.conn = conn

    def now(self) -> float:
        return time.time()  # one process, one clock: no lease is shared with anyone

    def _lock(self, deadline: float | None = None) -> None:
        pass  # nobody else can see an in-memory database

    def _unlock(self) -> None:
        pass


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
