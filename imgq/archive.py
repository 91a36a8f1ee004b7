"""Archiving: copy each processed original and its artifacts to every destination.

Where copies go and the names they get are ``imgq.archive_names``'s (layout
``DEST/YYYY/YYYY-MM-DD/OWNER/NAME.jpg`` with the artifacts beside it, names reserved
before anything is written, never one photo over another); what a file needs and where
its bytes are read from is ``imgq.archive_copies``'s. A name already holding the same
bytes is recorded without copying, so the same photo is never copied twice; a final
rename never replaces a file (a taken name is given up and the file planned again).
Destinations are grouped by identity (``destinations.physical``): two spellings of one
folder are archived to once and hold one copy. Originals are read by identity
(``imgq.original``) and hashed as they are copied.

Each copy goes through ``Destination.put`` (temporary name, fsync, read back, sha256
compared, rename, folder fsynced) and is then recorded in ``copies``. A destination that
is down or full fails its own copies only: their archive targets
(``imgq.ledger.archive_targets``: pending, waiting, done, each change an event) wait out
an exponential backoff while the other destinations proceed. A file becomes ``archived``
only when every destination of the run holds a verified copy of the original and of all
its artifacts. Every write goes through the ledger.

``verify`` (``imgq.archive_verify``, re-exported here) re-reads every recorded copy and
re-makes missing or corrupt ones from the original (if it is still in the inbox and
unchanged), the artifact store, or another good copy; in place only when the damaged file
is provably that copy's (``archive_names.owner_of``). The copying threads of
``--transfers`` are ``imgq.archive_transfers``'s.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from imgq import archive_hook, overlap
from imgq.archive_copies import ORIGINAL, Item, Sources, copy_item, items_of
from imgq.archive_names import plan, release, reserved
from imgq.archive_transfers import _ElsewhereOnMain, _Job, _Transfers
from imgq.archive_verify import Problem, VerifyReport, _failed, _record_copy, verify  # noqa: F401  (re-exported: cli/archive.py)
from imgq.destinations import (
    Destination,
    DestinationUnavailable,
    Found,
    LocalDestination,
    NameRefused,
    NameTaken,
    Physical,
    SshOptions,
    open_all,
    physical,
)
from imgq.errors import ImgqError, RouteFailed, classify
from imgq.ledger import archive_targets, copies, hooks, journal
from imgq.ledger import routes as routes_ledger
from imgq.routing import ROUTE_COMMAND, Routing
from imgq import routing as routing_lib
from imgq.ledger.database import DB
from imgq.ledger.journal import Actor


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
    # a dry run's copies, not made: (destination, path) -> what would be there
    planned: dict[tuple[str, str], Found] = dataclasses.field(default_factory=dict)
    plan: list[tuple[str, str, str, str]] = dataclasses.field(default_factory=list)  # dry run: (file id, destination, path, 'would copy' or 'found')
    stopped: bool = False  # ``stop()`` said so between two files: the rest is left to the next archive
    hooks: archive_hook.HookReport = dataclasses.field(default_factory=archive_hook.HookReport)  # on_archived runs


def _copies_at(db: DB, file_id: str, destination: str) -> dict[str, str]:
    return {r["path"]: r["sha256"] for r in db.all("SELECT path, sha256 FROM copies WHERE file_id = ? AND destination = ?", (file_id, destination))}


def _missing(db: DB, f, dest_url: str, items: Sequence[Item]) -> list[Item]:
    paths = reserved(db, dest_url, f["id"])
    have = _copies_at(db, f["id"], dest_url)
    return [i for i in items if i.role not in paths or have.get(paths[i.role]) != i.sha256]


def _lacking(missing: Sequence[Item]) -> str:
    return "lacks " + ", ".join(i.role for i in missing)



# --- the step ----------------------------------------------------------------------------------


def eligible(db: DB, destinations: Sequence[str], file_ids: Iterable[str] | None = None, routing: Routing | None = None) -> list:
    """Files to look at: processed ones, and archived ones lacking an original's copy at
    one of ``destinations`` (a destination added later); with ``routing``, lacking what
    their routes send to one of them (``Routing.lacking_sql``: no file is looked at only
    to find that nothing is routed to where it has no copy)."""
    if routing is None:
        marks = ",".join("?" * len(destinations))
        lacking = f"(SELECT count(DISTINCT c.destination) FROM copies c WHERE c.file_id = f.id AND c.artifact_id IS NULL AND c.destination IN ({marks})) < ?"
        params: list = [*destinations, len(set(destinations))]
    else:
        terms, params = [], []
        for url in dict.fromkeys(destinations):
            term, more = routing.lacking_sql(url)
            terms.append(term)
            params += more
        lacking = "(" + " OR ".join(terms) + ")" if terms else "0"
    sql = f"SELECT * FROM files f WHERE (f.state = 'processed' OR (f.state = 'archived' AND {lacking}))"
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
    on_progress: Callable[[int, int], None] = lambda done, total: None,
    dry_run: bool = False,
    stop: Callable[[], bool] = lambda: False,
    on_archived: Sequence[str] = (),
    hook_timeout: float = 60.0,
    routing: Routing | None = None,
    transfers: int = 1,
) -> ArchiveReport:
    """Copy every eligible file (see ``eligible``) to every destination, verified; with
    ``routing`` (``imgq.routing``), each item only to the destinations it routes it to,
    and a file is archived when each is verified wherever it is routed. A route command
    that fails for a file fails that file's archive (target 'route_command', transient,
    retried with backoff); its other files go on.

    With ``on_archived`` (an argv), each verified copy of a file's original at a
    destination queues that command (``imgq.archive_hook``), run once the file's copies
    are done and, if it fails, again by a later archive after a backoff; the copies do not
    depend on it. Due retries run at the end, after every file.

    ``on_file(file_id, what, info)`` is told 'archived', 'failed' (info: Failure) and
    'copied' (info: (destination, path, how)) as they happen; ``on_progress(done,
    total)`` as the eligible files are gone through. ``stop()`` is asked before each
    file: once true, the files not begun are left for the next archive (a file's copies
    are each whole and recorded, so nothing is half-done).

    With ``dry_run`` (on a ``ScratchDB``: its records are the plan) nothing is written,
    swept or connected to: each name is planned as for real and 'copied' is told with
    how 'would copy' (or 'found': a local destination already holds those bytes there),
    and ``report.planned`` holds what the copies would be. An ssh:// destination is not
    connected to: no name is known to be taken there.

    ``transfers``: each destination copies up to that many files at once, on threads of
    its own, and the destinations proceed independently (a slow one holds up the others
    only once it is several files behind). The names are reserved and every copy recorded
    on the calling thread, the only one that touches ``db``.
    """
    rng = rng or random.Random()
    report = ArchiveReport()
    if dry_run:
        destinations = [d if isinstance(d, LocalDestination) else _Unvisited(d.url) for d in destinations]
    # One physical destination reached by two spellings is archived to once and counts once.
    phys = physical(destinations)
    report.aliases = phys.aliases
    report.down.update(phys.down)  # unreachable now: its copies fail at once, with the reason
    destinations = phys.unique
    copies.record_destinations(db, phys.identity, now=clock())
    if not dry_run:
        _sweep(destinations, phys, report, now=clock())
    by_url = {d.url: d for d in destinations}
    sources = Sources(db, by_url, store_dir)
    if file_ids is not None:
        file_ids = list(file_ids)
    files = eligible(db, list(by_url), file_ids, routing)
    if file_ids is not None:
        chosen = {f["id"] for f in files}
        states = dict(db.all("SELECT id, state FROM files WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(file_ids),)))
        report.skipped = [(i, states.get(i)) for i in dict.fromkeys(file_ids) if i not in chosen and states.get(i) != "archived"]
    hook = dict(on_archived=on_archived, hook_timeout=hook_timeout, dry_run=dry_run)
    copying = _Transfers(destinations, transfers)
    try:
        for n, f in enumerate(files):
            if stop():
                report.stopped = True
                break
            on_progress(n, len(files))
            every = items_of(db, f, store_dir)
            try:
                routed = _routed(db, routing, f, every, report, clock=clock, actor=actor, backoff=backoff, backoff_max=backoff_max, ignore_backoff=ignore_backoff, rng=rng)
            except RouteFailed as e:
                failure = Failure(f["id"], ROUTE_COMMAND, str(e))
                report.failed.append(failure)
                on_file(f["id"], "failed", failure)
                continue
            if routed is None:
                continue  # the route command's failure is in backoff
            wants = {d.url: [i for i in every if routed is True or i.role in routed.get(d.url, ())] for d in destinations}
            for dest in destinations:
                items = wants[dest.url]
                if not items:
                    continue
                missing = _missing(db, f, dest.url, items)
                if not missing:
                    continue
                target = archive_targets.open_target(db, f["id"], dest.url, now=clock(), actor=actor, detail=_lacking(missing))
                if dest.url in report.down:
                    _failed(db, target, report.down[dest.url], "transient", now=clock(), actor=actor, backoff=backoff, backoff_max=backoff_max, rng=rng)
                    report.failed.append(Failure(f["id"], dest.url, report.down[dest.url], down=True))
                    continue
                if target["not_before"] > clock() and not ignore_backoff:
                    report.waiting += 1
                    continue
                try:
                    if dry_run:
                        _plan_missing(db, dest, phys.identity.get(dest.url), f, items, missing, report, clock=clock, on_file=on_file)
                        archive_targets.succeeded(db, target, now=clock(), actor=actor)
                        continue
                    # the names are reserved here; the bytes travel on the destination's
                    # own threads; what they did is recorded here, on this thread (_Transfers)
                    paths = plan(db, dest, f, items, now=clock(), ident=phys.identity.get(dest.url))
                except (ImgqError, OSError) as e:
                    _target_failed(db, f, dest, target, e, report, clock=clock, actor=actor, backoff=backoff, backoff_max=backoff_max, rng=rng, on_file=on_file)
                    continue
                copying.submit(dest, f, items, target, missing, paths)
            copying.begun(f, wants)
            for done in copying.finished(wait=False):
                _finish(db, done, destinations, phys, sources, report, clock=clock, actor=actor, backoff=backoff, backoff_max=backoff_max, rng=rng, on_file=on_file, **hook)
    except BaseException:
        copying.cancel()  # what is begun ends whole and is recorded; nothing more starts
        raise
    finally:
        for done in copying.finished(wait=True):
            _finish(db, done, destinations, phys, sources, report, clock=clock, actor=actor, backoff=backoff, backoff_max=backoff_max, rng=rng, on_file=on_file, **hook)
        copying.close()
    if files:
        on_progress(len(files), len(files))
    if on_archived and not dry_run:  # earlier archives' failed hooks whose backoff is over
        _run_hooks(db, report, clock=clock, timeout=hook_timeout, backoff=backoff, backoff_max=backoff_max, rng=rng, actor=actor, ignore_backoff=ignore_backoff)
    return report


def _run_hooks(db: DB, report: ArchiveReport, **kw) -> None:
    archive_hook.run_due(db, report=report.hooks, **kw)


def _routed(db: DB, routing: Routing | None, f, items: Sequence[Item], report: ArchiveReport, *, clock, actor, backoff, backoff_max, ignore_backoff, rng) -> dict[str, set[str]] | bool | None:
    """Where the items of ``f`` go: True (everything everywhere: no routing), destination
    -> item names, or None (the route command failed for it before and is in backoff).
    Raises RouteFailed, recorded as the failure of the file's 'route_command' target."""
    if routing is None:
        return True
    pairs = [(i.role, i.recipe) for i in items]
    if not routing.command or routes_ledger.answer(db, f["id"], routing.command) is not None:
        return routing_lib.route(db, routing, f, pairs, now=clock())
    target = archive_targets.open_target(db, f["id"], ROUTE_COMMAND, now=clock(), actor=actor, detail="asking the route command")
    if target["not_before"] > clock() and not ignore_backoff:
        report.waiting += 1
        return None
    try:
        out = routing_lib.route(db, routing, f, pairs, now=clock())
    except RouteFailed as e:
        _failed(db, target, str(e), "transient", now=clock(), actor=actor, backoff=backoff, backoff_max=backoff_max, rng=rng)
        raise
    archive_targets.succeeded(db, target, now=clock(), actor=actor)
    return out


