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
"""

from __future__ import annotations

import dataclasses
import errno
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

from imgq import split as splitting
from imgq import faces, imaging, original, recipes, store
from imgq.ledger import queue
from imgq.config import Settings
from imgq.ledger.database import DB
from imgq.errors import ImgqError, classify
from imgq.ledger.journal import Actor
from imgq.split.run import join_job, stripe_job

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


def read_original(claim: queue.Claim) -> imaging.Source:
    """The original's bytes, opened once by identity (no symlink, regular files only, a
    FIFO cannot block) and, when the claim carries the journal's sha256, checked against
    it (ChangedInInbox otherwise). Imaging decodes exactly these bytes, never the path."""
    with original.open_original(claim.inbox, claim.path) as orig:
        # an agent's staged copy comes without the journal's sha256: its coordinator checks it
        data = orig.read_verified(claim.sha256, claim.size) if claim.sha256 else orig.read_all()
        return imaging.Source(data, orig.shown)


def _video_original(claim: queue.Claim) -> original.Original | None:
    """The original opened by identity if it is a video (its caller closes it), else None.
    Its content is checked against the journal's sha256 as a stream: a video is never
    held in memory."""
    orig = original.open_original(claim.inbox, claim.path)
    try:
        head = os.pread(orig.fd, 64, 0)
        if imaging.sniff(head) is not None or imaging.sniff_video(head) is None:
            orig.close()
            return None
        if claim.sha256:
            size, digest = orig.hash()
            if (claim.size is not None and size != claim.size) or digest != claim.sha256:
                raise original.ChangedInInbox(f"{orig.shown}: changed in the inbox since it was scanned (sha256 differs); scan again")
        return orig
    except BaseException:
        orig.close()
        raise


def _video_chunk(claim: queue.Claim, settings: Settings, orig: original.Original, chains: dict[str, str], index: int, count: int, staged: list[str]) -> tuple[dict, list]:
    """Chunk ``index`` of ``count`` of a long video: each video chain's share of the
    frames encoded as a part, staged like an artifact (the join job makes the stills and
    joins the parts). Returns the job's result and the parts' (staged, final) moves."""
    movies = {n: c for n, c in chains.items() if recipes.is_video_chain(c)}
    moves = []

    def dest_for(name: str) -> Path:
        final = splitting.part_path(claim.file_id, name, claim.spec_hash, index, count, ext="vpart")
        staged.append(store.staged_path(final, claim.token))
        moves.append((staged[-1], final))
        return settings.store_dir / staged[-1]

    made = imaging.encode_chunks(orig.fd, orig.shown, movies, index, count, dest_for, scratch=settings.store_dir) if movies else {}
    return {"chunk": [index, count], "parts": made}, moves


def _process_video(claim: queue.Claim, settings: Settings, orig: original.Original, chains: dict[str, str], staged: list[str], *, chunks: int = 0) -> tuple[list, dict]:
    """A video's artifacts: its stills from a representative frame, its video chains
    encoded (``imaging.encode_video``), or with ``chunks`` joined from the parts of that
    many chunk jobs; (artifacts, result) with the encoder of each."""
    stills = {n: c for n, c in chains.items() if not recipes.is_video_chain(c)}
    movies = {n: c for n, c in chains.items() if recipes.is_video_chain(c)}
    artifacts, result = [], {}
    if stills:
        for name, r in imaging.render_stills(orig.fd, orig.shown, stills, max_pixels=settings.max_pixels).items():
            rel = store.artifact_path(claim.file_id, name, claim.spec_hash)
            staged.append(store.staged_path(rel, claim.token))
            saved = imaging.save(r, settings.store_dir / staged[-1], quality=settings.jpeg_quality)
            artifacts.append(queue.Artifact(name, rel, saved.sha256, saved.bytes, saved.width, saved.height, staged=staged[-1]))
    rels: dict[str, tuple[str, str]] = {}  # artifact -> (final, staged)

    def dest_for(name: str, ext: str) -> Path:
        rel = store.artifact_path(claim.file_id, name, claim.spec_hash, ext)
        staged.append(store.staged_path(rel, claim.token))
        rels[name] = (rel, staged[-1])
        return settings.store_dir / staged[-1]

    if chunks:
        made = {}
        for name, chain in movies.items():
            parts = [settings.store_dir / splitting.part_path(claim.file_id, name, claim.spec_hash, i, chunks, ext="vpart") for i in range(chunks)]
            made[name] = imaging.join_chunks(orig.fd, orig.shown, chain, parts, lambda ext, name=name: dest_for(name, ext), scratch=settings.store_dir)
    else:
        made = imaging.encode_videos(orig.fd, orig.shown, movies, dest_for, scratch=settings.store_dir) if movies else {}  # one decode for all
    for name, saved in made.items():
        rel, staged_as = rels[name]
        artifacts.append(queue.Artifact(name, rel, saved.sha256, saved.bytes, saved.width, saved.height, staged=staged_as))
        result[name] = {"encoder": saved.encoder, "frames": saved.frames, "duration": saved.duration}
    return artifacts, result


def process(claim: queue.Claim, settings: Settings) -> queue.Outcome:
    """Run one claimed job: one decode, every artifact written and verified under its
    per-attempt name (store.staged_path with the lease token). Nothing is renamed onto a
    final name here: queue.settle does that if this attempt still holds its lease."""
    src = original.shown_path(os.path.join(original.fs_path(claim.inbox), original.fs_path(claim.path)))  # named in every error
    started = time.monotonic()
    staged: list[str] = []  # written so far, removed if the job fails
    try:
        chains, options = recipes.split_spec(claim.spec)
        kind, index, count = splitting.parse_stage(claim.stage)
        video = _video_original(claim)
        if video is not None:
            with video:
                if kind == "stripe":
                    result, parts = _video_chunk(claim, settings, video, chains, index, count, staged)
                    result["seconds"] = round(time.monotonic() - started, 4)
                    return queue.Outcome(claim, artifacts=[], result=result, parts=parts)
                artifacts, result = _process_video(claim, settings, video, chains, staged, chunks=count if kind == splitting.JOIN else 0)
            result["seconds"] = round(time.monotonic() - started, 4)
            return queue.Outcome(claim, artifacts=artifacts, result=result)
        if kind == "stripe":
            result, parts = stripe_job(claim, settings, read_original(claim), chains, index, count, started, staged)
            return queue.Outcome(claim, artifacts=[], result=result, parts=parts)
        if kind == splitting.JOIN:
            rendered = join_job(claim, settings, read_original(claim), chains, count)
        else:
            rendered = imaging.render(read_original(claim), chains, max_pixels=settings.max_pixels)
        result: dict = {}
        for name, r in rendered.items():
            facts = getattr(r, "facts", None)
            if facts:
                # face boxes are in the rendered image's pixels: say which frame that is
                result[name] = dict(facts, frame=list(r.image.size)) if "faces" in facts else facts
        artifacts = []
        if faces.skips(options, result):
            result["skipped"] = "no faces found (on_no_faces = skip): no artifacts kept"
        else:
            for name, r in rendered.items():
                rel = store.artifact_path(claim.file_id, name, claim.spec_hash)
                staged.append(store.staged_path(rel, claim.token))
                # not fsynced here: settle() syncs a batch's files together before
                # recording them, and the folder once the final name is set (store.place)
                saved = imaging.save(r, settings.store_dir / staged[-1], quality=settings.jpeg_quality, durable=False)
                artifacts.append(queue.Artifact(name, rel, saved.sha256, saved.bytes, saved.width, saved.height, staged=staged[-1]))
        result["seconds"] = round(time.monotonic() - started, 4)
        return queue.Outcome(claim, artifacts=artifacts, result=result)
    except ImgqError as e:
        text = str(e) if str(src) in str(e) else f"{src}: {e}"  # always name the file, once
        return _failed(claim, settings, staged, text, classify(e))
    except OSError as e:
        # a name too long stays too long: failing for good beats five useless retries
        kind = "permanent" if e.errno == errno.ENAMETOOLONG else "transient"
        return _failed(claim, settings, staged, f"{src}: {e.strerror or e}", kind)
    except MemoryError:
        return _failed(claim, settings, staged, f"{src}: out of memory", "transient")
    except Exception as e:  # a bug: retried up to max_attempts, then failed with the trace
        return _failed(claim, settings, staged, f"{src}: internal error {type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}", "transient")


def _failed(claim: queue.Claim, settings: Settings, staged: list[str], error: str, kind: str) -> queue.Outcome:
    store.discard(settings.store_dir, staged)
    return queue.Outcome(claim, error=error, kind=kind)


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


def _one_thread_per_worker() -> None:
    """Parallelism comes from worker processes; OpenCV's own threads would oversubscribe
    the cores (N workers x its default thread pool)."""
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass


def worker_main(settings: Settings, opts: WorkOptions, name: str, stop: Stop, reports: mp.Queue) -> None:
    """Body of one worker process; reports ('done'|'failed'|'processed', ...) tuples."""
    _one_thread_per_worker()
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
            claims = queue.claim(db, owner=name, limit=limit, lease_seconds=settings.lease_seconds, actor=actor, max_attempts=opts.max_attempts, max_lost=settings.max_lost)
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
                outcomes.append(process(c, settings))
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
