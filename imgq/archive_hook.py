"""on_archived: tell a site's catalogue about each verified copy of an original.

``on_archived = ["/usr/local/bin/catalogue", "--add"]`` in imgq.toml is an argv list,
never a shell string: archive runs it with three arguments appended, the file id, the
destination (its url as given to ``--to``) and the original's path at that destination
(relative to its root, as in ``copies.path``). It runs once per file and destination,
after the copy of the original there is verified and recorded (a copy found already in
place counts: the file is then at that destination for the first time in imgq's
records). Its stdin is empty; its stdout is discarded, the end of its stderr kept with a
failure. A failure (exit status other than 0, killed, over the timeout, or the program
missing) is recorded in ``archive_hooks`` and run again by a later archive after a
backoff; the copy stands whatever the hook does, and collect never waits for it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
from collections.abc import Callable, Sequence

from imgq.backoff import delay as backoff_delay
from imgq.ledger import hooks
from imgq.ledger.database import DB
from imgq.ledger.journal import Actor


@dataclasses.dataclass
class HookReport:
    ran: int = 0  # runs that exited 0
    failed: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)  # (file id, destination, why)
    waiting: int = 0  # still pending after this archive: failed, in backoff
    tried: set = dataclasses.field(default_factory=set)  # (file id, destination) run by this archive: once each
    held: int = 0  # runs not tried after a failure in this archive (the catalogue is likely down): the next archive's


def command_for(argv: Sequence[str], file_id: str, destination: str, path: str) -> list[str]:
    """The argv run for one copy: the configured list and the three arguments."""
    return [*argv, file_id, destination, path]


def run_due(
    db: DB,
    *,
    clock: Callable[[], float],
    timeout: float,
    backoff: float,
    backoff_max: float,
    rng: random.Random | None = None,
    actor: Actor = Actor(),
    file_id: str | None = None,
    ignore_backoff: bool = False,
    report: HookReport | None = None,
) -> HookReport:
    """Run each due hook (only ``file_id``'s if given) and record how it went.

    After one failure in an archive the rest wait for the next archive (still pending,
    no attempt counted): a catalogue that is down or hangs costs one run, at most one
    timeout, per archive rather than one per file, so archive (and the collect after it
    in ``imgq run``) is not held up by it."""
    rng = rng or random.Random()
    report = report or HookReport()
    for hook in hooks.due(db, now=clock(), file_id=file_id, ignore_backoff=ignore_backoff):
        if (hook["file_id"], hook["destination"]) in report.tried:
            continue
        if report.failed:
            report.held += 1
            continue
        report.tried.add((hook["file_id"], hook["destination"]))
        why = _run(json.loads(hook["command"]), timeout)
        if why is None:
            hooks.succeeded(db, hook, now=clock(), actor=actor)
            report.ran += 1
        else:
            wait = backoff_delay(hook["attempts"] + 1, backoff, backoff_max, rng)
            hooks.failed(db, hook, why, not_before=clock() + wait, now=clock(), actor=actor)
            report.failed.append((hook["file_id"], hook["destination"], why))
    report.waiting = hooks.waiting(db)
    return report


def _run(argv: list[str], timeout: float) -> str | None:
    """Run ``argv``; None if it exited 0, else why not (for a person to act on). Over the
    timeout its whole process group is killed, so a script's children go with it."""
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            close_fds=True, start_new_session=True,
        )
    except OSError as e:
        return f"on_archived {argv[0]}: cannot run it: {e.strerror or e}"
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        return f"on_archived {argv[0]}: still running after {timeout:g} s; killed"
    if proc.returncode == 0:
        return None
    tail = err.decode("utf-8", "replace").strip()[-300:]
    status = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited {proc.returncode}"
    return f"on_archived {argv[0]} {status}" + (f": {tail}" if tail else "")