def _finish(db: DB, event, destinations, phys: Physical, sources: Sources, report: ArchiveReport, *, clock, actor, backoff, backoff_max, rng, on_file, on_archived, hook_timeout, dry_run) -> None:
    """On the archive's thread: record what a job copied and how it ended, or move a
    file whose jobs are all done to archived if every destination has all it is sent
    (``wants``: destination -> items), and run its on_archived hooks."""
    if event[0] == "file":
        _, f, wants = event
        if f["state"] == "processed" and all(not _missing(db, f, d.url, wants[d.url]) for d in destinations):
            with db.transaction():
                journal.move_file(
                    db, f["id"], "archived", now=clock(), actor=actor, expect=("processed",),
                    detail=f"verified copies at {', '.join(d.url for d in destinations if wants[d.url])}",
                )
            report.archived.append(f["id"])
            on_file(f["id"], "archived", None)
        if on_archived and not dry_run:
            _run_hooks(db, report, clock=clock, timeout=hook_timeout, backoff=backoff, backoff_max=backoff_max, rng=rng, actor=actor, file_id=f["id"])
        return
    job: _Job = event[1]
    dest, f = job.dest, job.f
    ident = phys.identity.get(dest.url)
    for item, how in job.done:
        _record_copy(db, f["id"], item, dest.url, job.paths[item.role], now=clock(), ident=ident)
        if on_archived and item.role == ORIGINAL:
            hooks.queue(db, f["id"], dest.url, job.paths[item.role], archive_hook.command_for(on_archived, f["id"], dest.url, job.paths[item.role]), now=clock(), actor=actor)
        if how == "found":
            report.found += 1
        else:
            report.copied += 1
            report.bytes += item.bytes
        on_file(f["id"], "copied", (dest.url, job.paths[item.role], how))
    try:
        if isinstance(job.error, (NameTaken, NameRefused, _ElsewhereOnMain)):
            # a name to give up, or a source to find elsewhere: the rest, here, as ever
            _copy_missing(db, dest, ident, f, job.items, _missing(db, f, dest.url, job.items), sources, report, clock=clock, on_file=on_file, on_archived=on_archived, actor=actor)
        elif job.error is not None:
            raise job.error
        archive_targets.succeeded(db, job.target, now=clock(), actor=actor)
    except (ImgqError, OSError) as e:
        _target_failed(db, f, dest, job.target, e, report, clock=clock, actor=actor, backoff=backoff, backoff_max=backoff_max, rng=rng, on_file=on_file)


