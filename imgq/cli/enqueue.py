"""imgq enqueue [IDS | -]"""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer

from imgq import enqueue as enqueue_step
from imgq import select
from imgq.cli import common
from imgq.cli.options import ConfigOpt, DbOpt, IdsArg, JsonOpt, WaitOpt, completes, dry_run_option
from imgq.config import DEFAULTS
from imgq.errors import Exit
from imgq.ledger.journal import Actor

EPILOG = """\b
Examples:
  imgq scan inbox/ | imgq enqueue -
  imgq enqueue                      # every photo not yet enqueued
  imgq enqueue -n --recipe people   # which files an edited recipe would give jobs
  imgq enqueue --recipe default alice_1700000000_IMG_0001.jpg
  imgq enqueue --op thumb --op 'fit:1920x1080' -
  imgq enqueue --split --stripes 8 --op 'median=5|web' big_1700000000_pano.tif
  imgq enqueue --op 'web|brightness=1.2|sharpness=1.5' --op 'web|faces'
  imgq enqueue -r portraits --where 'faces>0'            # a second pass on what the first marked
  imgq enqueue -r enhance --where owner=alice --where 'taken>=2024-05-01' --where 'taken<2024-06-01'
"""


def enqueue(
    ids: Annotated[Optional[list[str]], typer.Argument(help="File ids, or - to read them from stdin. None: every seen file.", metavar=IdsArg, show_default=False)] = None,
    recipe: Annotated[Optional[list[str]], typer.Option("--recipe", "-r", autocompletion=completes("recipes"), help="Recipe to apply (repeatable; default: the enqueue list of imgq.toml, else default). `imgq recipes` lists them.", metavar="NAME", show_default=False)] = None,
    op: Annotated[Optional[list[str]], typer.Option("--op", autocompletion=completes("ops"), help="An operation chain giving one artifact, e.g. 'web|sharpness=1.5' (repeatable).", metavar="CHAIN", show_default=False)] = None,
    max_attempts: Annotated[Optional[int], typer.Option("--max-attempts", help="At most N attempts for a transiently failing job (default: no limit by count; it is retried for retry_for seconds, a day by default).", min=1, metavar="N", show_default=False)] = None,
    split: Annotated[bool, typer.Option("--split", help=f"Split images over split_pixels (default {DEFAULTS.split_pixels // 1_000_000} MP) into stripe jobs that any workers or hosts run in parallel, then join them; the result is pixel-identical.")] = False,
    stripes: Annotated[Optional[int], typer.Option("--stripes", help=f"Stripes per split image (default {DEFAULTS.split_stripes}, or split_stripes in imgq.toml).", min=2, metavar="N", show_default=False)] = None,
    split_pixels: Annotated[Optional[int], typer.Option("--split-pixels", help=f"Split only images with more pixels than this (default {DEFAULTS.split_pixels}).", min=1, metavar="PIXELS", show_default=False)] = None,
    where: Annotated[Optional[list[str]], typer.Option("--where", "-w", help="Only files meeting FIELD OP VALUE (repeatable, all must hold): state=archived, owner=alice, taken>=2024-05-01, tag=no_faces, faces>0, recipe=people, recipe!=enhance.", metavar="COND", show_default=False)] = None,
    dry_run: Annotated[bool, dry_run_option("print the files that would get jobs (--json: and the jobs).")] = False,
    db: DbOpt = None,
    config: ConfigOpt = None,
    json: JsonOpt = False,
    wait: WaitOpt = False,
) -> None:
    """Create one job per file per recipe; files that already have that job get none.

    A recipe's parameters are part of the job's identity: editing a recipe in imgq.toml
    and enqueueing again creates jobs for exactly the files it affects. Without --recipe
    or --op, the recipes listed by `enqueue = [...]` in imgq.toml are applied (default:
    just "default"). Prints the id of each file that got a new job.
    """
    inv = common.Invocation("enqueue", db, config, dry_run=dry_run)
    wanted = common.read_ids(ids)
    chains_by_recipe = enqueue_step.resolve_recipes(inv.settings, recipe, op)
    if max_attempts is not None:
        inv.settings.max_attempts = max_attempts
    conditions = [select.parse(w) for w in where or []]
    common.require_known(inv.database, wanted)
    if conditions:  # the files meeting them (among the ids given): each offered as an id is
        wanted = select.files(inv.database, conditions, wanted)
    with inv.recorded({"ids": wanted, "recipes": chains_by_recipe, "where": where}, wait=wait) as run:
        results = enqueue_step.enqueue(
            inv.database, inv.settings, chains_by_recipe, now=time.time(), actor=Actor(name="enqueue"),
            file_ids=wanted, split=split, stripes=stripes, split_pixels=split_pixels,
        )
        unknown = 0
        for r in results:
            if json:
                common.out_json({"id": r.file_id, "jobs": r.created, "skipped": r.skipped})
            elif r.created:
                common.out(r.file_id)
            if r.skipped == "unknown file id":
                unknown += 1
                common.warn(f"{r.file_id}: no such file id")
        run["counts"] = {"files": len(results), "jobs": sum(len(r.created) for r in results), "unknown": unknown}
        if unknown:
            run["exit_code"] = int(Exit.USAGE)
