"""Archiving: copy each processed original and its artifacts to every destination.

Layout at a destination::

    DEST/YYYY/YYYY-MM-DD/OWNER/NAME.jpg          the original, under its own name
    DEST/YYYY/YYYY-MM-DD/OWNER/NAME.thumb.jpg    its artifacts beside it
    DEST/YYYY/YYYY-MM-DD/OWNER/NAME.web.jpg

from the taken time. OWNER is made a safe single path component (``..``, slashes, a
leading dash or dot, shell syntax cannot survive it), so nothing is ever written outside
DEST. The names a file will use at a destination are reserved in ``archive_paths`` before
anything is written: a second, different photo with the same name on the same day gets
``NAME-<first 8 hex of its sha256>.jpg`` (then the full hash), so photos never overwrite
each other and the choice does not depend on timing. A name already holding the same
bytes is recorded without copying, so the same photo is never copied twice. Reserved
names are compared case-folded (FAT, SMB and macOS fold case), a final rename never
replaces a file (a taken name is given up and the file planned again), a name the
destination refuses is replaced by an ASCII-safe one, and every generated name is capped
with a hash. Destinations are grouped by identity (``destinations.physical``): two
spellings of one folder are archived to once and hold one copy. Originals are read by
identity (``imgq.original``) and hashed as they are copied.

Each copy goes through ``Destination.put`` (temporary name, fsync, read back, sha256
compared, rename, folder fsynced) and is then recorded in ``copies``. A destination that
is down or full fails its own copies only: their ``archive_targets`` rows wait out an
exponential backoff while the other destinations proceed. A file becomes ``archived``
only when every destination of the run holds a verified copy of the original and of all
its artifacts.

``verify`` re-reads every recorded copy and re-makes missing or corrupt ones from the
original (if it is still in the inbox and unchanged), the artifact store, or another good
copy; in place only when the damaged file is provably that copy's (``_owner_of``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import random
import secrets
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath

from imgq.ledger import journal
from imgq.ledger.database import DB
from imgq.destinations import (
    Destination,
    DestinationUnavailable,
    Found,
    NameRefused,
    NameTaken,
    Physical,
    SourceChanged,
    SourceUnavailable,
    check_component,
    hash_fd,
    is_safe_name,
    physical,
)
from imgq.errors import ImgqError, StorageError, classify
from imgq.names import slug
from imgq.backoff import delay as backoff_delay
from imgq.ledger.journal import Actor
from imgq.original import ChangedInInbox, Original, Unsafe

ORIGINAL = "original"
NAME_BYTES = 180  # every generated name, suffixes included: leaves room for a temporary name's suffix under NAME_MAX
SAFE_STEM = 60  # the ASCII stem of a safe name, before its hash


@dataclasses.dataclass
class Item:
    """One thing a file needs at every destination: its original or one artifact."""

    role: str  # 'original' or the artifact's name
    artifact_id: int | None
    sha256: str
    bytes: int
    source: Path  # where it is on this machine
    ext: str = ""  # the artifact's extension (".jpg")
    inbox: str | None = None  # for the original: read by identity from inbox/rel (imgq.original)
    rel: str | None = None


@dataclasses.dataclass
class Failure:
    file_id: str
    destination: str
    error: str
    kind: str = "transient"
    down: bool = False  # the whole destination was unavailable (unreachable, full, missing)


@dataclasses.dataclass
class ArchiveReport:
    archived: list[str] = dataclasses.field(default_factory=list)  # files that became archived
    copied: int = 0  # copies written
    bytes: int = 0
    found: int = 0  # copies already in place (same bytes): recorded, not copied
    failed: list[Failure] = dataclasses.field(default_factory=list)
    waiting: int = 0  # (file, destination) pairs still in backoff: not tried this time
    down: dict[str, str] = dataclasses.field(default_factory=dict)  # destination -> why
    swept: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (destination, path) of killed copies' temporary files removed
    aliases: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (destination, the same destination already in the run)
    skipped: list[tuple[str, str | None]] = dataclasses.field(default_factory=list)  # asked-for ids not archivable: (id, state or None if unknown)


@dataclasses.dataclass
class Problem:
    file_id: str
    destination: str
    path: str
    problem: str  # what was wrong
    repaired: bool
    detail: str = ""  # how it was repaired, or why it could not be


@dataclasses.dataclass
class VerifyReport:
    checked: int = 0
    good: int = 0
    problems: list[Problem] = dataclasses.field(default_factory=list)
    unreachable: dict[str, str] = dataclasses.field(default_factory=dict)


# --- layout -------------------------------------------------------------------------------


def safe_component(text: str) -> str:
    """``text`` as one harmless path component: letters, digits, ``. _ -``; never ``.``,
    ``..``, empty, hidden or option-like."""
    out = slug(text or "")
    return check_component(out)


def folder_for(taken_at: str | None, owner: str) -> str:
    """``YYYY/YYYY-MM-DD/OWNER`` for a photo taken at ``taken_at`` (ISO 8601)."""
    try:
        day = dt.datetime.fromisoformat(taken_at or "").date()
        dated = f"{day:%Y}/{day:%Y-%m-%d}"
    except ValueError:
        dated = "undated/undated"
    return f"{dated}/{cap(safe_component(owner))}"


def _split_name(name: str) -> tuple[str, str]:
    p = PurePosixPath(name)
    ext = p.suffix if 1 < len(p.suffix) <= 10 else ""
    return (name[: -len(ext)] if ext else name), ext


def cap(name: str, limit: int = NAME_BYTES) -> str:
    """``name`` if it fits in ``limit`` UTF-8 bytes; else its stem cut short plus ``~`` and
    8 hex of the whole name's sha256, extension kept: distinct names stay distinct and no
    generated name (a temporary name's suffix included) reaches NAME_MAX."""
    if len(name.encode()) <= limit:
        return name
    stem, ext = _split_name(name)
    tail = f"~{hashlib.sha256(name.encode()).hexdigest()[:8]}{ext}"
    budget = limit - len(tail.encode())
    return stem.encode()[:budget].decode(errors="ignore") + tail


# Not names.slug on purpose: only for a name a destination refused, so it must be plain
# ASCII (FAT, exFAT, SMB) and carry the photo's sha256, where a slug keeps letters.
def safe_name(name: str, sha256: str) -> str:
    """A name every destination can hold (FAT, exFAT, SMB): ASCII letters, digits and
    ``. _ -`` plus 8 hex of the photo's sha256, for a name the destination refused."""
    stem, ext = _split_name(name)
    ascii_stem = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "._-") else "_" for ch in stem)
    ascii_stem = ascii_stem.strip("_.-")[:SAFE_STEM] or "photo"
    ascii_ext = ext if is_safe_name(ext.lstrip(".") or "x") else ".bin"
    return f"{ascii_stem}-{sha256[:8]}{ascii_ext}"


