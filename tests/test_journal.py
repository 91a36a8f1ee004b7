"""Every legal and illegal state change, and exactly one event per change."""

import time

import pytest

from imgq.ledger import journal
from imgq.ledger.database import DB
from imgq.errors import InvalidTransition
from imgq.ledger.journal import JobChange


@pytest.fixture
def db(tmp_path):
    d = DB(tmp_path / "imgq.db")
    yield d
    d.close()


def add_file(db, file_id, state="seen"):
    with db.transaction():
        journal.add_file(db, {"id": file_id, "inbox": "/in", "path": file_id, "owner": "o"}, state=state, now=time.time())


def events(db):
    return db.one("SELECT count(*) FROM events")[0]


def put_file_in(db, file_id, state):
    """A file row in ``state`` (written directly: this sets up the state under test)."""
    add_file(db, file_id, "seen")
    db.execute("UPDATE files SET state = ? WHERE id = ?", (state, file_id))


# The lifecycles, written out here rather than read from journal.FILE_TRANSITIONS and
# JOB_TRANSITIONS: a wrong entry in the code's table makes a pair below fail. "new" is
# the state of a row being created.
FILE_MOVES = {
    "new": {"seen", "duplicate", "failed"},
    "seen": {"queued", "failed"},
    "queued": {"processed", "failed", "queued"},  # queued again: more jobs for it
    "processed": {"archived", "queued", "failed", "collected"},  # queued: re-enqueued after a recipe change; collected: --min-copies N
    "archived": {"collected", "queued", "processed"},  # processed: a copy was lost
    "duplicate": {"collected", "seen", "duplicate"},  # seen: promoted; duplicate: of another twin
    "failed": {"queued"},  # retried
    "collected": set(),  # the end: the original is gone
}
JOB_MOVES = {
    "new": {"ready"},
    "ready": {"leased"},
    "leased": {"done", "ready", "failed", "leased"},  # leased again: reclaimed after expiry
    "failed": {"ready"},  # retried
    "done": set(),
}
FILE_STATES = ["seen", "queued", "processed", "archived", "duplicate", "failed", "collected"]
JOB_STATES = ["ready", "leased", "done", "failed"]


def test_the_code_knows_exactly_these_states():
    assert sorted(journal.FILE_STATES) == sorted(FILE_STATES)
    assert sorted(journal.JOB_STATES) == sorted(JOB_STATES)


def pairs(moves, states):
    return [(src, dst, dst in moves[src]) for src in ["new", *states] for dst in states]


@pytest.mark.parametrize("src,dst,allowed", pairs(FILE_MOVES, FILE_STATES))
def test_every_file_state_change_is_allowed_or_refused_as_written(src, dst, allowed):
    frm = None if src == "new" else src
    if allowed:
        journal.check("file", frm, dst)
    else:
        with pytest.raises(InvalidTransition):
            journal.check("file", frm, dst)


@pytest.mark.parametrize("src,dst,allowed", pairs(JOB_MOVES, JOB_STATES))
def test_every_job_state_change_is_allowed_or_refused_as_written(src, dst, allowed):
    frm = None if src == "new" else src
    if allowed:
        journal.check("job", frm, dst)
    else:
        with pytest.raises(InvalidTransition):
            journal.check("job", frm, dst)


@pytest.mark.parametrize("src,dst,allowed", [p for p in pairs(FILE_MOVES, FILE_STATES) if p[0] != "new"])
def test_file_transitions(db, src, dst, allowed):
    put_file_in(db, "f", src)
    before = events(db)
    with db.transaction():
        if allowed:
            assert journal.move_file(db, "f", dst, now=1.0) == src
            assert events(db) == before + 1
        else:
            with pytest.raises(InvalidTransition):
                journal.move_file(db, "f", dst, now=1.0)
            assert events(db) == before
    assert db.one("SELECT state FROM files WHERE id='f'")[0] == (dst if allowed else src)
    if allowed:
        last = db.one("SELECT from_state, to_state FROM events ORDER BY id DESC LIMIT 1")
        assert (last["from_state"], last["to_state"]) == (src, dst)


@pytest.mark.parametrize("state", sorted(FILE_MOVES["new"]))
def test_new_file_states(db, state):
    add_file(db, "f", state)
    e = db.all("SELECT * FROM events")
    assert len(e) == 1 and e[0]["from_state"] is None and e[0]["to_state"] == state


