"""imgq restore SNAPSHOT | --from DEST"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from imgq import backup as backup_step
from imgq import destinations
from imgq.cli import common
from imgq.cli.options import AcceptNewOpt, ConfigOpt, DbOpt, JsonOpt, SshConfigOpt
from imgq.errors import UsageError

SUMMARY = "Bring the database back from a snapshot that imgq backup put at a destination."

EPILOG = """\b
Examples:
  imgq restore --from /mnt/backup                 # the newest snapshot there, as ./imgq.db
  imgq restore --from ssh://nas/srv/photos --db /srv/imgq/imgq.db
  imgq restore /mnt/backup/imgq-journal/3f2a.../imgq-20240517T080000Z-1a2b3c4d.db.gz
  imgq run /srv/inbox --to /mnt/backup            # then carry on: nothing done is redone
"""


def restore(
    snapshot: Annotated[Optional[Path], typer.Argument(help="A snapshot file (.db.gz) to restore.", metavar="[SNAPSHOT]", show_default=False)] = None,
    source: Annotated[Optional[str], typer.Option("--from", help="Restore the newest snapshot at this destination (a folder or ssh://...).", metavar="DEST", show_default=False)] = None,
    database_id: Annotated[Optional[str], typer.Option("--database-id", help="With --from: the database whose snapshot to take, when the destination holds several.", metavar="ID", show_default=False)] = None,
    ssh_config: SshConfigOpt = None,
    accept_new_host_keys: AcceptNewOpt = False,
    db: DbOpt = None,
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """Write a snapshot made by `imgq backup` (or `imgq run`) as the database.

    The snapshot's sha256 is checked against its name and SQLite's integrity check run
    before it is written, atomically; an existing database is never replaced (move it
    away first). Runs after the snapshot are not in it: the next `imgq run` finds what
    they left (new photos are scanned, copies already at a destination are adopted, not
    made again). Prints the database's path.
    """
    if (snapshot is None) == (source is None):
        raise UsageError("give a SNAPSHOT file or --from DEST (one of them)")
    settings = common.settings_for(db, config)
    with tempfile.TemporaryDirectory(prefix="imgq-restore-") as tmp:
        if source is not None:
            dest = destinations.open_destination(source, destinations.SshOptions(config=ssh_config, accept_new_host_keys=accept_new_host_keys))
            try:
                rel = backup_step.newest(dest, database_id)
                common.note(f"restore: the newest snapshot at {dest.url}: {rel}")
                snapshot = backup_step.fetch(dest, rel, Path(tmp))
            finally:
                dest.close()
        elif not snapshot.is_file():
            raise UsageError(f"{snapshot}: no such snapshot file")
        facts = backup_step.restore(snapshot, settings.db)
    if json:
        common.out_json(facts)
    else:
        common.out(os.path.abspath(settings.db))
    common.summary(f"restore: {settings.db} holds {facts['files']} files, {facts['jobs']} jobs, {facts['events']} events")
