"""Where a file's copies go at a destination, and the names it owns there.

Layout at a destination::

    DEST/YYYY/YYYY-MM-DD/OWNER/NAME.jpg          the original, under its own name
    DEST/YYYY/YYYY-MM-DD/OWNER/NAME.thumb.jpg    its artifacts beside it
    DEST/YYYY/YYYY-MM-DD/OWNER/NAME.web.jpg

from the taken time. OWNER is made a safe single path component (``..``, slashes, a
leading dash or dot, shell syntax cannot survive it), so nothing is ever written outside
DEST. The names a file will use at a destination are reserved in ``archive_paths``
(through ``imgq.ledger.copies``) before anything is written: a second, different photo
with the same name on the same day gets ``NAME-<first 8 hex of its sha256>.jpg`` (then
the full hash), so photos never overwrite each other and the choice does not depend on
timing. Reserved names are compared case-folded (FAT, SMB and macOS fold case), a name
the destination refuses is replaced by an ASCII-safe one, and every generated name is
capped with a hash.

A helper of the archive step: it may import the ledger, destinations and ``imgq.scan``'s
``slug``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Sequence
from pathlib import PurePosixPath

from imgq.archive_copies import ORIGINAL, Item
from imgq.destinations import Destination, Found, check_component, is_safe_name
from imgq.errors import StorageError
from imgq.ledger import copies
from imgq.ledger.database import DB
from imgq.names import slug

NAME_BYTES = 180  # every generated name, suffixes included: leaves room for a temporary name's suffix under NAME_MAX
SAFE_STEM = 60  # the ASCII stem of a safe name, before its hash


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


# --- reservations ---------------------------------------------------------------------------


def reserved(db: DB, destination: str, file_id: str) -> dict[str, str]:
    """The names (role -> path) reserved for a file at a destination."""
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
    paths = reserved(db, dest.url, f["id"])
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
        copies.reserve_paths(db, f["id"], dest.url, new, now=now, ident=ident)
        paths.update(new)
    return paths


def release(db: DB, destination: str, file_id: str) -> None:
    """Give up this file's reserved names at a destination that hold no recorded copy of
    it (the name turned out taken or refused), so the next plan chooses again."""
    copies.release_paths(db, destination, file_id)


def owner_of(db: DB, dest: Destination, r, got: Found | None) -> str:
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