def name_candidates(original_name: str, sha256: str, *, safe: bool = False) -> list[str]:
    """Names to try for an original, in order: its own, then with its hash; with ``safe``
    (the destination refused the name) only ASCII-safe forms."""
    if safe:
        first = safe_name(original_name, sha256)
        stem, ext = _split_name(first)
        return [first, f"{stem[:-9]}-{sha256[:16]}{ext}", f"{stem[:-9]}-{sha256}{ext}"]
    try:
        name = check_component(original_name)
        if name.startswith("."):
            raise ValueError
    except ValueError:
        name = safe_component(original_name)
    stem, ext = _split_name(name)
    return [cap(name), cap(f"{stem}-{sha256[:8]}{ext}"), cap(f"{stem}-{sha256}{ext}")]


def artifact_rel(original_rel: str, role: str, ext: str, suffix: str = "") -> str:
    """The artifact's name beside the original: ``NAME.thumb.jpg`` for ``NAME.jpg``."""
    folder, name = original_rel.rsplit("/", 1)
    stem, _ = _split_name(name)
    name = f"{stem}.{safe_component(role)}{suffix}{ext or '.jpg'}"
    return f"{folder}/{cap(name)}"


# --- what a file needs ----------------------------------------------------------------------


def items_of(db: DB, f, store_dir: Path) -> list[Item]:
    """The original and the newest artifact of each name from the file's finished jobs."""
    items = [Item(ORIGINAL, None, f["sha256"], f["size"], Path(f["inbox"]) / f["path"], inbox=f["inbox"], rel=f["path"])]
    latest: dict[str, object] = {}
    for a in db.all(
        "SELECT a.* FROM artifacts a JOIN jobs j ON j.id = a.job_id WHERE a.file_id = ? AND j.state = 'done' ORDER BY a.id",
        (f["id"],),
    ):
        latest[a["name"]] = a
    for name, a in sorted(latest.items()):
        items.append(Item(name, a["id"], a["sha256"], a["bytes"], store_dir / a["path"], PurePosixPath(a["path"]).suffix))
    return items


