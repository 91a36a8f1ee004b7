"""imgq backup [--to DEST…]"""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer

from imgq import archive as archive_lib
from imgq import backup as backup_step
from imgq import destinations
from imgq import routing
from imgq.cli import common
from imgq.cli.options import AcceptNewOpt, ConfigOpt, DbOpt, JsonOpt, SshConfigOpt, ToOpt
from imgq.config import DEFAULTS
from imgq.errors import Exit, UsageError

SUMMARY = "Put a consistent snapshot of the database at every destination."

EPILOG = """\b
Examples:
  imgq backup                         # to the destinations of imgq.toml, else those holding copies
  imgq backup --to /mnt/backup --keep 10
  imgq restore --from /mnt/backup     # after losing the database (see imgq restore --help)
"""


def backup(
    to: ToOpt = None,
    keep: Annotated[Optional[int], typer.Option("--keep", help=f"Snapshots of this database kept at each destination, newest first (default {DEFAULTS.backup_keep}, or backup_keep in imgq.toml).", min=1, metavar="N", show_default=False)] = None,
    ssh_config: SshConfigOpt = None,
    accept_new_host_keys: AcceptNewOpt = False,
    db: DbOpt = None,
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """Put a consistent snapshot of the database (the queue and the journal) at every
    destination, beside the archive: DEST/imgq-journal/DATABASE-ID/imgq-TIME-SHA8.db.gz.

    The snapshot is taken with SQLite's online backup, so workers may go on meanwhile;
    it is compressed, and written, read back and verified like every copy. `imgq run`
    does this at its end. With [[route]] rules in imgq.toml (and no --to), only the
    destinations that take originals get it, never one for artifacts only. Older snapshots beyond --keep are removed. Prints the path of
    each snapshot put (DEST/REL); exits 1 if a destination could not take it.
    """
    inv = common.Invocation("backup", db, config)
    routes = routing.from_settings(to, inv.settings)
    # with [[route]] rules: only where originals may go, never an artifacts-only destination
    urls = (routes.may_take_originals() if routes else destinations.in_force(to, inv.settings)) or inv.database.distinct("copies", "destination")
    if not urls:
        raise UsageError("no destination: give --to DEST, or set destinations = [...] in imgq.toml")
    keep = keep or inv.settings.backup_keep
    dests = archive_lib.open_destinations(inv.database, urls, destinations.SshOptions(config=ssh_config, accept_new_host_keys=accept_new_host_keys))
    try:
        with inv.recorded({"to": urls, "keep": keep}, locks=()) as run:
            placed = put_snapshots(inv.database, dests, keep=keep, json=json)
            run["counts"] = {"put": sum(1 for p in placed if p.rel), "failed": sum(1 for p in placed if not p.rel)}
            if any(not p.rel for p in placed):
                run["exit_code"] = int(Exit.SOME_FAILED)
    finally:
        destinations.close_all(dests)


def put_snapshots(database, dests: dict, *, keep: int, json: bool) -> list:
    """Snapshot once, put it at each destination, say what happened."""
    snap, placed = backup_step.backup_to(database, dests, keep=keep, now=time.time())
    for p in placed:
        where = f"{p.destination.rstrip('/')}/{p.rel}" if p.rel else None
        if json:
            common.out_json({"destination": p.destination, "snapshot": where, "bytes": snap.bytes, "sha256": snap.sha256, "removed": p.removed, "error": p.error})
        elif where:
            common.out(where)
        if p.error:
            common.warn(f"backup: {p.destination}: {p.error}")
        for old in p.removed:
            common.detail(f"backup: removed the older snapshot {p.destination.rstrip('/')}/{old}")
    common.summary(f"backup: a {snap.bytes // 1024} KiB snapshot put at {sum(1 for p in placed if p.rel)} of {len(placed)} destination(s)")
    return placed
