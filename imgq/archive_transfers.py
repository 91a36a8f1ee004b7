"""Archive's copying threads: each destination's pool of transfers and the files in flight.

``_Transfers`` runs the copies of ``imgq.archive`` (``archive --transfers``) on a thread
pool per destination; the threads only check and put, and hand their jobs back to the
archive's own thread, which records them in the ledger. Moved out of ``imgq.archive``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import queue
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Sequence

from imgq.archive_copies import Item, copy_item
from imgq.destinations import Destination, DestinationUnavailable


class _ElsewhereOnMain(Exception):
    """A copy thread's source is gone: copying from another destination's copy reads the
    ledger, so it is done on the archive's own thread (``_finish``)."""


class _OnMain:
    def put_from_elsewhere(self, *args, **kwargs):
        raise _ElsewhereOnMain()


@dataclasses.dataclass
class _Job:
    """What one destination lacks of one file, copied on that destination's threads."""

    dest: Destination
    f: object
    items: Sequence[Item]
    target: object
    missing: Sequence[Item]
    paths: dict[str, str]
    done: list[tuple[Item, str]] = dataclasses.field(default_factory=list)  # (item, how), in order
    error: BaseException | None = None


class _Transfers:
    """Each destination's copying threads (up to ``n`` at once, a pool per destination, so
    destinations proceed independently), and the files in flight. The threads only
    check and put; ``finished`` hands their jobs, and then each file once it has no job
    left, back to the archive's thread, which records them."""

    WINDOW = 4  # files in flight per transfer slot before the archive waits for one

    def __init__(self, destinations: Sequence[Destination], n: int):
        self.n = max(1, n)
        self.pools: dict[str, ThreadPoolExecutor] = {}
        self.down: dict[str, str] = {}  # destination -> why, as its threads find it
        self.open: dict[str, list] = {}  # file id -> [f, items, jobs outstanding, begun]
        self.futures: list[tuple[Future, _Job]] = []
        self.results: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self.complete: collections.deque = collections.deque()

    def submit(self, dest: Destination, f, items, target, missing, paths) -> None:
        job = _Job(dest, f, items, target, missing, paths)
        self.open.setdefault(f["id"], [f, None, 0, False])[2] += 1
        pool = self.pools.get(dest.url)
        if pool is None:
            most = getattr(dest, "max_transfers", self.n)  # an ssh:// destination: sshd's MaxSessions
            pool = self.pools[dest.url] = ThreadPoolExecutor(max_workers=min(self.n, most), thread_name_prefix="imgq-copy")
        self.futures.append((pool.submit(self._run, job), job))

    def begun(self, f, wants) -> None:
        """Every job of ``f`` is submitted (``wants``: destination -> its items)."""
        entry = self.open.setdefault(f["id"], [f, wants, 0, False])
        entry[1], entry[3] = wants, True
        self._settle(f["id"])

    def _settle(self, file_id: str) -> None:
        entry = self.open[file_id]
        if entry[2] == 0 and entry[3]:
            del self.open[file_id]
            self.complete.append(("file", entry[0], entry[1]))

    def _run(self, job: _Job) -> None:
        inside = None  # what stopped the copies, if anything; their folders are synced all the same
        try:
            if job.dest.url in self.down:
                raise DestinationUnavailable(self.down[job.dest.url])
            # one look at every name of the job, and one folder sync for all of them (each
            # copy's file is synced before its rename), before the job is handed back to be
            # recorded
            found = job.dest.check([job.paths[i.role] for i in job.missing])
            with getattr(job.dest, "deferring_folder_syncs", contextlib.nullcontext)():
                try:
                    for item in job.missing:
                        if job.dest.url in self.down:
                            raise DestinationUnavailable(self.down[job.dest.url])
                        rel = job.paths[item.role]
                        job.done.append((item, copy_item(job.dest, job.f["id"], item, rel, _OnMain(), found=found[rel])))
                except BaseException as e:
                    inside = e
            if inside is not None:
                raise inside
        except BaseException as e:
            if e is not inside:
                job.done.clear()  # the folder sync failed: no copy of the job is known to stay
            job.error = e
            if isinstance(e, DestinationUnavailable):
                self.down.setdefault(job.dest.url, str(e))
        finally:
            self.results.put(job)

    def finished(self, *, wait: bool):
        """Jobs done (``("copy", job)``) and files with none left (``("file", f,
        wants)``); waits for jobs while too many files are in flight, or with ``wait``
        until none is."""
        while True:
            while self.complete:
                yield self.complete.popleft()
            if not any(e[2] for e in self.open.values()):
                return
            try:
                job = self.results.get(block=wait or len(self.open) > self.n * self.WINDOW)
            except queue.Empty:
                return
            yield ("copy", job)
            self.open[job.f["id"]][2] -= 1
            self._settle(job.f["id"])

    def cancel(self) -> None:
        """Jobs not begun are dropped (their names stay reserved for the next archive)."""
        for fut, job in self.futures:
            if fut.cancel():
                self.open[job.f["id"]][2] -= 1
                self.open[job.f["id"]][3] = False

    def close(self) -> None:
        for pool in self.pools.values():
            pool.shutdown(wait=True)
