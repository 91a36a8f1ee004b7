"""Scanning an inbox: find new photos, identify them by content, record them.

The owner of a photo is the first folder below the inbox root (a synced Dropbox
folder with one subfolder per photographer); files at the root get the default owner.
Nothing is followed through a symlink, so a scan never leaves the inbox and never
loops. An unchanged file (same path, size and mtime) is not read again.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import fnmatch
import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path

from imgq import imaging, journal
from imgq.database import DB
from imgq.errors import ImgqError, Permanent
from imgq.journal import Actor

# Names that sync clients, browsers, editors and imgq itself leave while writing.
TEMP_PATTERNS = [
    "*.tmp", "*.temp", "*.part", "*.partial", "*.crdownload", "*.download", "*.opdownload",
    "*.!sync", "*.!qb", "*.swp", "*~", "~$*", "#*#", "*.imgq-tmp*", "*.sb-*", "Thumbs.db",
    "desktop.ini", "Icon\r",
]
# imgq's own outputs when an archive sits inside an inbox: NAME.thumb.jpg, NAME.web.jpg.
OWN_OUTPUT = re.compile(r"\.(thumb|web)\.jpe?g$", re.IGNORECASE)
BATCH = 64


@dataclasses.dataclass
class Found:
    """One file recorded (or re-recorded) by a scan."""

    id: str
    path: str
    state: str  # seen, duplicate or failed
    reason: str | None = None
    duplicate_of: str | None = None


@dataclasses.dataclass
class ScanReport:
    found: list[Found] = dataclasses.field(default_factory=list)
    unchanged: int = 0
    settling: list[str] = dataclasses.field(default_factory=list)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (path, why)

    @property
    def new_ids(self) -> list[str]:
        return [f.id for f in self.found if f.state == "seen"]

    @property
    def failed(self) -> list[Found]:
        return [f for f in self.found if f.state == "failed"]


def is_temporary(name: str) -> bool:
    return name.startswith(".") or any(fnmatch.fnmatchcase(name, p) for p in TEMP_PATTERNS)


def walk(root: Path, skip_dirs: Iterable[Path] = (), report: ScanReport | None = None) -> Iterator[tuple[Path, os.stat_result]]:
    """Regular files below ``root`` (never through a symlink), with their stat.

    Hidden and temporary names, imgq's own outputs, and the folders in ``skip_dirs``
    (the artifact store, an archive inside the inbox) are left out.
    """
    skip = {os.path.realpath(p) for p in skip_dirs}
    seen_dirs: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = folder.stat(follow_symlinks=False)
            if (st.st_dev, st.st_ino) in seen_dirs:
                continue  # a bind mount looping back: visit each folder once
            seen_dirs.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            if report is not None:
                report.skipped.append((str(folder), f"cannot list folder: {e.strerror}"))
            continue
        for entry in entries:
            path = Path(entry.path)
            if entry.is_symlink():
                if report is not None:
                    report.skipped.append((str(path), "symlink (never followed)"))
                continue
            if is_temporary(entry.name):
                continue
            if entry.is_dir(follow_symlinks=False):
                if os.path.realpath(path) not in skip:
                    stack.append(path)
                continue
            if not entry.is_file(follow_symlinks=False) or OWN_OUTPUT.search(entry.name):
                continue
            try:
                yield path, entry.stat(follow_symlinks=False)
            except OSError as e:
                if report is not None:
                    report.skipped.append((str(path), f"cannot stat: {e.strerror}"))
        stack.sort(reverse=True)  # visit folders in name order


def owner_of(rel: Path, default_owner: str) -> str:
    return rel.parts[0] if len(rel.parts) > 1 else default_owner


def slug(text: str) -> str:
    """A form of ``text`` safe in ids, file names and shell words: letters, digits, . _ -."""
    text = unicodedata.normalize("NFC", text)
    out = "".join(ch if (ch.isalnum() or ch in "._-") else "_" for ch in text)
    out = re.sub(r"_+", "_", out).strip("_")
    out = out.lstrip("-.")  # never looks like an option or a hidden/relative name
    return out or "x"


def hash_file(path: Path) -> tuple[str, bytes]:
    """(sha256 hex, first 64 bytes) of a file, read once."""
    h = hashlib.sha256()
    head = b""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            if not head:
                head = chunk[:64]
            h.update(chunk)
    return h.hexdigest(), head


def _unique_id(db: DB, base: str, taken: set[str]) -> str:
    candidate, n = base, 1
    while db.one("SELECT 1 FROM files WHERE id = ?", (candidate,)) or candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def _epoch(iso: str) -> int:
    return int(dt.datetime.fromisoformat(iso).replace(tzinfo=dt.timezone.utc).timestamp())


def scan(
    db: DB,
    roots: Iterable[Path],
    *,
    now: float,
    settle: float = 0.0,
    default_owner: str = "unknown",
    max_pixels: int = 250_000_000,
    skip_dirs: Iterable[Path] = (),
    actor: Actor = Actor(),
) -> ScanReport:
    """Record every new or changed photo under ``roots``; unreadable files are recorded
    as failed with the reason and the scan goes on."""
    report = ScanReport()
    skip_dirs = list(skip_dirs)
    for root in roots:
        root = Path(os.path.abspath(root))
        if not root.is_dir():
            report.skipped.append((str(root), "not a folder"))
            continue
        pending: list[tuple] = []
        for path, st in walk(root, skip_dirs, report):
            rel = path.relative_to(root)
            if settle > 0 and now - st.st_mtime < settle:
                report.settling.append(str(path))
                continue
            known = db.one(
                "SELECT id, size, mtime_ns, sha256, state FROM files WHERE inbox = ? AND path = ? AND state != 'collected'"
                " ORDER BY created_at DESC LIMIT 1",
                (str(root), str(rel)),
            )
            if known is not None and known["size"] == st.st_size and known["mtime_ns"] == st.st_mtime_ns:
                report.unchanged += 1
                continue
            pending.append((root, rel, st, known, default_owner, max_pixels))
            if len(pending) >= BATCH:
                _record(db, _examine_all(pending), report, now=now, actor=actor)
                pending = []
        if pending:
            _record(db, _examine_all(pending), report, now=now, actor=actor)
    return report


def _examine_all(items: list[tuple]) -> list[dict]:
    """_examine over a batch, a few files at a time: hashing releases the GIL, so reading
    and hashing overlap and use every core (in order, so ids are stable)."""
    if len(items) == 1:
        return [_examine(*items[0])]
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1, len(items))) as pool:
        return list(pool.map(lambda item: _examine(*item), items))


def _examine(root: Path, rel: Path, st: os.stat_result, known, default_owner: str, max_pixels: int) -> dict:
    """Read one file (outside any transaction): hash, format, size, EXIF."""
    path = root / rel
    item = {
        "root": root,
        "rel": rel,
        "known": dict(known) if known else None,
        "row": {
            "inbox": str(root),
            "path": str(rel),
            "owner": owner_of(rel, default_owner),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
        },
        "error": None,
    }
    row = item["row"]
    mtime_iso = dt.datetime.fromtimestamp(st.st_mtime, dt.timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds")
    row["taken_at"], row["taken_source"] = mtime_iso, "mtime"
    try:
        row["sha256"], head = hash_file(path)
    except OSError as e:
        item["error"] = f"cannot read {path}: {e.strerror}"
        return item
    if st.st_size == 0:
        item["error"] = "empty file (0 bytes)"
        return item
    fmt = imaging.sniff(head)
    if fmt is None:
        item["error"] = f"not an image: content is not a known image format (JPEG, PNG, TIFF, WebP, BMP, GIF, HEIF/AVIF, camera RAW); it starts with {head[:8]!r}"
        return item
    row["format"] = fmt
    try:
        probe = imaging.probe(path, max_pixels=max_pixels)
    except Permanent as e:
        item["error"] = str(e)
        return item
    except (ImgqError, OSError) as e:
        item["error"] = f"cannot read {path}: {e}"
        return item
    row["width"], row["height"] = probe.width, probe.height
    if probe.taken_at:
        row["taken_at"], row["taken_source"] = probe.taken_at, "exif"
    meta = {k: v for k, v in {"make": probe.make, "model": probe.model, "orientation": probe.orientation}.items() if v}
    row["meta"] = json.dumps(meta, sort_keys=True) if meta else None
    return item


def _record(db: DB, batch: list[dict], report: ScanReport, *, now: float, actor: Actor) -> None:
    taken_ids: set[str] = set()
    with db.transaction():
        for item in batch:
            row, known = item["row"], item["known"]
            if known and row.get("sha256") == known["sha256"] and not item["error"]:
                # Touched but not changed (a sync client re-wrote it): remember the new stat.
                db.execute("UPDATE files SET size = ?, mtime_ns = ? WHERE id = ?", (row["size"], row["mtime_ns"], known["id"]))
                report.unchanged += 1
                continue
            base = f"{slug(row['owner'])}_{_epoch(row['taken_at'])}_{slug(item['rel'].name)}"
            row["id"] = _unique_id(db, base, taken_ids)
            taken_ids.add(row["id"])
            if known and known["state"] in ("seen", "queued", "processed"):
                # the scanned bytes are gone: this record can never be archived as scanned
                journal.move_file(db, known["id"], "failed", now=now, actor=actor, error=f"changed in the inbox after scanning; the new content is {row['id']}")
            if item["error"]:
                row["error"] = item["error"]
                journal.add_file(db, row, state="failed", now=now, actor=actor, detail=item["error"])
                report.found.append(Found(row["id"], str(item["root"] / item["rel"]), "failed", item["error"]))
                continue
            twin = db.one(
                "SELECT id FROM files WHERE sha256 = ? AND state NOT IN ('failed', 'duplicate') AND id != ? ORDER BY created_at LIMIT 1",
                (row["sha256"], row["id"]),
            )
            if twin:
                row["duplicate_of"] = twin["id"]
                journal.add_file(db, row, state="duplicate", now=now, actor=actor, detail=f"same content as {twin['id']}")
                report.found.append(Found(row["id"], str(item["root"] / item["rel"]), "duplicate", duplicate_of=twin["id"]))
            else:
                journal.add_file(db, row, state="seen", now=now, actor=actor)
                report.found.append(Found(row["id"], str(item["root"] / item["rel"]), "seen"))
