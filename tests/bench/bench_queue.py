"""bin/bench queue: how many no-op jobs imgq's queue moves per second, and how fairly.

Throughput: N jobs are created in a fresh database through ``imgq.queue.enqueue`` (one
file, one job each, so every completion also makes its file ``processed``, as in real
use). One process pinned to one CPU then loops ``queue.claim(limit=K)`` and
``queue.settle`` with empty artifacts until nothing is left, two ways:
  - batch:   one ``settle`` per claimed batch (K outcomes in one transaction);
  - per-job: one ``settle`` per job, as ``imgq work`` does after each job it renders.
The bare SQLite baseline is the same work without imgq: a plain jobs table and events
table, a claim ``UPDATE ... RETURNING`` in one transaction, completions (UPDATE fenced by
the token + an event row) in another, same pragmas (WAL, synchronous=NORMAL).

Fairness: two processes contend on one database for ``--fair-seconds`` each, claiming K
and completing, as fast as they can. Reported: completions per process and min/max.
Variants: imgq as shipped (``DB.transaction`` takes a flock before ``BEGIN IMMEDIATE``),
imgq with the flock disabled (a bench-only subclass), and a bare sqlite3 loop with and
without a flock.
"""

from __future__ import annotations

import argparse
import fcntl
import multiprocessing as mp
import os
import secrets
import shutil
import sqlite3
import time
from pathlib import Path

RECIPE = {"default": {"thumb": "thumb"}}


# --------------------------------------------------------------------------- seeding


