"""Run reports: what a run (or every run since a time) did, from runs, events and jobs.

A report covers a time window: one run's, from its start to its end (or to now while it
still runs), or ``--since`` a time until now. Everything in it is read from the journal
inside that window: jobs claimed, done, retried and failed (per host and per recipe),
photos that became processed, bytes read and written, copies archived, and every failure
with its reason. Events carry no run id, so two runs overlapping in time (say a ``work``
on this machine and another on a second coordinator of the same database) are counted
together; the report lists every run that overlapped the window.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections import Counter, defaultdict
from pathlib import Path

from imgq.ledger.database import DB
from imgq.store import write_atomically
from imgq.errors import NotFound, StorageError, UsageError

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
RELATIVE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*")
TOP_RETRY_REASONS = 20
HOST_KEYS = ("claimed", "done", "retried", "failed", "reclaimed")


def parse_since(text: str, *, now: float) -> float:
    """The epoch time ``text`` means: ISO 8601 (``2024-05-17``, ``2024-05-17T08:00``,
    with ``Z`` or an offset; without one it is local time) or a duration before ``now``
    (``90s``, ``30m``, ``1h``, ``2d``, ``1w``)."""
    m = RELATIVE.fullmatch(text)
    if m:
        return now - float(m.group(1)) * UNITS[m.group(2)]
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--since {text!r}: expected an ISO time such as 2024-05-17T08:00 or a duration such as 30m, 1h, 2d")
    return when.timestamp() if when.tzinfo else when.astimezone().timestamp()


def iso(ts: float | None) -> str | None:
    """An epoch time as ISO 8601 UTC, to the second (the form reports show)."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# What `imgq report` is about by default: the latest run that processed photos, by hand
# (`imgq work`) or from cron (`imgq run`, whose work step records no run of its own).
WORKING = ("work", "run")


