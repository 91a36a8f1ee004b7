"""Every query a command runs finds its rows through an index, at any size of journal.

A site that has run for years holds 100,000 files and a million events
(``tests/journal_sample.py`` builds such a database directly in SQLite; ``bin/bench journal``
times the commands on it). Here the same builder makes two smaller journals, and the
statements each command's library call runs are captured with SQLite's trace callback,
then checked two ways:

- the plan (``EXPLAIN QUERY PLAN``) of each never walks the whole ``files``, ``jobs`` or
  ``events`` table, nor a whole index of one, except the few counts by state that
  ``status`` shows (those read one small covering index; they are listed below);
- the work of each, counted in SQLite virtual-machine instructions through the progress
  handler (a count, not a time: the same on any machine, loaded or not), barely grows
  when the journal holds ten times the history (same files in flight, same recent
  activity), except the totals over all history that status shows (listed below).

Real journals have no ``sqlite_stat1`` (imgq never runs ANALYZE), so neither do these:
the plans are the ones a site gets.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from imgq import report, scan, status
from imgq import enqueue as enqueue_step
from imgq.archive import eligible as archive_eligible
from imgq.config import DEFAULT_RECIPES
from imgq.ledger import journal, queue
from imgq.ledger.database import DB

import journal_sample as big  # tests/ is on sys.path (rootdir conftest)

pytestmark = pytest.mark.slow  # builds journals of 2,000 and 20,000 files (a few seconds)

BIG_TABLES = {"files", "jobs", "events", "copies", "artifacts", "archive_targets"}
# Counts over a whole table that status shows, read from one covering index: linear, but
# one index of a few bytes per row (about 10 ms at 100,000 files, bin/bench journal).
WHOLE_COUNTS = [
    re.compile(r"SELECT state, count\(\*\) FROM (files|jobs) GROUP BY state$"),
    # a scan that finds a new file reads every id once, from the primary key's index, to
    # give the new one an id unique even case-folded (Python's casefold: SQLite's lower()
    # folds ASCII only)
    re.compile(r"SELECT id FROM files$"),
]
# Totals over all history that status shows, each read from one covering index.
HISTORY_TOTALS = [
    re.compile(r"SELECT destination, count\(\*\) AS n, coalesce\(sum\(bytes\), 0\) AS b, max\(verified_at\) AS v FROM copies GROUP BY destination$"),
]


def build(tmp: Path, files: int) -> tuple[DB, Path]:
    path = tmp / f"journal-{files}.db"
    inbox = tmp / f"inbox-{files}"
    big.build(path, files=files, active=500, inbox=str(inbox))
    for rel, size, mtime_ns in big.inbox_files(path):
        f = inbox / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x" * size)  # what a no-op scan compares: size and mtime
        os.utime(f, ns=(mtime_ns, mtime_ns))
    return DB(path), inbox


def commands(db: DB, inbox: Path) -> dict[str, callable]:
    """What each read or no-op command asks of the database (its library calls)."""
    now = time.time()
    some = db.one("SELECT id FROM files WHERE state = 'archived' ORDER BY id LIMIT 1")["id"]
    failed_job = db.one("SELECT id FROM jobs WHERE state = 'failed' ORDER BY id LIMIT 1")["id"]

    def log():
        found = status.find_file(db, some.split("_", 2)[2], cwd="/")
        journal.history(db, found.matches[0]["id"])

    return {
        "status": lambda: status.snapshot(db, now=now),
        "report": lambda: report.build(db, now=now),
        "log": log,
        "enqueue": lambda: queue.lacking(db, DEFAULT_RECIPES),
        "archive": lambda: archive_eligible(db, list(big.DESTINATIONS), None),
        "retry": lambda: db.all("SELECT id, file_id FROM jobs WHERE state = 'failed' AND id IN (?)", (failed_job,)),
        "scan": lambda: _no_op_scan(db, inbox, now),
        "enqueue-eligible": lambda: enqueue_step.eligible(db),
    }


def _no_op_scan(db: DB, inbox: Path, now: float) -> None:
    rep = scan.scan(db, [inbox], now=now)
    assert not rep.new_ids and rep.unchanged > 0, "the journal's inbox files should all be known"


def statements(db: DB, call) -> list[str]:
    seen: list[str] = []
    db.conn.set_trace_callback(seen.append)
    try:
        call()
    finally:
        db.conn.set_trace_callback(None)
    return [s for s in dict.fromkeys(seen) if s.lstrip().upper().startswith(("SELECT", "WITH"))]


def aliases(sql: str) -> set[str]:
    """The names a statement gives the tables that grow with history (``jobs j`` ->
    {"jobs", "j"})."""
    names = set()
    for table, alias in re.findall(r"\b(files|jobs|events|copies|artifacts|archive_targets)\b(?:\s+(?:AS\s+)?(?!WHERE|JOIN|ON|GROUP|ORDER|LIMIT|LEFT|INNER|USING)(\w+))?", sql, re.I):
        names.add(table)
        if alias:
            names.add(alias)
    return names


def partial_indexes(db: DB) -> set[str]:
    """Indexes over a few rows of their table (``CREATE INDEX ... WHERE``): walking one
    whole walks only those rows (the failing copy tasks, say)."""
    return {r[0] for r in db.all("SELECT name FROM sqlite_master WHERE type = 'index' AND sql LIKE '% WHERE %'")}


def whole_walks(db: DB, sql: str) -> list[str]:
    big_names = aliases(sql)
    partial = partial_indexes(db)
    out = []
    for row in db.conn.execute("EXPLAIN QUERY PLAN " + sql):
        detail = row[3]
        m = re.match(r"SCAN (\w+)(?: USING (?:COVERING )?INDEX (\w+))?", detail)
        if m and m.group(1) in big_names and m.group(2) not in partial:
            out.append(detail)
    return out


def vm_steps(db: DB, sql: str) -> int:
    count = [0]

    def tick():
        count[0] += 1
        return 0

    db.conn.set_progress_handler(tick, 100)
    try:
        db.conn.execute(sql).fetchall()
    finally:
        db.conn.set_progress_handler(None, 100)
    return count[0] * 100


@pytest.fixture(scope="module")
def journals(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("journals")
    return {n: build(tmp, n) for n in (2_000, 20_000)}


def test_no_command_walks_a_whole_big_table(journals):
    db, inbox = journals[2_000]
    walks = {}
    for name, call in commands(db, inbox).items():
        for sql in statements(db, call):
            if any(p.match(sql.strip()) for p in WHOLE_COUNTS + HISTORY_TOTALS):
                continue
            if found := whole_walks(db, sql):
                walks[f"{name}: {sql[:160]}"] = found
    assert not walks, "\n".join(f"{k}\n    {v}" for k, v in walks.items())


def test_no_command_does_ten_times_the_work_on_a_ten_times_larger_history(journals):
    # both journals have the same 500 files in flight and the same recent activity; the
    # larger one has ten times the history
    small, big_ = journals[2_000], journals[20_000]
    grew = {}
    for name in commands(*small):
        cost = {}
        for size, (db, inbox) in ((2_000, small), (20_000, big_)):
            sqls = [s for s in statements(db, commands(db, inbox)[name]) if not any(p.match(s.strip()) for p in WHOLE_COUNTS + HISTORY_TOTALS)]
            cost[size] = sum(vm_steps(db, s) for s in sqls)
        # a lookup through an index grows with the log of the size; a walk, tenfold
        if cost[20_000] > 3 * max(cost[2_000], 20_000):
            grew[name] = cost
    assert not grew, grew


def test_the_journal_builder_makes_what_the_bench_describes(journals):
    db, _ = journals[2_000]
    assert db.one("SELECT count(*) FROM files")[0] == 2_000
    events = db.one("SELECT count(*) FROM events")[0]
    assert 6 * 2_000 < events < 10 * 2_000
    states = dict(db.all("SELECT state, count(*) FROM files GROUP BY state"))
    assert states["collected"] > 1_500 and states["failed"] > 0 and 100 < states["archived"] < 500