@pytest.mark.parametrize("state", sorted(set(FILE_STATES) - FILE_MOVES["new"]))
def test_files_cannot_be_born_late(db, state):
    with pytest.raises(InvalidTransition), db.transaction():
        journal.add_file(db, {"id": "f", "inbox": "/i", "path": "p", "owner": "o"}, state=state, now=1.0)
    assert events(db) == 0


def make_job(db, state):
    put_file_in(db, "f", "queued")
    with db.transaction():
        jid = journal.add_job(db, {"file_id": "f", "recipe": "r", "spec": "{}", "spec_hash": "h", "max_attempts": 3}, now=1.0)
    db.execute("UPDATE jobs SET state = ?, lease_token = 'tok' WHERE id = ?", (state, jid))
    return jid


def test_a_new_job_is_ready_with_one_event(db):
    jid = make_job(db, "ready")
    e = db.all("SELECT * FROM events WHERE entity = 'job'")
    assert [(r["job_id"], r["from_state"], r["to_state"]) for r in e] == [(jid, None, "ready")]


@pytest.mark.parametrize("src,dst,allowed", [p for p in pairs(JOB_MOVES, JOB_STATES) if p[0] != "new"])
def test_job_transitions(db, src, dst, allowed):
    jid = make_job(db, src)
    before = events(db)
    with db.transaction():
        if allowed:
            assert journal.move_jobs(db, [JobChange(jid, "f", src, dst)], now=2.0) == [True]
            assert events(db) == before + 1
        else:
            with pytest.raises(InvalidTransition):
                journal.move_jobs(db, [JobChange(jid, "f", src, dst)], now=2.0)
            assert events(db) == before
    assert db.one("SELECT state FROM jobs WHERE id = ?", (jid,))[0] == (dst if allowed else src)


def test_fenced_change_with_wrong_token_writes_nothing(db):
    jid = make_job(db, "leased")
    before = events(db)
    with db.transaction():
        assert journal.move_jobs(db, [JobChange(jid, "f", "leased", "done", token="stale")], now=2.0) == [False]
    assert events(db) == before
    assert db.one("SELECT state FROM jobs WHERE id = ?", (jid,))[0] == "leased"


def test_same_job_is_never_created_twice(db):
    add_file(db, "f")
    row = {"file_id": "f", "recipe": "r", "spec": "{}", "spec_hash": "h", "max_attempts": 3}
    with db.transaction():
        assert journal.add_job(db, row, now=1.0) is not None
        assert journal.add_job(db, row, now=1.0) is None
    assert db.one("SELECT count(*) FROM jobs")[0] == 1
    assert db.one("SELECT count(*) FROM events WHERE entity = 'job'")[0] == 1


def test_changes_outside_a_transaction_are_refused(db):
    add_file(db, "f")
    with pytest.raises(RuntimeError):
        journal.move_file(db, "f", "queued", now=1.0)


def test_rollback_takes_the_event_with_it(db):
    add_file(db, "f")
    before = events(db)
    with pytest.raises(ZeroDivisionError), db.transaction():
        journal.move_file(db, "f", "queued", now=1.0)
        1 / 0
    assert events(db) == before
    assert db.one("SELECT state FROM files")[0] == "seen"


def test_schema_is_migrated_once_and_versioned(tmp_path):
    from imgq.ledger.migrations import MIGRATIONS, schema_version

    a = DB(tmp_path / "x.db")
    b = DB(tmp_path / "x.db")
    assert schema_version(a.conn) == schema_version(b.conn) == len(MIGRATIONS)
    assert a.one("PRAGMA journal_mode")[0] == "wal"
    assert a.one("PRAGMA foreign_keys")[0] == 1


def test_a_change_without_now_is_stamped_by_the_databases_clock(db):
    """The ledger's clock convention: ``now`` left out is the database's clock, read
    inside the transaction; a ``now`` given is written as given."""
    add_file(db, "f")
    with db.transaction():
        before = db.now()
        journal.move_file(db, "f", "queued")
        after = db.now()
        journal.move_file(db, "f", "failed", now=1234.5, error="x")
    stamped = [r["at"] for r in db.all("SELECT at FROM events WHERE file_id = 'f' ORDER BY id")][1:]
    assert before <= stamped[0] <= after
    assert stamped[1] == 1234.5
    assert db.one("SELECT updated_at FROM files WHERE id = 'f'")[0] == 1234.5
