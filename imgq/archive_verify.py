"""Verifying recorded copies: re-read each one and re-make a missing or corrupt copy.

``verify`` re-reads every recorded copy and re-makes missing or corrupt ones from the
original (if it is still in the inbox and unchanged), the artifact store, or another good
copy; in place only when the damaged file is provably that copy's
(``archive_names.owner_of``). Also here, because both ``imgq.archive`` and ``verify``
write them: recording a verified copy (``_record_copy``) and a failed archive target
with its backoff (``_failed``). Moved out of ``imgq.archive``, which re-exports
``verify``, ``Problem`` and ``VerifyReport``.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable, Iterable
from pathlib import Path

from imgq.archive_copies import ORIGINAL, Item, Sources, copy_item
from imgq.archive_names import owner_of, release
from imgq.destinations import Destination, DestinationUnavailable, Found
from imgq.backoff import delay as backoff_delay
from imgq.errors import ImgqError
from imgq.ledger import archive_targets, copies, journal
from imgq.ledger.database import DB
from imgq.ledger.journal import Actor


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


def _record_copy(db: DB, file_id: str, item: Item, destination: str, path: str, *, now: float, ident: str | None = None) -> None:
    copies.record_copy(db, file_id, artifact_id=item.artifact_id, destination=destination, path=path, sha256=item.sha256, size=item.bytes, now=now, ident=ident)


# --- targets: per file and destination, with backoff ------------------------------------


def _failed(db: DB, target, error: str, kind: str, *, now: float, actor: Actor, backoff: float, backoff_max: float, rng: random.Random) -> float:
    attempts = target["attempts"] + 1
    delay = backoff_delay(attempts, backoff, backoff_max, rng)
    archive_targets.failed(db, target, error, kind, attempts=attempts, not_before=now + delay, now=now, actor=actor)


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
    dry_run: bool = False,
) -> VerifyReport:
    """Re-read every recorded copy at ``destinations``; re-make missing or corrupt ones.

    A good copy gets a fresh ``verified_at``. A bad one is re-made from the original in
    the inbox (if unchanged), the artifact store, or another good copy; if it cannot be,
    its ``copies`` row is removed (it is no copy), the reason is kept on its archive
    target, and an archived file goes back to processed so that ``collect`` keeps the
    original and the next ``archive`` makes the copy again. With ``dry_run`` every copy
    is read but none is repaired: each bad one is a problem, not repaired.
    """
    rng = rng or random.Random()
    report = VerifyReport()
    rows = _recorded_copies(db, list(destinations), file_ids)
    sources = Sources(db, destinations, store_dir)
    good, bad = _read_back(rows, destinations, report)
    sources.bad.update((r["destination"], r["path"]) for r, _, _ in bad)
    copies.mark_verified(db, good, now=clock())
    for r, problem, got in bad:
        if dry_run:
            p = Problem(r["file_id"], r["destination"], r["path"], problem, False, "dry run: would be re-made or, if it cannot be, forgotten")
            report.problems.append(p)
            on_problem(p)
            continue
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
            owner = owner_of(db, dest, r, got)
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
            _record_copy(db, r["file_id"], item, dest.url, r["path"], now=clock(), ident=r["destination_id"])
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


def _repair(dest: Destination, r, item: Item, sources: Sources, *, replace: Found | None = None) -> str:
    # The inbox original (or the stored artifact) is a source only while it has the
    # recorded bytes: put() hashes as it reads and refuses a changed file, and then
    # another destination's good copy is used instead. Only ``replace`` (the damaged
    # bytes just read, proven this copy's by owner_of) may be written over.
    if r["state"] == "collected" and item.artifact_id is None:
        return "copied from " + sources.put_from_elsewhere(dest, item, r["file_id"], r["path"], replace=replace)
    return copy_item(dest, r["file_id"], item, r["path"], sources, replace=replace)


def _unrecord(db: DB, r, reason: str, *, now: float, actor: Actor, backoff: float, backoff_max: float, rng: random.Random) -> None:
    target = archive_targets.open_target(db, r["file_id"], r["destination"], now=now, actor=actor, detail=f"{r['path']}: no good copy")
    with db.transaction():
        copies.unrecord_copy(db, r, reason, now=now, actor=actor)
        state = db.one("SELECT state FROM files WHERE id = ?", (r["file_id"],))["state"]
        if state == "archived":
            journal.move_file(db, r["file_id"], "processed", now=now, actor=actor, expect=("archived",), detail=f"{r['destination']}: {reason}")
    _failed(db, target, f"{r['destination']}: {reason}", "transient", now=now, actor=actor, backoff=backoff, backoff_max=backoff_max, rng=rng)
