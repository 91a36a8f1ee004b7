"""Settling: recording what workers report for their claimed jobs (``settle``).

Every statement here runs inside ``db.transaction()``, and every state change goes through
``journal``; each outcome is fenced by its claim's lease token (see ``imgq.ledger.queue``).

Completion moves the job's outputs into place: each artifact (and stripe part) is written
by its attempt under a per-attempt name (``store.staged_path`` with the lease token), and
``settle`` renames it onto its final name after the token check, before the commit.
``imgq.ledger.queue`` re-exports ``Outcome``, ``Settled`` and ``settle``.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from imgq import split as splitting
from imgq import store
from imgq.backoff import delay as backoff_delay
from imgq.ledger import faces, journal
from imgq.ledger.database import DB
from imgq.ledger.journal import Actor, JobChange

if TYPE_CHECKING:
    from imgq.ledger.queue import Artifact, Claim

_JITTER = random.Random()  # seeded once: seeding from the OS on every settle showed in profiles


@dataclasses.dataclass
class Outcome:
    """What a worker reports for one claimed job."""

    claim: Claim
    artifacts: list[Artifact] | None = None  # set on success
    result: dict | None = None  # extra facts (faces found, timings)
    error: str | None = None  # set on failure
    kind: str = "transient"  # 'permanent', 'transient', or 'lost' (its worker died running it)
    parts: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (staged, final) stripe files, store-relative
    durable: bool = False  # its staged files were fsynced as they were written (a host's artifacts, arrival.receive)
    actor: Actor | None = None  # who recorded it, when not the settle's actor (the host it ran on: one settle for many hosts)

    def moves(self) -> list[tuple[str, str]]:
        """(staged, final) store-relative names to move into place on completion."""
        return [(a.staged, a.path) for a in self.artifacts or [] if a.staged] + list(self.parts)

    def staged(self) -> list[str]:
        return [staged for staged, _ in self.moves()]


@dataclasses.dataclass
class Settled:
    done: list[int] = dataclasses.field(default_factory=list)
    retrying: list[int] = dataclasses.field(default_factory=list)
    failed: list[tuple[int, str, str]] = dataclasses.field(default_factory=list)  # job, file, reason
    lost: list[int] = dataclasses.field(default_factory=list)  # fenced out: another worker owns it now
    processed: list[str] = dataclasses.field(default_factory=list)  # files now processed


def settle(
    db: DB,
    outcomes: Sequence[Outcome],
    *,
    now: float | None = None,
    actor: Actor = Actor(),
    backoff: float = 5.0,
    backoff_max: float = 300.0,
    retry_for: float = 86400.0,
    max_lost: int = 5,
    rng: random.Random | None = None,
    store_dir: Path | None = None,
) -> Settled:
    """Record the outcomes of claimed jobs in one transaction, each fenced by its token.

    Each outcome's events name ``o.actor`` if it has one, else ``actor``.

    Success makes the job ``done`` with its verified artifacts, and the file
    ``processed`` once all its jobs are done. A transient error puts the job back with
    exponential, jittered backoff until it has been failing for ``retry_for`` seconds
    (or has had its ``max_attempts``, when that is set); a lost worker (kind ``lost``)
    likewise until it has been lost ``max_lost`` times; a permanent error fails the job
    and its file at once, with the reason.

    A success's staged files (``Outcome.moves``) are renamed onto their final names in
    ``store_dir`` after its token check and before the commit, so a final name changes
    only together with the record of what it holds. If a rename fails, that job's
    completion is rolled back (a savepoint) and it is retried as a transient error. The
    folders of every file moved are fsynced together before the commit. The
    staged files of every outcome not completed (fenced out, failed, not placed) are
    removed after the commit; for those, no final name is ever touched.
    """
    rng = rng or _JITTER
    out = Settled()
    leftovers: list[str] = []
    folders: set[Path] = set()  # of the files moved into place: fsynced together before COMMIT
    batch_actor = actor
    with db.transaction():
        now = db.when(now)
        # the successes first, all together: one read of their leases, their files moved
        # into place, then one statement per kind of row for the lot (no statement per job)
        statuses = _complete_all(db, [o for o in outcomes if o.error is None], store_dir, folders, now=now, actor=batch_actor)
        completed = []
        for o in outcomes:
            c = o.claim
            actor = o.actor or batch_actor
            if o.error is None:
                status = statuses[id(o)]
                if status == "done":
                    out.done.append(c.job_id)
                    completed.append((c, actor))
                    continue
                if status == "lost":
                    leftovers += o.staged()
                    out.lost.append(c.job_id)
                    continue
                o = dataclasses.replace(o, error=status, kind="transient")
            leftovers += o.staged()
            give_up, since, lost = _gives_up(db, o, now=now, retry_for=retry_for, max_lost=max_lost)
            if o.kind != "permanent" and not give_up:
                delay = backoff_delay(c.attempts, backoff, backoff_max, rng)
                kind = "transient"
                sets = {"not_before": now + delay, "error": o.error, "error_kind": kind, "lease_until": None, "failing_since": since, "lost": lost}
                ok = journal.move_jobs(
                    db,
                    [JobChange(c.job_id, c.file_id, "leased", "ready", sets=sets, token=c.token, detail=f"retry in {delay:.0f}s: {o.error}")],
                    now=now,
                    actor=actor,
                )[0]
                (out.retrying if ok else out.lost).append(c.job_id)
                continue
            reason = o.error if o.kind == "permanent" else f"{give_up}: {o.error}"
            kind = "permanent" if o.kind == "permanent" else "transient"  # a lost worker is a transient cause
            if fail_job(db, c.job_id, c.file_id, c.recipe, "leased", c.token, reason, kind, now=now, actor=actor):
                out.failed.append((c.job_id, c.file_id, reason))
            else:
                out.lost.append(c.job_id)
        out.processed += _files_done(db, completed, now=now)
        # every final name set above is durable before the commit records it; should an
        # fsync fail, the whole batch rolls back and is retried (the names hold good bytes)
        store.sync_folders(folders)
    if leftovers and store_dir is not None:
        store.discard(store_dir, leftovers)
    if out.done and store_dir is not None:
        done = set(out.done)
        # only a job's second or later attempt can find what an earlier one left
        _clear_dead_attempts(db, store_dir, [o.claim for o in outcomes if o.claim.job_id in done and o.claim.attempts > 1])
    return out


def _clear_dead_attempts(db: DB, store_dir: Path, done: Sequence["Claim"]) -> None:
    """Remove from the folders of jobs just completed what earlier attempts left there
    (a worker killed mid-write leaves a temporary or staged file named by its lease
    token): once a job is done no earlier token of it is live again, and a file of a
    token still leased (another job of the same photo, in flight) is kept. Without this
    such a file would wait for the sweep at the start of a later ``imgq work``. The
    caller passes the jobs completed by a second or later attempt: a first attempt had
    no earlier one (the folders of other jobs of the photo are swept when those complete)."""
    if not done:
        return
    def live(token: str) -> bool:
        return db.one("SELECT 1 FROM jobs WHERE state = 'leased' AND lease_token = ?", (token,)) is not None

    for folder in {store.short_name(c.file_id) for c in done}:  # the folder artifact_path puts them in
        store.sweep_temp(store_dir / folder, live=live, recursive=False)


def _gives_up(db: DB, o: Outcome, *, now: float, retry_for: float, max_lost: int) -> tuple[str | None, float, int]:
    """Whether a failed attempt is the last: (why, or None to retry; when this run of
    failures began; times the job's worker was lost, this one included)."""
    c = o.claim
    row = db.one("SELECT failing_since, lost FROM jobs WHERE id = ?", (c.job_id,))
    since = row["failing_since"] if row and row["failing_since"] is not None else now
    lost = (row["lost"] if row else 0) + (o.kind == "lost")
    if o.kind == "lost" and lost >= max_lost:
        return f"its worker was lost {lost} time(s) running it (killed, hung or cut off)", since, lost
    if c.max_attempts and c.attempts >= c.max_attempts:
        return f"gave up after {c.attempts} attempts", since, lost
    if now - since >= retry_for:
        return f"gave up after {c.attempts} attempts over {_span(now - since)} (retry_for {_span(retry_for)})", since, lost
    return None, since, lost


def _span(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _complete_all(db: DB, outs: Sequence[Outcome], store_dir: Path | None, folders: set[Path], *, now: float, actor: Actor) -> dict[int, str]:
    """Make successful jobs done, all in the caller's transaction: ``id(outcome)`` ->
    'done', 'lost' (fenced out: nothing written, no file moved), or the reason its
    staged files could not be moved into place (nothing recorded: the job is still
    leased by this attempt, and the caller retries it).

    One query reads which of them still hold their lease token; this transaction holds
    the write lock until COMMIT, so no other attempt can take or complete one of them
    in between, and their files are moved onto their final names now (the folders to
    fsync are added to ``folders``). Then the jobs, their events and their artifacts
    are written one statement per kind of row, not per job."""
    if not outs:
        return {}
    ids = [o.claim.job_id for o in outs]
    live = dict(db.conn.execute("SELECT id, lease_token FROM jobs WHERE state = 'leased' AND id IN (SELECT value FROM json_each(?))", (json.dumps(ids),)).fetchall())
    status: dict[int, str] = {}
    done: list[Outcome] = []
    for o in outs:
        c = o.claim
        if live.pop(c.job_id, None) != c.token:  # popped: the same job twice in a batch completes once
            status[id(o)] = "lost"
            continue
        moves = o.moves()
        if moves and store_dir is None:
            raise ValueError("settle needs store_dir to move staged artifacts into place")
        try:
            # the token matched and this transaction holds the write lock until COMMIT:
            # no other attempt can complete the job in between
            folders |= store.place(store_dir, moves, sync=False)
        except OSError as e:
            status[id(o)] = f"{Path(c.inbox) / c.path}: cannot move its artifacts into place in the store {store_dir}: {e.strerror or e}"
            continue
        status[id(o)] = "done"
        done.append(o)
    if not done:
        return status
    journal.move_jobs(
        db,
        [JobChange(o.claim.job_id, o.claim.file_id, "leased", "done", token=o.claim.token, actor=o.actor,
                   sets={"error": None, "error_kind": None, "lease_until": None, "failing_since": None, "result": json.dumps(o.result) if o.result else None})
         for o in done],
        now=now, actor=actor, checked=True,
    )
    db.conn.executemany(
        "INSERT INTO artifacts (job_id, file_id, name, path, sha256, bytes, width, height, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(o.claim.job_id, o.claim.file_id, a.name, a.path, a.sha256, a.bytes, a.width, a.height, now) for o in done for a in o.artifacts or []],
    )
    for o in done:
        c = o.claim
        faces.record(db, job_id=c.job_id, file_id=c.file_id, recipe=c.recipe, spec=c.spec, result=o.result, artifacts=o.artifacts or [], now=now)
        if c.stage.startswith("stripe:"):
            _join_when_striped(db, c, now=now, actor=o.actor or actor)
    return status


def _files_done(db: DB, completed: Sequence[tuple["Claim", Actor]], *, now: float) -> list[str]:
    """Move to processed every file of these just completed jobs that has all its jobs
    done (one query for the lot); returns their ids. The event names the job (and its
    actor) that completed the file last in the batch."""
    last: dict[str, tuple["Claim", Actor]] = {}
    for c, who in completed:
        last[c.file_id] = (c, who)
    if not last:
        return []
    rows = db.all(
        "SELECT f.id, f.state, (SELECT count(*) FROM jobs j WHERE j.file_id = f.id AND j.state != 'done') AS left"
        " FROM files f WHERE f.id IN (SELECT value FROM json_each(?))",
        (json.dumps(list(last)),),
    )
    ready = {r["id"] for r in rows if r["left"] == 0 and r["state"] == "queued"}
    moves = [(fid, "queued", "processed", c.job_id, who) for fid, (c, who) in last.items() if fid in ready]
    journal.move_files(db, moves, now=now)
    return [m[0] for m in moves]


def _join_when_striped(db: DB, c: Claim, *, now: float, actor: Actor) -> None:
    """Create the join job of a split image once its last stripe is done (in the same
    transaction, so the file cannot look processed in between)."""
    row = db.one(
        "SELECT count(*) AS n, sum(state = 'done') AS done, max(max_attempts) AS ma FROM jobs"
        " WHERE file_id = ? AND recipe = ? AND spec_hash = ? AND stage LIKE 'stripe:%'",
        (c.file_id, c.recipe, c.spec_hash),
    )
    if row["n"] and row["done"] == row["n"]:
        spec = json.dumps(c.spec, sort_keys=True)
        journal.add_job(
            db,
            {"file_id": c.file_id, "recipe": c.recipe, "spec": spec, "spec_hash": c.spec_hash, "max_attempts": row["ma"], "stage": splitting.join_stage(row["n"])},
            now=now,
            actor=actor,
        )


def fail_job(db, job_id, file_id, recipe, from_state, token, reason, kind, *, now, actor) -> bool:
    """Fail a job (fenced by ``token`` unless None) and its file with it, if the file was
    queued; False if the job had moved on (another attempt owns it)."""
    ok = journal.move_jobs(
        db,
        [JobChange(job_id, file_id, from_state, "failed", sets={"error": reason, "error_kind": kind, "lease_until": None}, token=token, detail=reason)],
        now=now,
        actor=actor,
    )[0]
    if ok:
        state = db.one("SELECT state FROM files WHERE id = ?", (file_id,))["state"]
        if state == "queued":
            journal.move_file(db, file_id, "failed", now=now, actor=actor, job_id=job_id, error=f"{recipe}: {reason}")
    return ok
