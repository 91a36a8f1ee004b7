"""``imgq run --watch``: the view of ``imgq.watch`` for ``imgq run`` (not a command itself).

Each run the watcher starts is exactly one ``imgq run``: the same step locks (taken and
let go per run, so a cron ``imgq run`` or a manual ``imgq archive`` can still run in
between), the same record in ``runs``, the same lines on stdout and stderr. What only a
long-running process adds is here: the readiness line, systemd's notify protocol
(READY=1, STATUS=…, STOPPING=1), and the exit code of a stop.

Exit codes: 0 after SIGTERM (``systemctl stop``: a clean stop, what systemd expects of a
service), 130 after SIGINT (Ctrl-C, as every imgq command), 2 for a usage error found by a
run (say, a store that belongs to another database). A run that fails otherwise (a
database locked too long, a disk full) is named on stderr and tried again.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from imgq import run as run_step
from imgq import watch as watch_step
from imgq.cli import common
from imgq.config import Settings
from imgq.errors import Busy, Exit, ImgqError, UsageError

RESCAN = 300.0  # seconds between full scans unless --rescan says otherwise


def serve(
    inv: common.Invocation,
    opts: run_step.RunOptions,
    args: dict,
    *,
    steps: Sequence[str],
    rescan: float,
    notify: bool,
    on_step: Callable[[str, object], None],
    on_work: Callable[[tuple], None],
    on_progress: Callable[[str, int, int], None],
    summary: Callable[[dict, float], str],
    after: Callable[[], None] = lambda: None,
) -> None:
    """Watch ``opts.inboxes`` and run ``imgq run`` whenever photos arrive, until SIGINT or
    SIGTERM; then leave with the exit code above. ``after()`` is called after each run,
    inside its locks (the journal's snapshot)."""
    settings: Settings = inv.settings
    database = inv.database
    inboxes = ", ".join(str(p) for p in opts.inboxes)
    last: dict = {"text": "no run yet", "busy": False}

    def run_once(reason: str, stop: Callable[[], bool]) -> Sequence[str] | None:
        try:
            with contextlib.ExitStack() as stack:
                for step in steps:
                    stack.enter_context(common.step_lock(settings, step, False))
                with common.recorded_run(database, "run", {**args, "watch": reason}) as rec:
                    started = time.time()
                    report = run_step.run(database, settings, opts, on_step=on_step, on_work=on_work, on_progress=on_progress, stop=stop)
                    rec["counts"] = report.counts()
                    rec["counts"]["seconds"] = round(time.time() - started, 3)
                    rec["exit_code"] = report.exit_code
                after()
        except Busy as e:
            if not last["busy"]:  # once per stretch, not every few seconds
                common.note(f"{e}: trying again every {watch_step.RETRY:g} s")
            last["busy"] = True
            return None
        except UsageError:
            raise  # asked wrongly: running again cannot help; stop (exit 2)
        except (ImgqError, sqlite3.Error, OSError) as e:
            why = common.database_error(e) if isinstance(e, sqlite3.Error) else str(e)
            common.warn(f"run failed: {why}; trying again at the next change or full scan")
            return []
        last["busy"] = False
        common.summary(summary(rec["counts"], rec["counts"]["seconds"]))
        archived = len(report.archive.archived) if report.archive else 0
        last["text"] = f"last run {common.when(time.time())}: {archived} archived, exit {report.exit_code}"
        return report.scan.settling if report.scan else []

    watching = f"watching {inboxes} (settle {settings.settle:g} s, full scan every {rescan:g} s{'' if notify else ', notifications off'})"

    def on_state(state: str, detail: str) -> None:
        if state == "ready":
            common.note(f"{watching}: ready")
            watch_step.sd_notify(f"READY=1\nSTATUS={watching}")
        elif state == "degraded":
            common.warn(f"filesystem notifications unavailable ({detail}): relying on the full scan every {rescan:g} s")
        elif state == "running":
            watch_step.sd_notify(f"STATUS=running: {detail}")
        elif state == "idle":
            watch_step.sd_notify(f"STATUS={watching}; {last['text']}")
        elif state == "stopping":
            watch_step.sd_notify(f"STOPPING=1\nSTATUS=stopping ({detail}): finishing the run in progress")

    ignore = [settings.store_dir, *_database_files(Path(settings.db))]
    wopts = watch_step.WatchOptions(inboxes=list(opts.inboxes), settle=settings.settle, rescan=rescan, notify=notify, ignore=ignore)
    signum = watch_step.watch(wopts, run_once, on_state=on_state)
    name = signal.Signals(signum).name
    common.note(f"{name}: stopped; nothing left half-done")
    if signum == signal.SIGINT:
        common.exit_with(int(Exit.INTERRUPTED))


def _database_files(db: Path) -> list[Path]:
    """The database and what SQLite and imgq keep beside it: changes to them are imgq's own."""
    return [db, *(db.with_name(db.name + suffix) for suffix in ("-wal", "-shm", "-journal", ".locks"))]
