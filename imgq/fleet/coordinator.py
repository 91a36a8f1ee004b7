"""The fleet coordinator: ``imgq work --hosts``.

The database never leaves this machine. One thread (the caller's) owns it: it claims jobs
on the agents' behalf, settles what comes back (fenced by each lease token), extends the
leases of everything in flight, and keeps the ``hosts`` table. Everything that waits on
a network runs in other threads and talks to it through one event queue:

- a connect thread per host being (re)connected: SSH, ``imgq agent``, its hello, the
  preflight verdict (``link.start_agent``);
- per connected host, an ``AgentLink``: sender threads (``--transfers``) reading inputs
  and writing them to the agent, and a reader thread;
- a small pool that checks and stores the artifacts that arrive (sha256, decode at the
  stated size, temporary name, fsync, rename), so the reader keeps reading.

Each host gets ``slots + prefetch`` jobs in flight, so the next input is already on the
host when a slot frees up. A host that goes silent (``host_timeout``: its agent beats
every second) is lost: its jobs go back to the queue at once (their lease token still
fences a late reply), and it is benched with the reason and retried later with backoff.
A host that fails preflight, or on which jobs keep failing, is benched the same way, so
a broken host fails no job.

Nothing an agent says is trusted. A reply is checked against the job's recipe before its
bytes are read (``arrival.check_reply``: every artifact exactly once, sizes that add up,
no bigger than the recipe can make at ``max_pixels``); a reply that breaks the protocol
benches its host with the reason, and the jobs it held run elsewhere. Inputs are read
by identity (``imgq.original``) and sent only if their sha256 is the journal's.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing as mp
import os
import queue as stdqueue
import signal
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from imgq import store
from imgq.fleet import arrival, hosts, link, protocol
from imgq.ledger import queue
from imgq import work as worker
from imgq.config import Settings
from imgq.ledger.database import DB
from imgq.errors import HostUnreachable, ImgqError, UsageError, classify
from imgq.fleet.hosts import HostEntry, PreflightFailed
from imgq.ledger.journal import Actor

RELOAD_SECONDS = 2.0  # how often the hosts file is re-read
PING_SECONDS = 2.0  # the agent exits when it hears nothing for its idle timeout
FLUSH_SECONDS = 2.0  # host counters and heartbeat times written to the hosts table


@dataclasses.dataclass
class FleetOptions:
    hosts: list[HostEntry] = dataclasses.field(default_factory=list)
    hosts_file: Path | None = None
    remote_imgq: tuple[str, ...] = ("imgq",)
    slots: int | None = None  # per host without /slots; None: the host's cores
    prefetch: int | None = None  # jobs in flight per host beyond its slots; None: = slots
    transfers: int = 2  # inputs read and sent at once, per host
    shared_root: Path | None = None
    ssh_config: Path | None = None
    accept_new_host_keys: bool = False
    connect_timeout: float | None = None
    host_timeout: float = 5.0  # silence after which a host is lost
    local_processes: int = 0  # local worker processes beside the hosts
    mode: str = "drain"  # drain | once | follow
    max_attempts: int | None = None
    poll: float = 1.0


@dataclasses.dataclass
class Host:
    """The coordinator's view of one host (touched by the coordinator thread only)."""

    entry: HostEntry
    state: str = "new"  # new, connecting, up, benched, draining, removed
    link: link.AgentLink | None = None
    inflight: dict = dataclasses.field(default_factory=dict)  # job id -> Claim
    failures: int = 0  # connect/preflight/loss failures in a row
    benched_until: float = 0.0
    reason: str | None = None
    tried: bool = False  # a connection has been attempted at least once
    errors_in_row: int = 0  # transient job errors reported by its agent, none done between
    answered: dict = dataclasses.field(default_factory=dict)  # job id -> the Claim its agent replied to (reader thread only)
    draining: bool = False

    @property
    def name(self) -> str:
        return self.entry.name


@dataclasses.dataclass
class FleetSummary(worker.WorkSummary):
    bytes_out: int = 0  # sent to agents: inputs, job headers, pings
    bytes_in: int = 0  # received: artifacts, replies, heartbeats
    hosts: dict = dataclasses.field(default_factory=dict)  # name -> state at the end


