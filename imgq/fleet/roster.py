"""The coordinator's hosts: which are listed (``--hosts``, a hosts file re-read while it
runs), which are connecting, up, benched or draining, and the connect thread that brings
one up (SSH, ``imgq agent``, its hello, the preflight verdict).

Every change of a host's state goes through ``Roster.move``: the coordinator's view
(``Host.state``) and the ``hosts`` table (``imgq.ledger.hosts``, checked transitions and
an event each) change together. Touched by the coordinator thread only, except
``_connect``, which runs in a thread of its own and reports through the event queue.
"""

from __future__ import annotations

import dataclasses
import queue as stdqueue
import threading
import time
from collections.abc import Callable

from imgq.errors import HostUnreachable, UsageError
from imgq.fleet import hosts, link
from imgq.fleet.hosts import HostEntry, PreflightFailed
from imgq.ledger import hosts as host_ledger
from imgq.ledger.database import DB
from imgq.ledger.journal import Actor


@dataclasses.dataclass
class Host:
    """The coordinator's view of one host (touched by the coordinator thread only)."""

    entry: HostEntry | None  # None: an agent that connected to --listen (never dialled by us)
    state: str = "new"  # new, connecting, up, benched, draining, removed, stopped
    link: link.AgentLink | None = None
    inflight: dict = dataclasses.field(default_factory=dict)  # job id -> Claim
    failures: int = 0  # connect/preflight/loss failures in a row
    benched_until: float = 0.0
    reason: str | None = None
    tried: bool = False  # a connection has been attempted at least once
    errors_in_row: int = 0  # transient job errors reported by its agent, none done between
    answered: dict = dataclasses.field(default_factory=dict)  # job id -> the Claim its agent replied to (reader thread only)
    # jobs in ``inflight`` whose reply has been read but not settled yet: their slot on
    # the agent is free, so they do not count against ``slots + prefetch`` when claiming
    freed: set = dataclasses.field(default_factory=set)
    reply_gap: float = 0.0  # seconds between its replies, averaged (0: none yet): sizes its prefetch
    last_reply: float = 0.0  # when its last reply was read (monotonic)
    draining: bool = False
    label: str | None = None  # a connect-back agent's name (its own, or its launcher's)
    job_end: str | None = None  # how its launcher's job ended ("slurm job 12 ended: hit its time limit")
    peer: str | None = None  # a connect-back agent's address

    @property
    def name(self) -> str:
        return self.label if self.entry is None else self.entry.name

    @property
    def dialled(self) -> bool:
        """We reach this host (SSH) and can try it again; a connect-back agent, once
        lost, is gone (its launcher starts another, which connects as a new one)."""
        return self.entry is not None

    def actor(self) -> Actor:
        """Who a job change made for this host is recorded as (its agent, once known)."""
        pid = self.link.hello.get("pid") if self.link else None
        return Actor(host=self.name, name=f"{self.name}:agent{pid}" if pid else self.name)