def _target_failed(db: DB, f, dest: Destination, target, e: BaseException, report: ArchiveReport, *, clock, actor, backoff, backoff_max, rng, on_file) -> None:
    text = str(e) if isinstance(e, ImgqError) else f"{dest.url}: {e}"
    if isinstance(e, DestinationUnavailable):
        report.down.setdefault(dest.url, text)
    kind = "permanent" if isinstance(e, ImgqError) and classify(e) == "permanent" else "transient"
    _failed(db, target, text, kind, now=clock(), actor=actor, backoff=backoff, backoff_max=backoff_max, rng=rng)
    failure = Failure(f["id"], dest.url, text, kind, down=isinstance(e, DestinationUnavailable))
    report.failed.append(failure)
    on_file(f["id"], "failed", failure)


class _Unvisited(Destination):
    """A dry run's view of a remote destination it does not connect to: its own url is
    its identity, and nothing is known to be there."""

    def __init__(self, url: str):
        self.url = url

    def identity(self) -> str:
        return f"url:{self.url}"

    def check(self, rels: Iterable[str]) -> dict[str, Found | None]:
        return {rel: None for rel in rels}


def _plan_missing(db: DB, dest: Destination, ident: str | None, f, items, missing, report: ArchiveReport, *, clock, on_file) -> None:
    """A dry run of ``_copy_missing``: the names are planned and the copies recorded (in
    the dry run's own database), nothing is written to ``dest``."""
    paths = plan(db, dest, f, items, now=clock(), ident=ident)
    for item in missing:
        rel = paths[item.role]
        if dest.check([rel])[rel] == Found(item.bytes, item.sha256):
            report.found += 1
            how = "found"
        else:
            report.copied += 1
            report.bytes += item.bytes
            how = "would copy"
        _record_copy(db, f["id"], item, dest.url, rel, now=clock(), ident=ident)
        report.planned[(dest.url, rel)] = Found(item.bytes, item.sha256)
        report.plan.append((f["id"], dest.url, rel, how))
        on_file(f["id"], "copied", (dest.url, rel, how))


