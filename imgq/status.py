"""What the queue and the journal say right now: counts, throughput, ETA, failures."""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re

from imgq import faces
from imgq.fleet import hosts
from imgq.ledger import owners
from imgq.ledger.database import DB
from imgq.ledger.journal import FILE_STATES, JOB_STATES
from imgq.ledger.migrations import FILE_NAME
from imgq.original import stored_path

WINDOWS = (60, 300, 900)
JOB_REF = re.compile(r"(?:job[:#]?\s*|#)?(\d+)", re.IGNORECASE)


def snapshot(db: DB, *, now: float, failures: int = 10, takes: dict[str, list[str]] | None = None) -> dict:
    """A plain dict (JSON-ready) describing the whole pipeline at ``now``; ``takes``: what
    each destination takes under the routing in force (shown per destination)."""
    files = {s: 0 for s in FILE_STATES}
    files.update({r[0]: r[1] for r in db.all("SELECT state, count(*) FROM files GROUP BY state")})
    # photos and videos apart (duplicates and failures left out), and hours of video
    media = {"photos": 0, "videos": 0, "video_seconds": 0.0, "video_hours": 0.0}
    for kind, n, seconds in db.all(
        "SELECT kind, count(*), coalesce(sum(duration), 0) FROM files WHERE kind IN ('photo', 'video')"
        " AND state NOT IN ('duplicate', 'failed') GROUP BY kind"
    ):
        media[kind + "s"] = n
        if kind == "video":
            media["video_seconds"], media["video_hours"] = round(seconds, 3), round(seconds / 3600, 3)
    jobs = {s: 0 for s in JOB_STATES}
    jobs.update({r[0]: r[1] for r in db.all("SELECT state, count(*) FROM jobs GROUP BY state")})
    waiting = db.one("SELECT count(*) FROM jobs WHERE state = 'ready' AND not_before > ?", (now,))[0]

    rate = {}
    for w in WINDOWS:
        n = db.one("SELECT count(*) FROM events WHERE entity = 'job' AND to_state = 'done' AND at >= ?", (now - w,))[0]
        rate[f"{w // 60}m"] = round(n / w * 60, 2)  # jobs per minute
    by_host = [
        {"host": r["host"], "done": r["n"], "per_minute": round(r["n"] / 5, 2)}
        for r in db.all(
            "SELECT coalesce(host, '?') AS host, count(*) AS n FROM events"
            " WHERE entity = 'job' AND to_state = 'done' AND at >= ? GROUP BY host ORDER BY host",
            (now - 300,),
        )
    ]
    remaining = jobs["ready"] + jobs["leased"]
    per_minute = rate["5m"] or rate["1m"] or rate["15m"]
    eta = round(remaining / per_minute * 60, 1) if remaining and per_minute else (0.0 if not remaining else None)

    recent = [
        dict(r)
        for r in db.all(
            "SELECT * FROM ("
            " SELECT j.updated_at AS at, j.file_id, j.id AS job_id, j.recipe, j.error, j.error_kind AS kind, f.inbox || '/' || f.path AS path"
            " FROM jobs j JOIN files f ON f.id = j.file_id WHERE j.state = 'failed'"
            " UNION ALL"
            " SELECT f.updated_at, f.id, NULL, NULL, f.error, 'permanent', f.inbox || '/' || f.path"
            " FROM files f WHERE f.state = 'failed' AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.file_id = f.id AND j.state = 'failed')"
            ") ORDER BY at DESC LIMIT ?",
            (failures,),
        )
    ]
    retrying = [
        dict(r)
        for r in db.all(
            "SELECT j.id AS job_id, j.file_id, j.attempts, j.max_attempts, j.not_before, j.error FROM jobs j"
            " WHERE j.state = 'ready' AND j.error IS NOT NULL ORDER BY j.not_before LIMIT ?",
            (failures,),
        )
    ]
    return {
        "at": now,
        "files": files,
        "media": media,
        "jobs": jobs,
        "jobs_waiting_backoff": waiting,
        "jobs_per_minute": rate,
        "hosts": by_host,
        "fleet": hosts.summary(db, now=now),  # hosts of `imgq work --hosts`: state, slots, in flight, why benched
        "eta_seconds": eta,
        "failures": recent,
        "retrying": retrying,
        "faces": faces.summary(db),
        "owners_merged": owners.merged(db),  # one photographer's folder found under several spellings
        **archive_and_collect(db, now=now, limit=failures, takes=takes),
    }


