"""imgq run INBOX… --to DEST…"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from imgq import archive, destinations
from imgq import routing as routing_lib
from imgq import enqueue as enqueue_step
from imgq import collect as collect_step
from imgq import backup as backup_step
from imgq import publish as publish_step
from imgq import run as run_step
from imgq.cli import common, watching
from imgq.cli.options import (
    AcceptNewOpt, AdvertiseOpt, AgentFileOpt, ConfigOpt, DbOpt, HostsFileOpt, HostsOpt, JsonOpt, ListenOpt, RemoteImgqOpt, SbatchOpt, SlurmArgOpt, SlurmOpt,
    SshConfigOpt, ToOpt, TransfersOpt, WaitOpt, completes, connect_back, dry_run_option, fleet_options, settle_help,
)
from imgq.errors import UsageError

EPILOG = """\b
Examples:
  imgq run ~/Dropbox/dig-photos --to /mnt/backup --to ssh://nas/srv/photos
  imgq run --config /etc/imgq.toml /srv/inbox      # destinations from imgq.toml
  imgq run --watch /srv/inbox --to /mnt/backup     # stay running; a systemd unit: docs/archive.md
  imgq run /srv/inbox --to /mnt/backup --publish /var/www/photos   # and the gallery
  imgq run /srv/inbox --to ssh://nas/photos --hosts gpu1,gpu2 --transfers 8   # work on hosts
  imgq run /srv/inbox --to /mnt/backup --slurm 8 --slurm-arg=--partition=batch  # on Slurm agents
  imgq run /srv/inbox --to /mnt/backup --listen :7700   # agents connect: imgq agent --secret-file imgq-agent.env

