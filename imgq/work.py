"""Local workers: N processes that claim, process, verify and complete jobs.

Each worker process holds one database connection, claims a batch of jobs sized to
about half a second of work, renders each job from a single decode of its original,
writes and verifies the artifacts, and settles the job fenced by its lease token. A
heartbeat thread extends the leases of everything it still holds. SIGINT/SIGTERM stop
claiming: the job in hand finishes, unstarted ones are handed back.

Signals only set flags. Ctrl-C, `timeout` and systemd signal the whole process group, so
every process gets the signal wherever it is, possibly inside a lock: a handler that
waited for a lock (a multiprocessing Event's) could wait for the very code it interrupted,
for ever. So each handler sets a plain flag; the loops poll it, and the parent tells the
workers through a shared byte that needs no lock (``Stop``).

What one job's processing is lives in ``imgq.job``; how outcomes are recorded, in
``imgq.outcomes``. This module is the worker loop, its heartbeat and the process pool.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import queue as stdqueue
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from imgq import store
from imgq.ledger import queue
from imgq.config import Settings
from imgq.ledger.database import DB
from imgq.ledger.journal import Actor
# one job's processing and the settling of outcomes live apart; re-exported here, where
# the fleet, imgq run and the tests import them from
from imgq.job import process, read_original  # noqa: F401
from imgq.outcomes import made_durable, reports, settle  # noqa: F401

TARGET_BATCH_SECONDS = 0.5
DRAIN_POLL = 0.05
SETTLE_EVERY = 0.1  # seconds of finished work recorded in one transaction
MAX_BATCH = 64


@dataclasses.dataclass
class WorkOptions:
    processes: int = os.cpu_count() or 1
    mode: str = "drain"  # 'drain': exit when no job is left; 'once': when none is due now; 'follow': keep polling
    batch: int | None = None  # jobs per claim; None adapts to job duration
    max_attempts: int | None = None  # overrides the jobs' own limit
    poll: float = 1.0
    run_id: int | None = None  # the run (runs.id) the workers' events name


class Stop:
    """When a worker should stop: polled by its loops, never waited on under a lock.

    ``shared`` is one byte in shared memory (no lock: a signal can never leave it held),
    set by the parent; ``here`` is set by this process's own signal handler. A worker
    whose parent is gone (killed) stops too, rather than work on unsupervised.
    """

    def __init__(self, ctx):
        self.shared = ctx.RawValue("b", 0)
        self.parent = os.getpid()
        self.here = False

    def tell_workers(self) -> None:
        self.shared.value = 1

    def is_set(self) -> bool:
        if self.here or self.shared.value:
            return True
        return os.getpid() != self.parent and os.getppid() != self.parent

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking early (within 50 ms) once stopped."""
        deadline = time.monotonic() + seconds
        while not self.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, 0.05))
        return True


@dataclasses.dataclass
class WorkSummary:
    done: int = 0
    failed: list[tuple[int, str, str]] = dataclasses.field(default_factory=list)
    retrying: int = 0
    lost: int = 0
    processed: list[str] = dataclasses.field(default_factory=list)
    interrupted: bool = False

    def count(self, report: tuple) -> None:
        """Count one report (see ``reports``): the one place reports are read back."""
        kind = report[0]
        if kind == "done":
            self.done += 1
        elif kind == "failed":
            self.failed.append(report[1:])
        elif kind == "retrying":
            self.retrying += 1
        elif kind == "lost":
            self.lost += 1
        elif kind == "processed":
            self.processed.append(report[1])