def archive_and_collect(db: DB, *, now: float, limit: int = 10, takes: dict[str, list[str]] | None = None) -> dict:
    """Per destination: copies held and copy tasks failing or in backoff, and (``takes``:
    the routing in force, ``imgq.routing.Routing.takes``) what it takes; the originals
    ``collect`` keeps in the inbox and why."""
    dests: dict[str, dict] = {}
    for r in db.all("SELECT destination, count(*) AS n, coalesce(sum(bytes), 0) AS b, max(verified_at) AS v FROM copies GROUP BY destination"):
        dests[r["destination"]] = {"destination": r["destination"], "copies": r["n"], "bytes": r["b"], "last_verified_at": r["v"], "failing": 0, "in_backoff": 0, "last_error": None}
    for r in db.all(
        "SELECT destination, count(*) AS n, sum(not_before > ?) AS waiting, max(updated_at) AS at,"
        " (SELECT error FROM archive_targets t2 WHERE t2.destination = t.destination AND t2.error IS NOT NULL ORDER BY updated_at DESC LIMIT 1) AS last"
        " FROM archive_targets t WHERE error IS NOT NULL GROUP BY destination",
        (now,),
    ):
        d = dests.setdefault(r["destination"], {"destination": r["destination"], "copies": 0, "bytes": 0, "last_verified_at": None})
        d.update(failing=r["n"], in_backoff=r["waiting"], last_error=r["last"])
    for url, what in (takes or {}).items():
        d = dests.setdefault(url, {"destination": url, "copies": 0, "bytes": 0, "last_verified_at": None, "failing": 0, "in_backoff": 0, "last_error": None})
        d["takes"] = "; ".join(what)
    failing = [
        dict(r)
        for r in db.all(
            "SELECT t.file_id, t.destination, t.attempts, t.not_before, t.error FROM archive_targets t JOIN files f ON f.id = t.file_id"
            " WHERE t.error IS NOT NULL AND f.state NOT IN ('collected') ORDER BY t.updated_at DESC LIMIT ?",
            (limit,),
        )
    ]
    verdicts = {r[0]: r[1] for r in db.all(
        "SELECT c.verdict, count(*) FROM collect_checks c JOIN files f ON f.id = c.file_id WHERE f.state != 'collected' GROUP BY c.verdict"
    )}
    kept = [
        dict(r)
        for r in db.all(
            "SELECT c.file_id, f.inbox || '/' || f.path AS path, c.verdict, c.reason, c.checked_at FROM collect_checks c"
            " JOIN files f ON f.id = c.file_id WHERE f.state != 'collected'"
            " ORDER BY c.verdict = 'keep' DESC, c.checked_at DESC LIMIT ?",
            (limit,),
        )
    ]
    return {
        "archive": {"destinations": sorted(dests.values(), key=lambda d: d["destination"]), "failing": failing},
        "collect": {"keep": verdicts.get("keep", 0), "wait": verdicts.get("wait", 0), "reasons": kept},
    }


@dataclasses.dataclass
class Lookup:
    """What a reference to a file matched (``how``: id, job, path or name), or, when
    nothing did, the ids it is close to."""

    ref: str
    how: str | None
    matches: list[dict]  # {"id", "state", "path"}, oldest first
    close: list[str]


def find_file(db: DB, ref: str, *, cwd: str) -> Lookup:
    """The files ``ref`` names, tried in this order, the first that matches winning: a
    file id; a job number (``42``, ``job:42``, ``#42``); a path, absolute or relative to
    ``cwd`` or to an inbox root (a collected file keeps the path it had); a file name
    (the last component of a path, in any inbox folder). Nothing matched: ``close`` holds
    up to five ids that look like ``ref`` (a typo, a truncated id)."""
    row = db.one("SELECT id FROM files WHERE id = ?", (ref,))
    if row is not None:
        return Lookup(ref, "id", _describe(db, [row["id"]]), [])
    m = JOB_REF.fullmatch(ref.strip())
    if m:
        job = db.one("SELECT file_id FROM jobs WHERE id = ?", (int(m.group(1)),))
        if job is not None:
            return Lookup(ref, "job", _describe(db, [job["file_id"]]), [])
    ids = _by_path(db, ref, cwd)
    if ids:
        return Lookup(ref, "path", _describe(db, ids), [])
    name = stored_path(ref)
    if "/" not in name:
        ids = [r[0] for r in db.all(f"SELECT id FROM files WHERE {FILE_NAME} = ?", (name,))]
        if ids:
            return Lookup(ref, "name", _describe(db, ids), [])
    return Lookup(ref, None, [], _close(db, ref))


def _by_path(db: DB, ref: str, cwd: str) -> list[str]:
    """Ids of the files at ``ref`` as a path: absolute, relative to ``cwd``, or relative
    to an inbox root."""
    wanted: set[tuple[str | None, str]] = set()
    full = os.path.normpath(os.path.join(cwd, ref))
    inboxes = db.distinct("files", "inbox")  # a few roots, found through the (inbox, path) index
    for spelled in {full, os.path.realpath(full)}:
        for inbox in inboxes:
            prefix = inbox.rstrip("/") + "/"
            if spelled.startswith(prefix):
                wanted.add((inbox, stored_path(spelled[len(prefix):])))
    if not os.path.isabs(ref) and "/" in ref:  # a bare name is looked up as a name, in every folder
        rel = os.path.normpath(ref)
        if not rel.startswith(".."):
            wanted.add((None, stored_path(rel)))
    ids: list[str] = []
    for inbox, path in sorted(wanted, key=lambda w: (w[0] or "", w[1])):
        for root in inboxes if inbox is None else [inbox]:  # each through the (inbox, path) index
            ids += [r[0] for r in db.all("SELECT id FROM files WHERE inbox = ? AND path = ?", (root, path)) if r[0] not in ids]
    return ids


def _describe(db: DB, ids: list[str]) -> list[dict]:
    rows = db.all(
        "SELECT id, state, inbox, path, created_at FROM files WHERE id IN (SELECT value FROM json_each(?)) ORDER BY created_at, id",
        (json.dumps(ids),),
    )
    return [{"id": r["id"], "state": r["state"], "path": os.path.join(r["inbox"], r["path"])} for r in rows]


def _close(db: DB, ref: str) -> list[str]:
    """Up to five ids like ``ref``, or whose file name is like its last component."""
    rows = db.all("SELECT id, path FROM files")
    by_id = difflib.get_close_matches(ref, [r["id"] for r in rows], n=5, cutoff=0.75)
    names: dict[str, list[str]] = {}
    for r in rows:
        names.setdefault(os.path.basename(r["path"]), []).append(r["id"])
    by_name = [i for n in difflib.get_close_matches(os.path.basename(ref.rstrip("/")), list(names), n=3, cutoff=0.75) for i in names[n]]
    return list(dict.fromkeys(by_id + by_name))[:5]
