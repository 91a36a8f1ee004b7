"""What every command shares: the ritual around its one library call (``Invocation``:
settings, database, step lock, run record, exit code), stdin ids, output for people
and for pipes. The shared options are declared in ``imgq.cli.options``."""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import re
import sqlite3
import sys
import time
from typing import TYPE_CHECKING

import typer

from imgq.ledger import journal, runs
from imgq.config import DEFAULTS, Settings, load_settings, locate_config
from imgq.ledger.database import DB, ScratchDB, lock_path
from imgq.errors import Busy, Exit, ImgqError, NoDatabase, NotFound, UsageError
from imgq.cli.options import ConfigOpt, DbOpt, JsonOpt, WaitOpt  # noqa: F401  (cli/archive.py reads them here)

if TYPE_CHECKING:
    from rich.console import Console

# What the root options (before the command) set, and what the command learned:
#   debug        --debug or IMGQ_DEBUG=1: tracebacks
#   verbosity    -1 with -q/--quiet, 0, 1 with -v/--verbose (note, detail, summary, progress)
#   global_db, global_config   --db/--config given before the command (one after it wins)
#   db, db_source              the database in force and how it was chosen (for messages)
state: dict = {"debug": False, "verbosity": 0, "global_db": None, "global_config": None, "db": None, "db_source": None}

# The commands that record something new create a missing database; every other command
# only reads it or acts on what it holds, and refuses a missing one (a wrong working
# directory must not look like an empty, healthy queue). README says the same.
CREATES_DATABASE = frozenset({"scan", "enqueue", "work", "archive", "run"})


# rich is imported by the functions that draw (stderr, stdout, progress), not here: a
# command that prints only ids and lines (scan, enqueue from cron) starts without it.


def stderr() -> Console:
    """The console for people: stderr, colour only on a terminal and never with NO_COLOR."""
    from rich.console import Console

    return Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")) or None, highlight=False)


class ReaderGone(Exception):
    """The reader of stdout went away (``imgq … | head -1``): stop quietly, exit 0.

    Not an OSError, so that typer (which turns a broken pipe into exit 1) passes it on
    to ``main``; ``exit_code`` is what ``recorded_run`` records for the run."""

    exit_code = 0


def stdout() -> Console:
    """A console for reports people read on stdout (status, report): plain when piped."""
    from rich.console import Console

    class _StdoutConsole(Console):
        def on_broken_pipe(self) -> None:
            # rich exits 1 when the reader goes away (imgq status | head); imgq stops quietly with 0
            self.quiet = True
            raise ReaderGone()

    console = _StdoutConsole(no_color=bool(os.environ.get("NO_COLOR")) or None, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 160  # a log or a mail: no terminal to fit, keep reasons on one line
    return console


def warn(message: str) -> None:
    """One line for a person on stderr about a problem (an item that failed, a
    destination that is down), never wrapped (it may be grepped from a log), shown even
    with -q; control characters (from a file name, a remote error) are shown escaped, so
    a name can neither break the line nor send escape codes to the terminal."""
    sys.stderr.write(f"imgq: {printable(message)}\n")
    sys.stderr.flush()


def quiet() -> bool:
    """-q/--quiet: no notes, summaries or progress; problems and errors only."""
    return state["verbosity"] < 0


def verbose() -> bool:
    """-v/--verbose: details too (per-item lines, where settings and database came from)."""
    return state["verbosity"] > 0


def note(message: str) -> None:
    """A line for a person that reports no problem (a file left for the next scan, a
    destination chosen for the user): like ``warn``, but silenced by -q."""
    if not quiet():
        warn(message)


def detail(message: str) -> None:
    """A line only -v/--verbose asks for: one per item, where things came from."""
    if verbose():
        warn(message)


def fleet_report(r: tuple, prefix: str = "") -> None:
    """A report of the fleet (``imgq work`` and ``imgq run`` on hosts or agents) about its
    hosts, connect-back agents and Slurm jobs, or a warning, in words on stderr: trouble
    always, the door for agents and hosts drained or removed unless -q, the rest with -v.
    ``prefix`` starts each line (``imgq run`` says which step speaks)."""
    if r[0] == "host" and (r[2] == "benched" or (r[2] == "joined" and r[3])):
        warn(f"{prefix}host {r[1]} {r[2]}" + (f": {r[3]}" if r[3] else ""))
    elif r[0] == "host":  # up, joined, draining, removed: no problem
        (note if r[2] in ("draining", "removed") else detail)(f"{prefix}host {r[1]} {r[2]}" + (f": {r[3]}" if r[3] else ""))
    elif r[0] == "listening":
        _, bound, advertised, fingerprint, path = r
        note(f"{prefix}listening on {bound} for agents: they dial {advertised}, certificate sha256 {fingerprint}" + (f"; their secret is in {path} (imgq agent --secret-file {path})" if path else ""))
    elif r[0] == "warning":
        warn(f"{prefix}{r[1]}")
    elif r[0] == "slurm":  # an agent's job: ("slurm", label, job id, state, reason)
        warn(f"{prefix}{r[1]} {r[3]}" + (f": {r[4]}" if r[4] else ""))


def summary(line: str) -> None:
    """The line that sums up a step for a person: on a terminal (a cron mail stays
    empty when nothing went wrong), or anywhere with -v; never with -q."""
    if verbose() or (is_tty() and not quiet()):
        stderr().print(line, markup=False, soft_wrap=True)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """``text`` with every control character escaped (``\\n``, ``\\x1b``): safe on a terminal."""
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(), f"\\x{ord(m.group()):02x}"), text)


