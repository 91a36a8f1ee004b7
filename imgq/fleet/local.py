"""Local worker processes beside the hosts (``imgq work -j N --hosts ...``): the local
workers of ``imgq.work`` in one forked child, whose reports the coordinator relays."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as stdqueue
import signal
from collections.abc import Callable

from imgq import work
from imgq.config import Settings


class LocalWorkers:
    """``processes`` local workers, forked before any thread of the coordinator exists."""

    def __init__(self, settings: Settings, opts: work.WorkOptions):
        ctx = mp.get_context("fork")
        self.reports = ctx.Queue()
        self.process = ctx.Process(target=_local_main, args=(settings, opts, self.reports), name="imgq-local-workers")
        self.process.start()

    def is_alive(self) -> bool:
        return self.process.is_alive()

    def pump(self, summary: work.WorkSummary, on_report: Callable[[tuple], None]) -> None:
        """Count and pass on every report that has arrived."""
        while True:
            try:
                r = self.reports.get_nowait()
            except (stdqueue.Empty, OSError, ValueError):
                return
            if r[0] != "exit":
                summary.count(r)
                on_report(r)

    def finish(self, summary: work.WorkSummary, on_report: Callable[[tuple], None], *, interrupted: bool) -> None:
        """Wait for the workers (told to stop if the run was interrupted), relaying reports."""
        if self.process.is_alive() and interrupted:
            os.kill(self.process.pid, signal.SIGTERM)
        while self.process.is_alive():
            self.pump(summary, on_report)
            self.process.join(0.2)
        self.pump(summary, on_report)


def _local_main(settings: Settings, wopts: work.WorkOptions, reports) -> None:
    code = 0
    try:
        work.work(settings, wopts, on_report=reports.put)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        reports.close()
        reports.join_thread()
        os._exit(code)
