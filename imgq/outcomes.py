"""Processed jobs' outcomes recorded: their staged files made durable, settled in one
transaction fenced by each lease token, and told back as report tuples. Local workers
(``imgq.work``) and the fleet coordinator both settle here.
"""

from __future__ import annotations

import dataclasses

from imgq import split as splitting
from imgq import store
from imgq.ledger import queue
from imgq.config import Settings
from imgq.ledger.database import DB
from imgq.ledger.journal import Actor


def settle(db: DB, outcomes: list[queue.Outcome], settings: Settings, *, actor: Actor, backoff: float | None = None, backoff_max: float | None = None) -> queue.Settled:
    """Make the outcomes' files durable (``made_durable``), record them in one transaction
    (``queue.settle``, fenced by each lease token) and then do what follows a recorded outcome: a split image's stripe parts are removed
    once its join is done. Local workers and the fleet coordinator both settle here, so
    what a settled job leaves behind cannot depend on where it ran. ``backoff`` and
    ``backoff_max`` default to the settings' (a lost host's jobs are requeued with none)."""
    if not outcomes:
        return queue.Settled()
    outcomes = made_durable(outcomes, settings)
    settled = queue.settle(
        db, outcomes, actor=actor, store_dir=settings.store_dir,
        backoff=settings.backoff_seconds if backoff is None else backoff,
        backoff_max=settings.backoff_max_seconds if backoff_max is None else backoff_max,
        retry_for=settings.retry_for, max_lost=settings.max_lost,
    )
    done = set(settled.done)
    for o in outcomes:
        c = o.claim
        if c.stage.startswith(splitting.JOIN) and c.job_id in done:
            store.remove_parts(settings.store_dir, c.file_id, c.spec_hash)  # only once the join is recorded
    return settled


def made_durable(outcomes: list[queue.Outcome], settings: Settings) -> list[queue.Outcome]:
    """The outcomes with every successful one's staged files on disk for good (fsynced,
    all at once; those already fsynced as they were written, ``Outcome.durable``, not again), so no completion is recorded before its bytes are durable. One whose
    files cannot be synced becomes a transient error (retried; its files discarded)."""
    names = [n for o in outcomes if o.error is None and not o.durable for n in o.staged()]
    if not names:
        return outcomes
    failed = store.sync_files(settings.store_dir, names)
    if not failed:
        return outcomes
    out = []
    for o in outcomes:
        bad = [(n, failed[n]) for n in o.staged() if n in failed] if o.error is None else []
        if bad:
            name, e = bad[0]
            o = dataclasses.replace(o, error=f"cannot write {settings.store_dir / name}: {e.strerror or e}", kind="transient")
        out.append(o)
    return out


def reports(settled: queue.Settled, outcomes: list[queue.Outcome] = ()) -> list[tuple]:
    """What settling told, as the report tuples ``on_report`` receives (and a worker
    process sends its parent): ('done', job), ('failed', job, file, reason), ('retrying',
    job, error), ('lost', job), ('processed', file). Read back by ``WorkSummary.count``."""
    errors = {o.claim.job_id: o.error for o in outcomes}
    out: list[tuple] = [("done", j) for j in settled.done]
    out += [("failed", j, f, reason) for j, f, reason in settled.failed]
    out += [("retrying", j, errors.get(j)) for j in settled.retrying]
    out += [("lost", j) for j in settled.lost]
    out += [("processed", f) for f in settled.processed]
    return out
