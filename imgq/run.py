"""The whole pipeline once: scan -> enqueue -> work -> archive -> collect (-> publish).

``imgq run`` is the one-line cron job. Each step is the same library call its own
command makes, in order, on one database; a step that fails for some items does not stop
the later steps (a bad photo must not keep good ones in the inbox), and the exit code
summarises the run. Run twice on an unchanged inbox, the second run changes nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from imgq import archive as archive_step
from imgq import collect as collect_step
from imgq import enqueue as enqueue_step
from imgq import publish as publish_step
from imgq import scan, work
from imgq.ledger import queue
from imgq.config import Settings
from imgq.ledger.database import DB
from imgq.destinations import Destination, LocalDestination
from imgq.errors import Exit
from imgq.ledger.journal import Actor
from imgq.routing import Routing

if TYPE_CHECKING:
    from imgq.fleet.options import FleetOptions


@dataclasses.dataclass
class RunOptions:
    inboxes: Sequence[Path]
    destinations: Sequence[Destination]
    processes: int = 1
    recipes: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    min_copies: int | None = None
    collect: bool = True
    dry_run: bool = False  # on a ScratchDB: work is not run (see run())
    publish_to: Path | None = None  # the gallery, brought up to date after archive and collect
    publish: publish_step.PublishOptions = dataclasses.field(default_factory=publish_step.PublishOptions)
    transfers: int = 4  # copies each destination makes at once (archive)
    fleet: "FleetOptions | None" = None  # work on hosts (imgq work --hosts): the coordinator's options
    routing: Routing | None = None  # what goes where (imgq.routing); None: everything to each destination
    split: bool = False  # as imgq enqueue --split: huge images in stripes, long videos in chunks (thresholds: settings)


@dataclasses.dataclass
class RunReport:
    scan: scan.ScanReport | None = None
    enqueued: list[queue.EnqueueResult] = dataclasses.field(default_factory=list)
    work: work.WorkSummary | None = None
    archive: archive_step.ArchiveReport | None = None
    collect: collect_step.CollectReport | None = None
    publish: publish_step.PublishReport | None = None
    stopped: bool = False  # asked to stop between steps (``run(stop=...)``); the later steps did not run
    would_process: list[str] = dataclasses.field(default_factory=list)  # a dry run's files with jobs due

    @property
    def exit_code(self) -> int:
        """0 when nothing failed in this run; 130 if interrupted; 1 otherwise."""
        if self.stopped or (self.work is not None and self.work.interrupted):
            return int(Exit.INTERRUPTED)
        failed = bool(
            (self.scan and (self.scan.failed or self.scan.problems))
            or (self.work and self.work.failed)
            or (self.archive and self.archive.failed)
            or (self.collect and self.collect.problems)
            or (self.publish and self.publish.refused)
        )
        return int(Exit.SOME_FAILED if failed else Exit.OK)

    def counts(self) -> dict:
        out: dict = {}
        if self.scan is not None:
            out["scan"] = {"new": len(self.scan.new_ids), "failed": len(self.scan.failed), "duplicates": sum(f.state == "duplicate" for f in self.scan.found)}
        out["enqueue"] = {"files": sum(bool(r.created) for r in self.enqueued), "jobs": sum(len(r.created) for r in self.enqueued)}
        if self.work is not None:
            out["work"] = {"done": self.work.done, "failed": len(self.work.failed), "processed": len(self.work.processed)}
        elif self.would_process:
            out["work"] = {"would_process": len(self.would_process)}
        if self.archive is not None:
            out["archive"] = archive_step.summary(self.archive)
        if self.collect is not None:
            out["collect"] = collect_step.summary(self.collect)
        if self.publish is not None:
            p = self.publish
            out["publish"] = {"photos": len(p.photos), "changed": len(p.changed), "written": len(p.written), "removed": len(p.removed), "refused": len(p.refused)}
        return out


def run(
    db: DB,
    settings: Settings,
    opts: RunOptions,
    *,
    clock: Callable[[], float] = time.time,
    on_step: Callable[[str, object], None] = lambda step, result: None,
    on_work: Callable[[tuple], None] = lambda r: None,
    on_progress: Callable[[str, int, int], None] = lambda step, done, total: None,
    stop: Callable[[], bool] = lambda: False,
) -> RunReport:
    """Run every step once; ``on_step(name, result)`` after each, ``on_progress(name,
    done, total)`` as scan and archive go.

    A dry run (``opts.dry_run``, on a ``ScratchDB``) runs scan and enqueue as they are,
    does not work (it would write the store): ``report.would_process`` lists the files
    whose jobs are due, which a real run processes and then archives and collects; the
    dry archive and collect cover the files processed before.

    ``stop()`` is asked before work, archive and collect, and by archive before each file:
    once it is true the rest is left to the next run (``report.stopped``). What was begun
    is whole (work hands back the jobs it did not start, each archived copy is verified
    and recorded in one go), so stopping leaves nothing half-done. ``imgq run --watch`` says
    so once SIGTERM or SIGINT came (imgq work stops on its own)."""
    report = RunReport()
    skip = [settings.store_dir] + [Path(d.url) for d in opts.destinations if isinstance(d, LocalDestination)]
    report.scan = scan.scan(
        db,
        opts.inboxes,
        now=clock(),
        settle=settings.settle,
        default_owner=settings.default_owner,
        max_pixels=settings.max_pixels,
        skip_dirs=skip,
        actor=Actor(name="run:scan"),
        on_progress=functools.partial(on_progress, "scan"),
    )
    on_step("scan", report.scan)

    # the rule of `imgq enqueue`: new photos get their jobs, and so do the files a
    # recipe edited in imgq.toml affects
    report.enqueued = enqueue_step.enqueue(db, settings, opts.recipes, now=clock(), actor=Actor(name="run:enqueue"), split=opts.split)
    on_step("enqueue", report.enqueued)

    if stop():
        report.stopped = True
        return report
    if opts.dry_run:
        report.would_process = [r[0] for r in db.all(
            "SELECT f.id FROM files f WHERE EXISTS (SELECT 1 FROM jobs j WHERE j.file_id = f.id AND j.state IN ('ready', 'leased'))"
            " ORDER BY f.created_at, f.id"
        )]
        on_step("work", report.would_process)
    elif db.one("SELECT 1 FROM jobs WHERE state IN ('ready', 'leased') LIMIT 1"):
        if opts.fleet is not None:
            from imgq.fleet import coordinator  # the SSH stack loads only when hosts are used

            report.work = coordinator.work(settings, dataclasses.replace(opts.fleet, mode="once"), db, on_report=on_work)
        else:
            report.work = work.work(settings, work.WorkOptions(processes=opts.processes, mode="once", run_id=db.run_id), on_report=on_work)
        on_step("work", report.work)
        if report.work.interrupted:
            return report

    if stop():
        report.stopped = True
        return report
    report.archive = archive_step.archive(
        db,
        opts.destinations,
        store_dir=settings.store_dir,
        clock=clock,
        actor=Actor(name="run:archive"),
        backoff=settings.backoff_seconds,
        backoff_max=settings.backoff_max_seconds,
        dry_run=opts.dry_run,
        on_progress=functools.partial(on_progress, "archive"),
        stop=stop,
        transfers=opts.transfers,
        on_archived=settings.on_archived,
        hook_timeout=settings.on_archived_timeout,
        routing=opts.routing,
    )
    on_step("archive", report.archive)

    if report.archive.stopped or (opts.collect and stop()):
        report.stopped = True
        return report
    if opts.collect:
        by_url = {d.url: d for d in opts.destinations}
        report.collect = collect_step.collect(
            db,
            by_url,
            required=list(by_url),
            min_copies=opts.min_copies,
            clock=clock,
            actor=Actor(name="run:collect"),
            dry_run=opts.dry_run,
            assume=report.archive.planned,
            routing=opts.routing,
        )
        on_step("collect", report.collect)
    if opts.publish_to is not None and not stop():
        # the gallery shows what this run archived; photos still processing join it next run
        report.publish = publish_step.publish(
            db, opts.publish_to, store_dir=settings.store_dir, options=opts.publish, dry_run=opts.dry_run,
            on_progress=functools.partial(on_progress, "publish"),
        )
        on_step("publish", report.publish)
    return report
