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

Here: the loop, its events, settling and stopping. The hosts and their states are the
``roster``'s; claiming, sending and receiving are ``dispatch``'s; outcomes are settled by
``imgq.work.settle``, the local workers' own settle, so a job settled here leaves behind
what it would have there.
"""

from __future__ import annotations

import dataclasses
import queue as stdqueue
import signal
import socket
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from imgq import store
from imgq.config import Settings
from imgq.errors import HostUnreachable, UsageError
from imgq.fleet import hosts
from imgq.fleet.dispatch import Arrived, Dispatch
from imgq.fleet.local import LocalWorkers
from imgq.fleet.options import FleetOptions, FleetSummary
from imgq.fleet.roster import Host, Roster
from imgq.ledger import hosts as host_ledger
from imgq.ledger import queue
from imgq.ledger.database import DB
from imgq.ledger.journal import Actor
from imgq.work import WorkOptions, reports, settle, sweep_store

RELOAD_SECONDS = 2.0  # how often the hosts file is re-read
PING_SECONDS = 2.0  # the agent exits when it hears nothing for its idle timeout
FLUSH_SECONDS = 2.0  # host counters and heartbeat times written to the hosts table
# Outcomes wait up to SETTLE_WAIT seconds for others to share their settle (one fsync round,
# one transaction), unless SETTLE_BATCH have arrived: with jobs of milliseconds a settle per
# reply or two cost the coordinator more than the jobs. The agents do not wait for it: a
# job's slot is refilled when its reply is read (``Dispatch.claim``).
SETTLE_WAIT = 0.01
SETTLE_BATCH = 32


class Fleet:
    """One run of the coordinator; ``run()`` returns a ``FleetSummary``."""

    def __init__(self, settings: Settings, opts: FleetOptions, db: DB, *, on_report: Callable[[tuple], None] = lambda r: None):
        self.settings, self.opts, self.db, self.on_report = settings, opts, db, on_report
        self.events: stdqueue.Queue = stdqueue.Queue()
        self.roster = Roster(db, opts, self.events, on_report=on_report, make_link=lambda h, entry: self.dispatch.connect(h, entry), requeue=self._requeue)
        self.dispatch = Dispatch(settings, opts, db, self.roster, self.events)
        self.summary = FleetSummary()
        self.stopping = False
        self.pending: dict[tuple[str, bool], list[Arrived]] = defaultdict(list)  # (host, ran here) -> outcomes to settle
        self.pending_since = 0.0  # when the oldest of them arrived (monotonic)
        self.pending_count = 0
        self.counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.fenced: set[int] = set()  # jobs whose lease we lost (another worker has them)
        self.bytes_out = self.bytes_in = 0
        self.local: LocalWorkers | None = None  # local workers beside the hosts (-j N)
        self.listener = None  # listen.Listener: connect-back agents (--listen, a launcher)
        self._waiting_said = 0.0
        self._timers = {"reload": 0.0, "beat": time.monotonic(), "ping": 0.0, "flush": 0.0}

    # --- the loop -----------------------------------------------------------------------

    def run(self) -> FleetSummary:
        """Work until the queue drains (mode drain), nothing is due (once), or a signal
        (follow); raise HostUnreachable if no host can work and nothing else will."""
        self.settings.store_dir.mkdir(parents=True, exist_ok=True)  # big replies are spilled there
        store.own(self.settings.store_dir, self.db.id, self.settings.db)
        sweep_store(self.settings)
        if self.opts.local_processes:  # forks: before any thread of ours exists
            self.local = LocalWorkers(self.settings, WorkOptions(processes=self.opts.local_processes, mode=self.opts.mode, max_attempts=self.opts.max_attempts, poll=self.opts.poll, run_id=self.db.run_id))
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.roster.set_hosts(self.roster.listed(initial=True))
            if self.opts.listen is not None or self.opts.launcher is not None:
                self._listen()
            elif not self.roster.hosts and not self.local and self.opts.mode != "follow":
                raise UsageError("no hosts to work on (--hosts, --hosts-file, --listen)")
            while not self.stopping:
                self._tick()
                if self._finished():
                    break
        finally:
            self._shutdown()
            for s, h in old.items():
                signal.signal(s, h)
        return self.summary

    def _listen(self) -> None:
        """Open the door for connect-back agents (after the local workers' fork: the
        listener has threads), write their credentials, start the launcher's agents."""
        from imgq.fleet import listen

        self.listener = listen.Listener(
            self.opts.listen or "", advertise=self.opts.advertise,
            on_agent=lambda arrival: self.events.put(("agent", None, arrival)),
            on_log=lambda line: self.events.put(("log", None, line)),
        )
        if self.opts.shared_root is not None:
            self.listener.agent_options += ["--shared-root", str(Path(self.opts.shared_root).absolute())]
        if self.opts.shared_store:
            self.listener.agent_options += ["--shared-store", str(self.settings.store_dir.absolute())]
        if self.opts.agent_file is not None:
            self.listener.write_agent_file(self.opts.agent_file)
        self.listener.start()
        self.on_report(("listening", self.listener.bound, self.listener.advertise, self.listener.fingerprint, str(self.opts.agent_file or "")))
        if self.opts.launcher is not None:
            self.opts.launcher.start(self.listener)

    def _on_signal(self, signum, frame) -> None:
        self.summary.interrupted = True
        self.stopping = True

    def _tick(self) -> None:
        mono = time.monotonic()
        if mono - self._timers["reload"] >= RELOAD_SECONDS and self.opts.hosts_file:
            self._timers["reload"] = mono
            self.roster.set_hosts(self.roster.listed())
        self.roster.drive(stopping=self.stopping, host_timeout=self.opts.host_timeout)
        self.dispatch.claim(stopping=self.stopping)
        self._pump_events(0.05 if not self.pending else min(0.05, max(0.0, self.pending_since + SETTLE_WAIT - time.monotonic())))
        # the replies just read freed their slots: refill the agents first, then settle
        # (storing and settling a reply takes fsyncs; the agents need not wait for them)
        self.dispatch.claim(stopping=self.stopping)
        if self.pending and (self.stopping or self.pending_count >= SETTLE_BATCH or time.monotonic() - self.pending_since >= SETTLE_WAIT):
            self._settle()
        if self.local is not None:
            self.local.pump(self.summary, self.on_report)
        if self.opts.launcher is not None:
            for r in self.opts.launcher.tick():
                self._launched(r)
                self.on_report(r)
        mono = time.monotonic()
        if mono - self._timers["beat"] >= self.settings.lease_seconds / 3:
            self._timers["beat"] = mono
            self._extend_leases()
        if mono - self._timers["ping"] >= PING_SECONDS:
            self._timers["ping"] = mono
            for h in self.roster.up():
                h.link.send({"type": "ping"})
        if mono - self._timers["flush"] >= FLUSH_SECONDS:
            self._timers["flush"] = mono
            self._flush_counts()

    def _finished(self) -> bool:
        hosts_ = self.roster.hosts.values()
        if any(h.inflight for h in hosts_) or self.pending or not self.events.empty():
            return False
        if self.local is not None and self.local.is_alive():
            return False
        if self.opts.mode == "follow":
            return False
        if self.opts.mode == "once":
            done = time.time() < self.dispatch.dry_until  # asked, and nothing was due
        else:
            done = queue.pending(self.db)[0] == 0
        if done:
            return True
        if self.listener is not None:
            self._say_waiting()
            return False  # agents may still connect: the run waits for them
        usable = [h for h in hosts_ if not h.draining and h.dialled]
        if not self.local and usable and all(h.state == "benched" and h.tried for h in usable):
            reasons = "; ".join(f"{h.name}: {h.reason}" for h in usable)
            raise HostUnreachable(f"no host can work, jobs are left in the queue ({reasons})")
        return False

    def _launched(self, r: tuple) -> None:
        """A launcher's word on an agent's job, ``("slurm", name, job id, state, why)``:
        until the agent joins under that name (then the roster keeps its row), the hosts
        table shows the job, pending and why, running, or ended and why; after, how its
        job ended is added to why the agent is benched (time limit, cancelled, ...)."""
        if r[0] != "slurm" or r[2] is None:
            return
        name, job_id, state, why = r[1], r[2], r[3], r[4]
        detail = f"slurm job {job_id} {state}" + (f": {why}" if why else "")
        if name in self.roster.hosts:  # it joined: its row says why it left, and now how its job ended
            if state == "ended":
                self.roster.job_ended(self.roster.hosts[name], detail)
            return
        if state == "ended":
            row = self.db.one("SELECT state FROM hosts WHERE name = ?", (name,))
            if row is not None and row["state"] == "new":  # a job that never joined
                host_ledger.move(self.db, name, "removed", now=time.time(), reason=detail)
        else:
            host_ledger.move(self.db, name, "new", now=time.time(), reason=detail)

    def _say_waiting(self) -> None:
        """Jobs wait and no agent works on them: say so on stderr (every 30 s)."""
        if self.roster.up() or self.local is not None:
            self._waiting_said = 0.0
            return
        now = time.monotonic()
        if now - self._waiting_said >= 30.0:
            self._waiting_said = now
            self.on_report(("warning", f"jobs are waiting and no agent is connected: waiting for agents to connect to {self.listener.advertise} (imgq agent --connect)"))

    # --- events -------------------------------------------------------------------------

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
            self.roster.came_up(h, ev[2], stopping=self.stopping)
        elif kind == "down":
            if h.state == "connecting":
                self.roster.bench(h, ev[2])
        elif kind == "lost":
            lk, reason, misbehaved = ev[2], ev[3], ev[4]
            self.bytes_out += lk.bytes_out
            self.bytes_in += lk.bytes_in
            if h.link is lk:
                self.roster.bench(h, reason, lost=not misbehaved)
        elif kind == "bad":
            lk, reason = ev[2], ev[3]
            if h.link is lk:
                self.roster.bench(h, reason)  # its link's bytes are counted by the "lost" that follows
        elif kind == "agent":
            arrival = ev[2]
            self.roster.joined(arrival, lambda host: self.dispatch.make_link(host, host.name, arrival.transport, arrival.hello), stopping=self.stopping)
        elif kind == "answered":  # a reply was read: the job's slot on the agent is free
            if h.link is ev[2] and ev[3] in h.inflight:
                h.freed.add(ev[3])
                now = time.monotonic()
                if h.last_reply:
                    gap = now - h.last_reply
                    h.reply_gap = gap if not h.reply_gap else 0.8 * h.reply_gap + 0.2 * gap
                h.last_reply = now
        elif kind == "log":
            self.on_report(("warning", ev[2]))
        elif kind == "outcome":
            lk, arrived = ev[2], ev[3]
            claim = arrived.outcome.claim
            if (lk is None or lk is h.link) and h.inflight.get(claim.job_id) is claim:
                if not self.pending:
                    self.pending_since = time.monotonic()
                self.pending[(h.name, arrived.here)].append(arrived)
                self.pending_count += 1
            else:  # a late reply (its link since lost, its job requeued): its attempt is over
                store.discard(self.settings.store_dir, arrived.outcome.staged())

    # --- settling -----------------------------------------------------------------------

    def _settle(self) -> None:
        """Everything that arrived since the last settle, from every host, in one settle:
        one fsync round and one transaction for the lot instead of one per host or reply
        (``_tick`` lets outcomes wait up to SETTLE_WAIT for company; the agents' slots
        were refilled when the replies were read). Each outcome's events still name the
        host it ran on (``Outcome.actor``)."""
        if not self.pending:
            return
        batch: list[tuple[Host, bool, Arrived]] = []
        for (name, here), items in self.pending.items():
            h = self.roster.hosts[name]
            for a in items:
                h.inflight.pop(a.outcome.claim.job_id, None)
                h.freed.discard(a.outcome.claim.job_id)
                batch.append((h, here, a))
        self.pending.clear()
        self.pending_count = 0
        here_actor = Actor(host=socket.gethostname(), name="fleet-coordinator")
        outcomes = [dataclasses.replace(a.outcome, actor=here_actor if here else h.actor()) for h, here, a in batch]
        fenced = {o.claim.job_id for o in outcomes} & self.fenced
        self.fenced -= fenced
        # fenced: an arrival for a job whose lease is gone never reaches a final name
        # (settle moves staged files only after the token check, else removes them)
        settled = settle(self.db, outcomes, self.settings, actor=here_actor)
        done, failed = set(settled.done), {j for j, _, _ in settled.failed}
        by_host: dict[str, list[queue.Outcome]] = defaultdict(list)
        for (h, here, a), o in zip(batch, outcomes):
            if not here:
                by_host[h.name].append(o)
        for name, mine in by_host.items():
            jobs = {o.claim.job_id for o in mine}
            self.counts[name]["done"] += len(jobs & done)
            self.counts[name]["failed"] += len(jobs & failed)
        for r in reports(settled, outcomes):
            self.summary.count(r)
            self.on_report(r)
        # a host on which jobs keep failing for reasons of its own is benched
        for h, here, a in batch:
            if here:
                continue
            o = a.outcome
            if o.claim.job_id in done:
                h.errors_in_row = 0
                h.failures = 0
            elif a.hosts_fault and o.error and o.kind == "transient" and o.claim.job_id not in fenced:
                h.errors_in_row += 1
                if h.errors_in_row >= hosts.FAILS_IN_A_ROW and h.state == "up":
                    self.roster.bench(h, f"{h.errors_in_row} jobs in a row failed on it; the last: {o.error}")

    def _requeue(self, h: Host, why: str) -> None:
        """A lost host's jobs go back to the queue now, not when their leases expire; the
        attempt counts (a photo that kills its host cannot loop forever)."""
        if not h.inflight:
            return
        if any(name == h.name for name, _ in self.pending):
            self._settle()  # what it sent back and was stored is settled, not redone
        outcomes = [queue.Outcome(c, error=why, kind="lost") for c in h.inflight.values()]
        self.dispatch.forget(h.inflight.values())
        h.inflight.clear()
        h.freed.clear()
        settled = settle(self.db, outcomes, self.settings, actor=h.actor(), backoff=0.0, backoff_max=0.0)
        self._report_settled(h, settled, outcomes)
        self.dispatch.dry_until = 0.0

    def _report_settled(self, h: Host | None, settled: queue.Settled, outcomes: list[queue.Outcome]) -> None:
        if h is not None:
            self.counts[h.name]["done"] += len(settled.done)
            self.counts[h.name]["failed"] += len(settled.failed)
        for r in reports(settled, outcomes):
            self.summary.count(r)
            self.on_report(r)

    def _extend_leases(self) -> None:
        held = [(j, c.token) for h in self.roster.hosts.values() for j, c in h.inflight.items()]
        if not held:
            return
        lost = queue.heartbeat(self.db, held, lease_seconds=self.settings.lease_seconds)
        for h in self.roster.up():
            for j in lost & set(h.inflight):
                if j not in self.fenced:
                    self.fenced.add(j)
                    h.link.send({"type": "cancel", "job": j})

    def _flush_counts(self) -> None:
        seen = {h.name: time.time() - h.link.silent_for() for h in self.roster.up()}
        if self.counts or seen:
            host_ledger.add_counts(self.db, {k: dict(v) for k, v in self.counts.items()}, seen, now=time.time())
        self.counts.clear()

    # --- the end ------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Hand back what is still held, close every link, record how each host ended."""
        now = time.time()
        self.stopping = True
        self._settle()  # outcomes still waiting for company (SETTLE_WAIT): stored, so kept
        if self.listener is not None:
            self.listener.close()  # no agent joins a run that is ending
            if self.opts.agent_file is not None:
                self.listener.remove_agent_file(self.opts.agent_file)
        held = []
        for h in self.roster.hosts.values():
            if h.link is not None:
                self.bytes_out += h.link.bytes_out
                self.bytes_in += h.link.bytes_in
            held += self.roster.stop(h, now)
        if held:
            queue.release(self.db, held, actor=Actor(host=host_ledger.coordinator_name(), name="fleet"))
        self._flush_counts()
        if self.opts.launcher is not None:
            self.opts.launcher.stop()
            for r in self.opts.launcher.tick():  # how the agents ended
                self._launched(r)
                self.on_report(r)
        if self.local is not None:
            self.local.finish(self.summary, self.on_report, interrupted=self.summary.interrupted)
        self.dispatch.close()
        self.summary.bytes_out, self.summary.bytes_in = self.bytes_out, self.bytes_in
        self.summary.hosts = {h.name: {"state": h.state, "reason": h.reason} for h in self.roster.hosts.values()}


def work(settings: Settings, opts: FleetOptions, db: DB, *, on_report: Callable[[tuple], None] = lambda r: None) -> FleetSummary:
    """Run the coordinator (see ``Fleet``) until its mode says stop."""
    return Fleet(settings, opts, db, on_report=on_report).run()