class Fleet:
    """One run of the coordinator; ``run()`` returns a ``FleetSummary``."""

    def __init__(self, settings: Settings, opts: FleetOptions, db: DB, *, on_report: Callable[[tuple], None] = lambda r: None):
        self.settings, self.opts, self.db, self.on_report = settings, opts, db, on_report
        self.events: stdqueue.Queue = stdqueue.Queue()
        self.hosts: dict[str, Host] = {}
        self.summary = FleetSummary()
        self.stopping = False
        self.dry_until = 0.0  # the last claim found nothing: don't ask again before this
        # (host, ran here) -> [(Outcome, from_agent)]; "here": a split stage run on this machine
        self.pending_outcomes: dict[tuple[str, bool], list] = defaultdict(list)
        self.counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.fenced: set[int] = set()  # jobs whose lease we lost (another worker has them)
        self.bytes_out = self.bytes_in = 0
        self.local = None  # the local workers' process, with -j N beside the hosts
        self.here = None  # a process for stages of split images, which need this store
        self.local_reports = None
        self._timers = {"reload": 0.0, "beat": time.monotonic(), "ping": 0.0, "flush": 0.0}
        self.hosts_file = hosts.HostsFile(opts.hosts_file, remote_imgq=opts.remote_imgq) if opts.hosts_file else None
        self._hosts_problem = None
        self.store_pool = concurrent.futures.ThreadPoolExecutor(max(2, opts.transfers), thread_name_prefix="imgq-store")

    # --- the loop -----------------------------------------------------------------------

    def run(self) -> FleetSummary:
        """Work until the queue drains (mode drain), nothing is due (once), or a signal
        (follow); raise HostUnreachable if no host can work and nothing else will."""
        self.settings.store_dir.mkdir(parents=True, exist_ok=True)  # big replies are spilled there
        store.own(self.settings.store_dir, self.db.id, self.settings.db)
        worker.sweep_store(self.settings)
        self._start_local()  # forks: before any thread of ours exists
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._set_hosts(self._hosts_listed(initial=True))
            if not self.hosts and not self.local and self.opts.mode != "follow":
                raise UsageError("no hosts to work on (--hosts, --hosts-file)")
            while not self.stopping:
                self._tick()
                if self._finished():
                    break
        finally:
            self._shutdown()
            for s, h in old.items():
                signal.signal(s, h)
        return self.summary

    def _on_signal(self, signum, frame) -> None:
        self.summary.interrupted = True
        self.stopping = True

    def _tick(self) -> None:
        mono = time.monotonic()
        if mono - self._timers["reload"] >= RELOAD_SECONDS and self.opts.hosts_file:
            self._timers["reload"] = mono
            self._set_hosts(self._hosts_listed())
        self._drive_hosts()
        self._claim()
        self._pump_events(0.05)
        self._settle()
        self._pump_local()
        mono = time.monotonic()
        if mono - self._timers["beat"] >= self.settings.lease_seconds / 3:
            self._timers["beat"] = mono
            self._extend_leases()
        if mono - self._timers["ping"] >= PING_SECONDS:
            self._timers["ping"] = mono
            for h in self._up():
                h.link.send({"type": "ping"})
        if mono - self._timers["flush"] >= FLUSH_SECONDS:
            self._timers["flush"] = mono
            self._flush_counts()

    def _up(self) -> list[Host]:
        return [h for h in self.hosts.values() if h.state in ("up", "draining") and h.link is not None]

    def _finished(self) -> bool:
        if any(h.inflight for h in self.hosts.values()) or self.pending_outcomes or not self.events.empty():
            return False
        if self.local is not None and self.local.is_alive():
            return False
        if self.opts.mode == "follow":
            return False
        if self.opts.mode == "once":
            done = time.time() < self.dry_until  # asked, and nothing was due
        else:
            done = queue.pending(self.db)[0] == 0
        if done:
            return True
        usable = [h for h in self.hosts.values() if not h.draining]
        if not self.local and usable and all(h.state == "benched" and h.tried for h in usable):
            reasons = "; ".join(f"{h.name}: {h.reason}" for h in usable)
            raise HostUnreachable(f"no host can work, jobs are left in the queue ({reasons})")
        return False

    # --- hosts --------------------------------------------------------------------------

    def _hosts_listed(self, initial: bool = False) -> list[HostEntry]:
        """--hosts, and the hosts file as it is now (a bad file mid-run: the last good list)."""
        if self.hosts_file is None:
            return list(self.opts.hosts)
        problem = self.hosts_file.refresh()
        if problem and initial:
            raise UsageError(problem)
        if problem and problem != self._hosts_problem:
            self.on_report(("warning", f"{problem}; keeping the hosts it listed before"))
        self._hosts_problem = problem
        return self.opts.hosts + self.hosts_file.entries

    def _set_hosts(self, entries: list[HostEntry]) -> None:
        """New names join; names no longer listed drain (finish what they hold, claim no more)."""
        now = time.time()
        wanted = {}
        for e in entries:
            wanted.setdefault(e.name, e)
        for name, e in wanted.items():
            h = self.hosts.get(name)
            if h is None or h.state == "removed":
                self.hosts[name] = Host(e)
                hosts.record(self.db, name, now=now, state="new", reason=None, slots=e.spec.slots or self.opts.slots)
                self.on_report(("host", name, "joined", None))
            elif h.draining:
                h.draining = False  # listed again before it finished draining
                h.entry = e
                if h.state == "draining":
                    h.state = "up"
                hosts.record(self.db, name, now=now, state=h.state)
            else:
                h.entry = e  # a changed command or slot count applies from its next connection
        for name, h in self.hosts.items():
            if name not in wanted and not h.draining and h.state != "removed":
                h.draining = True
                self.on_report(("host", name, "draining", "removed from the hosts file"))
                if h.state == "up":
                    h.state = "draining"
                    hosts.record(self.db, name, now=now, state="draining", reason="removed from the hosts file")

    def _drive_hosts(self) -> None:
        now = time.time()
        for h in self.hosts.values():
            if h.state in ("new", "benched") and not self.stopping:
                if h.draining:
                    self._remove(h, now)
                elif now >= h.benched_until:
                    h.state, h.tried = "connecting", True
                    hosts.record(self.db, h.name, now=now, state="connecting")
                    threading.Thread(target=self._connect, args=(h, h.entry), daemon=True, name=f"connect-{h.name}").start()
            elif h.state in ("up", "draining") and h.link is not None:
                silent = h.link.silent_for()
                if silent > self.opts.host_timeout:
                    h.link.lose(f"no heartbeat for {silent:.0f} s (the host is hung, down or cut off)")
                elif h.draining and not h.inflight:
                    self._remove(h, now)

    def _connect(self, h: Host, entry: HostEntry) -> None:
        """In a thread: connect, start the agent, check it; report to the coordinator."""
        try:
            conn, proc, hello = link.start_agent(
                entry, ssh_config=self.opts.ssh_config, accept_new_host_keys=self.opts.accept_new_host_keys,
                connect_timeout=self.opts.connect_timeout, slots=entry.spec.slots or self.opts.slots,
                shared_root=str(self.opts.shared_root) if self.opts.shared_root else None,
            )
            agent = link.AgentLink(
                entry, conn, proc, hello, host_timeout=self.opts.host_timeout, transfers=self.opts.transfers,
                on_message=lambda lk, hd, blob: self._on_message(h, lk, hd, blob),
                on_lost=lambda lk, reason, misbehaved: self.events.put(("lost", h, lk, reason, misbehaved)),
                read_input=lambda lk, claim, header, path: self._read_input(h, lk, claim, header, path),
                reply_limit=lambda hd, size: self._reply_limit(h, hd, size), spill_dir=self.settings.store_dir,
            )
            self.events.put(("up", h, agent))
        except PreflightFailed as e:
            self.events.put(("down", h, f"preflight: {e}"))
        except (HostUnreachable, UsageError) as e:
            self.events.put(("down", h, str(e)))
        except Exception as e:  # a bug or an unexpected library error: bench, say what
            self.events.put(("down", h, f"{type(e).__name__}: {e}"))

    def _bench(self, h: Host, reason: str, *, lost: bool = False) -> None:
        """Take a host out of service for a while: its link closed, its jobs requeued."""
        now = time.time()
        if h.link is not None:
            h.link.lose(reason)  # no-op if it is already closed
            h.link = None
        self._requeue(h, f"host {h.name} lost: {reason}" if lost else f"host {h.name} benched: {reason}")
        h.failures += 1
        h.errors_in_row = 0
        h.benched_until = now + hosts.bench_delay(h.failures)
        h.reason = reason
        if h.draining:
            self._remove(h, now)
            return
        h.state = "benched"
        hosts.record(self.db, h.name, now=now, state="benched", reason=reason, benched_until=h.benched_until, failures=h.failures, add={"lost": 1} if lost else None)
        self.on_report(("host", h.name, "benched", reason))

    def _remove(self, h: Host, now: float) -> None:
        if h.link is not None:
            h.link.close()
            h.link = None
        h.state = "removed"
        hosts.record(self.db, h.name, now=now, state="removed", reason="removed from the hosts file")
        self.on_report(("host", h.name, "removed", None))

    def _requeue(self, h: Host, why: str) -> None:
        """A lost host's jobs go back to the queue now, not when their leases expire; the
        attempt counts (a photo that kills its host cannot loop forever)."""
        if not h.inflight:
            return
        outcomes = [queue.Outcome(c, error=why, kind="transient") for c in h.inflight.values()]
        h.inflight.clear()
        settled = queue.settle(self.db, outcomes, actor=self._actor(h), backoff=0.0, backoff_max=0.0, store_dir=self.settings.store_dir)
        self._report_settled(h, settled)
        self.dry_until = 0.0

    def _actor(self, h: Host) -> Actor:
        pid = h.link.hello.get("pid") if h.link else None
        return Actor(host=h.name, name=f"{h.name}:agent{pid}" if pid else h.name)

    # --- claiming and sending -----------------------------------------------------------

    def _claim(self) -> None:
        if self.stopping or time.time() < self.dry_until:
            return
        for h in sorted(self._up(), key=lambda h: len(h.inflight) / max(1, h.link.slots)):
            if h.draining:
                continue
            prefetch = self.opts.prefetch if self.opts.prefetch is not None else h.link.slots
            want = h.link.slots + prefetch - len(h.inflight)
            if want <= 0:
                continue
            claims = queue.claim(self.db, owner=self._actor(h).name, limit=want, lease_seconds=self.settings.lease_seconds,
                                 actor=self._actor(h), max_attempts=self.opts.max_attempts)
            for c in claims:
                h.inflight[c.job_id] = c
                if c.stage:
                    self._run_here(h, c)
                else:
                    self._send(h, c)
            if len(claims) < want:
                self.dry_until = time.time() + self.opts.poll
                return

    def _run_here(self, h: Host, c: queue.Claim) -> None:
        """A stripe or join of a split image (imgq enqueue --split) reads and writes
        intermediate stripes in this machine's store, so it runs here, in a pool of local
        processes (one per core, so stripes still run in parallel), counted in flight on
        the host that claimed it."""
        if self.here is None:
            # spawn, not fork: this process has threads (paramiko's, ours)
            self.here = concurrent.futures.ProcessPoolExecutor(os.cpu_count() or 1, mp_context=mp.get_context("spawn"))
        fut = self.here.submit(worker.process, c, self.settings)

        def done(f, c=c):
            try:
                outcome = f.result()
                outcome.claim = c  # a copy came back from the other process: ours is in flight
            except Exception as e:
                outcome = queue.Outcome(c, error=f"{Path(c.inbox) / c.path}: {type(e).__name__}: {e}", kind="transient")
            self.events.put(("outcome", h, None, outcome, False))

        fut.add_done_callback(done)

    def _send(self, h: Host, c: queue.Claim) -> None:
        """Queue a job for the host; its header carries the sha256 and size the journal
        recorded for the input, which the bytes sent (or, with --shared-root, the bytes
        the agent opens) must have."""
        row = self.db.one("SELECT sha256, size FROM files WHERE id = ?", (c.file_id,))
        header = {"type": "job", "job": c.job_id, "spec": c.spec, "spec_hash": c.spec_hash,
                  "max_pixels": self.settings.max_pixels, "quality": self.settings.jpeg_quality,
                  "sha256": row["sha256"], "size": row["size"]}
        rel = self._under_shared_root(c)
        if rel is not None:
            header["path"] = rel
            h.link.send_job(c, header, None)
        else:
            h.link.send_job(c, header, Path(c.inbox) / c.path)

    def _under_shared_root(self, c: queue.Claim) -> str | None:
        """The input's path relative to --shared-root, or None: then its bytes are sent.
        Only the inbox root is resolved (it may be a link to a share, as for
        ``Original``); the path below it is sent as recorded, and the agent opens it
        without following a symlink."""
        if self.opts.shared_root is None:
            return None
        root, inbox = os.path.realpath(self.opts.shared_root), os.path.realpath(c.inbox)
        if os.path.commonpath([inbox, root]) != root:
            return None
        rel = os.path.relpath(inbox, root)
        return c.path if rel == "." else f"{rel}/{c.path}"

    def _read_input(self, h: Host, lk: link.AgentLink, c: queue.Claim, header: dict, path: Path):
        """In a sender thread: the input's bytes, read by identity (no symlink followed,
        a regular file) and sent only if their sha256 and size are the journal's; else
        None, with the outcome a local worker would report (changed in the inbox, a
        symlink or FIFO swapped in: permanent, naming the file; an I/O error: transient)."""
        from imgq import original

        try:
            with original.open_original(c.inbox, c.path) as o:
                return o.read_verified(header["sha256"], header["size"])
        except ImgqError as e:
            text = str(e) if str(path) in str(e) else f"{path}: {e}"
            outcome = queue.Outcome(c, error=text, kind=classify(e))
        except OSError as e:
            outcome = queue.Outcome(c, error=f"{path}: {e.strerror or e}", kind="transient")
        self.events.put(("outcome", h, lk, outcome, False))
        return None

    # --- what comes back ----------------------------------------------------------------

    def _held(self, h: Host, header: dict) -> queue.Claim:
        """The claim a reply is about; BadReply unless it is a job sent to this host and
        not yet answered (a reply for any other job, or a second one, breaks the protocol)."""
        job = header.get("job")
        c = h.inflight.get(job) if type(job) is int else None
        if c is None or c.stage or h.answered.get(job) is c:
            raise arrival.BadReply(f"a {header['type']!r} reply for job {str(job)[:40]}, which was not sent to this host or was answered already")
        return c

    def _reply_limit(self, h: Host, header: dict, blob_size: int) -> int:
        """In the reader thread, before a reply's blob is read: how big it may be. A
        ``done`` is checked against the job's recipe now (BadReply), so a wrong reply
        costs no read; an ``error`` carries no blob."""
        c = self._held(h, header)
        if header["type"] != "done":
            return 0
        cap = arrival.reply_limit(c.spec, self.settings.max_pixels)
        if blob_size <= cap:  # (over it, the frame is refused as too big before anything else)
            arrival.check_reply(c, header, blob_size, max_pixels=self.settings.max_pixels)
        return cap

    def _on_message(self, h: Host, lk: link.AgentLink, header: dict, blob: protocol.Blob) -> None:
        """In the link's reader thread (BadReply: the link is lost and the host benched)."""
        if header["type"] not in ("done", "error"):
            blob.close()
            return  # a message type of a newer agent: ignored
        c = self._held(h, header)
        if len(h.answered) > 2 * len(h.inflight) + 64:  # forget replies to jobs settled since
            h.answered = {j: x for j, x in h.answered.items() if h.inflight.get(j) is x}
        h.answered[c.job_id] = c
        if header["type"] == "done":
            self.store_pool.submit(self._store, h, lk, c, header, blob)
            return
        message, kind, staged = header.get("message"), header.get("kind"), header.get("input")
        if not isinstance(message, str) or kind not in ("permanent", "transient") or not isinstance(staged, (str, type(None))):
            raise arrival.BadReply(f"job {c.job_id}: an error reply needs a message and a kind of permanent or transient")
        src = str(Path(c.inbox) / c.path)
        text = message[:4000] or "failed on the host"
        if staged and staged in text:
            text = text.replace(staged, src)
        elif src not in text:
            text = f"{src}: {text}"  # always name the file, once
        self.events.put(("outcome", h, lk, queue.Outcome(c, error=f"{text} (on {h.name})" if kind == "transient" else text, kind=kind), True))

    def _store(self, h: Host, lk: link.AgentLink, c: queue.Claim, header: dict, blob: protocol.Blob) -> None:
        hosts_fault = True
        try:
            artifacts = arrival.receive(c, header, blob, self.settings.store_dir, max_pixels=self.settings.max_pixels)
            outcome = queue.Outcome(c, artifacts=artifacts, result=header.get("result"))
        except (arrival.BadReply, arrival.ArtifactRejected) as e:
            # the host sent something it should not have: bench it, its jobs run elsewhere
            self.events.put(("bad", h, lk, f"bad reply: {e} ({Path(c.inbox) / c.path})"))
            return
        except OSError as e:  # our own store (full disk, I/O error): not the host's doing
            outcome = queue.Outcome(c, error=f"cannot write artifacts of {Path(c.inbox) / c.path} to the store: {e.strerror or e}", kind="transient")
            hosts_fault = False
        except Exception as e:  # a bug of ours: retried, and counted against no host
            outcome = queue.Outcome(c, error=f"{Path(c.inbox) / c.path}: internal error storing the reply from {h.name}: {type(e).__name__}: {e}", kind="transient")
            hosts_fault = False
        finally:
            blob.close()
        self.events.put(("outcome", h, lk, outcome, hosts_fault))

    def _pump_events(self, timeout: float) -> None:
        try:
            ev = self.events.get(timeout=timeout)
        except stdqueue.Empty:
            return
        while True:
            self._handle(ev)
            try:
                ev = self.events.get_nowait()
            except stdqueue.Empty:
                return

    def _handle(self, ev: tuple) -> None:
        kind, h = ev[0], ev[1]
        if kind == "up":
            agent = ev[2]
            if self.stopping or h.draining or h.state != "connecting":
                agent.close()
                if h.draining:
                    self._remove(h, time.time())
                return
            h.link, h.state, h.reason = agent, ("up"), None
            hello = agent.hello
            hosts.record(self.db, h.name, now=time.time(), state="up", reason=None, benched_until=None, slots=agent.slots,
                         version=hello.get("version"), cores=hello.get("cores"), free_disk=hello.get("free_disk"), seen_at=time.time())
            self.on_report(("host", h.name, "up", f"{agent.slots} slots"))
        elif kind == "down":
            if h.state == "connecting":
                self._bench(h, ev[2])
        elif kind == "lost":
            lk, reason, misbehaved = ev[2], ev[3], ev[4]
            self.bytes_out += lk.bytes_out
            self.bytes_in += lk.bytes_in
            if h.link is lk:
                self._bench(h, reason, lost=not misbehaved)
        elif kind == "bad":
            lk, reason = ev[2], ev[3]
            if h.link is lk:
                self._bench(h, reason)  # its link's bytes are counted by the "lost" that follows
        elif kind == "outcome":
            lk, outcome, from_agent = ev[2], ev[3], ev[4]
            if (lk is not None and lk is not h.link) or h.inflight.get(outcome.claim.job_id) is not outcome.claim:
                # from a link since lost, or for a job no longer held here: its jobs were
                # requeued (a late reply); what it staged in the store goes with it
                store.discard(self.settings.store_dir, outcome.staged())
                return
            self.pending_outcomes[(h.name, lk is None)].append((outcome, from_agent))

    def _settle(self) -> None:
        for (name, here), items in list(self.pending_outcomes.items()):
            h = self.hosts[name]
            outcomes = [o for o, _ in items]
            for o in outcomes:
                h.inflight.pop(o.claim.job_id, None)
            fenced = {o.claim.job_id for o in outcomes} & self.fenced
            self.fenced -= fenced
            actor = Actor(host=socket.gethostname(), name="fleet-coordinator") if here else self._actor(h)
            # fenced: an arrival for a job whose lease is gone never reaches a final name
            # (settle moves staged files only after the token check, else removes them)
            settled = queue.settle(self.db, outcomes, actor=actor, store_dir=self.settings.store_dir,
                                   backoff=self.settings.backoff_seconds, backoff_max=self.settings.backoff_max_seconds)
            self._report_settled(None if here else h, settled)
            if here:
                continue
            # a host on which jobs keep failing for reasons of its own is benched
            agent_errors = [o for o, from_agent in items if from_agent and o.error and o.kind == "transient" and o.claim.job_id not in fenced]
            if settled.done:
                h.errors_in_row = 0
                h.failures = 0
            h.errors_in_row += len(agent_errors)
            if agent_errors and h.errors_in_row >= hosts.FAILS_IN_A_ROW and h.state == "up":
                self._bench(h, f"{h.errors_in_row} jobs in a row failed on it; the last: {agent_errors[-1].error}")
        self.pending_outcomes.clear()

    def _report_settled(self, h: Host | None, settled: queue.Settled) -> None:
        s = self.summary
        s.done += len(settled.done)
        s.failed += settled.failed
        s.retrying += len(settled.retrying)
        s.lost += len(settled.lost)
        s.processed += settled.processed
        if h is not None:
            self.counts[h.name]["done"] += len(settled.done)
            self.counts[h.name]["failed"] += len(settled.failed)
        for j in settled.done:
            self.on_report(("done", j))
        for j, f, reason in settled.failed:
            self.on_report(("failed", j, f, reason))
        for j in settled.retrying:
            self.on_report(("retrying", j, None))
        for j in settled.lost:
            self.on_report(("lost", j))
        for f in settled.processed:
            self.on_report(("processed", f))

    def _extend_leases(self) -> None:
        held = [(j, c.token) for h in self.hosts.values() for j, c in h.inflight.items()]
        if not held:
            return
        lost = queue.heartbeat(self.db, held, lease_seconds=self.settings.lease_seconds)
        for h in self._up():
            for j in lost & set(h.inflight):
                if j not in self.fenced:
                    self.fenced.add(j)
                    h.link.send({"type": "cancel", "job": j})

    def _flush_counts(self) -> None:
        seen = {h.name: time.time() - h.link.silent_for() for h in self._up()}
        if self.counts or seen:
            hosts.add_counts(self.db, {k: dict(v) for k, v in self.counts.items()}, seen, now=time.time())
        self.counts.clear()

    # --- local workers beside the hosts (-j N) ------------------------------------------

    def _start_local(self) -> None:
        if not self.opts.local_processes:
            return
        ctx = mp.get_context("fork")
        self.local_reports = ctx.Queue()
        wopts = worker.WorkOptions(processes=self.opts.local_processes, mode=self.opts.mode, max_attempts=self.opts.max_attempts, poll=self.opts.poll)
        self.local = ctx.Process(target=_local_main, args=(self.settings, wopts, self.local_reports), name="imgq-local-workers")
        self.local.start()

    def _pump_local(self) -> None:
        if self.local is None:
            return
        while True:
            try:
                r = self.local_reports.get_nowait()
            except (stdqueue.Empty, OSError, ValueError):
                return
            kind = r[0]
            if kind == "done":
                self.summary.done += 1
            elif kind == "failed":
                self.summary.failed.append(r[1:])
            elif kind == "retrying":
                self.summary.retrying += 1
            elif kind == "lost":
                self.summary.lost += 1
            elif kind == "processed":
                self.summary.processed.append(r[1])
            if kind != "exit":
                self.on_report(r)

    # --- the end ------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Hand back what is still held, close every link, record how each host ended."""
        now = time.time()
        self.stopping = True
        held = []
        for h in self.hosts.values():
            held += list(h.inflight.values())
            h.inflight.clear()
            if h.link is not None:
                self.bytes_out += h.link.bytes_out
                self.bytes_in += h.link.bytes_in
                h.link.close()
                h.link = None
                hosts.record(self.db, h.name, now=now, state="stopped", reason=None)
            elif h.state == "connecting":
                # still trying: a host benched before stays benched, with its reason
                hosts.record(self.db, h.name, now=now, state="benched" if h.failures else "stopped", reason=h.reason)
        if held:
            queue.release(self.db, held, actor=Actor(host=hosts.coordinator_name(), name="fleet"))
        self._flush_counts()
        if self.local is not None:
            if self.local.is_alive() and self.summary.interrupted:
                os.kill(self.local.pid, signal.SIGTERM)
            while self.local.is_alive():
                self._pump_local()
                self.local.join(0.2)
            self._pump_local()
        self.store_pool.shutdown(wait=False, cancel_futures=True)
        if self.here is not None:
            self.here.shutdown(wait=True, cancel_futures=True)
        self.summary.bytes_out, self.summary.bytes_in = self.bytes_out, self.bytes_in
        self.summary.hosts = {h.name: {"state": h.state, "reason": h.reason} for h in self.hosts.values()}


def _local_main(settings: Settings, wopts: worker.WorkOptions, reports) -> None:
    code = 0
    try:
        worker.work(settings, wopts, on_report=reports.put)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        reports.close()
        reports.join_thread()
        os._exit(code)


def work(settings: Settings, opts: FleetOptions, db: DB, *, on_report: Callable[[tuple], None] = lambda r: None) -> FleetSummary:
    """Run the coordinator (see ``Fleet``) until its mode says stop."""
    return Fleet(settings, opts, db, on_report=on_report).run()
