"""imgq archive --to DEST… [IDS | -]   and   imgq archive --verify"""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer

from imgq import archive as archive_lib
from imgq import destinations, routing
from imgq.cli import common
from imgq.cli.options import AcceptNewOpt, SshConfigOpt, ToOpt, TransfersOpt, dry_run_option
from imgq.errors import Exit, UsageError
from imgq.ledger.journal import Actor

EPILOG = """\b
Examples:
  imgq archive --to /mnt/backup --to ssh://nas/srv/photos
  imgq work --drain | imgq archive --to /mnt/backup -
  imgq archive --verify             # re-read every recorded copy, repair what is bad
  imgq archive -n --to /mnt/backup  # which copies would be made, and where
  imgq archive --to /mnt/usb --retry-now   # after freeing space: do not wait for the backoff
"""

def archive(
    ids: Annotated[Optional[list[str]], typer.Argument(help="File ids, or - to read them from stdin. None: every processed file.", metavar="[IDS | -]", show_default=False)] = None,
    to: ToOpt = None,
    verify: Annotated[bool, typer.Option("--verify", help="Re-read every recorded copy (at --to, default all); re-make missing or corrupt ones.")] = False,
    retry_now: Annotated[bool, typer.Option("--retry-now", help="Also try copies still waiting out the backoff after a failure.")] = False,
    transfers: TransfersOpt = None,
    dry_run: Annotated[bool, dry_run_option("print the files that would become archived and name on stderr each copy that would be made (DEST/PATH). An ssh:// destination is not connected to. With --verify: read every copy, repair none.")] = False,
    ssh_config: SshConfigOpt = None,
    accept_new_host_keys: AcceptNewOpt = False,
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
    json: common.JsonOpt = False,
    wait: common.WaitOpt = False,
) -> None:
    """Copy processed originals and their artifacts to every destination, verified.

    Without --to, the destinations and [[route]] rules of imgq.toml (and its
    route_command) say what goes where; --to sends everything to each, overriding them.

    Layout: DEST/YYYY/YYYY-MM-DD/OWNER/NAME with the artifacts beside the original
    (NAME.thumb.jpg, NAME.web.jpg). Each copy is written under a temporary name, fsynced,
    read back and its sha256 compared, then renamed into place and recorded. A
    destination that is down or full fails only its own copies, which are retried with
    backoff on later runs. A file becomes archived when every destination holds a
    verified copy of it and of all its artifacts (routed: wherever its routes send each); prints the id of each such file.
    Each destination makes up to --transfers copies at once, independently of the
    others; on an ssh:// destination a large copy that was killed is continued where it
    stopped, once the host has hashed the part already there to the same sha256.

    With --verify: re-reads every recorded copy, re-makes missing or corrupt ones from the
    original, the artifact store or another good copy, and prints the id of each file
    with a bad copy. Exits 1 if any copy failed, or (with --verify) any copy was bad.
    """
    inv = common.Invocation("archive", db, config, dry_run=dry_run)
    settings = inv.settings
    if transfers is not None:
        settings.transfers = transfers
    wanted = common.read_ids(ids)
    urls = destinations.in_force(to, settings)
    database = inv.database
    common.require_known(database, wanted)
    if verify:
        if not to:
            urls = list(dict.fromkeys(urls + archive_lib.destination_urls(database)))
    elif not urls:
        raise UsageError("no destination: give --to DEST, or set destinations = [...] in imgq.toml")
    dests = archive_lib.open_destinations(database, urls, destinations.SshOptions(config=ssh_config, accept_new_host_keys=accept_new_host_keys))
    try:
        with inv.recorded({"ids": wanted, "to": urls, "verify": verify}, wait=wait) as run:
            if verify:
                code = _verify(database, settings, dests, wanted, json, run, dry_run)
            else:
                code = _archive(database, settings, dests, wanted, json, retry_now, run, dry_run, routing.from_settings(to, settings))
            run["exit_code"] = code
    finally:
        destinations.close_all(dests)