class Heartbeat(threading.Thread):
    """Extends the leases a worker holds every third of the lease period."""

    def __init__(self, db_path: Path, lease_seconds: float):
        super().__init__(daemon=True)
        self.db_path, self.lease = db_path, lease_seconds
        self.held: dict[int, str] = {}
        self.lost: set[int] = set()
        self.mutex = threading.Lock()
        self.stopping = threading.Event()

    def hold(self, claims) -> None:
        with self.mutex:
            self.held.update({c.job_id: c.token for c in claims})

    def drop(self, job_id: int) -> None:
        with self.mutex:
            self.held.pop(job_id, None)

    def run(self) -> None:
        db = DB(self.db_path)
        try:
            while not self.stopping.wait(self.lease / 3):
                with self.mutex:
                    held = list(self.held.items())
                try:
                    lost = queue.heartbeat(db, held, lease_seconds=self.lease)
                except Exception:
                    continue  # the next beat tries again; the fence protects correctness
                with self.mutex:
                    self.lost |= lost
        finally:
            db.close()


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEEP_FREED_BELOW = 32 << 20  # blocks up to this size come from (and return to) the heap
TRIM_ABOVE = 128 << 20  # free heap kept by a worker before it is given back


def tune_worker_process() -> None:
    """Set up a process that works jobs one after another.

    Parallelism comes from worker processes; OpenCV's own threads would oversubscribe
    the cores (N workers x its default thread pool). And every job allocates image-sized
    arrays: glibc returns blocks above its mmap threshold to the kernel on free, so each
    job's arrays were new pages to fault in and zero (about 800 faults a job on small
    photos, 45% of the bulk enhancer's CPU in the kernel). Kept in the heap, the next
    job reuses them (tests/test_worker_memory.py). Blocks above 32 MiB (a 12 MP photo
    decoded at full size) still go back at once, so a worker's memory stays bounded.
    """
    if "cv2" in sys.modules:
        sys.modules["cv2"].setNumThreads(1)
    else:  # read by OpenCV when first imported: a worker with nothing to do never loads it (0.1 s)
        os.environ["OPENCV_FOR_THREADS_NUM"] = "1"
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc: its allocator has its own habits
        return
    mallopt(_M_MMAP_THRESHOLD, KEEP_FREED_BELOW)
    mallopt(_M_TRIM_THRESHOLD, TRIM_ABOVE)


def video_threads(processes: int) -> int:
    """The threads each worker's ffmpeg decodes and scales a video with (it encodes with
    one: the same bytes whatever the threads): this machine's cores shared among the
    workers (``-j 2`` on 2 cores: one each, so two workers make about twice what one
    makes; ``-j 1``: every core for the one)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, processes))


def worker_main(settings: Settings, opts: WorkOptions, name: str, stop: Stop, reports: mp.Queue) -> None:
    """Body of one worker process; reports ('done'|'failed'|'processed', ...) tuples."""
    tune_worker_process()
    threads = video_threads(opts.processes)
    db = DB(settings.db)
    db.run_id = opts.run_id
    actor = Actor(host=socket.gethostname(), name=name)
    beat = Heartbeat(settings.db, settings.lease_seconds)
    beat.start()
    per_job = None  # moving average of seconds per job, to size batches
    try:
        while not stop.is_set():
            if opts.batch:
                limit = opts.batch
            elif per_job is None:
                limit = 1
            else:
                limit = max(1, min(MAX_BATCH, int(TARGET_BATCH_SECONDS / max(per_job, 1e-4))))
            claims = queue.claim(db, owner=name, limit=limit, lease_seconds=settings.lease_seconds, actor=actor, max_attempts=opts.max_attempts, max_lost=settings.max_lost, workers=opts.processes)
            if not claims:
                if opts.mode == "once":
                    break  # jobs in backoff or held by live workers are left for a later run
                left, wait = queue.pending(db)
                if opts.mode == "drain" and left == 0:
                    break
                # Draining, the last jobs are held by sibling workers: look again soon, so the
                # run ends right after them instead of up to a whole poll later.
                poll = min(opts.poll, DRAIN_POLL) if opts.mode == "drain" else opts.poll
                stop.wait(min(poll, wait) if wait else poll)
                continue
            beat.hold(claims)
            outcomes: list[queue.Outcome] = []
            last_settle = time.monotonic()
            for i, c in enumerate(claims):
                if stop.is_set():
                    _settle(db, outcomes, settings, actor, beat, reports)
                    outcomes = []
                    queue.release(db, claims[i:], actor=actor)
                    break
                if c.job_id in beat.lost:
                    continue
                t0 = time.monotonic()
                outcomes.append(process(c, settings, threads=threads))
                elapsed = time.monotonic() - t0
                per_job = elapsed if per_job is None else 0.8 * per_job + 0.2 * elapsed
                # Quick jobs are settled together (one transaction for many); a slow job is
                # settled at once, so a finished photo never waits long to be recorded.
                if time.monotonic() - last_settle >= SETTLE_EVERY:
                    _settle(db, outcomes, settings, actor, beat, reports)
                    outcomes, last_settle = [], time.monotonic()
            _settle(db, outcomes, settings, actor, beat, reports)
    finally:
        beat.stopping.set()
        db.close()


def _settle(db: DB, outcomes: list[queue.Outcome], settings: Settings, actor: Actor, beat: Heartbeat, reports_to) -> None:
    """A worker process's settle: record outcomes, stop beating for them, tell the parent."""
    if not outcomes:
        return
    settled = settle(db, outcomes, settings, actor=actor)
    for o in outcomes:
        beat.drop(o.claim.job_id)
    for r in reports(settled, outcomes):
        reports_to.put(r)


