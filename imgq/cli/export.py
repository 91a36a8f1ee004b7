"""imgq export --recipe R --to DIR"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from imgq import enqueue as enqueue_step
from imgq import export as export_step
from imgq.cli import common
from imgq.cli.options import ConfigOpt, DbOpt, IdsArg, JsonOpt, completes, dry_run_option
from imgq.errors import Exit, UsageError

SUMMARY = "Copy a recipe's artifacts to a folder under names people read."

EPILOG = """\b
Examples:
  imgq export --recipe enhance --to ~/results            # DIR/OWNER/DATE/IMG_0001.bright.jpg ...
  imgq export --op 'sharpness=2' --to out/               # the artifacts of an ad-hoc --op chain
  imgq export -r default --to site/ --name '{owner}/{stem}-{artifact}{ext}'
  imgq scan inbox/ | imgq export -r default --to out/ -    # only the files just scanned
  imgq export -n -r enhance --to ~/results               # what would be written

\b
Name fields: {owner} {date} {year} {month} {day} {time} {stem} {name} {id} {artifact} {ext} {recipe}
"""


def export(
    ids: Annotated[Optional[list[str]], typer.Argument(help="File ids, or - to read them from stdin. None: every file the recipe has processed.", metavar=IdsArg, show_default=False)] = None,
    to: Annotated[Optional[Path], typer.Option("--to", help="The folder to export to (created if needed).", metavar="DIR", show_default=False)] = None,
    recipe: Annotated[Optional[str], typer.Option("--recipe", "-r", autocompletion=completes("recipes"), help="The recipe whose artifacts to export (`imgq recipes` lists them).", metavar="NAME", show_default=False)] = None,
    op: Annotated[Optional[list[str]], typer.Option("--op", autocompletion=completes("ops"), help="Export the artifacts of this ad-hoc chain instead, as `imgq enqueue --op` made them (repeatable, in the same order).", metavar="CHAIN", show_default=False)] = None,
    name: Annotated[str, typer.Option("--name", help="Where each artifact goes below DIR: a template of the fields below.", metavar="TEMPLATE")] = export_step.DEFAULT_NAME,
    dry_run: Annotated[bool, dry_run_option("print the files that would be written.")] = False,
    db: DbOpt = None,
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """Copy the artifacts a recipe made to DIR, under names people read.

    Each artifact of the recipe's current version goes to DIR/NAME (default
    OWNER/DATE/STEM.ARTIFACT.EXT), copied from the store and checked against its
    recorded sha256. Idempotent: a file already holding those bytes is left as it is,
    and a file export did not write is never overwritten. Originals are never touched.
    Prints the path of each file written (--json: an object per artifact, whatever
    happened to it). Exits 1 if an artifact could not be exported, 0 otherwise; files
    the recipe has not processed yet are named on stderr.
    """
    if to is None:
        raise UsageError("--to DIR is needed: the folder to export to")
    if (recipe is None) == (not op):
        raise UsageError("give --recipe NAME or --op CHAIN (one of them)")
    inv = common.Invocation("export", db, config, dry_run=dry_run)
    [(recipe_name, chains)] = enqueue_step.resolve_recipes(inv.settings, [recipe] if recipe else [], op).items()
    export_step.check_template(name)
    wanted = common.read_ids(ids)
    common.require_known(inv.database, wanted)
    with inv.recorded({"to": str(to), "recipe": recipe_name, "name": name, "ids": wanted}) as run:
        report = export_step.plan(inv.database, recipe_name, chains, template=name, file_ids=wanted)
        with common.Meter("export") as meter:
            done = [0]

            def shown(item: export_step.Item) -> None:
                done[0] += 1
                meter(done[0], len(report.items))
                path = os.path.abspath(to / item.name)
                if json:
                    common.out_json({"id": item.file_id, "artifact": item.artifact, "path": path, "status": item.status, "reason": item.reason or None})
                elif item.status in ("written", "would write"):
                    common.out(path)
                if item.reason:
                    common.warn(f"export: {item.reason}")

            export_step.export(report, inv.settings.store_dir, to, dry_run=dry_run, on_item=shown)
        if report.not_made:
            common.note(f"export: {len(report.not_made)} file(s) not processed by {recipe_name!r} yet (imgq enqueue --recipe {recipe_name} then imgq work): {', '.join(report.not_made[:5])}{' ...' if len(report.not_made) > 5 else ''}")
        bad = sum(report.count(s) for s in ("conflict", "damaged", "missing", "failed"))
        run["counts"] = {s: report.count(s) for s in ("written", "would write", "unchanged", "conflict", "damaged", "missing", "failed")} | {"not_made": len(report.not_made)}
        would = "would be " if dry_run else ""
        common.summary(f"export: {report.count('written') + report.count('would write')} {would}written, {report.count('unchanged')} unchanged, {bad} not exported -> {to}")
        if bad:
            run["exit_code"] = int(Exit.SOME_FAILED)
