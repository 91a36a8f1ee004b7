"""Watching inboxes: run the pipeline when photos arrive (``imgq run --watch``).

The watcher only decides *when* to run; each run is the caller's ``run_once``, the same
full ``imgq run`` that cron would start (same step locks, same journal, a full scan of
every inbox). What tells it to run:

- filesystem notifications (watchdog: inotify on Linux) for files created, written,
  closed or moved in; each such file is due once it has been unchanged for ``settle``
  seconds (the rule scan applies), so the run comes at mtime + settle, not at the event;
- the files a run's scan left because they were still being written (``settling``): the
  watcher comes back for each at its mtime + settle even if no further event arrives;
- a full rescan every ``rescan`` seconds, the safety net for lost notifications, network
  filesystems that give none (NFS, SMB written from other machines), an inbox mounted
  after the start, and anything else the kernel did not say;
- a retry a few seconds after a run that could not start (another run held the locks).

Events are coalesced: one run takes every file that is due by then, and events that
arrive while a run is busy are looked at when it ends, so a burst of 500 files is one or
a few runs. SIGINT and SIGTERM only set a flag (through the signal module's wakeup fd,
which also wakes the loop): the run in progress is asked to stop between its steps, its
workers finish the job in hand, and ``watch`` returns the signal's number.

Nothing here prints: ``on_state`` tells the caller what the watcher is doing.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import select
import signal
import stat
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from imgq.scan import OWN_OUTPUT, is_temporary

MARGIN = 0.1  # seconds past mtime + settle, so the scan's own clock sees the file as settled
COALESCE = 0.3  # seconds a due file waits for others due at about the same time
RETRY = 5.0  # seconds before trying again a run that could not start


@dataclasses.dataclass
class WatchOptions:
    inboxes: Sequence[Path]
    settle: float = 2.0
    rescan: float = 300.0
    notify: bool = True  # False: no filesystem notifications, the rescan alone
    ignore: Sequence[Path] = ()  # folders and files whose changes are imgq's own (the store, the database)
    coalesce: float = COALESCE
    retry: float = RETRY


# run_once(reason, stop) -> the paths its scan left as still settling, or None when it
# could not run now (try again after ``retry`` seconds)
RunOnce = Callable[[str, Callable[[], bool]], "Sequence[str] | None"]
OnState = Callable[[str, str], None]

_RELEVANT = {"created", "modified", "moved", "closed"}  # not opened/closed_no_write: imgq's own reads
_watching = False  # set while watch() runs: a forked worker must not write to our wakeup fd


def _after_fork_in_child() -> None:
    if _watching:
        try:
            signal.set_wakeup_fd(-1)  # the worker's own signals are its own business
        except (ValueError, OSError):
            pass


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Events:
    """The watchdog side: an observer whose handler queues paths and wakes the loop."""

    def __init__(self, wake_fd: int):
        self.paths: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.wake_fd = wake_fd
        self.observer = None
        self.watched: dict[str, tuple[int, int]] = {}  # inbox -> (dev, ino) it was watched as
        self._watches: dict[str, object] = {}

    def dispatch(self, event) -> None:  # called in the observer's thread
        if event.event_type not in _RELEVANT:
            return
        if event.is_directory and event.event_type not in ("created", "moved"):
            # a folder is "modified" whenever a file in it comes or goes (collect's own
            # deletions too): the file has its own event; only a folder created or moved in
            # can bring files that had none
            return
        path = (getattr(event, "dest_path", "") or event.src_path) if event.event_type == "moved" else event.src_path
        self.paths.put(os.fsdecode(path))
        try:
            os.write(self.wake_fd, b"e")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the loop is awake already

    def start(self, inboxes: Sequence[Path]) -> list[str]:
        """Watch every inbox; returns what could not be watched, with why."""
        from watchdog.observers import Observer

        self.observer = Observer()
        self.observer.daemon = True
        # started empty, then each inbox added: a running observer sets up each watch at
        # once, so an inbox that cannot be watched (the kernel's inotify limits) fails
        # alone, here, and is tried again at every rescan; the others are watched
        self.observer.start()
        return self.arm(inboxes)

    def arm(self, inboxes: Sequence[Path]) -> list[str]:
        """(Re-)watch each inbox that is not watched as the folder it now is: an inbox
        mounted or replaced since it was watched is watched again."""
        problems = []
        for inbox in (os.path.abspath(p) for p in inboxes):
            try:
                st = os.stat(inbox)
            except OSError as e:
                problems.append(f"{inbox}: {e.strerror}")
                continue
            ident = (st.st_dev, st.st_ino)
            if self.watched.get(inbox) == ident:
                continue
            old = self._watches.pop(inbox, None)
            if old is not None:
                try:
                    self.observer.unschedule(old)
                except (KeyError, OSError):
                    pass
            try:
                self._watches[inbox] = self.observer.schedule(self, inbox, recursive=True)
                self.watched[inbox] = ident
            except OSError as e:  # ENOSPC: fs.inotify.max_user_watches reached; EMFILE: max_user_instances
                problems.append(f"{inbox}: {e.strerror or e}")
        return problems

    def stop(self) -> None:
        if self.observer is not None and self.observer.is_alive():
            self.observer.stop()
            self.observer.join(timeout=5)


class Watcher:
    """The loop of ``watch``: what is due when, and the run that takes it."""

    def __init__(self, opts: WatchOptions, run_once: RunOnce, on_state: OnState, *, clock: Callable[[], float] = time.monotonic):
        self.opts = opts
        self.run_once = run_once
        self.on_state = on_state
        self.clock = clock
        self.due: dict[str, tuple[float, tuple]] = {}  # path -> (when, (ino, size, mtime_ns))
        self.taken: dict[str, tuple] = {}  # path -> the (ino, size, mtime_ns) a run was started for
        self.unsettled: dict[str, int] = {}  # path -> how many runs in a row found it still settling
        self.wake_at: float | None = None  # a run without a path: the first, a retry, a settling file we cannot stat
        self.wake_reason = "start"
        self.next_rescan: float | None = None
        self.signum = 0
        self.runs = 0
        roots = [os.path.abspath(p) for p in opts.inboxes]
        self.roots = sorted(roots, key=len, reverse=True)
        self.ignore = [os.path.abspath(p) for p in opts.ignore]

    # -- what is due
    def _ours(self, path: str) -> bool:
        """A change imgq makes itself, or one scan would not take: no reason to run."""
        for ig in self.ignore:
            if path == ig or path.startswith(ig.rstrip("/") + "/"):
                return True
        for root in self.roots:
            if path == root or path.startswith(root.rstrip("/") + "/"):
                parts = Path(os.path.relpath(path, root)).parts
                if path == root or not parts:
                    return True  # the inbox itself: its files speak for themselves
                return any(is_temporary(p) for p in parts) or bool(OWN_OUTPUT.search(parts[-1]))
        return True  # outside every inbox

    def note(self, path: str, not_before: float = 0.0) -> None:
        """A file (or a folder: every file below it) changed: due at its mtime + settle
        (and not before ``not_before``, on the watcher's clock)."""
        path = os.path.abspath(path)
        if self._ours(path):
            return
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            return  # gone again (collect, a sync client's rename): nothing to take
        if stat.S_ISDIR(st.st_mode):
            for folder, dirs, files in os.walk(path):  # a folder moved in: its files gave no events of their own
                dirs[:] = [d for d in dirs if not is_temporary(d)]
                for name in files:
                    self.note(os.path.join(folder, name))
            return
        if not stat.S_ISREG(st.st_mode):
            return
        sig = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self.taken.get(path) == sig:
            return  # a run was already started for exactly this file (an attribute change, our own read)
        wait = min(max(0.0, st.st_mtime + self.opts.settle - time.time()) + MARGIN, self.opts.rescan)
        self.due[path] = (max(self.clock() + wait, not_before), sig)

    def forget(self, path: str) -> None:
        self.taken.pop(path, None)

    def next_time(self) -> float | None:
        times = []
        if self.due:
            times.append(min(t for t, _ in self.due.values()) + self.opts.coalesce)
        if self.wake_at is not None:
            times.append(self.wake_at)
        if self.next_rescan is not None:
            times.append(self.next_rescan)
        return min(times) if times else None

    def reason(self, now: float) -> str | None:
        if self.due and min(t for t, _ in self.due.values()) + self.opts.coalesce <= now:
            return "change"
        if self.wake_at is not None and self.wake_at <= now:
            return self.wake_reason
        if self.next_rescan is not None and self.next_rescan <= now:
            return "rescan"
        return None

    # -- one run
    def run(self, reason: str, stop: Callable[[], bool]) -> None:
        now = self.clock()
        ripe = [p for p, (t, _) in self.due.items() if t <= now]
        if len(self.taken) > 100_000:
            self.taken.clear()  # a memory, not a duty: at worst one run finds nothing new
        for p in ripe:
            self.taken[p] = self.due.pop(p)[1]
        self.wake_at = None
        what = f"{len(ripe)} changed file{'s' if len(ripe) != 1 else ''}" if ripe else reason
        self.on_state("running", what)
        settling = self.run_once(reason, stop)
        self.runs += 1
        self.wake_reason = "retry"
        if settling is None:
            self.wake_at = self.clock() + self.opts.retry
        else:
            unsettled = {}
            for shown in settling:
                # a file found still changing again and again (a log, a stuck upload) is
                # come back for after 1, 2, 4… settle times, not every settle time
                path = os.path.abspath(shown)
                unsettled[path] = n = self.unsettled.get(path, 0) + 1
                self.forget(path)
                before = len(self.due)
                self.note(path, not_before=self.clock() + min(self.opts.settle * 2 ** min(n - 1, 16), self.opts.rescan))
                if len(self.due) == before and path not in self.due:
                    # a name shown escaped (not UTF-8) cannot be stat'ed back: come back anyway
                    soon = self.clock() + self.opts.settle + MARGIN
                    self.wake_at = soon if self.wake_at is None else min(self.wake_at, soon)
            self.unsettled = unsettled
        self.next_rescan = self.clock() + self.opts.rescan
        self.on_state("idle", f"{self.runs} run{'s' if self.runs != 1 else ''}")


def sd_notify(message: str, socket_path: str | None = None) -> bool:
    """Send ``message`` (``READY=1``, ``STATUS=…``, ``STOPPING=1``) to systemd's notify
    socket, ``$NOTIFY_SOCKET`` unless given: a unix datagram socket, in the abstract
    namespace when the name starts with '@'. False when there is none or it fails (a
    service not run by systemd; nothing to tell)."""
    import socket

    addr = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET")
    if not addr or addr[0] not in "/@":
        return False  # unset, or a kind of socket (vsock:) this does not speak
    if addr[0] == "@":
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(message.encode(), addr)
        return True
    except OSError:
        return False


def watch(opts: WatchOptions, run_once: RunOnce, *, on_state: OnState = lambda state, detail: None, clock: Callable[[], float] = time.monotonic) -> int:
    """Run ``run_once`` now, then whenever files in ``opts.inboxes`` change (once they
    have settled), after every file a run left still settling, and every ``opts.rescan``
    seconds, until SIGINT or SIGTERM. Returns the number of the signal that stopped it.

    ``on_state(state, detail)`` is told: ``ready`` (watching; before the first run),
    ``degraded`` (notifications unavailable: the rescan alone), ``running``, ``idle``,
    ``stopping``."""
    global _watching
    sig_r, sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    watcher = Watcher(opts, run_once, on_state, clock=clock)
    events = _Events(wake_w)

    def on_signal(signum, frame):
        pass  # the byte the wakeup fd carries is the message; see stopped()

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    old_fd = signal.set_wakeup_fd(sig_w, warn_on_full_buffer=False)
    _watching = True

    def stopped() -> bool:
        """Whether SIGINT or SIGTERM came (read from the wakeup fd; also while ``imgq
        work`` had its own handlers in place during a run)."""
        try:
            data = os.read(sig_r, 64)
        except BlockingIOError:
            data = b""
        for b in data:
            if b in (signal.SIGINT, signal.SIGTERM) and not watcher.signum:
                watcher.signum = b
                on_state("stopping", signal.Signals(b).name)
        return bool(watcher.signum)

    try:
        problems: list[str] = []
        if opts.notify:
            problems = events.start(opts.inboxes)
            if problems:
                on_state("degraded", "; ".join(problems))
        on_state("ready", "")
        watcher.wake_at = clock()  # the first run: whatever came while no watcher ran
        while not stopped():
            now = clock()
            reason = watcher.reason(now)
            if reason is not None:
                if reason == "rescan" and opts.notify:
                    again = events.arm(opts.inboxes)
                    if again != problems and again:
                        on_state("degraded", "; ".join(again))
                    problems = again
                watcher.run(reason, stopped)
                continue
            nxt = watcher.next_time()
            timeout = None if nxt is None else max(0.0, nxt - now)
            try:
                select.select([sig_r, wake_r], [], [], timeout)
            except InterruptedError:
                pass
            try:
                while os.read(wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
            while True:
                try:
                    watcher.note(events.paths.get_nowait())
                except queue.Empty:
                    break
        return watcher.signum
    finally:
        _watching = False
        events.stop()
        signal.set_wakeup_fd(old_fd)
        for s, h in old_handlers.items():
            signal.signal(s, h)
        for fd in (sig_r, sig_w, wake_r, wake_w):
            os.close(fd)