def build(db: DB, *, now: float, run_id: int | None = None, since: float | None = None, last: str | None = None, store_dir: Path | None = None) -> dict:
    """The report (a JSON-ready dict) of run ``run_id``, of everything since ``since``,
    of the latest run of the command ``last``, or, with none of them, of the latest
    ``work`` or ``run`` run. Raises NotFound when there is no such run."""
    if sum(x is not None for x in (run_id, since, last)) > 1:
        raise UsageError("--run, --last and --since cannot be used together")
    if since is not None:
        start, end, running = since, now, False
        scope = {"since": iso(since)}
    else:
        if run_id is None:
            commands = WORKING if last is None else (last,)
            row = db.one(
                "SELECT * FROM runs WHERE command IN (SELECT value FROM json_each(?)) ORDER BY started_at DESC, id DESC LIMIT 1",
                (json.dumps(commands),),
            )
            if row is None and last is None:
                raise NotFound("no `imgq work` run or `imgq run` is recorded in this database yet (see --run, --last or --since)")
            if row is None:
                recorded = [r[0] for r in db.all("SELECT DISTINCT command FROM runs ORDER BY command")]
                raise NotFound(f"no `imgq {last}` run is recorded in this database" + (f" (runs recorded: {', '.join(recorded)})" if recorded else ""))
        else:
            row = db.one("SELECT * FROM runs WHERE id = ?", (run_id,))
            if row is None:
                raise NotFound(f"no run {run_id} in this database (`imgq report --since 1d --json | jq .runs` lists runs)")
        start, running = row["started_at"], row["ended_at"] is None
        end = now if running else row["ended_at"]
        scope = {"run": row["id"], "command": row["command"]}
    runs = [_run(r) for r in db.all(
        "SELECT * FROM runs WHERE started_at <= ? AND coalesce(ended_at, ?) >= ? ORDER BY started_at, id",
        (end, now, start),
    )]
    if "run" in scope:
        runs = [r for r in runs if r["id"] == scope["run"]]
    wall = _covered(runs, start, end, now) if "since" in scope and runs else end - start

    window = (start, end)
    # which events are the run's: those that name it (exact, whatever else ran at the
    # time), or, for a time span or a run recorded before events named their run, the window
    exact = "run" in scope and db.one("SELECT 1 FROM events WHERE run_id = ? LIMIT 1", (scope["run"],)) is not None
    ev = ("run_id = ?", (scope["run"],)) if exact else ("at BETWEEN ? AND ?", window)
    jobs = _jobs(db, ev)
    files = {r[0]: r[1] for r in db.all(
        f"SELECT to_state, count(DISTINCT file_id) FROM events WHERE entity = 'file' AND {ev[0]} GROUP BY to_state", ev[1]
    )}
    done_jobs = f"SELECT job_id FROM events WHERE entity = 'job' AND to_state = 'done' AND {ev[0]}"
    bytes_in, photos_in, videos_in, video_seconds = db.one(
        "SELECT coalesce(sum(size), 0), count(*) FILTER (WHERE kind != 'video'), count(*) FILTER (WHERE kind = 'video'),"
        " coalesce(sum(duration) FILTER (WHERE kind = 'video'), 0)"
        f" FROM files WHERE id IN (SELECT file_id FROM events WHERE entity = 'job' AND to_state = 'done' AND {ev[0]})",
        ev[1],
    )
    bytes_out, artifacts_out = db.one(f"SELECT coalesce(sum(bytes), 0), count(*) FROM artifacts WHERE job_id IN ({done_jobs})", ev[1])
    busy = db.one(f"SELECT coalesce(sum(json_extract(result, '$.seconds')), 0) FROM jobs WHERE id IN ({done_jobs}) AND json_valid(result)", ev[1])[0]
    copies = db.one("SELECT count(*), coalesce(sum(bytes), 0) FROM copies WHERE created_at BETWEEN ? AND ?", window)
    processed = files.get("processed", 0)
    rate = (lambda n: round(n / wall, 3) if wall > 0 else None)

    return {
        "scope": scope,
        "from": iso(start),
        "to": iso(end),
        "running": running,
        "wall_seconds": round(wall, 3),
        "runs": runs,
        "inputs": [r[0] for r in db.all(
            f"SELECT DISTINCT f.inbox FROM files f WHERE f.id IN (SELECT file_id FROM events WHERE {ev[0]} AND file_id IS NOT NULL) ORDER BY 1",
            ev[1],
        )],
        "outputs": {
            "store": str(store_dir) if store_dir is not None else None,
            "destinations": [r[0] for r in db.all("SELECT DISTINCT destination FROM copies WHERE created_at BETWEEN ? AND ? ORDER BY 1", window)],
            "galleries": sorted({r["args"]["out"] for r in runs if r["command"] == "publish" and isinstance(r["args"], dict) and r["args"].get("out")}),
        },
        "photos": {"processed": processed, "read": photos_in, "files": files},
        "events": "named by the run" if exact else "in the time span",  # how this report chose them
        **_batches(db, ev),
        # videos read by the jobs done, apart from photos, and their running time
        "videos": {"read": videos_in, "seconds": round(video_seconds, 3), "hours": round(video_seconds / 3600, 3)},
        "jobs": jobs["totals"],
        "bytes": {"in": bytes_in, "out": bytes_out, "artifacts": artifacts_out, "archived": copies[1], "copies": copies[0]},
        "processing_seconds": round(busy or 0, 3),
        "throughput": {
            "photos_per_second": rate(processed),
            "jobs_per_second": rate(jobs["totals"]["done"]),
            "bytes_in_per_second": rate(bytes_in),
        },
        "hosts": jobs["hosts"],
        "recipes": jobs["recipes"],
        "failures": _failures(db, ev),
        "retry_reasons": jobs["retry_reasons"],
    }


def _run(row) -> dict:
    r = dict(row)
    for key in ("args", "counts"):
        try:
            r[key] = json.loads(r[key]) if r[key] else {}
        except ValueError:
            pass
    r["started"] = iso(r["started_at"])
    r["ended"] = iso(r["ended_at"])
    return r