def when(epoch: float | None) -> str:
    """A time for people: local ISO-8601 to the second (``2026-11-29T21:40:05``)."""
    if epoch is None:
        return "-"
    return datetime.datetime.fromtimestamp(epoch).isoformat(timespec="seconds")


def duration(seconds: float) -> str:
    """A duration for people: ``0.4s``, ``12s``, ``3m05s``, ``2h04m``."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def size(n: int) -> str:
    """A byte count for people: ``512 B``, ``14.2 kB``, ``1.7 MB``, ``3.1 GB`` (powers of 1000)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def progress(*columns, console: Console | None = None):
    """A rich progress display on stderr that leaves stdout alone: rich's default
    replaces ``sys.stdout`` while it is live, which sent the ids of `imgq work --drain
    > ids.txt` to the screen. Only when stdout is the very same terminal as stderr are
    lines on stdout drawn above the bar (else the bar would be torn apart); a pipe or a
    file gets them untouched. Lines on stderr (``warn``) are always drawn above it."""
    from rich.progress import Progress

    return Progress(*columns, console=console or stderr(), transient=True, redirect_stdout=_same_terminal(), redirect_stderr=True, disable=quiet())


class Meter:
    """The progress of one long step, drawn on the terminal (stderr) only: a label, a
    bar, done/total and the time left. Nothing is drawn when stderr is not a terminal
    (a pipe, a log, cron); NO_COLOR takes the colour away, not the progress. Called as
    the library's progress callback, ``meter(done, total)``; ``with`` it, so the bar is
    gone before the summary line is printed.

        with common.Meter("scan") as meter:
            scan_step.scan(..., on_progress=meter)
    """

    def __init__(self, label: str):
        self.label = label
        self.bar = None
        self.task = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            if not is_tty():
                return
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

            self.bar = progress(TextColumn(self.label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=total)
        self.bar.update(self.task, completed=done, total=total)

    def __enter__(self) -> "Meter":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _same_terminal() -> bool:
    try:
        if not (sys.stdout.isatty() and sys.stderr.isatty()):
            return False
        out, err = os.fstat(sys.stdout.fileno()), os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return out.st_rdev == err.st_rdev


def settings_for(db: str | None, config: str | None) -> Settings:
    """The settings in force: --db/--config given after the command, else before it
    (``state``), else the environment, the settings file found, the defaults."""
    db = db if db is not None else state.get("global_db")
    config = config if config is not None else state.get("global_config")
    path, how = locate_config(config)
    settings = load_settings(path, db, config_source=how)
    state["db"] = settings.db  # for database_error: name the file whatever fails
    if db is not None:
        state["db_source"] = "--db"
    elif os.environ.get("IMGQ_DB"):
        state["db_source"] = "$IMGQ_DB"
    elif settings.db != DEFAULTS.db:
        state["db_source"] = f"db in {settings.config_path}"
    else:
        state["db_source"] = "the default ./imgq.db"
    if path is not None:
        detail(f"settings: {path} (found as {how})")
    else:
        detail("settings: the defaults (no --config, $IMGQ_CONFIG, ./imgq.toml, user or /etc/imgq/imgq.toml file)")
    return settings


def database_error(exc: sqlite3.Error | OSError) -> str:
    """One line for a person about an error from the database (or the disk under it),
    naming the database file, the cause, and what to do. A failed write is rolled back
    whole, so the line can say that nothing half-done was kept."""
    db = state.get("db")
    where = f"the database {db}" if db else "the database"
    cause = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
    code = getattr(exc, "sqlite_errorcode", None)
    full = code == sqlite3.SQLITE_FULL or getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or _disk_full(db)
    if full:
        return f"{where}: the disk holding it is full ({cause}); any change in progress was rolled back, nothing else is lost: free some space and run the step again"
    if code == sqlite3.SQLITE_BUSY:
        return f"{where} is locked by another process ({cause}); nothing was changed by this step: run it again"
    if isinstance(exc, sqlite3.DatabaseError) and code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return f"{where} is damaged or not an imgq database ({cause}); check it with: sqlite3 {db} 'PRAGMA integrity_check'"
    return f"{where}: {cause}; any change in progress was rolled back"


def _disk_full(db) -> bool:
    """SQLite often reports a full disk as a 'disk I/O error' (it could not grow its
    shared-memory or WAL file): ask the file system."""
    if not db:
        return False
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(db)) or ".")
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024