def _archive(database, settings, dests, wanted, json, retry_now, run, dry_run, routes=None) -> int:
    def on_file(file_id, what, info):
        if what == "archived":
            common.out_json({"id": file_id, "state": "archived"}) if json else common.out(file_id)
        elif what == "failed" and not info.down:
            common.warn(f"{file_id}: {info.error}")
        elif what == "copied":
            url, path, how = info
            if dry_run:
                common.warn(f"{file_id}: {'would copy to' if how == 'would copy' else 'already there:'} {url.rstrip('/')}/{path}")
            else:
                common.detail(f"{file_id}: {how} {url}/{path}")

    started = time.time()
    with common.Meter("archive") as meter:
        report = archive_lib.archive(
            database,
            list(dests.values()),
            store_dir=settings.store_dir,
            file_ids=wanted,
            clock=time.time,
            actor=Actor(name="archive"),
            backoff=settings.backoff_seconds,
            backoff_max=settings.backoff_max_seconds,
            ignore_backoff=retry_now,
            on_file=on_file,
            on_progress=meter,
            dry_run=dry_run,
            transfers=settings.transfers,
            on_archived=settings.on_archived,
            hook_timeout=settings.on_archived_timeout,
            routing=routes,
        )
    return _render(report, run, started, dry_run)


def _render(report, run, started, dry_run) -> int:
    """What people read after an archive, on stderr; the run's counts; the exit code."""
    for url, same in report.aliases:
        common.note(f"{url} is the same destination as {same} (one folder reached two ways): archived to once, counted as one copy")
    # on stderr and in the run's counts (imgq run --json, imgq report): stdout stays one
    # file per line, so `imgq archive --json | imgq collect -` keeps working
    for url, rel in report.swept:
        common.note(f"{url}: removed {rel}, left by a copy that was killed")
    for file_id, state in report.skipped:
        (common.warn if state is None else common.note)(f"{file_id}: no such file id" if state is None else f"{file_id}: is {state}; only processed files are archived")
    for url, why in sorted(report.down.items()):
        n = sum(f.destination == url for f in report.failed)
        common.warn(f"destination unavailable: {why}; {n} file(s) will be retried there with backoff")
    if report.waiting:
        common.note(f"{report.waiting} copy task(s) still in backoff after earlier failures (see imgq status; --retry-now to try now)")
    render_hooks(report.hooks)
    run["counts"] = archive_lib.summary(report)
    common.summary(
        f"archive: {len(report.archived)} {'would be archived' if dry_run else 'archived'}, {report.copied} {'to copy' if dry_run else 'copied'} ({report.bytes / 1e6:.1f} MB), "
        f"{report.found} already there, {len(report.failed)} failed in {time.time() - started:.1f}s"
    )
    unknown = any(state is None for _, state in report.skipped)
    return int(Exit.USAGE) if unknown else int(Exit.SOME_FAILED) if report.failed else 0


def render_hooks(hooks) -> None:
    """on_archived's failures on stderr: the copies stand, the hook is run again later."""
    for file_id, url, why in hooks.failed:
        common.warn(f"{file_id}: copied to {url}, but {why}; run again by a later archive")
    if hooks.failed:
        common.note(f"{hooks.waiting} on_archived run(s) pending, retried with backoff by later archives (table archive_hooks)")


def _verify(database, settings, dests, wanted, json, run, dry_run=False) -> int:
    def on_problem(p: archive_lib.Problem):
        if json:
            common.out_json({"id": p.file_id, "destination": p.destination, "path": p.path, "problem": p.problem, "repaired": p.repaired, "detail": p.detail})
        else:
            common.out(p.file_id)
        state = "repaired" if p.repaired else "NOT repaired"
        common.warn(f"{p.destination}/{p.path}: {p.problem}; {state}: {p.detail}")

    report = archive_lib.verify(
        database,
        dests,
        store_dir=settings.store_dir,
        file_ids=wanted,
        clock=time.time,
        actor=Actor(name="archive --verify"),
        backoff=settings.backoff_seconds,
        backoff_max=settings.backoff_max_seconds,
        on_problem=on_problem,
        dry_run=dry_run,
    )
    for url, why in sorted(report.unreachable.items()):
        common.warn(f"cannot verify the copies at {url}: {why}")
    run["counts"] = {
        "checked": report.checked,
        "good": report.good,
        "bad": len(report.problems),
        "repaired": sum(p.repaired for p in report.problems),
        "unreachable": sorted(report.unreachable),
    }
    common.summary(f"verify: {report.checked} checked, {report.good} good, {len(report.problems)} bad ({run['counts']['repaired']} repaired)")
    return int(Exit.SOME_FAILED) if report.problems or report.unreachable else 0