def _covered(runs: list[dict], start: float, end: float, now: float) -> float:
    """Seconds of [start, end] during which at least one run was going: the wall time
    of a --since report is the time spent running, not the idle time between runs."""
    spans = sorted((max(start, r["started_at"]), min(end, r["ended_at"] or now)) for r in runs)
    total, cur_a, cur_b = 0.0, None, None
    for a, b in spans:
        if b <= a:
            continue
        if cur_b is None or a > cur_b:
            if cur_b is not None:
                total += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    if cur_b is not None:
        total += cur_b - cur_a
    return total


def _batches(db: DB, ev) -> dict:
    """The dig's table: photos arriving in batches, a batch being one photographer's new
    photos found by one scan; their number, the largest and the average, and per
    photographer the photos found, processed and their bytes."""
    rows = db.all(
        f"SELECT e.run_id, f.owner, count(*) AS n, coalesce(sum(f.size), 0) AS bytes FROM events e JOIN files f ON f.id = e.file_id"
        f" WHERE e.entity = 'file' AND e.from_state IS NULL AND e.{ev[0]} GROUP BY e.run_id, f.owner",
        ev[1],
    )
    sizes = [r["n"] for r in rows]
    owners: dict[str, dict] = {}
    for r in rows:
        o = owners.setdefault(r["owner"], {"owner": r["owner"], "found": 0, "bytes": 0, "processed": 0})
        o["found"] += r["n"]
        o["bytes"] += r["bytes"]
    for r in db.all(
        f"SELECT f.owner, count(DISTINCT e.file_id) FROM events e JOIN files f ON f.id = e.file_id"
        f" WHERE e.entity = 'file' AND e.to_state = 'processed' AND e.{ev[0]} GROUP BY f.owner",
        ev[1],
    ):
        owners.setdefault(r[0], {"owner": r[0], "found": 0, "bytes": 0, "processed": 0})["processed"] = r[1]
    return {
        "batches": {"count": len(sizes), "largest": max(sizes, default=0), "average": round(sum(sizes) / len(sizes), 1) if sizes else 0},
        "photographers": [owners[k] for k in sorted(owners)],
    }


def _jobs(db: DB, ev) -> dict:
    """Job outcomes of the events ``ev`` selects: totals, per host, per recipe, reasons of retries."""
    totals = Counter()
    hosts: dict[str, Counter] = defaultdict(Counter)
    host_photos: dict[str, set] = defaultdict(set)
    recipes: dict[str, Counter] = defaultdict(Counter)
    reasons = Counter()
    for e in db.all(
        "SELECT e.file_id, e.from_state, e.to_state, coalesce(e.host, '?') AS host, e.detail, coalesce(j.recipe, '?') AS recipe,"
        " f.inbox, f.path FROM events e LEFT JOIN jobs j ON j.id = e.job_id LEFT JOIN files f ON f.id = e.file_id"
        f" WHERE e.entity = 'job' AND e.{ev[0]}",
        ev[1],
    ):
        kind = _kind(e["from_state"], e["to_state"], e["detail"])
        if kind is None:
            continue
        totals[kind] += 1
        hosts[e["host"]][kind] += 1
        recipes[e["recipe"]][kind] += 1
        if kind == "done":
            host_photos[e["host"]].add(e["file_id"])
        if kind == "retried":
            reasons[_reason(e["detail"], e["inbox"], e["path"])] += 1
    keys = ("claimed", "done", "retried", "failed", "reclaimed", "released", "enqueued", "rearmed")
    return {
        "totals": {k: totals[k] for k in keys},
        "hosts": [
            dict({"host": h}, **{k: c[k] for k in HOST_KEYS}, photos=len(host_photos[h]))
            for h, c in sorted(hosts.items())
            if any(c[k] for k in HOST_KEYS)  # enqueue and retry events name no worker host
        ],
        "recipes": [dict({"recipe": r}, **{k: c[k] for k in ("enqueued", "done", "retried", "failed")}) for r, c in sorted(recipes.items())],
        "retry_reasons": [{"reason": r, "count": n} for r, n in reasons.most_common(TOP_RETRY_REASONS)],
    }