def _child(settings, opts, index, stop: Stop, reports) -> None:
    def on_signal(signum, frame):
        stop.here = True  # a flag only; the loops poll it (see the module's docstring)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    code = 0
    # host:pid:slot names the process that holds a lease (`imgq status`, kill -9 in tests)
    name = f"{socket.gethostname()}:{os.getpid()}:w{index}"
    try:
        worker_main(settings, opts, name, stop, reports)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        reports.put(("exit", index, code))
        reports.close()
        reports.join_thread()
        sys.stderr.flush()
        os._exit(code)  # skip finalizers of anything inherited from the parent


def work(settings: Settings, opts: WorkOptions, *, on_report: Callable[[tuple], None] = lambda r: None) -> WorkSummary:
    """Run ``opts.processes`` local worker processes until the queue drains (or forever
    with mode 'follow', until SIGINT/SIGTERM). Reports are passed to ``on_report`` as
    they arrive, in the parent process.

    Raises UsageError before any work if the store belongs to another database."""
    db = DB(settings.db)
    db.run_id = opts.run_id
    try:
        store.own(settings.store_dir, db.id, settings.db)
    finally:
        db.close()  # not carried across the fork
    ctx = mp.get_context("fork")
    stop = Stop(ctx)
    reports: mp.Queue = ctx.Queue()
    signalled: list[int] = []

    def on_signal(signum, frame):
        signalled.append(signum)  # a flag only: the loop below tells the workers

    # before forking, so no moment is left where a signal kills the parent outright
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    summary = WorkSummary()
    try:
        children = []
        for n in range(opts.processes):
            p = ctx.Process(target=_child, args=(settings, opts, n, stop, reports), name=f"imgq-worker-{n}", daemon=False)
            p.start()
            children.append(p)
        sweep_store(settings)  # while the workers already work: a big store takes a while to walk
        running = len(children)
        while running:
            if signalled and not summary.interrupted:
                summary.interrupted = True
                stop.tell_workers()
            try:
                r = reports.get(timeout=0.2)
            except stdqueue.Empty:
                if not any(p.is_alive() for p in children):
                    break
                continue
            if r[0] == "exit":
                running -= 1
            else:
                summary.count(r)
            on_report(r)
        for p in children:
            p.join()
        summary.interrupted = summary.interrupted or bool(signalled)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return summary


def sweep_store(settings: Settings) -> None:
    """Remove what killed workers left in the store: temporary files of writers that are
    gone, and staged files of attempts that no longer hold their lease (asked of the
    database per file; times on the database's clock)."""
    db = DB(settings.db)
    try:
        def live(token: str) -> bool:
            return db.one("SELECT 1 FROM jobs WHERE state = 'leased' AND lease_token = ?", (token,)) is not None

        store.sweep_temp(settings.store_dir, older_than=max(3600.0, 10 * settings.lease_seconds), now=db.now(), live=live)
    finally:
        db.close()