class Roster:
    """The hosts of one coordinator run and their states."""

    def __init__(self, db: DB, opts, events: stdqueue.Queue, *, on_report: Callable[[tuple], None],
                 make_link: Callable[[Host, HostEntry], link.AgentLink], requeue: Callable[[Host, str], None]):
        self.db, self.opts, self.events, self.on_report = db, opts, events, on_report
        self.make_link, self.requeue = make_link, requeue
        self.hosts: dict[str, Host] = {}
        self.file = hosts.HostsFile(opts.hosts_file, remote_imgq=opts.remote_imgq) if opts.hosts_file else None
        self._problem = None

    def move(self, h: Host, state: str, *, now: float | None = None, add: dict | None = None, **fields) -> None:
        """Put ``h`` in ``state`` here and in the hosts table (an event with the reason)."""
        h.state = state
        host_ledger.move(self.db, h.name, state, now=time.time() if now is None else now, add=add, **fields)

    def busy(self, h: Host) -> int:
        """Jobs its agent holds: in flight and not answered yet."""
        return len(h.inflight) - len(h.freed.intersection(h.inflight))

    def up(self) -> list[Host]:
        """Hosts with a live link (up, or draining what they hold)."""
        return [h for h in self.hosts.values() if h.state in ("up", "draining") and h.link is not None]

    # --- who is listed -----------------------------------------------------------------

    def listed(self, initial: bool = False) -> list[HostEntry]:
        """--hosts, and the hosts file as it is now (a bad file mid-run: the last good list)."""
        if self.file is None:
            return list(self.opts.hosts)
        problem = self.file.refresh()
        if problem and initial:
            raise UsageError(problem)
        if problem and problem != self._problem:
            self.on_report(("warning", f"{problem}; keeping the hosts it listed before"))
        self._problem = problem
        return self.opts.hosts + self.file.entries

    def set_hosts(self, entries: list[HostEntry]) -> None:
        """New names join; names no longer listed drain (finish what they hold, claim no more)."""
        now = time.time()
        wanted = {}
        for e in entries:
            wanted.setdefault(e.name, e)
        for name, e in wanted.items():
            h = self.hosts.get(name)
            if h is None or h.state == "removed":
                h = self.hosts[name] = Host(e)
                self.move(h, "new", now=now, reason=None, slots=e.spec.slots or self.opts.slots)
                self.on_report(("host", name, "joined", None))
            elif h.draining:
                h.draining = False  # listed again before it finished draining
                h.entry = e
                if h.state == "draining":
                    self.move(h, "up", now=now, reason=None)
            else:
                h.entry = e  # a changed command or slot count applies from its next connection
        for name, h in self.hosts.items():
            if name not in wanted and h.dialled and not h.draining and h.state != "removed":
                h.draining = True
                self.on_report(("host", name, "draining", "removed from the hosts file"))
                if h.state == "up":
                    self.move(h, "draining", now=now, reason="removed from the hosts file")

    # --- bringing hosts up, taking them out --------------------------------------------

    def drive(self, *, stopping: bool, host_timeout: float) -> None:
        """Connect hosts due a try; lose silent ones; remove drained ones."""
        now = time.time()
        for h in self.hosts.values():
            if h.state in ("new", "benched") and not stopping and h.dialled:
                if h.draining:
                    self.remove(h, now)
                elif now >= h.benched_until:
                    h.tried = True
                    self.move(h, "connecting", now=now)
                    threading.Thread(target=self._connect, args=(h, h.entry), daemon=True, name=f"connect-{h.name}").start()
            elif h.state in ("up", "draining") and h.link is not None:
                silent = h.link.silent_for()
                if silent > host_timeout:
                    h.link.lose(f"no heartbeat for {silent:.0f} s (the host is hung, down or cut off)")
                elif h.draining and not h.inflight:
                    self.remove(h, now)

    def _connect(self, h: Host, entry: HostEntry) -> None:
        """In a thread: connect, start the agent, check it; report to the coordinator."""
        try:
            self.events.put(("up", h, self.make_link(h, entry)))
        except PreflightFailed as e:
            self.events.put(("down", h, f"preflight: {e}"))
        except (HostUnreachable, UsageError) as e:
            self.events.put(("down", h, str(e)))
        except Exception as e:  # a bug or an unexpected library error: bench, say what
            self.events.put(("down", h, f"{type(e).__name__}: {e}"))

    def came_up(self, h: Host, agent: link.AgentLink, *, stopping: bool) -> None:
        """A connect thread's link: the host is up, unless it is no longer wanted."""
        if stopping or h.draining or h.state != "connecting":
            agent.close()
            if h.draining:
                self.remove(h, time.time())
            return
        h.link, h.reason = agent, None
        hello, now = agent.hello, time.time()
        self.move(h, "up", now=now, reason=None if h.dialled else f"connected from {h.peer}", benched_until=None, slots=agent.slots, version=hello.get("version"),
                  cores=hello.get("cores"), free_disk=hello.get("free_disk"), seen_at=now)
        self.on_report(("host", h.name, "up", f"{agent.slots} slots" + ("" if h.dialled else f", from {h.peer}") + (", writes into the shared store" if agent.shares_store else "")))
        if getattr(self.opts, "shared_store", False) and not agent.shares_store:
            self.on_report(("warning", f"host {h.name} does not write into this store ({_why_not_shared(hello)}): its artifacts come over the connection"))

    def unique_name(self, name: str) -> str:
        """``name``, or ``name~2``, ``name~3``…: not the name of a host of this run that
        is listed or still has a link (a connect-back agent must not take over a row)."""
        taken = lambda n: n in self.hosts and (self.hosts[n].dialled or self.hosts[n].link is not None)  # noqa: E731
        if not taken(name):
            return name
        i = 2
        while taken(f"{name}~{i}"):
            i += 1
        return f"{name}~{i}"

    def joined(self, arrival, make_link: Callable[[Host], link.AgentLink], *, stopping: bool) -> Host | None:
        """A connect-back agent that proved itself and said hello (``listen.Arrival``):
        a host of this run, up, or benched with why if its hello shows it unfit (it is
        not tried again: its launcher may start a fit one). None if the run is ending."""
        if stopping:
            arrival.transport.close()
            return None
        now = time.time()
        h = Host(None, label=self.unique_name(arrival.name), peer=arrival.peer, tried=True)
        self.hosts[h.name] = h
        self.move(h, "new", now=now, reason=f"connected from {arrival.peer}", slots=arrival.hello.get("slots"))
        self.move(h, "connecting", now=now, reason=f"connected from {arrival.peer}")
        self.on_report(("host", h.name, "joined", arrival.peer))
        if arrival.problems:
            arrival.transport.close()
            h.reason = f"preflight: {'; '.join(arrival.problems)}"
            self.move(h, "benched", now=now, reason=h.reason, failures=1)
            self.on_report(("host", h.name, "benched", h.reason))
            return h
        h.state = "connecting"
        self.came_up(h, make_link(h), stopping=stopping)
        return h

    def bench(self, h: Host, reason: str, *, lost: bool = False) -> None:
        """Take a host out of service for a while: its link closed, its jobs requeued."""
        now = time.time()
        if h.link is not None:
            h.link.lose(reason)  # no-op if it is already closed
            h.link = None
        self.requeue(h, f"host {h.name} lost: {reason}" if lost else f"host {h.name} benched: {reason}")
        h.failures += 1
        h.errors_in_row = 0
        h.benched_until = now + hosts.bench_delay(h.failures)
        if h.job_end and h.job_end not in reason:  # its job's end, told before the link's
            reason = f"{reason}; {h.job_end}"
        h.reason = reason
        if h.draining:
            self.remove(h, now)
            return
        self.move(h, "benched", now=now, reason=reason, benched_until=h.benched_until, failures=h.failures, add={"lost": 1} if lost else None)
        self.on_report(("host", h.name, "benched", reason))

    def job_ended(self, h: Host, detail: str) -> None:
        """How the launcher's job of a connect-back agent ended (``slurm job 12 ended:
        hit its time limit``): added to why it is benched (its connection usually ends
        first: the loss is noticed at once, how the job ended a moment later), or kept
        for when it is."""
        h.job_end = detail
        if h.state == "benched" and detail not in (h.reason or ""):
            h.reason = f"{h.reason}; {detail}" if h.reason else detail
            self.move(h, "benched", reason=h.reason)

    def remove(self, h: Host, now: float) -> None:
        if h.link is not None:
            h.link.close()
            h.link = None
        self.move(h, "removed", now=now, reason="removed from the hosts file")
        self.on_report(("host", h.name, "removed", None))

    def stop(self, h: Host, now: float) -> list:
        """The coordinator ends: close the host's link; returns (and forgets) what it held."""
        held = list(h.inflight.values())
        h.inflight.clear()
        h.freed.clear()
        if h.link is not None:
            h.link.close()
            h.link = None
            self.move(h, "stopped", now=now, reason=None if h.dialled else f"connected from {h.peer}")
        elif h.state == "connecting":
            # still trying: a host benched before stays benched, with its reason
            self.move(h, "benched" if h.failures else "stopped", now=now, reason=h.reason)
        return held


def _why_not_shared(hello: dict) -> str:
    """Why an agent's hello shows it does not see this run's store (``--shared-store``)."""
    if not hello.get("shared_store"):
        return "its agent was not started with --shared-store"
    if not hello.get("store_id"):
        return f"{hello['shared_store']} there is not an imgq store"
    return f"{hello['shared_store']} there is another database's store"