def _reason(detail: str | None, inbox: str | None, path: str | None) -> str:
    """A retry's reason without the "retry in 12s: " prefix and the file's own path, so
    the same trouble on many files groups under one line."""
    text = (detail or "no reason recorded").splitlines()[0]
    text = re.sub(r"^retry in \d+s: ", "", text)
    if inbox and path:
        text = text.removeprefix(os.path.join(inbox, path) + ": ")
    return text[:300]


def _kind(from_state, to_state, detail) -> str | None:
    if to_state == "leased":
        return "reclaimed" if from_state == "leased" else "claimed"
    if to_state in ("done", "failed"):
        return to_state
    if to_state == "ready":
        if from_state is None:
            return "enqueued"
        if from_state == "failed":
            return "rearmed"
        if detail and detail.startswith("released"):
            return "released"
        return "retried"
    return None


def _failures(db: DB, ev) -> list[dict]:
    """Every job that failed among the events ``ev`` selects, and every file that failed
    outside a job (a scan that found a corrupt file), with the reason."""
    rows = db.all(
        "SELECT e.at, e.file_id, e.job_id, e.host, e.detail AS reason, j.recipe, j.state, j.error_kind AS kind, f.inbox, f.path"
        " FROM events e LEFT JOIN jobs j ON j.id = e.job_id LEFT JOIN files f ON f.id = e.file_id"
        f" WHERE e.{ev[0]} AND e.to_state = 'failed'"
        " AND (e.entity = 'job' OR (e.entity = 'file' AND e.job_id IS NULL))"
        " ORDER BY e.at, e.id",
        ev[1],
    )
    out = []
    for r in rows:
        path = os.path.join(r["inbox"], r["path"]) if r["inbox"] and r["path"] else None
        if r["job_id"] is None:
            kind, state = "permanent", None  # a file that failed outside a job: not an image
        else:
            # the job row says what kind of error it was only while it is still failed:
            # `imgq retry` clears it (its state then tells that it was re-armed)
            kind, state = (r["kind"] if r["state"] == "failed" else None), r["state"]
        out.append({
            "at": iso(r["at"]), "file_id": r["file_id"], "job_id": r["job_id"], "recipe": r["recipe"],
            "host": r["host"], "kind": kind, "job_state": state, "path": path, "reason": r["reason"],
        })
    return out


# --------------------------------------------------------------------------- rendering