def _reserved(db: DB, destination: str, file_id: str) -> dict[str, str]:
    return {r["role"]: r["path"] for r in db.all("SELECT role, path FROM archive_paths WHERE file_id = ? AND destination = ?", (file_id, destination))}


def _taken_by_others(db: DB, dest: Destination, ident: str | None, file_id: str, paths: Iterable[str]) -> bool:
    """Is any of ``paths``, compared case-folded (FAT, SMB and macOS fold case), reserved
    by another file at this destination, under whatever spelling it was reached by?"""
    folded = [p.casefold() for p in paths]
    marks = ",".join("?" * len(folded))
    row = db.one(
        f"SELECT 1 FROM archive_paths WHERE (destination = ? OR destination_id = ?) AND file_id != ? AND folded IN ({marks}) LIMIT 1",
        (dest.url, ident or "", file_id, *folded),
    )
    return row is not None


def _foreign(found: dict[str, Found | None], want: dict[str, str]) -> bool:
    """Does any of the names hold something other than what we would put there?"""
    return any(found.get(path) is not None and found[path].sha256 != sha for path, sha in want.items())


def plan(db: DB, dest: Destination, f, items: Sequence[Item], *, now: float, ident: str | None = None, safe: bool = False) -> dict[str, str]:
    """The destination-relative path of each item, reserved for this file.

    The first plan of a file at a destination picks the first candidate name whose paths
    are reserved by no other file (case-folded, at this destination by any spelling) and
    hold nothing different at the destination; later plans reuse it (an artifact added
    since gets its name beside the original). ``safe``: only ASCII-safe names (the
    destination refused the photo's own name).
    """
    paths = _reserved(db, dest.url, f["id"])
    new: dict[str, str] = {}
    if ORIGINAL not in paths:
        folder = folder_for(f["taken_at"], f["owner"])
        for candidate in name_candidates(PurePosixPath(f["path"]).name, f["sha256"], safe=safe):
            base = f"{folder}/{candidate}"
            names = {ORIGINAL: base, **{i.role: artifact_rel(base, i.role, i.ext) for i in items if i.role != ORIGINAL and i.role not in paths}}
            if _taken_by_others(db, dest, ident, f["id"], names.values()):
                continue
            want = {names[i.role]: i.sha256 for i in items if i.role in names}
            if _foreign(dest.check(want), want):
                continue
            new = names
            break
        else:
            raise StorageError(f"{dest.url}: no free name for {f['path']} in {folder}")
    else:
        for i in items:
            if i.role in paths:
                continue
            for suffix in ("", f"-{f['sha256'][:8]}", f"-{f['sha256']}"):
                rel = artifact_rel(paths[ORIGINAL], i.role, i.ext, suffix)
                if not _taken_by_others(db, dest, ident, f["id"], [rel]) and not _foreign(dest.check([rel]), {rel: i.sha256}):
                    new[i.role] = rel
                    break
            else:
                raise StorageError(f"{dest.url}: no free name for the {i.role} artifact of {f['path']}")
    if new:
        with db.transaction():
            db.conn.executemany(
                "INSERT INTO archive_paths (file_id, destination, role, path, created_at, destination_id, folded) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(f["id"], dest.url, role, path, now, ident, path.casefold()) for role, path in new.items()],
            )
        paths.update(new)
    return paths


def release(db: DB, destination: str, file_id: str) -> None:
    """Give up this file's reserved names at a destination that hold no recorded copy of
    it (the name turned out taken or refused), so the next plan chooses again."""
    with db.transaction():
        db.execute(
            "DELETE FROM archive_paths WHERE file_id = ? AND destination = ? AND NOT EXISTS"
            " (SELECT 1 FROM copies c WHERE c.destination = archive_paths.destination AND c.path = archive_paths.path AND c.file_id = archive_paths.file_id)",
            (file_id, destination),
        )


# --- copies ----------------------------------------------------------------------------------


def record_copy(db: DB, file_id: str, item: Item, destination: str, path: str, *, now: float, ident: str | None = None) -> None:
    """Record a verified copy (one row per name at a destination), with the identity of
    the destination it landed on (``ident``: what it is, not how it was spelled)."""
    with db.transaction():
        db.execute(
            "INSERT INTO copies (file_id, artifact_id, destination, path, sha256, bytes, verified_at, created_at, destination_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (destination, path) DO UPDATE SET file_id = excluded.file_id, artifact_id = excluded.artifact_id,"
            " sha256 = excluded.sha256, bytes = excluded.bytes, verified_at = excluded.verified_at, created_at = excluded.created_at,"
            " destination_id = coalesce(excluded.destination_id, copies.destination_id)",
            (file_id, item.artifact_id, destination, path, item.sha256, item.bytes, now, now, ident),
        )


