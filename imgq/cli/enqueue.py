"""imgq enqueue [IDS | -]"""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer

from imgq import recipes
from imgq.ledger import queue
from imgq.cli import common
from imgq.errors import Exit, UnknownOperation, UsageError
from imgq.ledger.journal import Actor

EPILOG = """\b
Examples:
  imgq scan inbox/ | imgq enqueue -
  imgq enqueue                      # every photo not yet enqueued
  imgq enqueue --recipe default alice_1700000000_IMG_0001.jpg
  imgq enqueue --op thumb --op 'fit:1920x1080' -
  imgq enqueue --split --stripes 8 --op 'median=5|web' big_1700000000_pano.tif
  imgq enqueue --op 'web|brightness=1.2|sharpness=1.5' --op 'web|faces'
"""


def enqueue(
    ids: Annotated[Optional[list[str]], typer.Argument(help="File ids, or - to read them from stdin. None: every seen file.", metavar="[IDS | -]", show_default=False)] = None,
    recipe: Annotated[Optional[list[str]], typer.Option("--recipe", "-r", help="Recipe to apply (repeatable; default: the enqueue list of imgq.toml, else default). `imgq recipes` lists them.", metavar="NAME", show_default=False)] = None,
    op: Annotated[Optional[list[str]], typer.Option("--op", help="An operation chain giving one artifact, e.g. 'web|sharpness=1.5' (repeatable).", metavar="CHAIN", show_default=False)] = None,
    max_attempts: Annotated[Optional[int], typer.Option("--max-attempts", help="Attempts before a transiently failing job fails (default 5).", min=1, show_default=False)] = None,
    split: Annotated[bool, typer.Option("--split", help="Split images over split_pixels (default 40 MP) into stripe jobs that any workers or hosts run in parallel, then join them; the result is pixel-identical.")] = False,
    stripes: Annotated[Optional[int], typer.Option("--stripes", help="Stripes per split image (default 4, or split_stripes in imgq.toml).", min=2, show_default=False)] = None,
    split_pixels: Annotated[Optional[int], typer.Option("--split-pixels", help="Split only images with more pixels than this (default 40000000).", min=1, show_default=False)] = None,
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
    json: common.JsonOpt = False,
    wait: common.WaitOpt = False,
) -> None:
    """Create one job per file per recipe; files that already have that job get none.

    A recipe's parameters are part of the job's identity: editing a recipe in imgq.toml
    and enqueueing again creates jobs for exactly the files it affects. Without --recipe
    or --op, the recipes listed by `enqueue = [...]` in imgq.toml are applied (default:
    just "default"). Prints the id of each file that got a new job.
    """
    settings = common.settings_for(db, config)
    wanted = common.read_ids(ids)
    chains_by_recipe: dict[str, dict[str, str]] = {}
    for name in recipe or ([] if op else settings.enqueue):
        if name not in settings.recipes:
            raise UsageError(f"unknown recipe {name!r}; known: {', '.join(sorted(settings.recipes))}")
        chains_by_recipe[name] = settings.recipes[name]
    if op:
        chains = {recipes.artifact_name_for(c): c for c in op}
        chains_by_recipe["ops:" + "+".join(chains)] = chains
    for name, chains in chains_by_recipe.items():
        try:
            recipes.normalize_recipe(chains)  # a bad chain or option is a usage error, before any job exists
        except UnknownOperation as e:
            raise UsageError(f"recipe {name!r}: {e}") from None
    if max_attempts is not None:
        settings.max_attempts = max_attempts
    database = common.open_db(settings)
    with common.step_lock(settings, "enqueue", wait), common.recorded_run(database, "enqueue", {"ids": wanted, "recipes": chains_by_recipe}) as run:
        if wanted is None:
            wanted = [r[0] for r in database.all("SELECT id FROM files WHERE state IN ('seen', 'queued', 'processed', 'archived') ORDER BY created_at, id")]
        policy = None
        if split:
            policy = queue.SplitPolicy(min_pixels=split_pixels or settings.split_pixels, stripes=stripes or settings.split_stripes)
        results = queue.enqueue(database, wanted, chains_by_recipe, now=time.time(), max_attempts=settings.max_attempts, actor=Actor(name="enqueue"), split=policy)
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
            run["exit_code"] = int(Exit.SOME_FAILED)
            raise typer.Exit(int(Exit.SOME_FAILED))
