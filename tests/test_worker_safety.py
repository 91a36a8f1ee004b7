"""Workers that cannot damage what others completed (issue 8): a stale worker never
replaces a recorded artifact, signals to the process group never hang `imgq work`,
leases follow the database's clock, not a process's, and a store serves one database.

Real processes, real signals (SIGSTOP, SIGCONT, SIGKILL, SIGTERM, SIGINT to the group),
real clocks skewed with libfaketime, a real SQLite file, real JPEGs.
"""

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import wait_for
from imgq import samples, store
from imgq.config import Settings
from imgq.fleet import arrival
from imgq.ledger import journal, queue
from imgq.ledger.database import DB
from tests.conftest import imgq_env


def q(db_path, sql, *params):
    with sqlite3.connect(db_path, timeout=30) as c:
        return c.execute(sql, params).fetchall()




def start(tmp_path, *args, prefix=(), env=None):
    """`imgq ARGS` in its own session (process group = its pid), as a service runs."""
    return subprocess.Popen(
        [*prefix, sys.executable, "-m", "imgq", *map(str, args)],
        cwd=tmp_path,
        env=imgq_env(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def holder_pid(db_path, job_id=None) -> int:
    """The pid of the worker process holding a lease (lease_owner is host:pid:slot)."""
    sql = "SELECT lease_owner FROM jobs WHERE state = 'leased'" + (" AND id = ?" if job_id else "")
    owner = wait_for(lambda: q(db_path, sql, *([job_id] if job_id else [])))[0][0]
    return int(owner.split(":")[1])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_big_photo(tmp_path, run_imgq, *, op="fit:6000x4000", size=(6000, 4000)) -> str:
    """One large photo enqueued with a full-size output: its job takes a second or more."""
    inbox = samples.make_inbox(tmp_path / "inbox", photographers=("alice",), per_owner=1, size=size,
                               with_rotated=False, with_duplicate=False, with_broken=False, with_loose=False)
    [file_id] = run_imgq("scan", inbox).stdout.split()
    r = run_imgq("enqueue", "--op", op, "-", input=file_id)
    assert r.returncode == 0, r.stderr
    return file_id


# ---- item 6: a stale worker never replaces the newer result ---------------------------------


@pytest.mark.timeout(180)
def test_worker_paused_past_its_lease_never_replaces_the_completed_artifact(tmp_path, run_imgq, db_path):
    file_id = one_big_photo(tmp_path, run_imgq)
    # the stale worker encodes differently (another imgq.toml), so its bytes would show
    (tmp_path / "low.toml").write_text("jpeg_quality = 40\n")
    stale = start(tmp_path, "work", "--config", "low.toml", "-j1", "--batch", "1", "--lease", "1", "--drain")
    try:
        pid = holder_pid(db_path)
        os.kill(pid, signal.SIGSTOP)  # mid-job: decoding, rendering or encoding, not yet settled
        # the lease expires; a second worker takes the job over and completes it
        fresh = run_imgq("work", "-j1", "--drain", "--lease", "30", timeout=120)
        assert fresh.returncode == 0, fresh.stderr
        [(job_id, state)] = q(db_path, "SELECT id, state FROM jobs")
        assert state == "done"
        [(rel, recorded)] = q(db_path, "SELECT path, sha256 FROM artifacts")
        artifact = tmp_path / "imgq-store" / rel
        assert sha256(artifact) == recorded
        # the paused worker wakes, finishes its render and reports: it is fenced out
        os.kill(pid, signal.SIGCONT)
        stale.wait(timeout=120)
    finally:
        kill_group(stale)
    assert sha256(artifact) == recorded, "the stale worker replaced the recorded artifact"
    assert q(db_path, "SELECT count(*) FROM events WHERE job_id = ? AND to_state = 'done'", job_id) == [(1,)]
    leftovers = [p.name for p in (tmp_path / "imgq-store").rglob("*") if p.is_file() and p.name.startswith(".") and p.name != store.OWNER_MARK]
    assert leftovers == [], "the fenced attempt removed its own staged files"
    (tmp_path / "backup").mkdir()
    archived = run_imgq("archive", "--to", tmp_path / "backup")
    assert archived.returncode == 0, archived.stderr
    assert q(db_path, "SELECT state FROM files WHERE id = ?", file_id) == [("archived",)]


@pytest.fixture
def db(tmp_path):
    d = DB(tmp_path / "imgq.db")
    yield d
    d.close()


def _one_job(db, tmp_path, chains=None):
    with db.transaction():
        journal.add_file(db, {"id": "f1", "inbox": str(tmp_path / "in"), "path": "a.jpg", "owner": "a"}, state="seen", now=0.0)
    queue.enqueue(db, ["f1"], {"default": chains or {"web": "web"}}, now=0.0, max_attempts=3)


def _staged_jpeg(store_dir: Path, claim, name: str, seed: int) -> queue.Artifact:
    """A real JPEG written under this attempt's staged name, as a worker writes it."""
    rel = store.artifact_path(claim.file_id, name, claim.spec_hash)
    staged = store.staged_path(rel, claim.token)
    samples.make_photo(store_dir / staged, width=64, height=48, seed=seed)
    data = (store_dir / staged).read_bytes()
    return queue.Artifact(name, rel, hashlib.sha256(data).hexdigest(), len(data), 64, 48, staged=staged)


def test_completion_moves_staged_artifacts_into_place_and_a_fenced_one_touches_nothing(db, tmp_path):
    store_dir = tmp_path / "store"
    _one_job(db, tmp_path)
    [stale] = queue.claim(db, owner="a", limit=1, lease_seconds=5, now=10.0)
    stale_art = _staged_jpeg(store_dir, stale, "web", seed=1)
    [fresh] = queue.claim(db, owner="b", limit=1, lease_seconds=5, now=16.0)  # a's lease expired
    fresh_art = _staged_jpeg(store_dir, fresh, "web", seed=2)
    assert stale_art.path == fresh_art.path and stale_art.staged != fresh_art.staged
    final = store_dir / fresh_art.path
    assert not final.exists(), "an attempt never writes the final name itself"

    s = queue.settle(db, [queue.Outcome(fresh, artifacts=[fresh_art])], now=17.0, store_dir=store_dir)
    assert s.done == [fresh.job_id]
    assert sha256(final) == fresh_art.sha256 and not (store_dir / fresh_art.staged).exists()

    late = queue.settle(db, [queue.Outcome(stale, artifacts=[stale_art])], now=18.0, store_dir=store_dir)
    assert late.lost == [stale.job_id]
    assert sha256(final) == fresh_art.sha256, "the fenced outcome left the final name alone"
    assert not (store_dir / stale_art.staged).exists(), "and removed its own staged file"
    assert q(db.path, "SELECT sha256 FROM artifacts") == [(fresh_art.sha256,)]


def test_completing_a_job_clears_what_a_killed_attempt_of_it_left_half_written(db, tmp_path):
    """A worker killed while writing its staged artifact leaves a temporary file named by
    its lease token. Once another attempt completes the job, that token can never be live
    again: the completion removes the leftover then, rather than leaving it to a sweep at
    the start of some later `imgq work` (a cron `imgq run` with nothing to do runs none:
    the chaos soak test found such files left for good). Another job's attempt in the
    same folder, still leased, keeps its files."""
    store_dir = tmp_path / "store"
    _one_job(db, tmp_path, chains={"web": "web"})
    queue.enqueue(db, ["f1"], {"other": {"thumb": "thumb"}}, now=0.0, max_attempts=3)
    claims = queue.claim(db, owner="a", limit=2, lease_seconds=5, now=10.0)
    killed = next(c for c in claims if c.recipe == "default")
    busy = next(c for c in claims if c.recipe == "other")
    rel = store.artifact_path(killed.file_id, "web", killed.spec_hash)
    half = store_dir / Path(store.staged_path(rel, killed.token)).parent / store.temp_name(Path(store.staged_path(rel, killed.token)).name)
    half.parent.mkdir(parents=True, exist_ok=True)
    half.write_bytes(b"half a jpeg")
    theirs = _staged_jpeg(store_dir, busy, "thumb", seed=3)  # the other job's attempt, still leased
    assert queue.heartbeat(db, [(busy.job_id, busy.token)], lease_seconds=60, now=14.0) == set()  # busy keeps its lease
    [fresh] = queue.claim(db, owner="b", limit=2, lease_seconds=5, now=16.0)  # the killed one's lease ran out
    art = _staged_jpeg(store_dir, fresh, "web", seed=2)
    assert queue.settle(db, [queue.Outcome(fresh, artifacts=[art])], now=17.0, store_dir=store_dir).done == [fresh.job_id]
    assert not half.exists(), "the killed attempt's half-written file is gone with the completion"
    assert (store_dir / theirs.staged).exists(), "a live attempt's staged file stays"


def test_an_agents_late_reply_never_reaches_the_store(db, tmp_path):
    """The fleet coordinator's path: what arrives for a job whose lease was taken over is
    checked and staged, and settle drops it without touching the recorded artifact."""
    store_dir = tmp_path / "store"
    _one_job(db, tmp_path)
    [stale] = queue.claim(db, owner="host-a", limit=1, lease_seconds=5, now=10.0)
    [fresh] = queue.claim(db, owner="host-b", limit=1, lease_seconds=5, now=16.0)

    def reply(claim, seed):
        photo = samples.make_photo(tmp_path / f"reply{seed}.jpg", width=64, height=48, seed=seed)
        data = photo.read_bytes()
        header = {"type": "done", "artifacts": [{"name": "web", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "width": 64, "height": 48}]}
        return queue.Outcome(claim, artifacts=arrival.receive(claim, header, memoryview(data), store_dir, max_pixels=Settings().max_pixels))

    assert queue.settle(db, [reply(fresh, 2)], now=17.0, store_dir=store_dir).done == [fresh.job_id]
    [(rel, recorded)] = q(db.path, "SELECT path, sha256 FROM artifacts")
    late = reply(stale, 1)
    assert sha256(store_dir / rel) == recorded, "arriving is not completing: nothing replaced yet"
    assert queue.settle(db, [late], now=18.0, store_dir=store_dir).lost == [stale.job_id]
    assert sha256(store_dir / rel) == recorded
    assert sorted(p.name for p in (store_dir / "f1").iterdir()) == [Path(rel).name]


def test_a_failed_move_into_place_rolls_the_completion_back(db, tmp_path):
    store_dir = tmp_path / "store"
    _one_job(db, tmp_path)
    [c] = queue.claim(db, owner="a", limit=1, lease_seconds=5, now=10.0)
    art = _staged_jpeg(store_dir, c, "web", seed=1)
    (store_dir / art.path).mkdir()  # something the rename cannot replace: a non-empty folder
    (store_dir / art.path / "x").write_text("x")
    s = queue.settle(db, [queue.Outcome(c, artifacts=[art])], now=11.0, store_dir=store_dir)
    assert s.done == [] and s.retrying == [c.job_id]
    assert q(db.path, "SELECT state FROM jobs") == [("ready",)]
    assert q(db.path, "SELECT count(*) FROM artifacts") == [(0,)], "no record of an artifact that is not in place"
    assert q(db.path, "SELECT state FROM files") == [("queued",)]
    [(error,)] = q(db.path, "SELECT error FROM jobs")
    assert "a.jpg" in error and "cannot move" in error
    assert not (store_dir / art.staged).exists()


def test_a_batch_is_recorded_only_once_its_files_are_synced_and_one_that_cannot_be_is_retried(db, tmp_path):
    # workers write staged files without fsync and work.settle syncs a batch's files
    # together before recording it: a file that cannot be synced (gone: a sweep, a disk)
    # is never recorded as done; its job is retried, the others complete exactly once
    from imgq import work

    store_dir = tmp_path / "store"
    with db.transaction():
        for i in (1, 2, 3):
            journal.add_file(db, {"id": f"f{i}", "inbox": str(tmp_path / "in"), "path": f"{i}.jpg", "owner": "a"}, state="seen", now=0.0)
    queue.enqueue(db, ["f1", "f2", "f3"], {"default": {"web": "web"}}, now=0.0, max_attempts=3)
    claims = queue.claim(db, owner="a", limit=3, lease_seconds=60)
    arts = {c.file_id: _staged_jpeg(store_dir, c, "web", seed=i) for i, c in enumerate(claims)}
    (store_dir / arts["f2"].staged).unlink()
    settings = Settings(db=db.path, store=store_dir)
    s = work.settle(db, [queue.Outcome(c, artifacts=[arts[c.file_id]]) for c in claims], settings, actor=journal.Actor())
    by_file = {c.file_id: c.job_id for c in claims}
    assert sorted(s.done) == sorted([by_file["f1"], by_file["f3"]]) and s.retrying == [by_file["f2"]]
    assert dict(q(db.path, "SELECT file_id, state FROM jobs")) == {"f1": "done", "f2": "ready", "f3": "done"}
    assert sorted(f for (f,) in q(db.path, "SELECT file_id FROM artifacts")) == ["f1", "f3"]
    [(error,)] = q(db.path, "SELECT error FROM jobs WHERE file_id = 'f2'")
    assert "cannot write" in error and arts["f2"].staged in error
    for f in ("f1", "f3"):
        assert sha256(store_dir / arts[f].path) == arts[f].sha256


def test_sweep_removes_staged_files_of_attempts_that_lost_their_lease(db, tmp_path):
    store_dir = tmp_path / "store"
    _one_job(db, tmp_path)
    [dead] = queue.claim(db, owner="killed", limit=1, lease_seconds=5, now=10.0)
    dead_art = _staged_jpeg(store_dir, dead, "web", seed=1)
    [live] = queue.claim(db, owner="alive", limit=1, lease_seconds=5, now=16.0)
    live_art = _staged_jpeg(store_dir, live, "web", seed=2)

    def is_live(token):
        return db.one("SELECT 1 FROM jobs WHERE state = 'leased' AND lease_token = ?", (token,)) is not None

    assert store.sweep_temp(store_dir, live=is_live) == 1
    assert not (store_dir / dead_art.staged).exists()
    assert (store_dir / live_art.staged).exists(), "the live attempt keeps its staged file"
    assert queue.settle(db, [queue.Outcome(live, artifacts=[live_art])], now=17.0, store_dir=store_dir).done


def test_sweep_removes_a_killed_attempts_half_written_output_even_if_its_pid_is_taken_again(db, tmp_path):
    # A worker killed while writing an output leaves the temporary name of its staged file
    # (".<staged name>.<pid>-<hex>.imgq-tmp"). Pids are reused (pid_max is 32768 here): the
    # pid in the name may belong to a new, unrelated process by the time the sweep runs.
    # The lease token inside the staged name says the attempt is over; that decides.
    store_dir = tmp_path / "store"
    _one_job(db, tmp_path)
    [dead] = queue.claim(db, owner="killed", limit=1, lease_seconds=5, now=10.0)
    [live] = queue.claim(db, owner="alive", limit=1, lease_seconds=5, now=16.0)
    folder = store_dir / "f1"
    folder.mkdir(parents=True)
    taken_pid = os.getpid()  # alive: as a reused pid would be
    dead_tmp = folder / f"{store.staged_path('web-0.jpg', dead.token)}.{taken_pid}-0badc0de.imgq-tmp"
    live_tmp = folder / f"{store.staged_path('web-1.jpg', live.token)}.{taken_pid}-0badc0de.imgq-tmp"
    dead_tmp.write_bytes(b"half a jpeg")
    live_tmp.write_bytes(b"being written")

    def is_live(token):
        return db.one("SELECT 1 FROM jobs WHERE state = 'leased' AND lease_token = ?", (token,)) is not None

    assert store.sweep_temp(store_dir, live=is_live) == 1
    assert not dead_tmp.exists(), "an attempt whose lease is gone is not writing any more, whatever its pid"
    assert live_tmp.exists(), "a live attempt's file in progress stays"


# ---- item 12: signals to the process group never hang `imgq work` -----------------------------


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


STATES = {
    # no job at all: the workers sleep between polls of an empty queue
    "idle": ("--follow", "-j1", "--poll", "1"),
    # both workers inside jobs, each holding more it has not started
    "busy": ("--follow", "-j2", "--batch", "3"),
    # draining: one worker on the last job, the other waiting for it to finish
    "draining": ("--drain", "-j2", "--batch", "1"),
}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
@pytest.mark.parametrize("state", list(STATES))
def test_a_signal_to_the_process_group_stops_work_within_seconds(tmp_path, run_imgq, db_path, state, sig):
    if state == "busy":
        inbox = samples.make_inbox(tmp_path / "inbox", photographers=("alice", "bob"), per_owner=4, size=(3000, 2000),
                                   with_rotated=False, with_duplicate=False, with_broken=False, with_loose=False)
        ids = run_imgq("scan", inbox).stdout.split()
        run_imgq("enqueue", "--op", "fit:3000x2000", "-", input="\n".join(ids))
    elif state == "draining":
        # a job of seconds (bilateral on 24 MP), so the signal lands inside it: a plain
        # fit of the photo sometimes finished within the 0.2 s below, and the run with it
        one_big_photo(tmp_path, run_imgq, op="fit:6000x4000|bilateral")
    else:
        (tmp_path / "empty").mkdir()
        assert run_imgq("scan", tmp_path / "empty").returncode == 0  # the database exists, the queue is empty
    proc = start(tmp_path, "work", *STATES[state])
    try:
        if state == "idle":
            wait_for(lambda: _children(proc.pid))
            time.sleep(1.5)  # inside the poll wait of an empty queue
        elif state == "busy":
            wait_for(lambda: q(db_path, "SELECT count(DISTINCT lease_owner) FROM jobs WHERE state = 'leased'")[0][0] == 2)
        else:
            wait_for(lambda: q(db_path, "SELECT 1 FROM jobs WHERE state = 'leased'"))
            time.sleep(0.2)  # the other worker is in its drain wait
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"imgq work ({state}) still running 20 s after {sig.name} to its process group")
        out, err = proc.communicate()
    finally:
        kill_group(proc)
    assert proc.returncode == 130, err
    assert not _group_alive(proc.pid), "every worker process ended"
    states = [s for (s,) in q(db_path, "SELECT state FROM jobs")]
    assert "leased" not in states, "no job is left holding a lease"
    assert set(states) <= {"ready", "done"}
    if state == "busy":
        released = q(db_path, "SELECT count(*) FROM events WHERE detail LIKE 'released unstarted%'")[0][0]
        assert released >= 1, "unstarted jobs were handed back"
        # ... without counting an attempt: they are as if never claimed
        assert q(db_path, "SELECT count(*) FROM jobs WHERE state = 'ready' AND attempts != 0") == [(0,)]
    assert q(db_path, "SELECT exit_code FROM runs WHERE command = 'work'") == [(130,)]


# ---- item 16: leases follow the database's clock ----------------------------------------------


def _skewed(hours: int = 1) -> tuple[str, ...]:
    """The command prefix that runs a process with its wall clock ``hours`` ahead.

    Only the wall clock: libfaketime would shift the monotonic clock too, and CPython's
    timed lock waits then sleep an hour (a host whose clock is wrong has a sane
    monotonic clock)."""
    if shutil.which("faketime") is None:
        pytest.skip("faketime is not installed (bin/test installs it)")
    prefix = ("env", "FAKETIME_DONT_FAKE_MONOTONIC=1", "faketime", "-f", f"+{hours}h")
    ahead = float(subprocess.run([*prefix, sys.executable, "-c", "import time; print(time.time())"], capture_output=True, text=True, check=True).stdout) - time.time()
    assert ahead > hours * 3600 - 60, f"faketime did not move Python's clock ({ahead:.0f} s)"
    return prefix


@pytest.mark.timeout(180)
def test_a_worker_an_hour_ahead_does_not_steal_a_fresh_lease(tmp_path, run_imgq, db_path):
    skew = _skewed()
    one_big_photo(tmp_path, run_imgq)
    holder = start(tmp_path, "work", "-j1", "--lease", "60", "--drain")
    try:
        pid = holder_pid(db_path)
        os.kill(pid, signal.SIGSTOP)  # holds a lease, fresh for a minute, while the other looks
        ahead = start(tmp_path, "work", "-j1", "--once", prefix=skew)
        out, err = ahead.communicate(timeout=60)
        assert ahead.returncode == 0, err
        [(state, owner)] = q(db_path, "SELECT state, lease_owner FROM jobs")
        assert state == "leased" and int(owner.split(":")[1]) == pid, "the fresh lease was not taken over"
        os.kill(pid, signal.SIGCONT)
        holder.wait(timeout=60)
    finally:
        kill_group(holder)
    [(job_id, state)] = q(db_path, "SELECT id, state FROM jobs")
    assert state == "done"
    assert q(db_path, "SELECT count(*) FROM events WHERE job_id = ? AND to_state = 'leased'", job_id) == [(1,)], "processed once"


@pytest.mark.timeout(180)
def test_workers_with_clocks_an_hour_apart_process_each_job_once(tmp_path, run_imgq, db_path):
    skew = _skewed()
    inbox = samples.make_inbox(tmp_path / "inbox", photographers=("alice", "bob"), per_owner=2, size=(3000, 2000),
                               with_rotated=False, with_duplicate=False, with_broken=False, with_loose=False)
    ids = run_imgq("scan", inbox).stdout.split()
    run_imgq("enqueue", "--op", "fit:3000x2000", "-", input="\n".join(ids))
    normal = start(tmp_path, "work", "-j1", "--batch", "4", "--drain")
    ahead = None
    try:
        # the normal worker holds fresh leases on every job, started or not ...
        wait_for(lambda: q(db_path, "SELECT count(*) FROM jobs WHERE state = 'leased'")[0][0] == 4)
        # ... when the worker an hour ahead starts draining the same queue beside it
        ahead = start(tmp_path, "work", "-j1", "--drain", prefix=skew)
        for p in (normal, ahead):
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
    finally:
        kill_group(normal)
        if ahead is not None:
            kill_group(ahead)
    assert {s for (s,) in q(db_path, "SELECT state FROM jobs")} == {"done"}
    per_job = q(db_path, "SELECT job_id, sum(to_state = 'leased'), sum(to_state = 'done') FROM events WHERE entity = 'job' GROUP BY job_id")
    assert len(per_job) == 4 and all(leased == 1 and done == 1 for _, leased, done in per_job), f"(job, claims, completions): {per_job}"
    assert q(db_path, "SELECT count(*) FROM events WHERE detail LIKE '%expired; reclaimed'") == [(0,)]


@pytest.mark.timeout(180)
def test_a_killed_worker_an_hour_ahead_leaves_a_lease_that_expires_on_time(tmp_path, run_imgq, db_path):
    skew = _skewed()
    one_big_photo(tmp_path, run_imgq)
    ahead = start(tmp_path, "work", "-j1", "--lease", "3", "--drain", prefix=skew)
    try:
        holder_pid(db_path)
    finally:
        kill_group(ahead)
    [(until,)] = q(db_path, "SELECT lease_until FROM jobs WHERE state = 'leased'")
    assert until - time.time() <= 3 + 1, f"the lease runs {until - time.time():.0f} s more, not 3"
    started = time.monotonic()
    done = run_imgq("work", "-j1", "--drain", timeout=120)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 60
    assert q(db_path, "SELECT state FROM jobs") == [("done",)]
    assert q(db_path, "SELECT count(*) FROM events WHERE detail LIKE '%expired; reclaimed'") == [(1,)]


# ---- item 8c: one store, one database ---------------------------------------------------------


def test_a_second_database_is_refused_a_store_another_one_owns(tmp_path, run_imgq):
    inbox = samples.make_inbox(tmp_path / "inbox", photographers=("alice",), per_owner=1, size=(640, 480),
                               with_rotated=False, with_duplicate=False, with_broken=False, with_loose=False)
    shared = tmp_path / "shared-store"
    (tmp_path / "imgq.toml").write_text(f"store = {json.dumps(str(shared))}\n")
    for name in ("a.db", "b.db"):
        ids = run_imgq("scan", "--db", name, inbox).stdout
        assert run_imgq("enqueue", "--db", name, "-", input=ids).returncode == 0
    first = run_imgq("work", "--db", "a.db", "-j1", "--drain")
    assert first.returncode == 0, first.stderr
    made = {p: sha256(p) for p in shared.rglob("*.jpg") if p.is_file()}
    assert made

    second = run_imgq("work", "--db", "b.db", "-j1", "--drain")
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgq: error: store ")
    assert str(tmp_path / "a.db") in lines[0] and str(tmp_path / "b.db") in lines[0] and str(shared) in lines[0]
    assert {p: sha256(p) for p in shared.rglob("*.jpg") if p.is_file()} == made, "nothing of the first database's was replaced"
    assert {s for (s,) in q(tmp_path / "b.db", "SELECT state FROM jobs")} == {"ready"}

    again = run_imgq("work", "--db", "a.db", "-j1", "--drain")
    assert again.returncode == 0, "the owner keeps using its store"