def record_destinations(db: DB, phys: Physical, *, now: float) -> None:
    """Remember what each destination url was found to be (imgq status, the audit)."""
    rows = [(url, ident, _real(url), now) for url, ident in phys.identity.items()]
    if rows:
        with db.transaction():
            db.conn.executemany(
                "INSERT INTO destinations (url, identity, real, seen_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (url) DO UPDATE SET identity = excluded.identity, real = excluded.real, seen_at = excluded.seen_at",
                rows,
            )


def _real(url: str) -> str:
    return url if url.startswith("ssh://") else os.path.realpath(url)


def _copies_at(db: DB, file_id: str, destination: str) -> dict[str, str]:
    return {r["path"]: r["sha256"] for r in db.all("SELECT path, sha256 FROM copies WHERE file_id = ? AND destination = ?", (file_id, destination))}


def _missing(db: DB, f, dest_url: str, items: Sequence[Item]) -> list[Item]:
    paths = _reserved(db, dest_url, f["id"])
    have = _copies_at(db, f["id"], dest_url)
    return [i for i in items if i.role not in paths or have.get(paths[i.role]) != i.sha256]


class Sources:
    """Where else the bytes of an item can be read from: good copies at other destinations."""

    def __init__(self, db: DB, destinations: dict[str, Destination], scratch: Path):
        self.db, self.destinations, self.scratch = db, destinations, scratch
        self.bad: set[tuple[str, str]] = set()  # (destination, path) known not to be good

    def put_from_elsewhere(self, dest: Destination, item: Item, file_id: str, rel: str, *, replace: Found | None = None) -> str:
        """Copy ``item`` to ``dest`` from another destination's copy; returns where from.

        Errors of the other destinations are reasons to try the next one; errors of
        ``dest`` itself propagate.
        """
        rows = self.db.all(
            "SELECT destination, path FROM copies WHERE file_id IN (?, (SELECT duplicate_of FROM files WHERE id = ?))"
            " AND sha256 = ? AND destination != ? ORDER BY verified_at DESC",
            (file_id, file_id, item.sha256, dest.url),
        )
        reasons = []
        for r in rows:
            other = self.destinations.get(r["destination"])
            where = f"{r['destination']}/{r['path']}"
            if other is None or (r["destination"], r["path"]) in self.bad:
                continue
            self.scratch.mkdir(parents=True, exist_ok=True)
            tmp = self.scratch / f".repair.{os.getpid()}-{secrets.token_hex(4)}.imgq-tmp"
            try:
                try:
                    other.fetch(r["path"], tmp)
                    with open(tmp, "rb") as fh:
                        got = hash_fd(fh.fileno())
                except (ImgqError, OSError) as e:
                    reasons.append(f"cannot read {where}: {e}")
                    continue
                if got != Found(item.bytes, item.sha256):
                    self.bad.add((r["destination"], r["path"]))
                    reasons.append(f"{where} does not match either")
                    continue
                dest.put(tmp, rel, sha256=item.sha256, size=item.bytes, replace=replace)
                return where
            finally:
                tmp.unlink(missing_ok=True)
        raise SourceUnavailable("; ".join(reasons) or "no other good copy to copy from")


def _source_of(item: Item):
    """What ``put`` reads: an artifact's path in the store, or, for the original, an opener
    that opens it by identity in the inbox (no symlink followed, a regular file only);
    the bytes are hashed as they are copied and checked against the journal."""
    if item.role != ORIGINAL or item.inbox is None:
        return item.source

    def open_original():
        try:
            with Original(item.inbox, item.rel) as o:
                if o.stat.st_size != item.bytes:
                    raise ChangedInInbox(f"{o.path}: changed in the inbox since it was scanned (size {o.stat.st_size}, recorded {item.bytes}); scan again")
                return os.fdopen(os.dup(o.fd), "rb")
        except Unsafe as e:
            raise ChangedInInbox(f"{item.source}: changed in the inbox since it was scanned: {e}") from e
        except FileNotFoundError as e:
            raise SourceUnavailable(f"{item.source} is missing from the inbox") from e
        except OSError as e:
            raise SourceUnavailable(f"cannot read {item.source}: {e.strerror or e}") from e

    open_original.shown = str(item.source)
    return open_original


