"""imgq scan INBOX…"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from imgq import scan as inbox
from imgq.cli import common
from imgq.errors import Exit
from imgq.imaging.formats import FORMAT_NAMES
from imgq.ledger.journal import Actor

EPILOG = """\b
Examples:
  imgq scan ~/Dropbox/dig-photos
  imgq scan --settle 30 /srv/inbox | imgq enqueue -
  imgq scan --json /mnt/sdcard | jq -r 'select(.state=="failed") | .reason'
"""


def configured_folders(settings) -> list[Path]:
    """The local destinations of imgq.toml, as archive reads them (relative to the file)."""
    base = settings.config_path.parent if settings.config_path else Path(".")
    return [base / os.path.expanduser(t) for t in settings.destinations if "://" not in t]


def scan(
    inboxes: Annotated[list[Path], typer.Argument(help="Inbox folders: one subfolder per photographer.", metavar="INBOX...", show_default=False)],
    settle: Annotated[Optional[float], typer.Option(help="Skip files modified less than this many seconds ago (still being written). Default 2, or `settle` in imgq.toml.", metavar="SECONDS", show_default=False)] = None,
    default_owner: Annotated[Optional[str], typer.Option("--default-owner", help="Owner of files at the inbox root (default: unknown).", metavar="NAME", show_default=False)] = None,
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
    json: common.JsonOpt = False,
    wait: common.WaitOpt = False,
) -> None:
    """Find new photos in the inboxes and record them in the journal.

    Photos are recognised by content ({formats}), hashed once,
    and recorded as seen, duplicate (same bytes as a known photo) or failed (with the
    reason). Hidden, temporary and half-synced files are skipped, symlinks are never
    followed, and unchanged files are not read again. Prints the id of each new photo
    ready to enqueue; --json prints every recorded file with its state.
    """
    settings = common.settings_for(db, config)
    if settle is not None:
        settings.settle = settle
    if default_owner is not None:
        settings.default_owner = default_owner
    database = common.open_db(settings)
    err = common.stderr()
    with common.step_lock(settings, "scan", wait), common.recorded_run(database, "scan", {"inboxes": [str(p) for p in inboxes]}) as run:
        report = inbox.scan(
            database,
            inboxes,
            now=time.time(),
            settle=settings.settle,
            default_owner=settings.default_owner,
            max_pixels=settings.max_pixels,
            # the store and configured destinations; recorded ones are found in the database
            skip_dirs=[settings.store_dir, *configured_folders(settings)],
            actor=Actor(name="scan"),
        )
        for f in report.found:
            if json:
                common.out_json({"id": f.id, "path": f.path, "state": f.state, "reason": f.reason, "duplicate_of": f.duplicate_of})
            elif f.state == "seen":
                common.out(f.id)
        for f in report.failed:
            common.warn(f"{f.path}: {f.reason}")
        for path, why in report.skipped:
            common.warn(f"skipped {path}: {why}")
        for path, why in report.problems:
            common.warn(f"{path}: {why}")
        run["counts"] = {
            "new": len(report.new_ids),
            "duplicates": sum(f.state == "duplicate" for f in report.found),
            "failed": len(report.failed),
            "unchanged": report.unchanged,
            "settling": len(report.settling),
            "problems": len(report.problems),
        }
        if report.settling:
            common.warn(f"{len(report.settling)} file(s) still being written; the next scan will take them")
        if common.is_tty():
            c = run["counts"]
            err.print(f"scan: {c['new']} new, {c['duplicates']} duplicate, {c['failed']} failed, {c['unchanged']} unchanged", markup=False)
        missing = [p for p in inboxes if not p.is_dir()]
        if missing:
            run["exit_code"] = int(Exit.USAGE)
            raise typer.Exit(int(Exit.USAGE))
        if report.failed or report.problems:
            run["exit_code"] = int(Exit.SOME_FAILED)
            raise typer.Exit(int(Exit.SOME_FAILED))


# the formats come from the one list (imgq.imaging.formats.SUPPORTED): help and man page follow it
scan.__doc__ = scan.__doc__.format(formats=FORMAT_NAMES)