def running_time(seconds: float) -> str:
    """A running time as people read it: "42 s", "12.5 min", "3.25 h"."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def format_text(rep: dict, *, max_failures: int = 50) -> str:
    """The report as text for a person (and for a mail from cron)."""
    lines = []
    scope = rep["scope"]
    if "run" in scope:
        head = f"run {scope['run']} ({scope['command']})"
        run = rep["runs"][0] if rep["runs"] else {}
        if run.get("host"):
            head += f" on {run['host']}"
    else:
        head = f"since {scope['since']}"
    state = "still running" if rep["running"] else ""
    exit_code = rep["runs"][0].get("exit_code") if "run" in scope and rep["runs"] else None
    lines.append(f"imgq report: {head}")
    lines.append(f"  time:       {rep['from']} -> {rep['to']}  ({rep['wall_seconds']:.1f} s wall{', ' + state if state else ''}"
                 + (f", exit {exit_code}" if exit_code is not None else "") + ")")
    if "since" in scope:
        lines.append(f"  runs:       {len(rep['runs'])}" + (": " + ", ".join(f"{r['id']} {r['command']}" for r in rep["runs"][:12]) + (" …" if len(rep["runs"]) > 12 else "") if rep["runs"] else ""))
    lines.append(f"  inputs:     {', '.join(rep['inputs']) or '-'}")
    outs = rep["outputs"]
    lines.append(f"  outputs:    {outs['store'] or '-'}" + "".join(f", {d}" for d in outs["destinations"] + outs["galleries"]))
    p, j, b, t = rep["photos"], rep["jobs"], rep["bytes"], rep["throughput"]
    others = ", ".join(f"{n} {s}" for s, n in sorted(p["files"].items()) if s != "processed")
    lines.append(f"  photos:     {p['processed']} processed" + (f"; {others}" if others else ""))
    bt = rep["batches"]
    if bt["count"]:
        lines.append(f"  batches:    {bt['count']} (a photographer's new photos in one scan), largest {bt['largest']}, average {bt['average']}")
    if rep["photographers"]:
        width = max(len(o["owner"]) for o in rep["photographers"])
        lines.append("  photographers:")
        for o in rep["photographers"]:
            lines.append(f"    {o['owner']:<{width}}  {o['found']:>6} found  {o['processed']:>6} processed  {_size(o['bytes']):>9}")
    v = rep.get("videos") or {}
    if v.get("read"):
        lines.append(f"  videos:     {v['read']} read, {running_time(v['seconds'])} of video; {p['read']} photos read")
    lines.append(f"  jobs:       {j['done']} done, {j['failed']} failed, {j['retried']} retried, {j['claimed']} claimed"
                 + (f", {j['reclaimed']} reclaimed after a lost lease" if j["reclaimed"] else ""))
    lines.append(f"  bytes:      {_size(b['in'])} in ({p['read']} originals), {_size(b['out'])} out ({b['artifacts']} artifacts)"
                 + (f", {_size(b['archived'])} archived ({b['copies']} copies)" if b["copies"] else ""))
    pps = t["photos_per_second"]
    lines.append("  throughput: " + (f"{pps:.2f} photos/s, {t['jobs_per_second']:.2f} jobs/s, {_size(t['bytes_in_per_second'])}/s in" if pps is not None else "-")
                 + (f"; {rep['processing_seconds']:.1f} s of processing" if rep["processing_seconds"] else ""))
    if rep["hosts"]:
        lines.append("  hosts:")
        width = max(len(h["host"]) for h in rep["hosts"])
        for h in rep["hosts"]:
            lines.append(f"    {h['host']:<{width}}  {h['done']:>6} done  {h['failed']:>4} failed  {h['retried']:>4} retried  {h['photos']:>6} photos")
    if rep["recipes"]:
        lines.append("  recipes:")
        width = max(len(r["recipe"]) for r in rep["recipes"])
        for r in rep["recipes"]:
            lines.append(f"    {r['recipe']:<{width}}  {r['done']:>6} done  {r['failed']:>4} failed  {r['retried']:>4} retried")
    if rep["retry_reasons"]:
        lines.append("  retried because:")
        for r in rep["retry_reasons"]:
            lines.append(f"    {r['count']:>5} × {r['reason']}")
    failures = rep["failures"]
    lines.append(f"  failures:   {len(failures)}" if failures else "  failures:   none")
    for f in failures[:max_failures]:
        reason = (f["reason"] or "no reason recorded").splitlines()[0]
        where = f["path"] or f["file_id"]
        tags = [t for t in (f["kind"], "re-armed since" if f["job_state"] not in (None, "failed") else None) if t]
        lines.append(f"    {where}: {reason}" + (f" [{', '.join(tags)}]" if tags else ""))
    if len(failures) > max_failures:
        lines.append(f"    … and {len(failures) - max_failures} more (--json lists them all)")
    return "\n".join(lines) + "\n"


def write(path: Path, rep: dict) -> None:
    """Write the report to ``path`` atomically: JSON when the name ends in .json, else text."""
    path = Path(path)
    data = json.dumps(rep, indent=1, sort_keys=True, default=str, ensure_ascii=False) + "\n" if path.suffix.lower() == ".json" else format_text(rep)
    try:
        write_atomically(path, lambda f: f.write(data.encode("utf-8")), mode=0o666, make_folder=False)
    except OSError as e:
        raise StorageError(f"cannot write the report to {path}: {e.strerror or e}")
