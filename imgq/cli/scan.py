"""imgq scan INBOX…"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from imgq import scan as scan_step
from imgq.cli import common
from imgq.cli.options import ConfigOpt, DbOpt, JsonOpt, WaitOpt, dry_run_option, settle_help
from imgq.config import DEFAULTS
from imgq.errors import Exit
from imgq.imaging.formats import FORMAT_NAMES
from imgq.ledger.journal import Actor

EPILOG = """\b
Examples:
  imgq scan ~/Dropbox/dig-photos
  imgq scan --settle 30 /srv/inbox | imgq enqueue -
  imgq scan --dry-run /mnt/sdcard   # what a scan would record; the database stays as it is
  imgq scan --json /mnt/sdcard | jq -r 'select(.state=="failed") | .reason'
"""


def configured_folders(settings) -> list[Path]:
    """The local destinations of imgq.toml, as archive reads them (relative to the file)."""
    base = settings.config_path.parent if settings.config_path else Path(".")
    return [base / os.path.expanduser(t) for t in settings.destinations if "://" not in t]


def scan(
    inboxes: Annotated[list[Path], typer.Argument(help="Inbox folders: one subfolder per photographer.", metavar="INBOX...", show_default=False)],
    settle: Annotated[Optional[float], typer.Option(help=settle_help(" (still being written)"), metavar="SECONDS", show_default=False)] = None,
    default_owner: Annotated[Optional[str], typer.Option("--default-owner", help=f"Owner of files at the inbox root (default: {DEFAULTS.default_owner}).", metavar="NAME", show_default=False)] = None,
    dry_run: Annotated[bool, dry_run_option("read, hash and recognise every new file as a real scan does, and print what it would record.")] = False,
    db: DbOpt = None,
    config: ConfigOpt = None,
    json: JsonOpt = False,
    wait: WaitOpt = False,
) -> None:
    """Find new photos in the inboxes and record them in the journal.

    Photos are recognised by content ({formats}), hashed once,
    and recorded as seen, duplicate (same bytes as a known photo) or failed (with the
    reason). Hidden, temporary and half-synced files are skipped, symlinks are never
    followed, and unchanged files are not read again. Prints the id of each new photo
    ready to enqueue; --json prints every recorded file with its state.
    """
    inv = common.Invocation("scan", db, config, dry_run=dry_run)
    settings = inv.settings
    if settle is not None:
        settings.settle = settle
    if default_owner is not None:
        settings.default_owner = default_owner
    with inv.recorded({"inboxes": [str(p) for p in inboxes]}, wait=wait) as run, common.Meter("scan") as meter:
        report = scan_step.scan(
            inv.database,
            inboxes,
            now=time.time(),
            settle=settings.settle,
            default_owner=settings.default_owner,
            max_pixels=settings.max_pixels,
            # the store and configured destinations; recorded ones are found in the database
            skip_dirs=[settings.store_dir, *configured_folders(settings)],
            actor=Actor(name="scan"),
            on_progress=meter,
        )
        meter.stop()
        for f in report.found:
            common.detail(f"{f.state} {f.path}" + (f" (same bytes as {f.duplicate_of})" if f.duplicate_of else "") + (f": {f.reason}" if f.reason else ""))
            if json:
                common.out_json({"id": f.id, "path": f.path, "state": f.state, "reason": f.reason, "duplicate_of": f.duplicate_of})
            elif f.state == "seen":
                common.out(f.id)
        for f in report.failed:
            common.warn(f"{f.path}: {f.reason}")
        for path, why in report.skipped:
            common.note(f"skipped {path}: {why}")
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
            common.note(f"{len(report.settling)} file(s) still being written; the next scan will take them")
        for path in report.settling:
            common.detail(f"still being written: {path}")
        c = run["counts"]
        common.summary(f"scan: {c['new']} new, {c['duplicates']} duplicate, {c['failed']} failed, {c['unchanged']} unchanged")
        missing = [p for p in inboxes if not p.is_dir()]
        if missing:
            run["exit_code"] = int(Exit.USAGE)
        elif report.failed or report.problems:
            run["exit_code"] = int(Exit.SOME_FAILED)


# the formats come from the one list (imgq.imaging.formats.SUPPORTED): help and man page follow it
scan.__doc__ = scan.__doc__.format(formats=FORMAT_NAMES)