def _sweep(destinations: Sequence[Destination], phys: Physical, report: ArchiveReport, *, now: float) -> None:
    """Remove the temporary files killed copies left at each reachable destination."""
    for dest in destinations:
        if dest.url in phys.down:
            continue
        try:
            report.swept.extend((dest.url, rel) for rel in dest.sweep_temps(now=now))
        except ImgqError:
            pass  # the copies themselves will say what is wrong with this destination


def _copy_missing(db: DB, dest: Destination, ident: str | None, f, items, missing, sources: Sources, report: ArchiveReport, *, clock, on_file, on_archived=(), actor: Actor = Actor()) -> None:
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
                _record_copy(db, f["id"], item, dest.url, paths[item.role], now=clock(), ident=ident)
                if on_archived and item.role == ORIGINAL:
                    hooks.queue(db, f["id"], dest.url, paths[item.role], archive_hook.command_for(on_archived, f["id"], dest.url, paths[item.role]), now=clock(), actor=actor)
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


def open_destinations(db: DB, urls: list[str], ssh: SshOptions = SshOptions(), *, inboxes: Iterable[str | Path] = ()) -> dict[str, Destination]:
    """The destinations ``urls`` (see ``destinations.in_force``), opened (connected
    lazily), by url; refused first if one is, contains or lies inside an inbox (the
    database's or ``inboxes``): a copy there would be scanned as a new photo, and the
    original collected. Close them with ``destinations.close_all``."""
    overlap.check_destinations(db, urls, inboxes)
    return open_all(urls, ssh)


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
        "hooks_ran": report.hooks.ran,
        "hooks_failed": len(report.hooks.failed),
    }

