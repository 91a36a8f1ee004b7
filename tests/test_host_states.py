"""Host states change like file and job states: checked transitions, one event each."""

import pytest

from imgq.errors import InvalidTransition
from imgq.ledger import hosts
from imgq.ledger.database import DB


@pytest.fixture
def db(tmp_path):
    d = DB(tmp_path / "imgq.db")
    yield d
    d.close()


def host_events(db, name):
    return [tuple(r) for r in db.all("SELECT from_state, to_state, host, detail FROM events WHERE entity = 'host' AND host = ? ORDER BY id", (name,))]


def test_an_illegal_host_transition_raises_and_writes_nothing(db):
    hosts.move(db, "gpu1", "new", now=1.0)
    with pytest.raises(InvalidTransition):
        hosts.move(db, "gpu1", "up", now=2.0)  # new -> up skips connecting (and preflight)
    with pytest.raises(InvalidTransition):
        hosts.move(db, "gpu2", "up", now=2.0)  # a host the table has never seen starts as new
    assert db.one("SELECT state FROM hosts WHERE name = 'gpu1'")["state"] == "new"
    assert db.one("SELECT count(*) FROM hosts WHERE name = 'gpu2'")[0] == 0
    assert host_events(db, "gpu1") == [(None, "new", "gpu1", None)]


def test_benching_a_host_writes_an_event_with_its_reason(db):
    hosts.move(db, "gpu1", "new", now=1.0, slots=4)
    hosts.move(db, "gpu1", "connecting", now=2.0)
    hosts.move(db, "gpu1", "benched", now=3.0, reason="preflight: opencv does not import", benched_until=8.0, failures=1, add={"lost": 1})
    row = db.one("SELECT state, reason, benched_until, failures, lost, slots FROM hosts WHERE name = 'gpu1'")
    assert tuple(row) == ("benched", "preflight: opencv does not import", 8.0, 1, 1, 4)
    assert host_events(db, "gpu1")[-1] == ("connecting", "benched", "gpu1", "preflight: opencv does not import")


def test_every_run_starts_its_hosts_afresh(db):
    for state in ("new", "connecting", "up", "stopped", "new"):
        hosts.move(db, "gpu1", state, now=1.0)
    assert [e[1] for e in host_events(db, "gpu1")] == ["new", "connecting", "up", "stopped", "new"]
    with pytest.raises(InvalidTransition):
        hosts.move(db, "gpu1", "stopped", now=2.0)  # a host never connected is not stopped


def test_unknown_fields_are_refused(db):
    with pytest.raises(ValueError):
        hosts.move(db, "gpu1", "new", now=1.0, colour="blue")
