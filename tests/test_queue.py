"""The queue against a real SQLite file: claims, leases, fencing, backoff, and real
processes contending for one queue."""

import multiprocessing as mp
import random
import time

import pytest

from imgq.ledger import journal, queue
from imgq.ledger.database import DB
from imgq.ledger.journal import Actor


@pytest.fixture
def db(tmp_path):
    d = DB(tmp_path / "imgq.db")
    yield d
    d.close()


def seed(db, n, *, max_attempts=3, recipes=None):
    with db.transaction():
        for i in range(n):
            journal.add_file(db, {"id": f"f{i}", "inbox": "/in", "path": f"p{i}.jpg", "owner": "o"}, state="seen", now=0.0)
    return queue.enqueue(db, [f"f{i}" for i in range(n)], recipes or {"default": {"thumb": "thumb"}}, now=0.0, max_attempts=max_attempts)


def ok(c):
    return queue.Outcome(c, artifacts=[])


def test_enqueue_is_idempotent(db):
    first = seed(db, 3)
    assert all(len(r.created) == 1 for r in first)
    again = queue.enqueue(db, ["f0", "f1", "f2"], {"default": {"thumb": "thumb"}}, now=1.0, max_attempts=3)
    assert all(r.created == [] for r in again)
    assert db.one("SELECT count(*) FROM jobs")[0] == 3
    assert {r[0] for r in db.all("SELECT state FROM files")} == {"queued"}


def test_changed_recipe_gives_new_jobs_only(db):
    seed(db, 2)
    res = queue.enqueue(db, ["f0", "f1"], {"default": {"thumb": "fit:100x100"}}, now=1.0, max_attempts=3)
    assert [len(r.created) for r in res] == [1, 1]


def test_claim_complete_processed(db):
    seed(db, 2)
    claims = queue.claim(db, owner="w", limit=10, lease_seconds=30, now=10.0)
    assert len(claims) == 2 and all(c.attempts == 1 for c in claims)
    assert queue.claim(db, owner="w2", limit=10, lease_seconds=30, now=11.0) == []
    s = queue.settle(db, [ok(c) for c in claims], now=12.0)
    assert sorted(s.processed) == ["f0", "f1"]
    assert {r[0] for r in db.all("SELECT state FROM files")} == {"processed"}


def test_the_last_jobs_are_shared_among_the_workers_that_claim_them(db):
    # a batch sized for a long queue must not take the last jobs from the other workers:
    # with 10 left and 2 workers, one claim takes 5, not 8 (the other worker idled while
    # this one worked through its batch: the tail of every -j2 run)
    seed(db, 10)
    alone = queue.claim(db, owner="a", limit=8, lease_seconds=30, now=10.0)
    assert len(alone) == 8  # one worker: a whole batch
    queue.release(db, alone, now=10.0)
    first = queue.claim(db, owner="a", limit=8, lease_seconds=30, now=10.0, workers=2)
    second = queue.claim(db, owner="b", limit=8, lease_seconds=30, now=10.0, workers=2)
    third = queue.claim(db, owner="a", limit=8, lease_seconds=30, now=10.0, workers=2)
    assert [len(first), len(second), len(third)] == [5, 3, 1]  # each takes its share of what is left
    seed_more = queue.enqueue(db, [f"f{i}" for i in range(10)], {"default": {"web": "web"}}, now=10.0, max_attempts=3)
    assert sum(len(r.created) for r in seed_more) == 10
    assert len(queue.claim(db, owner="a", limit=2, lease_seconds=30, now=11.0, workers=2)) == 2  # plenty left: the full batch
    assert len(queue.claim(db, owner="a", limit=8, lease_seconds=30, now=11.0, workers=3)) == 3  # 9 left, 3 workers


def test_expired_lease_is_reclaimed_and_stale_worker_is_fenced(db):
    seed(db, 1)
    [stale] = queue.claim(db, owner="a", limit=1, lease_seconds=5, now=10.0)
    [fresh] = queue.claim(db, owner="b", limit=1, lease_seconds=5, now=16.0)
    assert fresh.job_id == stale.job_id and fresh.token != stale.token and fresh.attempts == 2
    late = queue.settle(db, [ok(stale)], now=17.0)
    assert late.lost == [stale.job_id] and late.done == []
    assert queue.settle(db, [ok(fresh)], now=18.0).done == [fresh.job_id]
    assert db.one("SELECT count(*) FROM events WHERE to_state = 'done'")[0] == 1