\b
crontab (every 10 minutes; a run still busy makes the next one exit quietly; cron's PATH
does not hold a virtualenv, so give imgq's full path, as `command -v imgq` prints it):
  */10 * * * * cd /srv/imgq && /opt/imgq/bin/imgq run /srv/inbox --to /mnt/backup --to ssh://nas/photos
"""

STEPS = ("run", "scan", "enqueue", "archive", "collect", "publish")


def run(
    inboxes: Annotated[list[Path], typer.Argument(help="Inbox folders: one subfolder per photographer.", metavar="INBOX...", show_default=False)],
    to: ToOpt = None,
    processes: Annotated[Optional[int], typer.Option("--jobs", "-j", help="Local worker processes (default: all cores; with --hosts, --listen or --slurm, none unless given).", min=1, metavar="N", show_default=False)] = None,
    hosts: HostsOpt = None,
    hosts_file: HostsFileOpt = None,
    remote_imgq: RemoteImgqOpt = "imgq",
    slurm: SlurmOpt = None,
    slurm_arg: SlurmArgOpt = None,
    sbatch: SbatchOpt = False,
    listen: ListenOpt = None,
    advertise: AdvertiseOpt = None,
    agent_file: AgentFileOpt = None,
    transfers: TransfersOpt = None,
    recipe: Annotated[Optional[list[str]], typer.Option("--recipe", "-r", autocompletion=completes("recipes"), help="Recipe for new photos (repeatable; default: `enqueue` in imgq.toml, else default).", metavar="NAME", show_default=False)] = None,
    min_copies: Annotated[Optional[int], typer.Option("--min-copies", help="Copies that must verify before an original is deleted (default: one at every destination).", min=1, metavar="N", show_default=False)] = None,
    no_collect: Annotated[bool, typer.Option("--no-collect", help="Archive, but leave every original in the inbox.")] = False,
    split: Annotated[bool, typer.Option("--split", help="As `imgq enqueue --split`: images over split_pixels become stripe jobs and videos longer than split_seconds chunk jobs (split_stripes of them, from imgq.toml), run in parallel by the workers or hosts and joined.")] = False,
    publish: Annotated[Optional[Path], typer.Option("--publish", help="After archiving, bring the gallery at DIR up to date, as `imgq publish DIR` does (default: publish in imgq.toml; none).", metavar="DIR", show_default=False)] = None,
    settle: Annotated[Optional[float], typer.Option(help=settle_help(""), metavar="SECONDS", show_default=False)] = None,
    dry_run: Annotated[bool, dry_run_option("scan and enqueue as they would, work nothing, and print the files this run would archive (those with jobs due: once processed); stderr names each copy and deletion.")] = False,
    ssh_config: SshConfigOpt = None,
    accept_new_host_keys: AcceptNewOpt = False,
    db: DbOpt = None,
    config: ConfigOpt = None,
    json: JsonOpt = False,
    wait: WaitOpt = False,
    watch: Annotated[bool, typer.Option("--watch", help="Keep running: run again whenever files in an inbox change (once they settle), and every --rescan seconds. SIGTERM stops it cleanly (exit 0), SIGINT with 130; see docs/archive.md.")] = False,
    rescan: Annotated[Optional[float], typer.Option("--rescan", help="With --watch: a full scan every SECONDS (default 300), the safety net for lost notifications and network filesystems.", min=0.1, metavar="SECONDS", show_default=False)] = None,
    no_notify: Annotated[bool, typer.Option("--no-notify", help="With --watch: use no filesystem notifications, only the --rescan (an NFS or SMB inbox written from other machines).")] = False,
) -> None:
    """Run the whole pipeline once: scan, enqueue, work, archive, collect.

    The one-line cron job. With --hosts or --hosts-file the work step runs on those hosts
    over SSH, as `imgq work --hosts` does (docs/fleet.md), and this machine archives
    what they made. With --slurm N the agents are Slurm jobs, and with --listen agents
    started some other way (`imgq agent --connect`) connect back, as with `imgq work`;
    they are started only when this run has jobs, and end with its work step. Every step runs even if an earlier one failed for some files
    (a bad photo never keeps the good ones in the inbox). Prints the id of each file
    archived by this run (--json: one object per step with its counts). Exits 0 if
    nothing failed in this run, 1 otherwise; a second run on an unchanged inbox changes
    nothing and exits 0. Overlapping runs: the second exits quietly (or --wait).

    With --watch it stays running and behaves like that cron job run at the right moments:
    a file is taken once it has been unchanged for the settle time, events are coalesced,
    and each run takes and lets go of the same step locks and is recorded like any run
    (a run that finds them held tries again a few seconds later). It prints a readiness
    line on stderr and speaks systemd's notify protocol when $NOTIFY_SOCKET is set.
    """
    inv = common.Invocation("run", db, config, dry_run=dry_run)
    settings = inv.settings
    if settle is not None:
        settings.settle = settle
    if not watch and (rescan is not None or no_notify):
        raise UsageError("--rescan and --no-notify only go with --watch")
    if watch and dry_run:
        raise UsageError("--dry-run shows what one run would do; it does not go with --watch")
    missing = [str(p) for p in inboxes if not p.is_dir()]
    if missing:
        raise UsageError(f"not a folder: {', '.join(missing)} (is the inbox mounted?)")
    urls = destinations.in_force(to, settings)
    if not urls:
        raise UsageError("no destination: give --to DEST, or set destinations = [...] in imgq.toml")
    chains = enqueue_step.resolve_recipes(settings, recipe)  # a bad recipe is a usage error before anything runs
    agents = connect_back(listen=listen, advertise=advertise, agent_file=agent_file, slurm=slurm, slurm_arg=slurm_arg, sbatch=sbatch,
                          settings=settings, remote_imgq=remote_imgq)
    database = inv.database
    ssh = destinations.SshOptions(config=ssh_config, accept_new_host_keys=accept_new_host_keys)
    dests = archive.open_destinations(database, urls, ssh, inboxes=inboxes)  # overlap refused before anything is scanned or written
    site = publish or _configured(settings.publish, settings)
    gallery = settings.recipes.get(publish_step.GALLERY_RECIPE, {})
    if site is not None and gallery:
        # the sizes the gallery's photo pages choose from, made in this run's work step,
        # while the originals are still in the inbox (collect comes before publish)
        chains = {**chains, publish_step.GALLERY_RECIPE: gallery}
    fleet = None
    if hosts or hosts_file or listen is not None or agents["launcher"] is not None:
        # the work step on hosts over SSH or on agents that connect back, as `imgq work` does it
        fleet = fleet_options(
            hosts=hosts or [], hosts_file=hosts_file, remote_imgq=remote_imgq, ssh_config=ssh_config,
            accept_new_host_keys=accept_new_host_keys, local_processes=processes or 0, mode="once", **agents,
        )
    opts = run_step.RunOptions(
        inboxes=inboxes,
        destinations=list(dests.values()),
        processes=processes or os.cpu_count() or 1,
        transfers=transfers or settings.transfers,
        fleet=fleet,
        recipes=chains,
        min_copies=min_copies,
        collect=not no_collect,
        split=split,
        dry_run=dry_run,
        publish_to=site,
        publish=publish_step.PublishOptions(gallery=gallery, max_attempts=settings.max_attempts),
        routing=routing_lib.from_settings(to, settings),
    )
    # the journal's snapshots go where originals may go, never to a destination that
    # takes only artifacts (a web server)
    archives = {u: d for u, d in dests.items() if opts.routing is None or u in opts.routing.may_take_originals()}

    args = {"inboxes": [str(p) for p in inboxes], "to": urls}
    if fleet is not None:
        args.update(hosts=[e.name for e in fleet.hosts], hosts_file=str(hosts_file) if hosts_file else None, listen=listen)
        if agents["launcher"] is not None:
            args.update(slurm=slurm, sbatch=sbatch)
    meters = {step: common.Meter(step) for step in ("scan", "archive", "publish")}  # drawn on a terminal only

    def on_step(step: str, result) -> None:
        if step in meters:
            meters[step].stop()
        if dry_run and _dry_step(step, result, json):
            return
        if json:
            partial = run_step.RunReport(**({"enqueued": result} if step == "enqueue" else {step: result}))
            common.out_json({"step": step, **partial.counts()[step]})
        common.detail(f"{step} done")
        if step == "scan":
            for f in result.found:
                common.detail(f"scan: {f.state} {f.path}")
            for f in result.failed:
                common.warn(f"{f.path}: {f.reason}")
            for path, why in result.skipped:
                if "symlink" not in why:  # a symlink is skipped on purpose; no need to mail it every run
                    common.note(f"skipped {path}: {why}")
            for path, why in result.problems:  # unreadable now: tried again by the next run
                common.warn(f"scan: {path}: {why}")
        elif step == "archive":
            if not json:
                for file_id in result.archived:
                    common.out(file_id)
            for f in result.failed:
                if not f.down:
                    common.warn(f"archive: {f.file_id}: {f.error}")
            for url, why in sorted(result.down.items()):
                common.warn(f"archive: destination unavailable: {why}")
            for url, same in result.aliases:
                common.note(f"archive: {url} is the same destination as {same} (one folder reached two ways): archived to once, counted as one copy")
            for url, rel in result.swept:
                common.note(f"archive: {url}: removed {rel}, left by a copy that was killed")
            for file_id, url, why in result.hooks.failed:
                common.warn(f"archive: {file_id}: copied to {url}, but {why}; run again by a later archive")
        elif step == "collect":
            for v in result.problems:
                common.warn(f"collect: keeping {v.path}: {v.reason}")
        elif step == "publish":
            for pid, why in result.skipped:
                common.note(f"publish: {pid}: {why}")
            for why in result.refused:
                common.warn(f"publish: {why}")

    def on_work(r: tuple) -> None:
        if r[0] == "failed":
            common.warn(f"work: failed: {r[3]}")
        else:
            common.fleet_report(r, "work: ")  # hosts, agents, Slurm jobs, warnings, as imgq work says them

    def on_progress(step: str, done: int, total: int) -> None:
        meters[step](done, total)

    try:
        if watch:
            mark = {"at": backup_step.last_event(database)}

            def after() -> None:  # each watched run backs the journal up as a cron run does
                if archives and backup_step.changed_since(database, mark["at"]):
                    _backup(database, archives, settings.backup_keep)
                mark["at"] = backup_step.last_event(database)

            watching.serve(inv, opts, args, steps=STEPS, rescan=rescan or watching.RESCAN,
                           notify=not no_notify, on_step=on_step, on_work=on_work, on_progress=on_progress, summary=summary, after=after)
            return
        with inv.recorded(args, wait=wait, locks=STEPS) as rec:
            started = time.time()
            journal_at = backup_step.last_event(database)
            report = run_step.run(database, settings, opts, on_step=on_step, on_work=on_work, on_progress=on_progress)
            rec["counts"] = report.counts()
            rec["counts"]["seconds"] = round(time.time() - started, 3)
            common.summary(summary(report.counts(), rec["counts"]["seconds"]))
            rec["exit_code"] = report.exit_code
            if not dry_run and archives and backup_step.changed_since(database, journal_at):
                _backup(database, archives, settings.backup_keep)
    finally:
        for meter in meters.values():
            meter.stop()
        destinations.close_all(dests)


def _configured(path: Path | None, settings) -> Path | None:
    """A path from imgq.toml, relative to the file's folder."""
    if path is None:
        return None
    base = settings.config_path.parent if settings.config_path else Path(".")
    return path if path.is_absolute() else base / path


def _backup(database, dests, keep: int) -> None:
    """The journal's snapshot at every destination once the run changed something: a
    lost database is then brought back with `imgq restore --from DEST`."""
    snap, placed = backup_step.backup_to(database, dests, keep=keep, now=time.time())
    for p in placed:
        if p.error:
            common.warn(f"backup: {p.destination}: {p.error}")
    put = [p for p in placed if p.rel]
    common.detail(f"backup: the journal's snapshot ({snap.bytes // 1024} KiB) put at {len(put)} of {len(placed)} destination(s)")


def _dry_step(step: str, result, json: bool) -> bool:
    """What a dry run says that a real one does not; True if the step is told here."""
    if step == "work":  # not run: the files it would process, which a real run then archives
        if json:  # one object per step, as a real run prints, with what it would do
            common.out_json({"step": "work", "would_process": len(result)})
        for file_id in result:
            if not json:
                common.out(file_id)
            common.warn(f"run: would process {file_id}, then archive and collect it")
        return True
    if step == "archive":
        for file_id, url, rel, how in result.plan:
            common.warn(f"archive: {file_id}: would copy to {url.rstrip('/')}/{rel}" if how == "would copy" else f"archive: {file_id}: already there: {url.rstrip('/')}/{rel}")
    if step == "collect":
        for v in result.of(collect_step.WOULD_DELETE):
            common.warn(f"collect: would delete {v.path}: {v.reason}")
    return False


def summary(counts: dict, seconds: float) -> str:
    """The line a person reads on the terminal after a run: what each step did, in words."""
    def some(n: int, what: str) -> list[str]:
        return [f"{n} {what}"] if n else []

    parts = []
    if "scan" in counts:
        c = counts["scan"]
        parts.append(f"scan {c['new']} new, {c['duplicates']} duplicate, {c['failed']} failed")
    c = counts["enqueue"]
    parts.append(f"enqueue {c['jobs']} jobs for {c['files']} files")
    if "work" in counts:
        c = counts["work"]
        parts.append(f"work {c['would_process']} files would be processed" if "would_process" in c else f"work {c['done']} done, {c['failed']} failed")
    if "archive" in counts:
        c = counts["archive"]
        words = [f"{c['archived']} archived", f"{c['copied']} copies ({common.size(c['bytes'])})", *some(c["found"], "already there"), f"{c['failed']} failed"]
        words += some(c["waiting"], "waiting out a backoff") + [f"{url} down" for url in c["down"]]
        parts.append("archive " + ", ".join(words))
    if "collect" in counts:
        c = counts["collect"]
        words = [f"{c['deleted']} deleted", *some(c["gone"], "already gone"), f"{c['keep']} kept", f"{c['wait']} waiting for copies"]
        parts.append("collect " + ", ".join(words))
    if "publish" in counts:
        c = counts["publish"]
        parts.append(f"publish {c['photos']} photos, {c['written']} files written, {c['removed']} removed" + (f", {c['refused']} refused" if c["refused"] else ""))
    return f"run: {'; '.join(parts)}; in {common.duration(seconds)}"
