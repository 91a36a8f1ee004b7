"""The journal is not a single point of failure: snapshots of the database at every
destination, and bringing a coordinator back from one.

``backup`` takes a consistent snapshot of the live database with SQLite's online backup
(other imgq processes may go on writing meanwhile), compresses it, and puts it at each
destination as ``imgq-journal/<database id>/imgq-<UTC time>-<sha8>.db.gz`` beside the
archive, through the same ``Destination.put`` as every copy (written under a temporary
name, read back, renamed into place, never replacing anything). The newest ``keep``
snapshots of this database are kept at each destination; older ones are removed.

``restore`` fetches a snapshot (a local file, or the newest at a destination), checks it
(its sha256 against its name, then SQLite's ``integrity_check``), and writes it as the
database atomically; it never replaces a database that exists.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import re
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

from imgq import store
from imgq.destinations.base import Destination, NameTaken, SourceUnavailable
from imgq.errors import ImgqError, StorageError, UsageError
from imgq.ledger.database import DB

FOLDER = "imgq-journal"
NAME = re.compile(r"imgq-(\d{8}T\d{6}Z)-([0-9a-f]{8})\.db\.gz$")
CHUNK = 1 << 20


@dataclasses.dataclass
class Snapshot:
    path: Path  # the compressed snapshot, local
    name: str  # imgq-<time>-<sha8>.db.gz
    sha256: str
    bytes: int
    database_id: str


@dataclasses.dataclass
class Placed:
    destination: str
    rel: str | None
    error: str | None = None
    removed: list[str] = dataclasses.field(default_factory=list)


def snapshot(db: DB, folder: Path, *, now: float) -> Snapshot:
    """A consistent, compressed copy of the database in ``folder``."""
    raw = folder / "snapshot.db"
    target = sqlite3.connect(raw)
    try:
        db.conn.backup(target)  # a consistent copy, page by page, while others may write
    finally:
        target.close()
    row = db.one("SELECT value FROM meta WHERE key = 'database_id'")
    database_id = row[0] if row else "unknown"
    packed = folder / "snapshot.db.gz"
    h = hashlib.sha256()
    with open(raw, "rb") as src, open(packed, "wb") as out:
        with gzip.GzipFile(fileobj=_Hashing(out, h), mode="wb", mtime=0) as gz:
            shutil.copyfileobj(src, gz, CHUNK)
    raw.unlink()
    digest = h.hexdigest()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    return Snapshot(packed, f"imgq-{stamp}-{digest[:8]}.db.gz", digest, packed.stat().st_size, database_id)


def put(snap: Snapshot, dest: Destination, *, keep: int) -> Placed:
    """Put ``snap`` at ``dest`` and remove all but the newest ``keep`` snapshots of the
    same database there. A failure is returned, not raised: one destination down does
    not keep the snapshot from the others."""
    folder = f"{FOLDER}/{snap.database_id}"
    rel = f"{folder}/{snap.name}"
    try:
        dest.put(snap.path, rel, sha256=snap.sha256, size=snap.bytes)
    except NameTaken:
        pass  # this very snapshot, put there already (same second, same sha256 in the name)
    except (ImgqError, OSError) as e:
        return Placed(dest.url, None, str(e))
    placed = Placed(dest.url, rel)
    try:
        names = sorted(n for n in dest.listdir(folder) if NAME.match(n))
        for old in names[: max(0, len(names) - keep)]:
            dest.remove(f"{folder}/{old}")
            placed.removed.append(f"{folder}/{old}")
    except (ImgqError, OSError) as e:
        placed.error = f"snapshot put, but older ones not pruned: {e}"
    return placed


def backup_to(db: DB, dests: dict[str, Destination], *, keep: int, now: float) -> tuple[Snapshot, list[Placed]]:
    """Snapshot once and put it at every destination (``put``); the snapshot's facts
    (its local file is gone on return) and what happened at each destination."""
    with tempfile.TemporaryDirectory(prefix="imgq-backup-") as tmp:
        snap = snapshot(db, Path(tmp), now=now)
        placed = [put(snap, d, keep=keep) for d in dests.values()]
    return snap, placed


def changed_since(db: DB, event_id: int) -> bool:
    """Whether the journal holds an event after ``event_id`` (``last_event``)."""
    return last_event(db) > event_id


def last_event(db: DB) -> int:
    return db.one("SELECT coalesce(max(id), 0) FROM events")[0]


def newest(dest: Destination, database_id: str | None = None) -> str:
    """The destination-relative path of the newest snapshot at ``dest`` (of
    ``database_id``, or of the only database that has snapshots there)."""
    candidates: list[str] = []
    for db_id in [database_id] if database_id else dest.listdir(FOLDER, folders=True):
        candidates += [f"{FOLDER}/{db_id}/{n}" for n in dest.listdir(f"{FOLDER}/{db_id}") if NAME.match(n)]
    if not candidates:
        raise UsageError(f"{dest.url}: no journal snapshot under {FOLDER}/ (imgq backup makes them)")
    by_db = {c.split("/")[1] for c in candidates}
    if len(by_db) > 1:
        raise UsageError(f"{dest.url}: snapshots of {len(by_db)} databases ({', '.join(sorted(by_db))}): name one with --database-id")
    return max(candidates, key=lambda c: NAME.search(c).group(1))


def restore(source: Path, db_path: Path) -> dict:
    """Write the snapshot ``source`` (a local .db.gz) as the database ``db_path``: its
    sha256 checked against its name, its integrity checked, written atomically, never
    over an existing database."""
    m = NAME.search(source.name)
    if os.path.lexists(db_path):
        raise UsageError(f"{db_path} exists: restore never replaces a database (move it away first)")
    digest = _sha256(source)
    if m and not digest.startswith(m.group(2)):
        raise StorageError(f"{source}: its sha256 ({digest[:8]}...) does not match its name: a damaged snapshot; try an older one")
    with tempfile.TemporaryDirectory(dir=db_path.parent or ".") as tmp:
        raw = Path(tmp) / "restored.db"
        try:
            with gzip.open(source, "rb") as src, open(raw, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
        except (OSError, EOFError) as e:
            raise StorageError(f"{source}: cannot decompress it ({e}); a damaged snapshot, try an older one") from None
        conn = sqlite3.connect(raw)
        try:
            verdict = conn.execute("PRAGMA integrity_check").fetchone()[0]
            counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("files", "jobs", "events")}
            last = conn.execute("SELECT max(at) FROM events").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise StorageError(f"{source}: not an imgq database ({e})") from None
        finally:
            conn.close()
        if verdict != "ok":
            raise StorageError(f"{source}: SQLite's integrity check failed ({verdict}); try an older snapshot")
        store.write_atomically(db_path, lambda f: _copy_file(raw, f), replace=False)
    return {"database": str(db_path), "snapshot": str(source), "sha256": digest, **counts, "last_event_at": last}


def fetch(dest: Destination, rel: str, folder: Path) -> Path:
    local = folder / rel.rsplit("/", 1)[-1]
    try:
        dest.fetch(rel, local)
    except SourceUnavailable as e:
        raise UsageError(str(e)) from None
    return local


class _Hashing:
    """A file wrapper that hashes what is written through it."""

    def __init__(self, f, h):
        self.f, self.h = f, h

    def write(self, data) -> int:
        self.h.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _copy_file(src: Path, f) -> None:
    with open(src, "rb") as s:
        shutil.copyfileobj(s, f, CHUNK)