def test_heartbeat_keeps_the_lease(db):
    seed(db, 1)
    [c] = queue.claim(db, owner="a", limit=1, lease_seconds=5, now=10.0)
    assert queue.heartbeat(db, [(c.job_id, c.token)], lease_seconds=5, now=14.0) == set()
    assert queue.claim(db, owner="b", limit=1, lease_seconds=5, now=17.0) == []
    assert queue.heartbeat(db, [(c.job_id, "wrong")], lease_seconds=5, now=18.0) == {c.job_id}


def test_transient_error_backs_off_then_fails_after_max_attempts(db):
    seed(db, 1, max_attempts=2)
    [c] = queue.claim(db, owner="a", limit=1, lease_seconds=5, now=10.0)
    s = queue.settle(db, [queue.Outcome(c, error="disk hiccup", kind="transient")], now=10.0, backoff=4, rng=random.Random(1))
    assert s.retrying == [c.job_id]
    nb = db.one("SELECT not_before FROM jobs")[0]
    assert 12.0 <= nb <= 16.0
    assert queue.claim(db, owner="a", limit=1, lease_seconds=5, now=nb - 0.1) == []
    [c2] = queue.claim(db, owner="a", limit=1, lease_seconds=5, now=nb + 0.1)
    s = queue.settle(db, [queue.Outcome(c2, error="disk hiccup", kind="transient")], now=nb + 1)
    assert s.failed and "gave up after 2 attempts" in s.failed[0][2]
    assert db.one("SELECT state, error FROM files")[0] == "failed"


def test_permanent_error_fails_at_once_with_reason(db):
    seed(db, 1, max_attempts=5)
    [c] = queue.claim(db, owner="a", limit=1, lease_seconds=5, now=10.0)
    s = queue.settle(db, [queue.Outcome(c, error="/in/p0.jpg: truncated JPEG", kind="permanent")], now=11.0)
    assert s.failed[0][2] == "/in/p0.jpg: truncated JPEG"
    row = db.one("SELECT state, error FROM files")
    assert row["state"] == "failed" and "truncated JPEG" in row["error"]
    assert queue.retry(db, now=12.0) == [c.job_id]
    assert db.one("SELECT state FROM files")[0] == "queued"
    assert db.one("SELECT state, attempts FROM jobs")[:] == ("ready", 0)


def test_worker_lost_too_often_fails_the_job(db):
    seed(db, 1, max_attempts=2)
    queue.claim(db, owner="a", limit=1, lease_seconds=1, now=10.0)
    queue.claim(db, owner="b", limit=1, lease_seconds=1, now=12.0)
    assert queue.claim(db, owner="c", limit=1, lease_seconds=1, now=14.0) == []
    err = db.one("SELECT state, error FROM jobs")
    assert err[0] == "failed" and "lost 2 time(s)" in err[1]


def test_release_does_not_count_the_attempt(db):
    seed(db, 2)
    claims = queue.claim(db, owner="a", limit=2, lease_seconds=30, now=10.0)
    assert queue.release(db, claims, now=11.0) == 2
    again = queue.claim(db, owner="b", limit=2, lease_seconds=30, now=11.0)
    assert [c.attempts for c in again] == [1, 1]


def _drain(path, name, results):
    d = DB(path)
    mine = []
    while True:
        cs = queue.claim(d, owner=name, limit=4, lease_seconds=30, now=time.time(), actor=Actor(name=name))
        if not cs:
            break
        queue.settle(d, [ok(c) for c in cs], now=time.time(), actor=Actor(name=name))
        mine += [c.job_id for c in cs]
    results.put((name, mine))


@pytest.mark.parametrize("workers", [2, 4])
def test_processes_contending_claim_each_job_once(tmp_path, workers):
    path = tmp_path / "imgq.db"
    d = DB(path)
    seed(d, 600)
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_drain, args=(path, f"w{i}", results)) for i in range(workers)]
    for p in procs:
        p.start()
    got = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    claimed = [j for js in got.values() for j in js]
    assert len(claimed) == len(set(claimed)) == 600  # none twice, none lost
    assert d.one("SELECT count(*) FROM jobs WHERE state = 'done'")[0] == 600
    # one claim and one completion event per job: nobody claimed a job someone else held
    assert d.one("SELECT count(*) FROM events WHERE entity='job' AND to_state='leased'")[0] == 600
    assert d.one("SELECT count(*) FROM events WHERE entity='job' AND to_state='done'")[0] == 600
    assert d.one("SELECT count(*) FROM files WHERE state = 'processed'")[0] == 600