def copy_item(dest: Destination, file_id: str, item: Item, rel: str, sources: Sources, *, replace: Found | None = None) -> str:
    """Make sure ``rel`` at ``dest`` holds ``item``; returns 'found', 'copied' or
    'copied from WHERE' (another destination's copy, when the local source is gone).

    A name holding anything else is never written over (NameTaken), unless it holds
    exactly ``replace``: a damaged copy proven to be this item's (verify)."""
    found = dest.check([rel])[rel]
    if found == Found(item.bytes, item.sha256):
        return "found"
    if found is not None and found != replace:
        raise NameTaken(f"{dest.url}: {rel} (or a name differing only in case) holds another file; imgq never replaces it")
    try:
        dest.put(_source_of(item), rel, sha256=item.sha256, size=item.bytes, replace=replace)
        return "copied"
    except (SourceUnavailable, ChangedInInbox) as first:
        if item.role == ORIGINAL and isinstance(first, SourceChanged):
            first = ChangedInInbox(f"{item.source}: changed in the inbox since it was scanned ({first}); scan again")
        try:
            return "copied from " + sources.put_from_elsewhere(dest, item, file_id, rel, replace=replace)
        except SourceUnavailable as e:
            raise type(first)(f"{first}; {e}") from None


# --- targets: per file and destination, with backoff ------------------------------------


def _target(db: DB, file_id: str, destination: str, *, now: float):
    row = db.one("SELECT * FROM archive_targets WHERE file_id = ? AND destination = ?", (file_id, destination))
    if row is None:
        with db.transaction():
            db.execute(
                "INSERT INTO archive_targets (file_id, destination, attempts, not_before, created_at, updated_at) VALUES (?, ?, 0, 0, ?, ?)"
                " ON CONFLICT (file_id, destination) DO NOTHING",
                (file_id, destination, now, now),
            )
        row = db.one("SELECT * FROM archive_targets WHERE file_id = ? AND destination = ?", (file_id, destination))
    return row


def _succeeded(db: DB, target, *, now: float) -> None:
    if target["attempts"] or target["error"] or target["not_before"]:
        with db.transaction():
            db.execute(
                "UPDATE archive_targets SET attempts = 0, not_before = 0, error = NULL, error_kind = NULL, updated_at = ? WHERE id = ?",
                (now, target["id"]),
            )


def _failed(db: DB, target, error: str, kind: str, *, now: float, backoff: float, backoff_max: float, rng: random.Random) -> float:
    attempts = target["attempts"] + 1
    delay = backoff_delay(attempts, backoff, backoff_max, rng)
    with db.transaction():
        db.execute(
            "UPDATE archive_targets SET attempts = ?, not_before = ?, error = ?, error_kind = ?, updated_at = ? WHERE id = ?",
            (attempts, now + delay, error, kind, now, target["id"]),
        )
    return delay


# --- the step ----------------------------------------------------------------------------------


def eligible(db: DB, destinations: Sequence[str], file_ids: Iterable[str] | None = None) -> list:
    """Files to look at: processed ones, and archived ones lacking an original's copy at
    one of ``destinations`` (a destination added later)."""
    marks = ",".join("?" * len(destinations))
    sql = (
        "SELECT * FROM files f WHERE (f.state = 'processed' OR (f.state = 'archived' AND"
        f" (SELECT count(DISTINCT c.destination) FROM copies c WHERE c.file_id = f.id AND c.artifact_id IS NULL AND c.destination IN ({marks})) < ?))"
    )
    params: list = [*destinations, len(set(destinations))]
    if file_ids is not None:
        sql += " AND f.id IN (SELECT value FROM json_each(?))"
        params.append(json.dumps(list(file_ids)))
    return db.all(sql + " ORDER BY f.created_at, f.id", params)


