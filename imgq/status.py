"""What the queue and the journal say right now: counts, throughput, ETA, failures."""

from __future__ import annotations

from imgq import faces
from imgq.fleet import hosts
from imgq.ledger.database import DB
from imgq.ledger.journal import FILE_STATES, JOB_STATES

WINDOWS = (60, 300, 900)


def snapshot(db: DB, *, now: float, failures: int = 10) -> dict:
    """A plain dict (JSON-ready) describing the whole pipeline at ``now``."""
    files = {s: 0 for s in FILE_STATES}
    files.update({r[0]: r[1] for r in db.all("SELECT state, count(*) FROM files GROUP BY state")})
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
        "jobs": jobs,
        "jobs_waiting_backoff": waiting,
        "jobs_per_minute": rate,
        "hosts": by_host,
        "fleet": hosts.summary(db, now=now),  # hosts of `imgq work --hosts`: state, slots, in flight, why benched
        "eta_seconds": eta,
        "failures": recent,
        "retrying": retrying,
        "faces": faces.summary(db),
        **archive_and_collect(db, now=now, limit=failures),
    }


def archive_and_collect(db: DB, *, now: float, limit: int = 10) -> dict:
    """Per destination: copies held and copy tasks failing or in backoff; the originals
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