def open_db(settings: Settings, *, create: bool = True) -> DB:
    """The database of ``settings``; a missing one is created only if ``create``, else
    refused in one line that says where it was looked for and how to point elsewhere."""
    try:
        database = DB(settings.db, create=create)
        detail(f"database: {settings.db} ({state.get('db_source')})")
        return database
    except NoDatabase as e:
        source = state.get("db_source") or "the default ./imgq.db"
        raise NoDatabase(f"{e} ({source}): wrong folder? give --db PATH or set IMGQ_DB; `imgq scan` or `imgq run` creates one") from None


def out(line: str) -> None:
    """One line of data on stdout, flushed so the next step in a pipe sees it at once."""
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        raise ReaderGone() from None


def out_json(obj: dict) -> None:
    out(json.dumps(obj, sort_keys=True, default=str, ensure_ascii=False))


def read_ids(args: list[str] | None) -> list[str] | None:
    """Ids from the arguments; ``-`` reads them from stdin, one per line.

    None means "no argument: every eligible item"; an empty list (an empty pipe) means
    nothing to do. NDJSON lines from ``--json`` output are accepted too (their "id").
    """
    if not args:
        return None
    ids: list[str] = []
    for a in args:
        if a == "-":
            for line in sys.stdin:
                line = line.strip()
                if not line:
                    continue
                if line.startswith("{"):
                    try:
                        line = str(json.loads(line)["id"])
                    except (ValueError, KeyError, TypeError):
                        raise UsageError(f"cannot read an id from stdin line {line[:60]!r}")
                ids.append(line)
        else:
            ids.append(a)
    return ids


def require_known(database: DB, ids: list[str] | None, *, job_numbers: bool = False) -> None:
    """Refuse ids the database does not know (a usage error: nothing is done), naming them.
    With ``job_numbers``, an id of digits is a job number."""
    if not ids:
        return
    unknown = journal.unknown_ids(database, ids, job_numbers=job_numbers)
    if unknown:
        shown = ", ".join(map(repr, unknown[:5])) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        what = "file or job" if job_numbers else "file"
        raise NotFound(f"no {what} with id {shown} in {state.get('db') or 'the database'}; nothing done")


