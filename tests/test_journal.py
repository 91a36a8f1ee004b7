"""Every legal and illegal state change, and exactly one event per change."""

import itertools
import time

import pytest

from imgq.ledger import journal
from imgq.ledger.database import DB
from imgq.errors import InvalidTransition
from imgq.ledger.journal import FILE_TRANSITIONS, JOB_TRANSITIONS, JobChange


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


ALL_FILE = [s for s in FILE_TRANSITIONS if s]
ALL_JOB = [s for s in JOB_TRANSITIONS if s]


@pytest.mark.parametrize("src,dst", list(itertools.product(ALL_FILE, ALL_FILE)))
def test_file_transitions(db, src, dst):
    put_file_in(db, "f", src)
    before = events(db)
    with db.transaction():
        if dst in FILE_TRANSITIONS[src]:
            assert journal.move_file(db, "f", dst, now=1.0) == src
            assert events(db) == before + 1
        else:
            with pytest.raises(InvalidTransition):
                journal.move_file(db, "f", dst, now=1.0)
            assert events(db) == before
    assert db.one("SELECT state FROM files WHERE id='f'")[0] == (dst if dst in FILE_TRANSITIONS[src] else src)


@pytest.mark.parametrize("state", ["seen", "duplicate", "failed"])
def test_new_file_states(db, state):
    add_file(db, "f", state)
    e = db.all("SELECT * FROM events")
    assert len(e) == 1 and e[0]["from_state"] is None and e[0]["to_state"] == state


@pytest.mark.parametrize("state", ["queued", "processed", "archived", "collected"])
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


@pytest.mark.parametrize("src,dst", list(itertools.product(ALL_JOB, ALL_JOB)))
def test_job_transitions(db, src, dst):
    jid = make_job(db, src)
    before = events(db)
    with db.transaction():
        if dst in JOB_TRANSITIONS[src]:
            assert journal.move_jobs(db, [JobChange(jid, "f", src, dst)], now=2.0) == [True]
            assert events(db) == before + 1
        else:
            with pytest.raises(InvalidTransition):
                journal.move_jobs(db, [JobChange(jid, "f", src, dst)], now=2.0)
            assert events(db) == before


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
    from imgq.ledger.database import MIGRATIONS, schema_version

    a = DB(tmp_path / "x.db")
    b = DB(tmp_path / "x.db")
    assert schema_version(a.conn) == schema_version(b.conn) == len(MIGRATIONS)
    assert a.one("PRAGMA journal_mode")[0] == "wal"
    assert a.one("PRAGMA foreign_keys")[0] == 1
