"""imgq collect [--min-copies N] [--dry-run] [IDS | -]"""

from __future__ import annotations

import os
import time
from typing import Annotated, Optional

import typer

from imgq import archive as archive_lib
from imgq import collect as collect_lib
from imgq import destinations, routing
from imgq.cli import common
from imgq.cli.options import AcceptNewOpt, ConfigOpt, DbOpt, IdsArg, JsonOpt, SshConfigOpt, ToOpt, WaitOpt, dry_run_option
from imgq.errors import Exit, UsageError
from imgq.ledger.journal import Actor

EPILOG = """\b
Examples:
  imgq collect --dry-run            # what would be deleted, and why the rest stays
  imgq collect                      # a good copy at every destination (imgq.toml, else the database's)
  imgq collect --min-copies 2       # any two destinations will do
  imgq collect --min-copies 1       # the USB disk is away: one verified copy on the NAS is enough
  imgq archive --to /mnt/a --to ssh://nas/photos | imgq collect --to /mnt/a --to ssh://nas/photos -
"""


def collect(
    ids: Annotated[Optional[list[str]], typer.Argument(help="File ids, or - to read them from stdin. None: every file in the inbox.", metavar=IdsArg, show_default=False)] = None,
    min_copies: Annotated[Optional[int], typer.Option("--min-copies", help="Enough copies: N verified now at N distinct destinations, even if the file is not archived at every destination (one is down). Default: one at every destination.", min=1, metavar="N", show_default=False)] = None,
    to: ToOpt = None,
    dry_run: Annotated[bool, dry_run_option("print what would be deleted, and on stderr why the rest stays.")] = False,
    ssh_config: SshConfigOpt = None,
    accept_new_host_keys: AcceptNewOpt = False,
    db: DbOpt = None,
    config: ConfigOpt = None,
    json: JsonOpt = False,
    wait: WaitOpt = False,
) -> None:
    """Delete originals from the inbox once their copies are certain.

    An original is deleted only if enough recorded copies of it are read again now and
    match in size and sha256, and the inbox file is still the one that was scanned
    (same size, mtime and sha256). Enough means, by default, one at every destination
    (--to, else `destinations` in imgq.toml, else every destination the database has
    archived to, named on stderr) for a file archived everywhere. With --min-copies N it
    means exactly N at distinct destinations, even for a file not archived at every
    destination yet (one is down): it goes, and the missing copies are not made later.
    With [[route]] rules or a route_command in imgq.toml (and no --to), enough means a
    copy wherever the routes send the file's original (or N of those with --min-copies);
    a destination that takes only artifacts never counts. A duplicate goes with the photo it duplicates. Nothing outside the inbox is touched
    and no symlink is followed; folders stay. Everything else stays with its reason,
    shown here and in `imgq status`.

    Prints the id of each file deleted (with --dry-run: that would be). Exits 1 if a file
    was kept because something is wrong (a bad copy, a changed file), not merely waiting.
    """
    inv = common.Invocation("collect", db, config, dry_run=dry_run)
    wanted = common.read_ids(ids)
    required = destinations.in_force(to, inv.settings)
    if min_copies is None and not required:
        # where this database archived to: what "every destination" means when nobody
        # said (no database yet: nothing was archived, and none is made to say so)
        if os.path.exists(inv.settings.db):
            required = collect_lib.recorded_destinations(inv.database)
        if not required:
            raise UsageError("no destination to require copies at, and none is recorded in the database: give --to DEST or --min-copies N, or set destinations = [...] in imgq.toml")
        common.note(f"collect: no --to and no destinations in imgq.toml: requiring a verified copy at each destination recorded in the database: {', '.join(required)}")
    database = inv.database
    common.require_known(database, wanted)
    urls = list(required)
    routes = routing.from_settings(to, inv.settings)
    if min_copies is not None and not to and routes is None:
        # any destination holding copies counts
        urls = list(dict.fromkeys(urls + archive_lib.destination_urls(database)))
        required = []
    # a copy inside an inbox is no copy to count: refused
    dests = archive_lib.open_destinations(database, urls, destinations.SshOptions(config=ssh_config, accept_new_host_keys=accept_new_host_keys))
    verbose = dry_run or json

    def on_verdict(v: collect_lib.Verdict) -> None:
        if json:
            common.out_json({"id": v.file_id, "path": v.path, "action": v.action, "reason": v.reason, "verified": v.verified})
        elif v.action in (collect_lib.DELETED, collect_lib.WOULD_DELETE):
            common.out(v.file_id)
        if v.action == collect_lib.WOULD_DELETE:
            common.warn(f"would delete {v.path}: {v.reason}")
        elif v.action == collect_lib.KEEP or (dry_run and v.action == collect_lib.WAIT):
            common.warn(f"keeping {v.path}: {v.reason}")
        elif v.action == collect_lib.WAIT:
            common.detail(f"keeping {v.path}: {v.reason}")
        elif v.action == collect_lib.DELETED:
            common.detail(f"deleted {v.path}: {v.reason}")

    try:
        # with --min-copies a file archive is still working on may go: never both at once
        locks = ("archive", "collect") if min_copies is not None else None
        with inv.recorded({"ids": wanted, "required": required, "min_copies": min_copies, "dry_run": dry_run}, wait=wait, locks=locks) as run:
            report = collect_lib.collect(
                database,
                dests,
                required=required,
                min_copies=min_copies,
                file_ids=wanted,
                dry_run=dry_run,
                clock=time.time,
                actor=Actor(name="collect"),
                on_verdict=on_verdict,
                routing=routes,
            )
            run["counts"] = collect_lib.summary(report)
            if not verbose:
                c = run["counts"]
                common.summary(f"collect: {c['deleted']} deleted, {c['gone']} already gone, {c['keep']} kept (see above), {c['wait']} not archived yet")
            if report.problems:
                run["exit_code"] = int(Exit.SOME_FAILED)
    finally:
        destinations.close_all(dests)