@contextlib.contextmanager
def step_lock(settings: Settings, step: str, wait: bool):
    """An advisory lock so two overlapping runs of the same step (say, from cron) never
    collide: the second waits (``--wait``) or exits 0 quietly."""
    path = lock_path(settings.db, step)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise UsageError(f"cannot open the lock file {path}: {e.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise Busy(f"another `imgq {step}` is running on {settings.db}; nothing done (use --wait to wait for it)")
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def recorded_run(db: DB, command: str, args: dict):
    """Record the invocation in ``runs``; the body fills ``counts`` and ``exit_code``."""
    rec = {"counts": {}, "exit_code": int(Exit.OK)}
    run_id = runs.start(db, command, args, now=time.time())
    rec["id"] = run_id
    outer, db.run_id = getattr(db, "run_id", None), run_id  # every event written meanwhile names this run
    try:
        yield rec
    except BaseException as e:
        # typer.Exit carries the code the command chose; ImgqError its class's code.
        code = getattr(e, "exit_code", None)
        rec["exit_code"] = int(code) if isinstance(code, int) else int(Exit.SOME_FAILED)
        try:
            runs.finish(db, run_id, exit_code=rec["exit_code"], counts=rec["counts"], now=time.time())
        except (sqlite3.Error, ImgqError):
            pass  # the database failed (full, locked): report the error that stopped the step, not this one
        raise
    finally:
        db.run_id = outer
    runs.finish(db, run_id, exit_code=rec["exit_code"], counts=rec["counts"], now=time.time())


class Invocation:
    """One command's ritual, the same for every command: the settings (--db, --config,
    after the command or else before it: ``settings_for``), the database (opened when
    first used), the step lock(s), the record in ``runs``, and the exit code.

        inv = Invocation("scan", db, config)        # settings now; adjust them here
        with inv.recorded({"inboxes": ...}, wait=wait) as run:
            ...one library call, rendered...
            run["counts"] = {...}
            run["exit_code"] = code                   # recorded, then the process exits with it
    """

    def __init__(self, command: str, db: str | None = None, config: str | None = None, *, dry_run: bool = False):
        self.command = command
        self.settings = settings_for(db, config)
        self.dry_run = dry_run
        self._database: DB | None = None

    @property
    def database(self) -> DB:
        """The database; with ``dry_run``, an in-memory copy of it (``ScratchDB``): the
        step does all it would do there, and the file is neither created nor written."""
        if self._database is None:
            if self.dry_run:
                if self.command not in CREATES_DATABASE and not os.path.lexists(self.settings.db):
                    open_db(self.settings, create=False)  # refused as in a real run (nothing is opened)
                self._database = ScratchDB(self.settings.db)
            else:
                self._database = open_db(self.settings, create=self.command in CREATES_DATABASE)
        return self._database

    @contextlib.contextmanager
    def recorded(self, args: dict, *, wait: bool = False, locks: tuple[str, ...] | None = None):
        """Hold the step locks (default: the command's own; ``()`` for none), record the
        run, and exit with ``run["exit_code"]`` once it is recorded."""
        database = self.database  # a database that cannot be used is refused before any lock is made
        with contextlib.ExitStack() as stack:
            # a dry run takes no lock (it would make the lock folder) and records its run
            # in its in-memory copy only
            for step in () if self.dry_run else (self.command,) if locks is None else locks:
                stack.enter_context(step_lock(self.settings, step, wait))
            run = stack.enter_context(recorded_run(database, self.command, args))
            yield run
            if self.dry_run:
                dry_run_done(self.command)
            exit_with(run["exit_code"])


def dry_run_done(command: str) -> None:
    """The last line of every dry run, on stderr (whatever stderr is: a log must say it too)."""
    warn(f"{command}: dry run: nothing changed (the lines above say what a real run would do)")


def exit_with(code: int) -> None:
    """Leave the command with ``code`` unless it is 0 (Exit.OK)."""
    if code:
        raise typer.Exit(int(code))


def is_tty() -> bool:
    return sys.stderr.isatty()