def seed_imgq(path: Path, n: int) -> float:
    """A fresh imgq database at ``path`` holding ``n`` ready jobs; returns seconds spent."""
    from imgq.ledger import journal, queue
    from imgq.ledger.database import DB
    from imgq.ledger.journal import Actor

    for suffix in ("", "-wal", "-shm", ".locks/write.lock"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    t0 = time.perf_counter()
    db = DB(path)
    now = time.time()
    actor = Actor(host="bench", name="seed")
    ids = [f"bench_{1700000000 + i}_IMG_{i:06d}.jpg" for i in range(n)]
    with db.transaction():
        for i, fid in enumerate(ids):
            journal.add_file(
                db,
                {"id": fid, "inbox": "/nonexistent/inbox", "path": f"bench/IMG_{i:06d}.jpg", "owner": "bench", "size": 1, "mtime_ns": 0, "sha256": f"{i:064x}", "format": "JPEG", "width": 4000, "height": 3000},
                state="seen",
                now=now,
                actor=actor,
            )
    queue.enqueue(db, ids, RECIPE, now=now, max_attempts=5, actor=actor)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return time.perf_counter() - t0


def copy_db(src: Path, dst: Path) -> None:
    for suffix in ("", "-wal", "-shm", ".locks/write.lock"):
        Path(str(dst) + suffix).unlink(missing_ok=True)
    shutil.copyfile(src, dst)


BARE_SCHEMA = """
CREATE TABLE jobs (id INTEGER PRIMARY KEY, state TEXT NOT NULL, not_before REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, lease_owner TEXT, lease_token TEXT, lease_until REAL, updated_at REAL);
CREATE INDEX jobs_state ON jobs (state, not_before);
CREATE TABLE events (id INTEGER PRIMARY KEY, at REAL NOT NULL, job_id INTEGER, from_state TEXT, to_state TEXT, actor TEXT);
"""


def bare_connect(path: Path, synchronous: str = "NORMAL") -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    return conn


def seed_bare(path: Path, n: int) -> None:
    for suffix in ("", "-wal", "-shm", "-lock"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    conn = bare_connect(path)
    conn.executescript(BARE_SCHEMA)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO jobs (state, updated_at) VALUES ('ready', 0)", ([] for _ in range(n)))
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


# --------------------------------------------------------------------------- the loops


class BareQueue:
    """The baseline: what claim and complete cost with nothing but sqlite3."""

    def __init__(self, path: Path, owner: str, *, flock: bool, synchronous: str = "NORMAL"):
        self.conn = bare_connect(path, synchronous)
        self.owner = owner
        self.lock_fd = os.open(str(path) + "-lock", os.O_RDWR | os.O_CREAT, 0o644) if flock else None

    def _begin(self):
        if self.lock_fd is not None:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
        self.conn.execute("BEGIN IMMEDIATE")

    def _commit(self):
        self.conn.execute("COMMIT")
        if self.lock_fd is not None:
            fcntl.flock(self.lock_fd, fcntl.LOCK_UN)

    def claim(self, k: int) -> list[tuple[int, str]]:
        now = time.time()
        token = secrets.token_hex(8)
        self._begin()
        rows = self.conn.execute(
            "UPDATE jobs SET state = 'leased', lease_owner = ?, lease_token = ?, lease_until = ?, attempts = attempts + 1, updated_at = ?"
            " WHERE id IN (SELECT id FROM jobs WHERE state = 'ready' AND not_before <= ? ORDER BY not_before, id LIMIT ?) RETURNING id",
            (self.owner, token, now + 60, now, now, k),
        ).fetchall()
        self.conn.executemany(
            "INSERT INTO events (at, job_id, from_state, to_state, actor) VALUES (?, ?, 'ready', 'leased', ?)",
            [(now, r[0], self.owner) for r in rows],
        )
        self._commit()
        return [(r[0], token) for r in rows]

    def complete(self, held: list[tuple[int, str]]) -> int:
        now = time.time()
        done = 0
        self._begin()
        for job_id, token in held:
            cur = self.conn.execute(
                "UPDATE jobs SET state = 'done', lease_until = NULL, updated_at = ? WHERE id = ? AND state = 'leased' AND lease_token = ?",
                (now, job_id, token),
            )
            if cur.rowcount == 1:
                done += 1
                self.conn.execute("INSERT INTO events (at, job_id, from_state, to_state, actor) VALUES (?, ?, 'leased', 'done', ?)", (now, job_id, self.owner))
        self._commit()
        return done


def _imgq_db(path: Path, *, flock: bool, synchronous: str = "NORMAL"):
    from imgq.ledger.database import DB

    if flock:
        return DB(path, synchronous=synchronous)

    class NoFlockDB(DB):
        """imgq's DB without its fairness flock: plain BEGIN IMMEDIATE (bench only)."""

        def _lock(self):
            pass

        def _unlock(self):
            pass

    return NoFlockDB(path, synchronous=synchronous)


class ImgqQueue:
    def __init__(self, path: Path, owner: str, *, flock: bool, synchronous: str = "NORMAL"):
        from imgq.ledger.journal import Actor

        self.db = _imgq_db(path, flock=flock, synchronous=synchronous)
        self.owner = owner
        self.actor = Actor(host="bench", name=owner)

    def claim(self, k: int):
        from imgq.ledger import queue

        return queue.claim(self.db, owner=self.owner, limit=k, lease_seconds=60, now=time.time(), actor=self.actor)

    def complete(self, held) -> int:
        from imgq.ledger import queue

        settled = queue.settle(self.db, [queue.Outcome(c, artifacts=[]) for c in held], now=time.time(), actor=self.actor)
        return len(settled.done)


def _make(kind: str, path: Path, owner: str, flock: bool, synchronous: str = "NORMAL"):
    return (ImgqQueue if kind == "imgq" else BareQueue)(path, owner, flock=flock, synchronous=synchronous)


def _drain(kind: str, path: str, k: int, mode: str, conn) -> None:
    """Child: pinned to one CPU, claim K / complete until empty; sends (done, seconds, cpu)."""
    from bench_util import pin_to_one_core

    cpu = pin_to_one_core()
    q = _make(kind, Path(path), "w0", flock=True)
    done = 0
    t0 = time.perf_counter()
    while True:
        held = q.claim(k)
        if not held:
            break
        if mode == "batch":
            done += q.complete(held)
        else:
            for h in held:
                done += q.complete([h])
    conn.send((done, time.perf_counter() - t0, cpu))
    conn.close()


def _contend(kind: str, path: str, k: int, flock: bool, synchronous: str, seconds: float, start, conn) -> None:
    """Child: wait for the start signal, then claim K / complete until the deadline."""
    q = _make(kind, Path(path), f"w{os.getpid()}", flock=flock, synchronous=synchronous)
    start.wait()
    deadline = time.monotonic() + seconds
    done = transactions = 0
    longest_wait = 0.0
    while time.monotonic() < deadline:
        t = time.monotonic()
        held = q.claim(k)
        longest_wait = max(longest_wait, time.monotonic() - t)
        if not held:
            break
        done += q.complete(held)
        transactions += 2
    conn.send((done, transactions, longest_wait))
    conn.close()


def _child_result(target, args):
    ctx = mp.get_context("fork")
    here, there = ctx.Pipe(duplex=False)
    p = ctx.Process(target=target, args=(*args, there))
    p.start()
    there.close()
    result = here.recv()
    p.join()
    return result


# --------------------------------------------------------------------------- the part


# What the part needs to run here (bin/bench --check): see bench_local
NEEDS = {"modules": ["imgq.ledger.queue"], "programs": [], "optional": [], "root": False}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("queue")
    g.add_argument("--queue-jobs", type=int, default=20_000, metavar="N", help="no-op jobs drained per measurement (default 20000)")
    g.add_argument("--batches", default="1,16,64", metavar="K,K", help="claim batch sizes (default 1,16,64)")
    g.add_argument("--fair-seconds", type=float, default=5.0, metavar="S", help="length of each fairness contest (default 5)")
    g.add_argument("--fair-batch", default="16", metavar="K,K", help="batch size(s) of the fairness contests (default 16)")
    g.add_argument("--fair-sync", default="NORMAL,FULL", metavar="MODE,MODE", help="synchronous pragma(s) of the fairness contests (default NORMAL,FULL)")


def _csv_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def run(args, ctx) -> dict:
    from bench_util import CpuMeter, median, say

    work = Path(ctx["work"]) / "queue"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    n = args.queue_jobs
    batches = _csv_ints(args.batches)

    say(f"queue: seeding {n:,} jobs through imgq.queue.enqueue...")
    seed = work / "seed.db"
    seed_seconds = seed_imgq(seed, n)
    bare_seed = work / "bare-seed.db"
    seed_bare(bare_seed, n)

    # K=1 settles one job per transaction either way: one run covers both modes
    plan = [(kind, k, mode) for k in batches for kind in ("imgq", "bare") for mode in ("batch", "per-job") if not (k == 1 and mode == "per-job")]
    runs: dict[tuple, list] = {key: [] for key in plan}
    for r in range(args.repeat):
        for key in plan:  # interleaved, as in the local part
            kind, k, mode = key
            db = work / f"drain-{kind}.db"
            copy_db(seed if kind == "imgq" else bare_seed, db)
            say(f"queue: drain {kind} K={k} settle {mode} run {r + 1}/{args.repeat}...")
            meter = CpuMeter()
            done, seconds, cpu = _child_result(_drain, (kind, str(db), k, mode))
            used = meter.stop()
            if done != n:
                raise RuntimeError(f"{kind} K={k} {mode}: completed {done} of {n} jobs")
            runs[key].append({"seconds": seconds, "cpu": used["cpu_children"], "others": used.get("others_share"), "on_cpu": cpu})
    drains = []
    for (kind, k, mode), rs in runs.items():
        sec = median([x["seconds"] for x in rs])
        cpu = median([x["cpu"] for x in rs])
        for m in ((mode,) if k > 1 else ("batch", "per-job")):
            drains.append({
                "kind": kind, "k": k, "settle": m,
                "seconds": [round(x["seconds"], 3) for x in rs],
                "jobs_per_s": n / sec,
                "jobs_per_cpu_s": n / cpu if cpu else None,
                "others_share_max": max((x["others"] for x in rs if x["others"] is not None), default=None),
                "cpu": rs[0]["on_cpu"],
            })

    def rate(kind, k, mode, field="jobs_per_s"):
        for d in drains:
            if (d["kind"], d["k"], d["settle"]) == (kind, k, mode):
                return d[field]
        return None

    # Enough jobs that a contest does not run dry (two processes share one write lock, so
    # together they do not beat one alone by much): the best single-process batch rate at
    # the contest's K times its length, times 1.5. Had it run dry, the table says so.
    def fair_count(kind):
        ks = _csv_ints(args.fair_batch)
        best = max((d["jobs_per_s"] for d in drains if d["kind"] == kind and d["settle"] == "batch" and d["k"] in ks), default=None)
        best = best or max(d["jobs_per_s"] for d in drains if d["kind"] == kind)
        return int(min(1_000_000, max(n, best * args.fair_seconds * 1.5)))

    fair_n = {"imgq": fair_count("imgq"), "bare": fair_count("bare")}
    say(f"queue: seeding {fair_n['imgq']:,} imgq jobs for the fairness contests...")
    fair_seed = {"imgq": work / "fair-seed.db", "bare": work / "fair-bare-seed.db"}
    seed_imgq(fair_seed["imgq"], fair_n["imgq"])
    seed_bare(fair_seed["bare"], fair_n["bare"])
    contests = []
    variants = [
        ("imgq", True, "imgq DB.transaction (flock + BEGIN IMMEDIATE)"),
        ("imgq", False, "imgq without the flock (plain BEGIN IMMEDIATE)"),
        ("bare", False, "bare sqlite3, naive BEGIN IMMEDIATE loop"),
        ("bare", True, "bare sqlite3 + flock before BEGIN IMMEDIATE"),
    ]
    for sync in [s.strip().upper() for s in args.fair_sync.split(",") if s.strip()]:
        for k in _csv_ints(args.fair_batch):
            for kind, flock, label in variants:
                db = work / f"fair-{kind}.db"
                copy_db(fair_seed[kind], db)
                say(f"queue: fairness {label}, K={k}, synchronous={sync}, {args.fair_seconds:g} s...")
                ctxm = mp.get_context("fork")
                start = ctxm.Event()
                procs, pipes = [], []
                for _ in range(2):
                    here, there = ctxm.Pipe(duplex=False)
                    p = ctxm.Process(target=_contend, args=(kind, str(db), k, flock, sync, args.fair_seconds, start, there))
                    p.start()
                    there.close()
                    procs.append(p)
                    pipes.append(here)
                time.sleep(0.3)  # both connected and waiting
                meter = CpuMeter()
                start.set()
                got = [pipe.recv() for pipe in pipes]
                for p in procs:
                    p.join()
                used = meter.stop()
                counts = [g[0] for g in got]
                contests.append({
                    "variant": label, "kind": kind, "flock": flock, "k": k, "synchronous": sync,
                    "completed": counts,
                    "longest_claim_wait_s": [round(g[2], 3) for g in got],
                    "min_over_max": (min(counts) / max(counts)) if max(counts) else None,
                    "total_per_s": sum(counts) / args.fair_seconds,
                    "drained": sum(counts) >= fair_n[kind],
                    "others_share": used.get("others_share"),
                })
    shutil.rmtree(work, ignore_errors=True)

    targets = [
        {"part": "queue", "name": f"imgq claim K={k} + settle{' per batch' if k > 1 else ''}, jobs/s", "value": rate("imgq", k, "batch"), "target": 5000, "unit": "jobs/s"}
        for k in batches
    ]
    targets += [
        {"part": "queue", "name": f"imgq claim K={k} + settle per job, jobs/s", "value": rate("imgq", k, "per-job"), "target": 5000, "unit": "jobs/s"}
        for k in batches if k > 1
    ]
    return {"jobs": n, "seed_seconds": round(seed_seconds, 2), "fair_jobs": fair_n, "fair_seconds": args.fair_seconds, "drains": drains, "contests": contests, "targets": targets}


def render(res: dict) -> str:
    from bench_util import fmt, table

    n = res["jobs"]
    out = [f"queue: {n:,} no-op jobs (1 job per file; completing it also makes the file processed), one process pinned to one CPU, "
           f"WAL + synchronous=NORMAL, median of runs; seeding {n:,} via imgq.queue.enqueue took {res['seed_seconds']} s"]
    rows = []
    by = {(d["kind"], d["k"], d["settle"]): d for d in res["drains"]}
    busy = max((d["others_share_max"] or 0) for d in res["drains"])
    for k in sorted({d["k"] for d in res["drains"]}):
        for mode in ("batch", "per-job"):
            if k == 1 and mode == "per-job":
                continue
            i, b = by.get(("imgq", k, mode)), by.get(("bare", k, mode))
            label = f"K={k}" + ("" if k == 1 else f", settle {'per batch' if mode == 'batch' else 'per job'}")
            rows.append([label, fmt(i["jobs_per_s"], 0), fmt(i["jobs_per_cpu_s"], 0), fmt(b["jobs_per_s"], 0), fmt(b["jobs_per_cpu_s"], 0),
                         f"{i['jobs_per_s'] / b['jobs_per_s']:.2f}x"])
    out.append("")
    out.append(table(["claim batch, settle", "imgq jobs/s", "imgq jobs/CPU-s", "bare jobs/s", "bare jobs/CPU-s", "imgq/bare"], rows))
    out.append("  settle per batch: one settle transaction per claimed batch; per job: one per job. `imgq work` settles each slow job at once and groups quick ones (one transaction per 0.1 s of finished work), so on no-op jobs it behaves like settle per batch.")
    out.append("  bare: sqlite3 only, claim (UPDATE ... RETURNING + events) and completion (fenced UPDATE + event) in separate transactions.")
    out.append("  jobs/CPU-s: jobs per second of CPU the process used, a figure a busy machine does not disturb.")
    if busy > 0.1:
        out.append(f"  WARNING: other processes used up to {100 * busy:.0f}% of the CPUs during these runs: jobs/s are disturbed")
    out.append("")
    out.append(f"fairness: 2 processes contend for {res['fair_seconds']:g} s, each claiming K then completing the batch in a second transaction")
    rows = []
    for c in res["contests"]:
        rows.append([c["variant"], f"K={c['k']}", c["synchronous"], f"{c['completed'][0]:,} / {c['completed'][1]:,}",
                     "-" if c["min_over_max"] is None else f"{c['min_over_max']:.3f}", fmt(c["total_per_s"], 0),
                     " / ".join(f"{w:.3f}" for w in c["longest_claim_wait_s"]) + ("  (drained)" if c["drained"] else ""),
                     "-" if c.get("others_share") is None else f"{100 * c['others_share']:.0f}%"])
    out.append(table(["variant", "batch", "sync", "completed A / B", "min/max", "total jobs/s", "longest claim wait s", "others' CPU"], rows))
    return "\n".join(out)