def archive(
    db: DB,
    destinations: Sequence[Destination],
    *,
    store_dir: Path,
    file_ids: Iterable[str] | None = None,
    clock: Callable[[], float],
    actor: Actor = Actor(),
    backoff: float = 5.0,
    backoff_max: float = 3600.0,
    ignore_backoff: bool = False,
    rng: random.Random | None = None,
    on_file: Callable[[str, str, object], None] = lambda file_id, what, info: None,
) -> ArchiveReport:
    """Copy every eligible file (see ``eligible``) to every destination, verified.

    ``on_file(file_id, what, info)`` is told 'archived', 'failed' (info: Failure) and
    'copied' (info: (destination, path, how)) as they happen.
    """
    rng = rng or random.Random()
    report = ArchiveReport()
    # One physical destination reached by two spellings is archived to once and counts once.
    phys = physical(destinations)
    report.aliases = phys.aliases
    report.down.update(phys.down)  # unreachable now: its copies fail at once, with the reason
    destinations = phys.unique
    record_destinations(db, phys, now=clock())
    _sweep(destinations, phys, report, now=clock())
    by_url = {d.url: d for d in destinations}
    sources = Sources(db, by_url, store_dir)
    if file_ids is not None:
        file_ids = list(file_ids)
    files = eligible(db, list(by_url), file_ids)
    if file_ids is not None:
        chosen = {f["id"] for f in files}
        states = dict(db.all("SELECT id, state FROM files WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(file_ids),)))
        report.skipped = [(i, states.get(i)) for i in dict.fromkeys(file_ids) if i not in chosen and states.get(i) != "archived"]
    for f in files:
        items = items_of(db, f, store_dir)
        complete = True
        for dest in destinations:
            missing = _missing(db, f, dest.url, items)
            if not missing:
                continue
            complete = False
            target = _target(db, f["id"], dest.url, now=clock())
            if dest.url in report.down:
                _failed(db, target, report.down[dest.url], "transient", now=clock(), backoff=backoff, backoff_max=backoff_max, rng=rng)
                report.failed.append(Failure(f["id"], dest.url, report.down[dest.url], down=True))
                continue
            if target["not_before"] > clock() and not ignore_backoff:
                report.waiting += 1
                continue
            try:
                _copy_missing(db, dest, phys.identity.get(dest.url), f, items, missing, sources, report, clock=clock, on_file=on_file)
                _succeeded(db, target, now=clock())
            except (ImgqError, OSError) as e:
                text = str(e) if isinstance(e, ImgqError) else f"{dest.url}: {e}"
                if isinstance(e, DestinationUnavailable):
                    report.down[dest.url] = text
                kind = "permanent" if isinstance(e, ImgqError) and classify(e) == "permanent" else "transient"
                _failed(db, target, text, kind, now=clock(), backoff=backoff, backoff_max=backoff_max, rng=rng)
                failure = Failure(f["id"], dest.url, text, kind, down=isinstance(e, DestinationUnavailable))
                report.failed.append(failure)
                on_file(f["id"], "failed", failure)
                continue
        if not complete:
            complete = all(not _missing(db, f, d.url, items) for d in destinations)
        if complete and f["state"] == "processed":
            with db.transaction():
                journal.move_file(
                    db, f["id"], "archived", now=clock(), actor=actor, expect=("processed",),
                    detail=f"verified copies at {', '.join(d.url for d in destinations)}",
                )
            report.archived.append(f["id"])
            on_file(f["id"], "archived", None)
    return report


def _sweep(destinations: Sequence[Destination], phys: Physical, report: ArchiveReport, *, now: float) -> None:
    """Remove the temporary files killed copies left at each reachable destination."""
    for dest in destinations:
        if dest.url in phys.down:
            continue
        try:
            report.swept.extend((dest.url, rel) for rel in dest.sweep_temps(now=now))
        except ImgqError:
            pass  # the copies themselves will say what is wrong with this destination


def _copy_missing(db: DB, dest: Destination, ident: str | None, f, items, missing, sources: Sources, report: ArchiveReport, *, clock, on_file) -> None:
    """Copy what ``dest`` lacks of one file, recording each copy as soon as it is verified.

    A reserved name found holding another file (NameTaken: on a case-insensitive
    destination, another photo's name differing in case) or refused by the destination
    (NameRefused: FAT's ``:`` ``?``…) is given up and the file planned again, with
    ASCII-safe names after a refusal; the names used are the ones recorded."""
    safe = False
    for attempt in range(4):
        paths = plan(db, dest, f, items, now=clock(), ident=ident, safe=safe)
        try:
            for item in missing:
                how = copy_item(dest, f["id"], item, paths[item.role], sources)
                record_copy(db, f["id"], item, dest.url, paths[item.role], now=clock(), ident=ident)
                if how == "found":
                    report.found += 1
                else:
                    report.copied += 1
                    report.bytes += item.bytes
                on_file(f["id"], "copied", (dest.url, paths[item.role], how))
            return
        except (NameTaken, NameRefused) as e:
            if attempt == 3 or (isinstance(e, NameRefused) and safe):
                raise
            safe = safe or isinstance(e, NameRefused)
            release(db, dest.url, f["id"])
            missing = _missing(db, f, dest.url, items)


# --- verify ----------------------------------------------------------------------------------


def verify(
    db: DB,
    destinations: dict[str, Destination],
    *,
    store_dir: Path,
    file_ids: Iterable[str] | None = None,
    clock: Callable[[], float],
    actor: Actor = Actor(),
    backoff: float = 5.0,
    backoff_max: float = 3600.0,
    rng: random.Random | None = None,
    on_problem: Callable[[Problem], None] = lambda p: None,
) -> VerifyReport:
    """Re-read every recorded copy at ``destinations``; re-make missing or corrupt ones.

    A good copy gets a fresh ``verified_at``. A bad one is re-made from the original in
    the inbox (if unchanged), the artifact store, or another good copy; if it cannot be,
    its ``copies`` row is removed (it is no copy), the reason is kept on its archive
    target, and an archived file goes back to processed so that ``collect`` keeps the
    original and the next ``archive`` makes the copy again.
    """
    rng = rng or random.Random()
    report = VerifyReport()
    rows = _recorded_copies(db, list(destinations), file_ids)
    sources = Sources(db, destinations, store_dir)
    good, bad = _read_back(rows, destinations, report)
    sources.bad.update((r["destination"], r["path"]) for r, _, _ in bad)
    if good:
        with db.transaction():
            db.conn.executemany("UPDATE copies SET verified_at = ? WHERE id = ?", [(clock(), i) for i in good])
    for r, problem, got in bad:
        dest = destinations[r["destination"]]
        item = Item(
            r["artifact_name"] or ORIGINAL,
            r["artifact_id"],
            r["sha256"],
            r["bytes"],
            (store_dir / r["store_path"]) if r["artifact_id"] else Path(r["inbox"]) / r["inbox_path"],
            inbox=None if r["artifact_id"] else r["inbox"],
            rel=None if r["artifact_id"] else r["inbox_path"],
        )
        try:
            if dest.url in report.unreachable:
                raise DestinationUnavailable(report.unreachable[dest.url])
            owner = _owner_of(db, dest, r, got)
            if owner:
                # Not provably this copy's file: repairing it in place could overwrite
                # another photo's only copy. Drop the record and the name; the next
                # archive copies the photo again under a name of its own.
                _unrecord(db, r, f"{r['path']} {problem}; {owner}", now=clock(), actor=actor, backoff=backoff, backoff_max=backoff_max, rng=rng)
                release(db, r["destination"], r["file_id"])
                p = Problem(r["file_id"], dest.url, r["path"], problem, False, f"{owner}; not repaired in place: the next imgq archive copies it under another name")
                report.problems.append(p)
                on_problem(p)
                continue
            how = _repair(dest, r, item, sources, replace=got)
            record_copy(db, r["file_id"], item, dest.url, r["path"], now=clock(), ident=r["destination_id"])
            sources.bad.discard((dest.url, r["path"]))
            p = Problem(r["file_id"], dest.url, r["path"], problem, True, _how_repaired(how, item))
        except (ImgqError, OSError) as e:
            if isinstance(e, DestinationUnavailable):
                report.unreachable[dest.url] = str(e)
            p = Problem(r["file_id"], dest.url, r["path"], problem, False, str(e))
            _unrecord(db, r, f"{r['path']} {problem}; not repaired: {e}", now=clock(), actor=actor, backoff=backoff, backoff_max=backoff_max, rng=rng)
        report.problems.append(p)
        on_problem(p)
    return report


def _recorded_copies(db: DB, urls: list[str], file_ids: Iterable[str] | None) -> list:
    if not urls:
        return []
    sql = (
        "SELECT c.*, f.inbox, f.path AS inbox_path, f.state, a.path AS store_path, a.name AS artifact_name"
        " FROM copies c JOIN files f ON f.id = c.file_id LEFT JOIN artifacts a ON a.id = c.artifact_id"
        " WHERE c.destination IN (SELECT value FROM json_each(?))"
    )
    params = [json.dumps(urls)]
    if file_ids is not None:
        sql += " AND c.file_id IN (SELECT value FROM json_each(?))"
        params.append(json.dumps(list(file_ids)))
    return db.all(sql + " ORDER BY c.destination, c.path", params)


def _read_back(rows, destinations: dict[str, Destination], report: VerifyReport) -> tuple[list[int], list[tuple]]:
    """Check every row's copy, one batch per destination: (ids of good copies, [(row, problem)])."""
    good, bad = [], []
    for url, dest in destinations.items():
        mine = [r for r in rows if r["destination"] == url]
        if not mine:
            continue
        try:
            found = dest.check([r["path"] for r in mine])
        except ImgqError as e:
            report.unreachable[url] = str(e)
            continue
        for r in mine:
            report.checked += 1
            got = found[r["path"]]
            if got == Found(r["bytes"], r["sha256"]):
                good.append(r["id"])
            elif got is None:
                bad.append((r, "missing", None))
            else:
                bad.append((r, f"corrupt: {got.bytes} bytes, sha256 {got.sha256[:12]}…, expected {r['bytes']} bytes, {r['sha256'][:12]}…", got))
    report.good = len(good)
    return good, bad


def _how_repaired(how: str, item: Item) -> str:
    if how == "copied":
        return "re-made from " + ("the artifact store" if item.artifact_id else "the original in the inbox")
    if how == "found":
        return "good on a second look"
    return "re-" + how.replace("copied", "made", 1)  # "re-made from DEST/PATH"


def _owner_of(db: DB, dest: Destination, r, got: Found | None) -> str:
    """Why the damaged copy at ``r`` cannot be proven to be this copy's file, or "".

    Proven means: its name, case-folded, is the name of no other recorded copy or
    reservation at this destination (under any spelling of it), and what is there is not
    the content of any known photo or artifact (it would be another file's copy)."""
    db.conn.create_function("imgq_fold", 1, str.casefold, deterministic=True)
    ident = r["destination_id"] or ""
    other = db.one(
        "SELECT file_id FROM copies WHERE (destination = ? OR destination_id = ?) AND id != ? AND imgq_fold(path) = ?"
        " AND NOT (file_id = ? AND sha256 = ?)"  # the same item recorded under another spelling of the destination
        " UNION ALL SELECT file_id FROM archive_paths WHERE (destination = ? OR destination_id = ?) AND file_id != ? AND folded = ? LIMIT 1",
        (dest.url, ident, r["id"], r["path"].casefold(), r["file_id"], r["sha256"], dest.url, ident, r["file_id"], r["path"].casefold()),
    )
    if other:
        return f"its name is also the name of a copy of {other['file_id']} on this case-insensitive destination"
    if got is not None and db.one("SELECT 1 FROM files WHERE sha256 = ? UNION ALL SELECT 1 FROM artifacts WHERE sha256 = ? LIMIT 1", (got.sha256, got.sha256)):
        return "what is there is another photo's or artifact's content"
    return ""


def _repair(dest: Destination, r, item: Item, sources: Sources, *, replace: Found | None = None) -> str:
    # The inbox original (or the stored artifact) is a source only while it has the
    # recorded bytes: put() hashes as it reads and refuses a changed file, and then
    # another destination's good copy is used instead. Only ``replace`` (the damaged
    # bytes just read, proven this copy's by _owner_of) may be written over.
    if r["state"] == "collected" and item.artifact_id is None:
        return "copied from " + sources.put_from_elsewhere(dest, item, r["file_id"], r["path"], replace=replace)
    return copy_item(dest, r["file_id"], item, r["path"], sources, replace=replace)


def _unrecord(db: DB, r, reason: str, *, now: float, actor: Actor, backoff: float, backoff_max: float, rng: random.Random) -> None:
    target = _target(db, r["file_id"], r["destination"], now=now)
    with db.transaction():
        db.execute("DELETE FROM copies WHERE id = ?", (r["id"],))
        state = db.one("SELECT state FROM files WHERE id = ?", (r["file_id"],))["state"]
        if state == "archived":
            journal.move_file(db, r["file_id"], "processed", now=now, actor=actor, expect=("archived",), detail=f"{r['destination']}: {reason}")
    _failed(db, target, f"{r['destination']}: {reason}", "transient", now=now, backoff=backoff, backoff_max=backoff_max, rng=rng)


def destination_urls(db: DB) -> list[str]:
    """Every destination that holds a recorded copy."""
    return [r[0] for r in db.all("SELECT DISTINCT destination FROM copies ORDER BY destination")]


def summary(report: ArchiveReport) -> dict:
    return {
        "archived": len(report.archived),
        "copied": report.copied,
        "bytes": report.bytes,
        "found": report.found,
        "failed": len(report.failed),
        "waiting": report.waiting,
        "down": sorted(report.down),
        "swept": len(report.swept),
        "aliases": [list(a) for a in report.aliases],
    }

