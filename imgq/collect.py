"""Collecting: delete originals from the inbox once their copies are certain.

An original is deleted only if, now:

- it is ``archived`` (or a ``duplicate`` whose twin is archived or already collected);
  with ``min_copies``, ``processed`` will do (and a twin that is): the copies decide, so
  one destination that is down does not keep the inbox full;
- enough recorded copies of it are re-read at their destinations and match in size and
  sha256: by default one at every required destination, or ``min_copies`` at distinct
  physical destinations; and none of them is the inbox file itself (same device and inode: a
  hard link, or a copy that lies inside the inbox), which is no copy at all;
- the inbox file is still the one that was scanned: opened once by identity
  (``imgq.original.Original``: no symlink followed from the inbox root down, a regular
  file), same size, mtime and sha256;
- at the moment of the deletion, inside the transaction that records it, the name still
  is that opened object, unchanged (``Original.unlink_if_same``); otherwise the
  transaction is rolled back and the file stays (it was replaced while collect waited).

Otherwise it stays, and the reason is kept in ``collect_checks`` for ``imgq status``:
verdict ``wait`` (nothing is wrong: the file is not archived yet) or ``keep`` (something
is: a copy is missing or corrupt, a destination is unreachable, the file changed).

The deletion and its journal event are one transaction at ``synchronous=FULL``; the file
is unlinked inside it, so the journal never says ``collected`` for a file that is still
there (if the commit itself fails, the file is gone with its copies verified, and the next
run records it as already gone). The wait for the write lock is bounded
(``lock_timeout``). Only files are removed, never folders: the photographers' folders stay.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence

from imgq.ledger import checks, journal
from imgq.ledger import copies as copy_records  # `copies` names the rows of a file here
from imgq.ledger.database import DB
from imgq.destinations import Destination, Found, physical
from imgq.errors import ImgqError
from imgq.ledger.journal import Actor
from imgq.original import Original, Unsafe
from imgq import routing as routing_lib
from imgq.routing import ORIGINAL, Routing

# How long collect waits for the database's write lock to record a deletion before it
# stops with DatabaseBusy (a hung process or an open sqlite3 shell must not hang cron).
LOCK_TIMEOUT = 30.0

DELETED, WOULD_DELETE, GONE, KEEP, WAIT = "deleted", "would-delete", "gone", "keep", "wait"


@dataclasses.dataclass
class Verdict:
    file_id: str
    path: str  # absolute inbox path
    action: str  # deleted, would-delete, gone (already not in the inbox), keep, wait
    reason: str
    verified: list[str] = dataclasses.field(default_factory=list)  # destinations with a good copy now


@dataclasses.dataclass
class CollectReport:
    verdicts: list[Verdict] = dataclasses.field(default_factory=list)

    def of(self, *actions: str) -> list[Verdict]:
        return [v for v in self.verdicts if v.action in actions]

    @property
    def problems(self) -> list[Verdict]:
        return self.of(KEEP)


def recorded_destinations(db: DB) -> list[str]:
    """Every destination this database archived to, for a collect given none: the urls
    archive found reachable (the ``destinations`` table) and those holding recorded
    copies, one url per recorded identity (two spellings of one folder are one place;
    the spelling seen last is kept), sorted."""
    seen: dict[str, tuple[float, str]] = {}  # identity (or url, if none recorded) -> (seen_at, url)
    rows = db.all("SELECT url, identity, seen_at FROM destinations")
    rows += db.all("SELECT destination, destination_id, max(created_at) FROM copies GROUP BY destination, destination_id")
    for url, ident, at in rows:
        key = ident or url
        if key not in seen or (at or 0) > seen[key][0]:
            seen[key] = (at or 0, url)
    return sorted({url for _, url in seen.values()})


def _candidates(db: DB, file_ids: Iterable[str] | None) -> list:
    sql = (
        "SELECT f.*, t.state AS twin_state, t.id AS twin_id FROM files f LEFT JOIN files t ON t.id = f.duplicate_of"
        " WHERE f.state IN ('processed', 'archived', 'duplicate')"
    )
    if file_ids is None:
        return db.all(sql + " ORDER BY f.created_at, f.id")
    return db.all(sql + " AND f.id IN (SELECT value FROM json_each(?)) ORDER BY f.created_at, f.id", (json.dumps(list(file_ids)),))


def collect(
    db: DB,
    destinations: dict[str, Destination],
    *,
    required: Sequence[str],
    min_copies: int | None = None,
    file_ids: Iterable[str] | None = None,
    dry_run: bool = False,
    clock: Callable[[], float],
    actor: Actor = Actor(),
    on_verdict: Callable[[Verdict], None] = lambda v: None,
    lock_timeout: float = LOCK_TIMEOUT,
    assume: Mapping[tuple[str, str], Found] = {},
    routing: Routing | None = None,
) -> CollectReport:
    """Delete every original that is safely archived (see the module docstring).

    ``required``: destinations (canonical) that must each hold a good copy when
    ``min_copies`` is None; with ``min_copies``, any that many distinct destinations
    count (only those in ``required`` if it is not empty). ``destinations`` opens them
    (and the others holding copies, for ``min_copies``). Nothing is changed with
    ``dry_run``; the verdicts say what would happen. Raises DatabaseBusy if the
    database's write lock is not free within ``lock_timeout`` seconds for a deletion.
    ``assume`` (dry runs only: the copies a dry run of archive would have made, by
    (destination, path)) are taken as read back good, without reading them.
    With ``routing`` (``imgq.routing``), a file's required destinations are those its
    rules (and the route command's kept answer) send its original to, never one that
    takes only artifacts; ``min_copies`` counts copies among them.
    """
    if min_copies is None and not required:
        raise ValueError("collect needs the required destinations or a minimum number of copies")
    # Copies count per physical destination (identity read now), not per spelling: a
    # symlink to a folder or ssh://u@nas:22/x for ssh://nas/x is the same place. Each copy
    # row gets ``place`` (that identity) and ``shown`` (one url per place).
    phys = physical(destinations.values())
    ident_of = lambda url: phys.identity.get(url, url)  # noqa: E731 (unreachable: its own name)
    place = {ident_of(u): phys.url_of(ident_of(u)) or u for u in destinations}
    required_ids = list(dict.fromkeys(ident_of(u) for u in required))
    need = _Need([place.get(i, i) for i in required_ids], min_copies)
    report = CollectReport()
    pending: list[tuple] = []  # (file row, copies rows) still to verify
    for f in _candidates(db, file_ids):
        path = os.path.join(f["inbox"], f["path"])
        if f["state"] == "processed" and min_copies is None:
            _decide(db, report, on_verdict, Verdict(f["id"], path, WAIT, "not archived yet"), dry_run, clock)
            continue
        source = f["id"]
        if f["state"] == "duplicate":
            # with min_copies, a twin still processed may have enough copies: they are checked below
            if f["twin_state"] not in ("archived", "collected") + (("processed",) if min_copies is not None else ()):
                _decide(db, report, on_verdict, Verdict(f["id"], path, WAIT, f"same content as {f['twin_id']}, which is not archived yet"), dry_run, clock)
                continue
            source = f["twin_id"]
        need_f, req_f = need, set(required_ids)
        if routing is not None:
            routed = _original_routes(db, routing, f, source, clock)
            if routed is None:
                _decide(db, report, on_verdict, Verdict(f["id"], path, WAIT, "the route command has not said where it goes yet"), dry_run, clock)
                continue
            if not routed:
                _decide(db, report, on_verdict, Verdict(f["id"], path, WAIT, "no route sends its original anywhere: it stays in the inbox"), dry_run, clock)
                continue
            req_f = {ident_of(u) for u in routed}
            need_f = _Need([place.get(i, i) for i in dict.fromkeys(ident_of(u) for u in routed)], min_copies)
        copies = [_at_place(c, destinations, ident_of) for c in db.all("SELECT * FROM copies WHERE file_id = ? AND artifact_id IS NULL AND sha256 = ?", (source, f["sha256"]))]
        for c in copies:
            c["shown"] = place.get(c["place"], c["place"])
        if min_copies is None or required or routing is not None:
            copies = [c for c in copies if c["place"] in req_f]
        pending.append((f, path, copies, need_f))

    found, unreachable = _check_copies(destinations, pending, assume)
    good_ids = []
    for f, path, copies, need in pending:
        good, bad = [], []
        for c in copies:
            key = (c["destination"], c["path"])
            if c["destination"] in unreachable:
                bad.append(f"cannot check the copy at {unreachable[c['destination']]}")
            elif found.get(key) == Found(c["bytes"], c["sha256"]):
                good.append(c)
                good_ids.append(c["id"])
            else:
                got = found.get(key)
                what = "is missing" if got is None else "is corrupt (sha256 differs)"
                bad.append(f"the copy at {c['destination']}/{c['path']} {what}; run imgq archive --verify")
        verified = sorted({c["shown"] for c in good})  # one url per physical destination
        if not need.met(verified):
            recorded = {c["shown"] for c in copies}
            no_copy = [d for d in need.lacking(verified) if d not in recorded]
            if bad:
                v = Verdict(f["id"], path, KEEP, "; ".join(bad) + f" (needs {need.text}, has {len(verified)})", verified)
            elif no_copy or min_copies is not None:
                where = ", ".join(no_copy) if no_copy else "enough destinations"
                v = Verdict(f["id"], path, WAIT, f"no copy recorded at {where} yet (needs {need.text}, has {len(verified)})", verified)
            else:
                v = Verdict(f["id"], path, WAIT, f"needs {need.text}, has {len(verified)}", verified)
            _decide(db, report, on_verdict, v, dry_run, clock)
            continue
        v = _delete(db, f, path, good, destinations, need, dry_run=dry_run, clock=clock, actor=actor, lock_timeout=lock_timeout)
        _decide(db, report, on_verdict, v, dry_run, clock)

    if not dry_run:
        _remember(db, report.verdicts, now=clock())
        copy_records.mark_verified(db, good_ids, now=clock())
    return report


def _original_routes(db: DB, routing: Routing, f, source: str, clock) -> list[str] | None:
    """Where the routes send the original of ``f`` (whose copies are ``source``'s: itself,
    or the twin it duplicates); None while the route command has not answered for it."""
    row = f if source == f["id"] else db.one("SELECT * FROM files WHERE id = ?", (source,))
    routed = routing_lib.route(db, routing, row, [(ORIGINAL, None)], now=clock(), ask=False)
    if routed is None:
        return None
    return [u for u in routing.urls if ORIGINAL in routed.get(u, ())]


@dataclasses.dataclass
class _Need:
    """What makes enough copies: one at each required destination, or ``min_copies``."""

    required: list[str]
    min_copies: int | None

    @property
    def text(self) -> str:
        if self.min_copies is None:
            return f"a verified copy at each of {len(self.required)} destination(s)"
        return f"{self.min_copies} verified cop{'y' if self.min_copies == 1 else 'ies'}"

    def why(self, state: str) -> str:
        """What let a file not archived everywhere go: said in its journal event."""
        return f" (--min-copies {self.min_copies}; not archived at every destination)" if state == "processed" else ""

    def lacking(self, verified: Sequence[str]) -> list[str]:
        return [d for d in self.required if d not in verified] if self.min_copies is None else []

    def met(self, verified: Sequence[str]) -> bool:
        if self.min_copies is None:
            return not self.lacking(verified)
        return len(set(verified)) >= self.min_copies


def _check_copies(destinations: dict[str, Destination], pending, assume: Mapping[tuple[str, str], Found] = {}) -> tuple[dict, dict]:
    """Re-read every copy that matters (but those in ``assume``), one batch per
    destination: ({(url, path): Found or None}, {url: why it could not be checked})."""
    wanted: dict[str, set[str]] = {}
    for _, _, copies, _ in pending:
        for c in copies:
            if (c["destination"], c["path"]) not in assume:
                wanted.setdefault(c["destination"], set()).add(c["path"])
    found: dict[tuple[str, str], Found | None] = dict(assume)
    unreachable: dict[str, str] = {}
    for url, paths in sorted(wanted.items()):
        dest = destinations.get(url)
        if dest is None:
            unreachable[url] = f"{url}: not a destination of this run"
            continue
        try:
            for path, got in dest.check(sorted(paths)).items():
                found[(url, path)] = got
        except ImgqError as e:
            unreachable[url] = str(e)
    return found, unreachable


def _at_place(c, destinations: dict[str, Destination], ident_of) -> dict:
    """A copy row plus ``place``: the identity of the destination it is checked at now, and
    its ``destination`` switched to a url of this run reaching the same place when its own
    spelling is not one of this run's (the identity recorded with it says where it is)."""
    row = dict(c)
    if row["destination"] in destinations:
        row["place"] = ident_of(row["destination"])
        return row
    same = [u for u in destinations if row.get("destination_id") and ident_of(u) == row["destination_id"]]
    if same:
        row["destination"], row["place"] = same[0], row["destination_id"]
    else:
        row["place"] = row["destination"]
    return row


class _Replaced(Exception):
    """The inbox name no longer holds the verified object at the moment of deletion."""


def _copies_text(verified: Sequence[str]) -> str:
    return f"{len(verified)} verified cop{'y' if len(verified) == 1 else 'ies'}: {', '.join(verified)}"


def _delete(db: DB, f, path: str, good: list, destinations: dict[str, Destination], need: _Need, *, dry_run: bool, clock, actor: Actor, lock_timeout: float) -> Verdict:
    """Check the inbox file is still the scanned one, then delete it (or say we would)."""
    verified = sorted({c["shown"] for c in good})
    if not os.path.isdir(f["inbox"]):
        return Verdict(f["id"], path, KEEP, f"the inbox {f['inbox']} is not there (not mounted?)", verified)
    try:
        handle = Original(f["inbox"], f["path"])
    except Unsafe as e:
        return Verdict(f["id"], path, KEEP, str(e), verified)
    except FileNotFoundError:
        text = f"already gone from the inbox; {_copies_text(verified)}"
        if dry_run:
            return Verdict(f["id"], path, GONE, text, verified)
        with db.transaction():
            journal.move_file(db, f["id"], "collected", now=clock(), actor=actor, expect=(f["state"],), detail=f"already gone from the inbox ({path}); {_copies_text(verified)}{need.why(f['state'])}")
        return Verdict(f["id"], path, GONE, text, verified)
    except OSError as e:
        return Verdict(f["id"], path, KEEP, f"cannot open it: {e.strerror or e}", verified)
    with handle:
        st = handle.stat
        if (st.st_size, st.st_mtime_ns) != (f["size"], f["mtime_ns"]):
            return Verdict(f["id"], path, KEEP, "changed in the inbox since it was scanned (size or mtime differ); scan again", verified)
        try:
            got = handle.hash()
        except OSError as e:
            return Verdict(f["id"], path, KEEP, f"cannot read it: {e.strerror or e}", verified)
        if got != (f["size"], f["sha256"]):
            return Verdict(f["id"], path, KEEP, "changed in the inbox since it was scanned (sha256 differs); scan again", verified)
        itself = [c for c in good if (d := destinations.get(c["destination"])) is not None and d.file_identity(c["path"]) == handle.identity]
        if itself:
            # A hard link of the inbox file, or a copy that lies in the inbox: it is no
            # copy at all, and deleting the inbox name may delete it. Never delete then.
            verified = sorted({c["shown"] for c in good if c not in itself})
            where = ", ".join(f"{c['destination']}/{c['path']}" for c in itself)
            return Verdict(f["id"], path, KEEP, f"the copy at {where} is the same file as the inbox original (a hard link or a copy inside the inbox), not an independent copy; remove it and run imgq archive --verify to make a real one (needs {need.text}, has {len(verified)})", verified)
        copies_text = _copies_text(verified)
        if dry_run:
            return Verdict(f["id"], path, WOULD_DELETE, copies_text, verified)
        with _synchronous_full(db):
            try:
                with db.transaction(timeout=lock_timeout):
                    journal.move_file(db, f["id"], "collected", now=clock(), actor=actor, expect=(f["state"],), detail=f"deleted {path}; {copies_text}{need.why(f['state'])}")
                    # Checked now, not before the wait for the lock: the name must still be
                    # the object whose bytes were verified, unchanged since.
                    now = os.fstat(handle.fd)
                    if (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns) or not handle.unlink_if_same():
                        raise _Replaced()
            except _Replaced:
                return Verdict(f["id"], path, KEEP, "replaced in the inbox while being collected; it stays (scan again to record it)", verified)
            except OSError as e:
                return Verdict(f["id"], path, KEEP, f"cannot delete it: {e.strerror or e}", verified)
        return Verdict(f["id"], path, DELETED, copies_text, verified)


class _synchronous_full:
    """``PRAGMA synchronous = FULL`` for the transactions inside: a deletion's record must
    survive a power cut (DESIGN, section 1)."""

    def __init__(self, db: DB):
        self.db = db

    def __enter__(self):
        self.before = self.db.one("PRAGMA synchronous")[0]
        self.db.execute("PRAGMA synchronous = FULL")

    def __exit__(self, *exc):
        self.db.execute(f"PRAGMA synchronous = {int(self.before)}")


def _decide(db: DB, report: CollectReport, on_verdict, v: Verdict, dry_run: bool, clock) -> None:
    report.verdicts.append(v)
    on_verdict(v)


def _remember(db: DB, verdicts: Sequence[Verdict], *, now: float) -> None:
    """Keep each verdict on a file still in the inbox for ``imgq status``; a row changes
    only when the verdict does, so an idle rerun writes nothing."""
    kept = [(v.file_id, v.action, v.reason, len(v.verified)) for v in verdicts if v.action in (KEEP, WAIT)]
    done = [v.file_id for v in verdicts if v.action not in (KEEP, WAIT)]
    checks.remember(db, kept, done, now=now)


def summary(report: CollectReport) -> dict:
    return {a.replace("-", "_"): len(report.of(a)) for a in (DELETED, WOULD_DELETE, GONE, KEEP, WAIT)}
