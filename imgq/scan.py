"""Scanning an inbox: find new photos, identify them by content, record them.

The owner of a photo is the first folder below the inbox root (a synced Dropbox
folder with one subfolder per photographer); files at the root get the default owner.
Nothing is followed through a symlink, so a scan never leaves the inbox and never
loops. An unchanged file (same path, size and mtime) is not read again.

Identities, not names (docs/safety.md):
- folders are skipped by (device, inode): imgq's store and every local archive
  destination (configured, or recorded in the database by any earlier archive) that lies
  inside an inbox is never scanned, however its path was spelled;
- a file is read once through ``imgq.original.Original`` (no symlink anywhere below the
  inbox root, regular files only, a FIFO cannot block the open): its sha256 and its
  header come from that one open file, so what is recorded is what was read;
- a file or folder that cannot be read or listed now (permissions, I/O) is a problem of
  this scan, reported (exit 1) and tried again by the next scan: it is never recorded as
  a verdict on the photo;
- names that are not UTF-8 are recorded losslessly (``original.stored_path``);
- ids are unique case-folded (a case-insensitive store or gallery cannot mix two photos)
  and at most ID_MAX bytes long (a short hash keeps a capped id unique).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import fnmatch
import json
import os
import re
import stat
import threading
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from imgq import imaging, original, store
from imgq.ledger import journal, owners
from imgq.ledger.database import DB
from imgq.errors import ImgqError, Permanent
from imgq.ledger.journal import Actor
from imgq.names import slug

# Names that sync clients, browsers, editors and imgq itself leave while writing.
TEMP_PATTERNS = [
    "*.tmp", "*.temp", "*.part", "*.partial", "*.crdownload", "*.download", "*.opdownload",
    "*.!sync", "*.!qb", "*.swp", "*~", "~$*", "#*#", "*.imgq-tmp*", "*.sb-*", "Thumbs.db",
    "desktop.ini", "Icon\r",
]
# imgq's own outputs when an archive sits inside an inbox: NAME.thumb.jpg, NAME.web.jpg,
# a video's NAME.preview.mp4 (or .webm).
OWN_OUTPUT = re.compile(r"\.(thumb|web)\.jpe?g$|\.preview\.(mp4|webm)$", re.IGNORECASE)
BATCH = 64
# Ids name store folders and gallery pages: with room for a "-N" suffix they stay below
# store.NAME_MAX.
ID_MAX = 110


@dataclasses.dataclass
class Found:
    """One file recorded (or re-recorded) by a scan."""

    id: str
    path: str  # as people read it: bytes that are not UTF-8 shown as \\xNN
    state: str  # seen, duplicate or failed
    reason: str | None = None
    duplicate_of: str | None = None


@dataclasses.dataclass
class ScanReport:
    found: list[Found] = dataclasses.field(default_factory=list)
    unchanged: int = 0
    settling: list[str] = dataclasses.field(default_factory=list)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (path, why): not photos to take
    # (path, why): folders that could not be listed, files that could not be read now;
    # nothing is recorded for them and the next scan tries again; the scan exits 1
    problems: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def new_ids(self) -> list[str]:
        return [f.id for f in self.found if f.state == "seen"]

    @property
    def failed(self) -> list[Found]:
        return [f for f in self.found if f.state == "failed"]


def is_temporary(name: str) -> bool:
    return name.startswith(".") or any(fnmatch.fnmatchcase(name, p) for p in TEMP_PATTERNS)


def folder_identities(paths: Iterable[str | os.PathLike]) -> set[tuple[int, int]]:
    """(device, inode) of each existing folder in ``paths`` (symlinks followed: the folder
    a path leads to is the one to skip, whatever its spelling)."""
    out = set()
    for p in paths:
        try:
            st = os.stat(original.fs_path(os.fspath(p)))
        except (OSError, ValueError):
            continue  # not there (yet): nothing of it can be in the inbox
        if stat.S_ISDIR(st.st_mode):
            out.add((st.st_dev, st.st_ino))
    return out


def recorded_destinations(db: DB) -> list[str]:
    """Every local folder an archive ever wrote to or planned to, from the database."""
    urls: set[str] = set()
    for table in ("archive_targets", "copies", "archive_paths"):
        try:
            urls.update(db.distinct(table, "destination"))  # each table has an index leading with it
        except Exception:  # an older schema without the table
            continue
    local = []
    for url in urls:
        if not url:
            continue
        if url.startswith("file://"):
            url = url[len("file://"):]
        if "://" not in url:
            local.append(url)
    return local


def walk(root: Path, skip: set[tuple[int, int]] = frozenset(), report: ScanReport | None = None) -> Iterator[tuple[Path, os.stat_result]]:
    """Regular files below ``root`` (never through a symlink), with their stat.

    Hidden and temporary names, imgq's own outputs, and the folders whose (device, inode)
    is in ``skip`` (the artifact store, archive destinations inside the inbox) are left
    out. A folder that cannot be listed is a problem of the report.
    """
    seen_dirs: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = folder.stat(follow_symlinks=False)
            ident = (st.st_dev, st.st_ino)
            if ident in seen_dirs or ident in skip:
                continue  # a bind mount looping back, or imgq's own store/destination
            seen_dirs.add(ident)
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            if report is not None:
                report.problems.append((original.shown_path(str(folder)), f"cannot list folder: {e.strerror}; the next scan tries again"))
            continue
        for entry in entries:
            path = Path(entry.path)
            if entry.is_symlink():
                if report is not None:
                    report.skipped.append((original.shown_path(str(path)), "symlink (never followed)"))
                continue
            if is_temporary(entry.name):
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append(path)
                continue
            if not entry.is_file(follow_symlinks=False) or OWN_OUTPUT.search(entry.name):
                continue
            try:
                yield path, entry.stat(follow_symlinks=False)
            except OSError as e:
                if report is not None:
                    report.problems.append((original.shown_path(str(path)), f"cannot stat: {e.strerror}; the next scan tries again"))
        stack.sort(reverse=True)  # visit folders in name order


def owner_of(rel: Path, default_owner: str) -> str:
    """The owner label: the first folder below the inbox root, as people read it, in
    Unicode NFC, so that a name synced from a Mac (NFD) and from Linux (NFC) is one owner."""
    return unicodedata.normalize("NFC", original.shown_path(rel.parts[0])) if len(rel.parts) > 1 else default_owner


class _Ids:
    """The ids in use, case-folded: loaded once per scan, only when a new id is needed
    (one scan runs at a time: the step lock), then kept up to date as ids are given."""

    def __init__(self, db: DB):
        self.db = db
        self.folded: set[str] | None = None

    def unique(self, base: str) -> str:
        if self.folded is None:
            self.folded = {r[0].casefold() for r in self.db.all("SELECT id FROM files")}
        base = store.short_name(base, ID_MAX)
        candidate, n = base, 1
        while candidate.casefold() in self.folded:
            n += 1
            candidate = f"{base}-{n}"
        self.folded.add(candidate.casefold())
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
    on_progress: Callable[[int, int], None] = lambda done, total: None,
) -> ScanReport:
    """Record every new or changed photo under ``roots``; files that are not good photos
    are recorded as failed with the reason, files that cannot be read now are reported as
    problems (and tried again next time), and the scan goes on.

    ``skip_dirs`` (the store, configured destinations) and every local destination
    recorded in the database are skipped by identity wherever they lie. The inboxes are
    listed first, then the files to read are read; ``on_progress(read, to_read)`` is told
    as each is (from the reading threads), if there are any."""
    report = ScanReport()
    skip = folder_identities([*skip_dirs, *recorded_destinations(db)])
    ids = _Ids(db)
    pending: list[tuple] = []
    listed: set[tuple[int, int]] = set()
    for root in roots:
        root = Path(os.path.abspath(root))
        if not root.is_dir():
            report.skipped.append((original.shown_path(str(root)), "not a folder"))
            continue
        st = root.stat()
        if (st.st_dev, st.st_ino) in skip:
            # an older imgq archived into the inbox itself: its copies would come back as
            # duplicates, and skipping it silently would hide every new photo
            report.problems.append((original.shown_path(str(root)), "this inbox is also imgq's store or an archive destination; not scanned (archive elsewhere)"))
            continue
        if (st.st_dev, st.st_ino) in listed:
            continue  # the same inbox named twice: every file is read once (all are listed before any is read)
        listed.add((st.st_dev, st.st_ino))
        stored_root = original.stored_path(str(root))
        for path, st in walk(root, skip, report):
            rel = path.relative_to(root)
            if settle > 0 and now - st.st_mtime < settle:
                report.settling.append(original.shown_path(str(path)))
                continue
            known = db.one(
                "SELECT id, size, mtime_ns, sha256, state FROM files WHERE inbox = ? AND path = ? AND state != 'collected'"
                " ORDER BY created_at DESC LIMIT 1",
                (stored_root, original.stored_path(str(rel))),
            )
            # a row without a sha256 is an old "cannot read" verdict: look again
            if known is not None and known["size"] == st.st_size and known["mtime_ns"] == st.st_mtime_ns and known["sha256"]:
                report.unchanged += 1
                continue
            pending.append((root, rel, st, known, default_owner, max_pixels))
    if pending:
        read = _Tally(len(pending), on_progress)
        for start in range(0, len(pending), BATCH):
            _record(db, _examine_all(pending[start : start + BATCH], read), report, ids, now=now, actor=actor)
    return report


class _Tally:
    """Files read so far out of ``total``, told to ``on_progress`` (from any thread)."""

    def __init__(self, total: int, on_progress: Callable[[int, int], None]):
        self.total, self.done, self.on_progress = total, 0, on_progress
        self.lock = threading.Lock()
        on_progress(0, total)

    def one(self) -> None:
        with self.lock:
            self.done += 1
            self.on_progress(self.done, self.total)


def _examine_all(items: list[tuple], read: _Tally) -> list[dict]:
    """examine over a batch, a few files at a time: hashing releases the GIL, so reading
    and hashing overlap and use every core (in order, so ids are stable)."""

    def one(item: tuple) -> dict:
        result = examine(*item)
        read.one()
        return result

    if len(items) == 1:
        return [one(items[0])]
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1, len(items))) as pool:
        return list(pool.map(one, items))


def _read(orig: original.Original) -> tuple[int, str, bytes]:
    """(bytes read, sha256, first 64 bytes) of the opened file, read once as a stream."""
    size, digest = orig.hash()
    return size, digest, os.pread(orig.fd, 64, 0)


def examine(root: Path, rel: Path, st: os.stat_result, known, default_owner: str, max_pixels: int) -> dict:
    """Read one file (outside any transaction) through one open handle: hash, format,
    size, EXIF. The result says what to record (``row``, ``error`` for a photo that is
    not good), or why nothing is recorded: ``skip`` (no longer a regular file in the
    inbox: swapped for a symlink, a FIFO, gone) or ``problem`` (cannot be read now)."""
    shown = original.shown_path(str(root / rel))
    item = {
        "root": root,
        "rel": rel,
        "shown": shown,
        "known": dict(known) if known else None,
        "row": {
            "inbox": original.stored_path(str(root)),
            "path": original.stored_path(str(rel)),
            "owner": owner_of(rel, default_owner),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
        },
        "error": None,
        "skip": None,
        "problem": None,
    }
    try:
        with original.Original(root, str(rel)) as orig:
            _examine_open(orig, item, max_pixels)
    except original.Unsafe as e:
        item["skip"] = str(e)
    except FileNotFoundError:
        item["skip"] = "gone before it could be read"
    except OSError as e:
        item["problem"] = f"cannot read it: {e.strerror or e}; the next scan tries again"
    return item


def _describe_start(head: bytes) -> str:
    """The first bytes of a file that is no image, as people read them: text quoted with
    its control characters escaped (``the text "hello\\n"``), anything else in hex."""
    start = head[:16]
    try:
        text = start.decode("utf-8")
    except UnicodeDecodeError as e:
        # a character cut by the 16-byte window is still text; a bad byte before it is not
        text = start[: e.start].decode("utf-8") if e.reason == "unexpected end of data" else None
    if text and all(ch.isprintable() or ch in "\t\r\n" for ch in text):
        shown = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
        return f'the text "{shown}"'
    return "the bytes " + head[:8].hex(" ")


def _examine_open(orig: original.Original, item: dict, max_pixels: int) -> None:
    row, shown = item["row"], item["shown"]
    # the record describes the object that was read, not the earlier listing
    row["mtime_ns"] = orig.stat.st_mtime_ns
    mtime_iso = dt.datetime.fromtimestamp(orig.stat.st_mtime, dt.timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds")
    row["taken_at"], row["taken_source"] = mtime_iso, "mtime"
    row["size"], row["sha256"], head = _read(orig)
    if row["size"] == 0:
        item["error"] = "empty file (0 bytes)"
        return
    fmt = imaging.sniff(head)
    if fmt is None and imaging.sniff_video(head):
        _examine_video(orig, item, imaging.sniff_video(head))
        return
    if fmt is None:
        item["error"] = (
            f"not an image or video: content is not a known image format ({imaging.FORMAT_NAMES})"
            f" nor video container ({imaging.VIDEO_FORMAT_NAMES}); it starts with {_describe_start(head)}"
        )
        return
    row["format"] = fmt
    # the header is read from the same open file that was hashed (pread: no reopening)
    probe = _probed(item, lambda: imaging.probe(imaging.Source.from_fd(orig.fd, shown), max_pixels=max_pixels))
    if probe is None:
        return
    row["width"], row["height"] = probe.width, probe.height
    if probe.taken_at:
        row["taken_at"], row["taken_source"] = probe.taken_at, "exif"
    meta = {k: v for k, v in {"make": probe.make, "model": probe.model, "orientation": probe.orientation,
                              "lens": probe.lens, "exposure": probe.exposure}.items() if v}
    row["meta"] = json.dumps(meta, sort_keys=True) if meta else None


def _probed(item: dict, probe):
    """``probe()``, or None with the reason set on ``item``: a bad file is an ``error``
    (recorded as failed), a file that cannot be read now a ``problem`` (tried again)."""
    try:
        return probe()
    except Permanent as e:
        item["error"] = str(e)
    except (ImgqError, OSError) as e:
        item["problem"] = f"cannot read it: {e}; the next scan tries again"
    return None


def _examine_video(orig: original.Original, item: dict, fmt: str) -> None:
    """A video: its container, frame size, rate, running time, rotation, codecs and
    creation time (the container's, else the modification time kept from before)."""
    row = item["row"]
    row["format"], row["kind"] = fmt, "video"
    probe = _probed(item, lambda: imaging.probe_video(orig.fd, item["shown"], fmt))
    if probe is None:
        return
    row["width"], row["height"] = probe.width, probe.height
    row["duration"], row["frame_rate"] = probe.duration, probe.fps
    if probe.created_at:
        row["taken_at"], row["taken_source"] = probe.created_at, "container"
    meta = {"rotation": probe.rotation, "frames": probe.frames, "codec": probe.codec, "audio": probe.audio}
    row["meta"] = json.dumps({k: v for k, v in meta.items() if v is not None}, sort_keys=True)


def _record(db: DB, batch: list[dict], report: ScanReport, ids: _Ids, *, now: float, actor: Actor) -> None:
    with db.transaction():
        for item in batch:
            row, known = item["row"], item["known"]
            if item["skip"]:
                report.skipped.append((item["shown"], item["skip"]))
                continue
            if item["problem"]:
                report.problems.append((item["shown"], item["problem"]))
                continue
            if known and row.get("sha256") == known["sha256"] and not item["error"]:
                # Touched but not changed (a sync client re-wrote it): remember the new stat.
                journal.refresh_stat(db, known["id"], size=row["size"], mtime_ns=row["mtime_ns"])
                report.unchanged += 1
                continue
            base = f"{slug(row['owner'])}_{_epoch(row['taken_at'])}_{slug(original.shown_path(item['rel'].name))}"
            row["id"] = ids.unique(base)
            if known and known["state"] in ("seen", "queued", "processed"):
                # the scanned bytes are gone: this record can never be archived as scanned
                journal.move_file(db, known["id"], "failed", now=now, actor=actor, error=f"changed in the inbox after scanning; the new content is {row['id']}")
            if item["error"]:
                row["error"] = item["error"]
                journal.add_file(db, row, state="failed", now=now, actor=actor, detail=item["error"])
                report.found.append(Found(row["id"], item["shown"], "failed", item["error"]))
                continue
            twin = db.one(
                "SELECT id FROM files WHERE sha256 = ? AND state NOT IN ('failed', 'duplicate') AND id != ? ORDER BY created_at LIMIT 1",
                (row["sha256"], row["id"]),
            )
            if twin:
                row["duplicate_of"] = twin["id"]
                journal.add_file(db, row, state="duplicate", now=now, actor=actor, detail=f"same content as {twin['id']}")
                report.found.append(Found(row["id"], item["shown"], "duplicate", duplicate_of=twin["id"]))
            else:
                journal.add_file(db, row, state="seen", now=now, actor=actor)
                report.found.append(Found(row["id"], item["shown"], "seen"))
            if len(item["rel"].parts) > 1:  # the owner's folder as spelled on disk
                owners.note_spelling(db, row["owner"], original.stored_path(item["rel"].parts[0]), now=now)
