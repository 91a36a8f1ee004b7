"""The enqueue step: which recipes are in force and which files are enqueueable.

``imgq enqueue`` and ``imgq run`` both call this module, so they share one rule: every
file that is seen, queued, processed or archived (``queue.ENQUEUEABLE``) is offered every
recipe in force, and the queue makes a job only where that file has no job of that
recipe's hash yet. A new photo gets its jobs; a recipe edited in imgq.toml gives new jobs
to exactly the files it affects; an unchanged database gets nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

from imgq import recipes
from imgq.config import Settings
from imgq.errors import UnknownOperation, UsageError
from imgq.ledger import queue
from imgq.ledger.database import DB
from imgq.ledger.journal import Actor


def resolve_recipes(settings: Settings, names: Iterable[str] | None = None, ops: Iterable[str] | None = None) -> dict[str, dict[str, str]]:
    """Recipe name -> chains for the recipes named (``--recipe``) and an ad-hoc recipe of
    ``--op`` chains; with neither, the ``enqueue`` list of the settings.

    Raises UsageError for an unknown recipe or a chain or option that does not parse,
    before any job exists.
    """
    names, ops = list(names or []), list(ops or [])
    chains_by_recipe: dict[str, dict[str, str]] = {}
    for name in names or ([] if ops else settings.enqueue):
        if name not in settings.recipes:
            raise UsageError(f"unknown recipe {name!r}; known: {', '.join(sorted(settings.recipes))}")
        chains_by_recipe[name] = settings.recipes[name]
    if ops:
        try:
            chains = {recipes.artifact_name_for(c): c for c in ops}
        except UnknownOperation as e:
            raise UsageError(f"--op: {e}") from None
        chains_by_recipe["ops:" + "+".join(chains)] = chains
    for name, chains in chains_by_recipe.items():
        try:
            recipes.normalize_recipe(chains)
        except UnknownOperation as e:
            raise UsageError(f"recipe {name!r}: {e}") from None
    return chains_by_recipe


def eligible(db: DB) -> list[str]:
    """The ids of every file a recipe may still give a job, oldest first."""
    states = sorted(queue.ENQUEUEABLE)
    marks = ", ".join("?" for _ in states)
    return [r[0] for r in db.all(f"SELECT id FROM files WHERE state IN ({marks}) ORDER BY created_at, id", states)]


def enqueue(
    db: DB,
    settings: Settings,
    chains_by_recipe: dict[str, dict[str, str]],
    *,
    now: float,
    actor: Actor,
    file_ids: Iterable[str] | None = None,
    split: bool = False,
    stripes: int | None = None,
    split_pixels: int | None = None,
    split_seconds: float | None = None,
) -> list[queue.EnqueueResult]:
    """One job per file per recipe where that file has none of that recipe's hash yet.

    ``file_ids`` None means every eligible file (``eligible``) that lacks one of these
    recipes' jobs (``queue.lacking``: a no-op enqueue costs one query); given ids are offered as
    they are, and an unknown or ineligible one comes back with ``skipped`` saying why.
    With ``split``, files over ``split_pixels`` (default: the settings') get ``stripes``
    stripe jobs (default: the settings') instead of one job, and videos longer than
    ``split_seconds`` as many chunk jobs.
    """
    wanted = queue.lacking(db, chains_by_recipe) if file_ids is None else list(file_ids)
    policy = None
    if split:
        policy = queue.SplitPolicy(
            min_pixels=split_pixels or settings.split_pixels, stripes=stripes or settings.split_stripes,
            min_seconds=settings.split_seconds if split_seconds is None else split_seconds,
        )
    if not wanted:
        return []
    return queue.enqueue(db, wanted, chains_by_recipe, now=now, max_attempts=settings.max_attempts, actor=actor, split=policy)
