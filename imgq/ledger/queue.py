"""The job queue: enqueue, claim with a lease, heartbeat, fenced completion, retry.

Every statement here runs inside ``db.transaction()`` (``BEGIN IMMEDIATE`` behind a fair
flock), and every state change goes through ``journal``. Claims are batched: one
transaction hands a worker up to K jobs, so the database is touched once per batch, not
once per job.

Lease times come from one clock, the database's (``DB.now``), read inside the
transaction: ``now`` left as None means that clock (the ledger's convention, see
``imgq.ledger``). Only tests pass a time of their own to the lease functions. A process
whose clock is off cannot see fresh leases as expired, nor make long ones.

Settling what workers report (``settle``, ``Outcome``, ``Settled``: fenced completion and
the moves of staged files into place) lives in ``imgq.ledger.settle``; it is re-exported
here, so ``queue.settle`` and ``queue.Outcome`` keep working.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import Iterable, Sequence

from imgq import recipes
from imgq.ledger import journal
from imgq import split as splitting
from imgq.ledger.database import DB
from imgq.errors import InvalidTransition
from imgq.ledger.journal import Actor, JobChange
from imgq.ledger.settle import Outcome, Settled, fail_job, settle

__all__ = ["Claim", "Artifact", "SplitPolicy", "EnqueueResult", "Outcome", "Settled", "enqueue", "lacking", "claim",
           "heartbeat", "settle", "release", "retry", "pending", "ENQUEUEABLE"]

ENQUEUEABLE = {"seen", "queued", "processed", "archived"}


@dataclasses.dataclass
class Claim:
    """A job a worker holds: the lease token fences everything it later reports."""

    job_id: int
    file_id: str
    recipe: str
    spec: dict[str, str]
    spec_hash: str
    token: str
    attempts: int
    max_attempts: int
    inbox: str
    path: str
    stage: str = ""  # '' for an ordinary job; 'stripe:I/N' or 'join' for a split image
    # what scan recorded of the original: the worker decodes only bytes that match them
    sha256: str | None = None
    size: int | None = None


@dataclasses.dataclass
class Artifact:
    """One output of a job, as its attempt made it.

    ``path`` is the final store-relative name recorded in ``artifacts``. ``staged`` is the
    store-relative per-attempt name (``store.staged_path(path, claim.token)``) where the
    verified bytes wait: ``settle`` moves them onto ``path`` only if the attempt still holds
    its lease, and removes them if it does not. None only for an artifact with no file to
    move (tests recording facts); every writer of artifacts stages them.
    """

    name: str
    path: str  # relative to the store
    sha256: str
    bytes: int
    width: int
    height: int
    staged: str | None = None  # relative to the store; see above


@dataclasses.dataclass(frozen=True)
class SplitPolicy:
    """Split photos of more than ``min_pixels`` into ``stripes`` stripe jobs, and videos
    longer than ``min_seconds`` whose recipe makes a video into ``stripes`` chunk jobs
    (same stages: a video's stripe is a chunk of its frames)."""

    min_pixels: int
    stripes: int
    min_seconds: float = float("inf")

    def applies(self, db: DB, file_id: str, chains: dict[str, str]) -> bool:
        row = db.one("SELECT width, height, kind, duration FROM files WHERE id = ?", (file_id,))
        if row is not None and row["kind"] == "video":
            long = (row["duration"] or 0) > self.min_seconds
            return long and self.stripes > 1 and any(recipes.is_video_chain(c) for c in recipes.split_spec(chains)[0].values())
        big = row is not None and (row["width"] or 0) * (row["height"] or 0) > self.min_pixels
        # options (on_no_faces) are not chains
        return big and self.stripes > 1 and splitting.worth_splitting(recipes.split_spec(chains)[0])


@dataclasses.dataclass
class EnqueueResult:
    file_id: str
    created: list[int]
    skipped: str | None = None  # why nothing was enqueued, for files that cannot be


def lacking(db: DB, chains_by_recipe: dict[str, dict[str, str]]) -> list[str]:
    """The ids of the files a recipe may still give a job (their state allows it) that
    lack the job of at least one of these recipes, oldest first: what ``enqueue`` with no
    ids has to do. One query, each file's jobs found through their unique index, so a
    journal of 100,000 archived files answers "nothing to do" in milliseconds."""
    states = sorted(ENQUEUEABLE)
    # a recipe's hash depends on the file's kind (a photo's part leaves out video chains);
    # a recipe with nothing for a kind never wants a job for files of that kind
    wants, params = [], []
    for name, chains in chains_by_recipe.items():
        hashes = {k: recipes.spec_hash(recipes.normalize_recipe(part)) for k in recipes.KINDS if recipes.has_chains(part := recipes.for_kind(chains, k))}
        if not hashes:
            continue
        kinds = ", ".join("?" for _ in hashes)
        wants.append(
            f"(f.kind IN ({kinds}) AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.file_id = f.id AND j.recipe = ?"
            " AND j.spec_hash = CASE f.kind WHEN 'video' THEN ? ELSE ? END))"
        )
        params += [*hashes, name, hashes.get("video", ""), hashes.get("photo", "")]
    wants = " OR ".join(wants)
    if not wants:
        return []
    sql = f"SELECT f.id FROM files f WHERE f.state IN ({', '.join('?' for _ in states)}) AND ({wants}) ORDER BY f.created_at, f.id"
    return [r[0] for r in db.all(sql, (*states, *params))]


def enqueue(
    db: DB,
    file_ids: Iterable[str],
    chains_by_recipe: dict[str, dict[str, str]],
    *,
    now: float | None = None,
    max_attempts: int,
    actor: Actor = Actor(),
    split: SplitPolicy | None = None,
) -> list[EnqueueResult]:
    """One job per file per recipe; a file that already has that job gets none.

    A recipe's parameters are part of the job's identity (``spec_hash``), so a changed
    recipe gives new jobs and an unchanged one gives nothing. With ``split``, a file over
    its pixel threshold whose recipe has neighbourhood work gets stripe jobs instead, and
    a join job once they are all done (see imgq/split.py).
    """
    specs: dict[str, dict[str, tuple[str, str]]] = {}  # recipe -> kind -> (spec, hash)
    for name, chains in chains_by_recipe.items():
        specs[name] = {}
        for kind in recipes.KINDS:
            part = recipes.for_kind(chains, kind)
            if recipes.has_chains(part):
                canonical = recipes.normalize_recipe(part)
                specs[name][kind] = (json.dumps(canonical, sort_keys=True), recipes.spec_hash(canonical))
    results = []
    with db.transaction():
        now = db.when(now)
        for file_id in file_ids:
            row = db.one("SELECT state, kind FROM files WHERE id = ?", (file_id,))
            if row is None:
                results.append(EnqueueResult(file_id, [], "unknown file id"))
                continue
            if row["state"] not in ENQUEUEABLE:
                results.append(EnqueueResult(file_id, [], f"file is {row['state']}"))
                continue
            created = []
            for name, by_kind in specs.items():
                if row["kind"] not in by_kind:
                    continue  # nothing in this recipe for this kind of file (a video chain, a photo)
                spec, digest = by_kind[row["kind"]]
                if db.one("SELECT 1 FROM jobs WHERE file_id = ? AND recipe = ? AND spec_hash = ?", (file_id, name, digest)):
                    continue  # split or not, this file already has this recipe's work
                stages = [""]
                if split is not None and split.applies(db, file_id, recipes.for_kind(chains_by_recipe[name], row["kind"])):
                    stages = [splitting.stage(i, split.stripes) for i in range(split.stripes)]
                for stage in stages:
                    job_id = journal.add_job(
                        db,
                        {"file_id": file_id, "recipe": name, "spec": spec, "spec_hash": digest, "max_attempts": max_attempts, "stage": stage},
                        now=now,
                        actor=actor,
                    )
                    if job_id is not None:
                        created.append(job_id)
            if created and row["state"] != "queued":
                journal.move_file(db, file_id, "queued", now=now, actor=actor, detail=f"{len(created)} job(s) enqueued")
            results.append(EnqueueResult(file_id, created))
    return results


def claim(
    db: DB,
    *,
    owner: str,
    limit: int,
    lease_seconds: float,
    now: float | None = None,
    actor: Actor = Actor(),
    max_attempts: int | None = None,
    max_lost: int = 5,
    workers: int = 1,
) -> list[Claim]:
    """Lease up to ``limit`` due jobs (ready and due, or leased with an expired lease).

    ``workers``: how many workers share the queue. When fewer than ``limit x workers``
    jobs are due, a claim takes its fair share (rounded up) rather than a whole batch,
    so the last jobs of a run are spread over the workers instead of one working
    through a batch while the others have nothing left.

    ``max_attempts``, when given, overrides the jobs' own limit for this worker (``imgq
    work --max-attempts``; 0: no limit by count).

    A job whose lease expired has lost its worker (killed, hung, cut off). If that has
    happened ``max_lost`` times (or the job has had its ``max_attempts``) the job fails
    instead of being handed out again, so an input that kills its worker cannot loop
    forever.
    """
    with db.transaction():
        now = db.when(now)
        if workers > 1 and limit > 1:
            due = db.one("SELECT count(*) FROM (SELECT 1 FROM jobs WHERE state = 'ready' AND not_before <= ? LIMIT ?)", (now, limit * workers))[0]
            limit = max(1, min(limit, -(-due // workers)))
        rows = db.all(
            "SELECT * FROM (SELECT j.id, j.file_id, j.recipe, j.spec, j.spec_hash, j.state, j.attempts, j.max_attempts, j.lost, j.lease_owner,"
            " j.stage, f.inbox, f.path, f.sha256, f.size FROM jobs j JOIN files f ON f.id = j.file_id"
            " WHERE j.state = 'ready' AND j.not_before <= ? ORDER BY j.not_before, j.id LIMIT ?)"
            " UNION ALL SELECT * FROM (SELECT j.id, j.file_id, j.recipe, j.spec, j.spec_hash, j.state, j.attempts, j.max_attempts, j.lost,"
            " j.lease_owner, j.stage, f.inbox, f.path, f.sha256, f.size FROM jobs j JOIN files f ON f.id = j.file_id"
            " WHERE j.state = 'leased' AND j.lease_until < ? ORDER BY j.lease_until LIMIT ?)",
            (now, limit, now, limit),
        )
        changes, claims, exhausted = [], [], []
        for r in rows:
            if len(claims) >= limit:
                break
            limit_attempts = max_attempts or r["max_attempts"]
            reclaimed = r["state"] == "leased"  # its worker was lost
            if reclaimed and (r["lost"] + 1 >= max_lost or (limit_attempts and r["attempts"] >= limit_attempts)):
                exhausted.append(r)
                continue
            token = secrets.token_hex(8)
            detail = None if r["state"] == "ready" else f"lease of {r['lease_owner']} expired; reclaimed"
            changes.append(
                JobChange(
                    r["id"],
                    r["file_id"],
                    r["state"],
                    "leased",
                    sets={
                        "attempts": r["attempts"] + 1,
                        "lease_owner": owner,
                        "lease_token": token,
                        "lease_until": now + lease_seconds,
                        "host": actor.host,
                        **({"lost": r["lost"] + 1} if reclaimed else {}),
                    },
                    detail=detail,
                )
            )
            claims.append(
                Claim(r["id"], r["file_id"], r["recipe"], json.loads(r["spec"]), r["spec_hash"], token, r["attempts"] + 1, limit_attempts, r["inbox"], r["path"], r["stage"], r["sha256"], r["size"])
            )
        journal.move_jobs(db, changes, now=now, actor=actor)
        for r in exhausted:
            reason = f"its worker was lost {r['lost'] + 1} time(s) running it, the last {r['lease_owner']} (killed, hung or cut off)"
            fail_job(db, r["id"], r["file_id"], r["recipe"], "leased", None, reason, "transient", now=now, actor=actor)
    return claims


def heartbeat(db: DB, held: Sequence[tuple[int, str]], *, lease_seconds: float, now: float | None = None) -> set[int]:
    """Extend the leases still held; returns the ids of jobs whose lease was lost.

    Extending a lease is not a state change, so it writes no event.
    """
    lost = set()
    if not held:
        return lost
    with db.transaction():
        now = db.when(now)
        for job_id, token in held:
            cur = db.execute(
                "UPDATE jobs SET lease_until = ? WHERE id = ? AND state = 'leased' AND lease_token = ?",
                (now + lease_seconds, job_id, token),
            )
            if cur.rowcount != 1:
                lost.add(job_id)
    return lost


def release(db: DB, held: Sequence[Claim], *, now: float | None = None, actor: Actor = Actor()) -> int:
    """Hand back claimed jobs that were not started (a graceful stop); the attempt is not counted."""
    if not held:
        return 0
    with db.transaction():
        now = db.when(now)
        applied = journal.move_jobs(
            db,
            [JobChange(c.job_id, c.file_id, "leased", "ready", sets={"attempts": c.attempts - 1, "lease_until": None, "not_before": 0}, token=c.token, detail="released unstarted (worker stopping)") for c in held],
            now=now,
            actor=actor,
        )
    return sum(applied)


def retry(db: DB, *, job_ids: Iterable[int] | None = None, file_ids: Iterable[str] | None = None, pattern: str | None = None, now: float | None = None, actor: Actor = Actor()) -> list[int]:
    """Re-arm failed jobs (all of them, or those given, or whose error matches ``pattern``)."""
    sql = "SELECT id, file_id FROM jobs WHERE state = 'failed'"
    params: list = []
    if job_ids is not None:
        ids = list(job_ids)
        sql += f" AND id IN ({','.join('?' * len(ids))})"
        params += ids
    if file_ids is not None:
        fids = list(file_ids)
        sql += f" AND file_id IN ({','.join('?' * len(fids))})"
        params += fids
    if pattern:
        sql += " AND error LIKE ?"
        params.append(f"%{pattern}%")
    rearmed = []
    with db.transaction():
        now = db.when(now)
        rows = db.all(sql, params)
        journal.move_jobs(
            db,
            [JobChange(r["id"], r["file_id"], "failed", "ready", sets={"attempts": 0, "lost": 0, "failing_since": None, "not_before": 0, "error": None, "error_kind": None}, detail="retry requested") for r in rows],
            now=now,
            actor=actor,
        )
        for r in rows:
            rearmed.append(r["id"])
            state = db.one("SELECT state FROM files WHERE id = ?", (r["file_id"],))["state"]
            if state == "failed":
                journal.move_file(db, r["file_id"], "queued", now=now, actor=actor, detail="retry requested")
    return rearmed


def pending(db: DB, *, now: float | None = None) -> tuple[int, float | None]:
    """(jobs not yet finished, seconds until the next one can be claimed or None if one can now)."""
    now = db.when(now)
    row = db.one(
        "SELECT count(*) AS n,"
        " min(CASE WHEN state = 'ready' THEN not_before ELSE lease_until END) AS next"
        " FROM jobs WHERE state IN ('ready', 'leased')"
    )
    if row["n"] == 0:
        return 0, None
    wait = (row["next"] or 0) - now
    return row["n"], (wait if wait > 0 else None)
