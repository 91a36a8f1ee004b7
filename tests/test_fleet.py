"""imgq work --hosts against real sshd hosts (tests/sshhosts.py): the "remote" imgq is this
virtualenv's, started over SSH exactly as on a real host.

What a user cares about: the artifacts are the ones local processing makes, byte for byte;
a host that dies, hangs, lacks a library, is added or removed costs no job and runs no job
twice; nothing a file or folder is called ever reaches a shell; an unknown host is refused.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import imgq_env, imgq_subprocess, query
from imgq import samples
from imgq.fleet import hosts, protocol
from imgq.errors import UsageError
from imgq.fleet.coordinator import RELOAD_SECONDS
from sshhosts import process_tree, ssh_hosts  # noqa: F401

pytestmark = pytest.mark.timeout(150)

# The agent runs from this virtualenv's console script, as `--remote-imgq /venv/bin/imgq`
# would on a real host: sshd gives the session a clean environment, not ours.
REMOTE_IMGQ = str(Path(sys.executable).parent / "imgq")
SLOW_OPS = ["bilateral:15|fit:400x300", "bilateral:13|fit:400x300", "bilateral:17|fit:400x300", "median:15|fit:400x300"]


# --- helpers --------------------------------------------------------------------------------


def imgq(cwd, *args, timeout=120) -> subprocess.CompletedProcess:
    return imgq_subprocess(*args, cwd=cwd, timeout=timeout)


def start(cwd, *args) -> subprocess.Popen:
    """A coordinator running in the background (python -m imgq ARGS)."""
    return subprocess.Popen(
        [sys.executable, "-m", "imgq", *map(str, args)], cwd=cwd, env=imgq_env(), text=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def fleet_args(hosts_, *extra) -> list[str]:
    cfg = hosts_[0].ssh_config
    return ["--ssh-config", cfg, "--remote-imgq", REMOTE_IMGQ, *extra]


def done_by(db: Path, host: str) -> int:
    return query(db, "SELECT count(*) FROM events WHERE entity = 'job' AND to_state = 'done' AND host = ?", (host,))[0][0]


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"coordinator ended (exit {proc.returncode}) before {what}:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def assert_each_job_done_exactly_once(db: Path) -> None:
    states = dict(query(db, "SELECT state, count(*) FROM jobs GROUP BY state"))
    assert set(states) == {"done"}, states
    twice = query(db, "SELECT job_id, count(*) FROM events WHERE entity = 'job' AND to_state = 'done' GROUP BY job_id HAVING count(*) != 1")
    assert twice == []
    # every job but a stripe of a split image (kept as a part until its join) has artifacts
    jobs = query(db, "SELECT count(*) FROM jobs WHERE stage NOT LIKE 'stripe:%'")[0][0]
    artifacts = query(db, "SELECT count(DISTINCT job_id) FROM artifacts")[0][0]
    assert artifacts == jobs
    rejected = query(db, "SELECT detail FROM events WHERE detail LIKE '%from the host does not verify%' OR detail LIKE '%arrived damaged%'")
    assert rejected == []


def status(cwd) -> dict:
    r = imgq(cwd, "status", "--json")
    assert r.returncode == 0, r.stderr
    return {h["host"]: h for h in json.loads(r.stdout)["fleet"]}


def agents_under(host) -> list[int]:
    """Pids of `imgq agent` processes in a host's process tree (its sshd and sessions)."""
    pids = []
    for pid in process_tree(host.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"agent" in argv and any(a.endswith(b"imgq") for a in argv):
            pids.append(pid)
    return pids


@pytest.fixture(scope="module")
def slow_inbox(tmp_path_factory) -> Path:
    """16 photos of 800x600 shared (read-only) by the tests that need a run lasting a while."""
    root = tmp_path_factory.mktemp("slow") / "inbox"
    samples.make_inbox(root, count=16, size=(800, 600), with_duplicate=False, with_broken=False, with_loose=False, with_rotated=True)
    return root


def queue_slow_jobs(cwd: Path, inbox: Path, ops=SLOW_OPS) -> int:
    """Scan the inbox into cwd/imgq.db and enqueue one job per photo per op: ~0.2 s each."""
    assert imgq(cwd, "scan", inbox).returncode == 0
    for op in ops:
        r = imgq(cwd, "enqueue", "--op", op)
        assert r.returncode == 0, r.stderr
    return query(cwd / "imgq.db", "SELECT count(*) FROM jobs")[0][0]


# --- no SSH needed --------------------------------------------------------------------------


def test_protocol_round_trip_and_garbage():
    blob = os.urandom(1000)
    frame = b"".join(bytes(p) for p in protocol.encode({"type": "job", "job": 7, "name": "ünï"}, blob))
    (size,) = protocol.FRAME.unpack(frame[:8])
    header, back = protocol.read_message(io.BytesIO(frame).read, limit=lambda h, n: n)
    assert size == len(frame) - 8 and header == {"type": "job", "job": 7, "name": "ünï"} and bytes(back) == blob
    for bad in [b"", b"\0\0\0\x09{}", b"\0\0\0\x02[]", b"\0\0\0\x05nope!", b"\xff\xff\xff\xff"]:
        with pytest.raises(protocol.ProtocolError):
            protocol.read_message(io.BytesIO(protocol.FRAME.pack(len(bad)) + bad).read, limit=lambda h, n: n)


def test_hosts_file_syntax(tmp_path):
    f = tmp_path / "hosts.txt"
    f.write_text("# the render farm\n\ngpu1/8\nalice@render2:2222  /opt/imgq/venv/bin/imgq  # a venv\n"
                 "render3 'python3' -m imgq\ngpu1/2\n")
    entries = hosts.read_hosts_file(f, remote_imgq=("imgq",))
    assert [(e.name, e.spec.slots, e.remote_imgq) for e in entries] == [
        ("gpu1", 8, ("imgq",)),  # the first of a repeated host wins
        ("alice@render2:2222", None, ("/opt/imgq/venv/bin/imgq",)),
        ("render3", None, ("python3", "-m", "imgq")),
    ]
    assert hosts.split_hosts_option(["a,b/2", " c "]) == ["a", "b/2", "c"]
    f.write_text("gpu1\ngpu2:99999\n")
    with pytest.raises(UsageError, match=r"hosts.txt: line 2: .*bad host spec"):
        hosts.read_hosts_file(f)


def test_a_hosts_file_being_edited_keeps_the_last_good_list(tmp_path):
    f = tmp_path / "hosts.txt"
    f.write_text("gpu1\ngpu2/4 /opt/venv/bin/imgq\n")
    watched = hosts.HostsFile(f)
    assert watched.refresh() is None and [e.name for e in watched.entries] == ["gpu1", "gpu2"]
    f.write_text("gpu1\ngpu3:0\n")  # half-typed
    assert "port 0" in watched.refresh() and [e.name for e in watched.entries] == ["gpu1", "gpu2"]
    f.unlink()
    assert "cannot read hosts file" in watched.refresh() and len(watched.entries) == 2
    f.write_text("gpu3\n")
    assert watched.refresh() is None and [e.name for e in watched.entries] == ["gpu3"]


def test_preflight_verdict_names_each_problem():
    good = {"protocol": protocol.PROTOCOL, "version": hosts.__version__, "cores": 4, "free_disk": 10 * 2**30, "errors": {}}
    assert hosts.check_hello(good) == []
    bad = dict(good, version="0.0.1", errors={"opencv": "ImportError: no cv2"}, free_disk=2**20)
    problems = " | ".join(hosts.check_hello(bad))
    assert "imgq 0.0.1 on the host" in problems and "opencv does not import (import cv2: ImportError: no cv2)" in problems
    assert "1 MB free" in problems


def test_artifacts_arriving_together_verify_independently(tmp_path):
    """The coordinator checks artifacts in several threads; Pillow's limits are process-wide,
    so a check must never see another's (a 160x120 image once failed a 120x90 limit)."""
    import concurrent.futures
    import io

    from PIL import Image

    from imgq.fleet import arrival

    blobs = {}
    for w, h in [(120, 90), (160, 120), (640, 480), (64, 48)]:
        buf = io.BytesIO()
        samples.render(w, h, seed=w).save(buf, "JPEG", quality=85)
        blobs[(w, h)] = buf.getvalue()
    Image.open(io.BytesIO(blobs[(120, 90)])).verify()

    def one(i):
        (w, h), data = list(blobs.items())[i % len(blobs)]
        arrival._write_verified(tmp_path / f"{i}.jpg", data, w, h)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(400)))
    assert len(list(tmp_path.glob("*.jpg"))) == 400 and not list(tmp_path.glob(".*"))


# --- real hosts -------------------------------------------------------------------------------


def test_batch_over_three_hosts_is_byte_identical_to_local(ssh_hosts, tmp_path):
    hs = ssh_hosts(3)
    inbox = samples.make_inbox(tmp_path / "inbox", per_owner=3, size=(1200, 900))
    runs = {}
    for name, args in [("local", ["-j", "2"]), ("hosts", ["--hosts", "host11/1,host12/1,host13/1", "--prefetch", "1", *fleet_args(hs)])]:
        cwd = tmp_path / name
        cwd.mkdir()
        assert imgq(cwd, "scan", inbox).returncode == 0
        assert imgq(cwd, "enqueue").returncode == 0
        assert imgq(cwd, "enqueue", "--op", "web|sharpness:1.5|gaussian:1.5", "--op", "thumb|gray").returncode == 0
        r = imgq(cwd, "work", *args)
        assert r.returncode == 1, r.stderr  # the truncated JPEG fails, on both
        assert "truncated" in r.stderr and str(inbox) in r.stderr
        rows = query(cwd / "imgq.db", "SELECT f.path, a.name, a.path, a.sha256 FROM artifacts a JOIN files f ON f.id = a.file_id")
        runs[name] = {(p, n): (cwd / "imgq-store" / ap).read_bytes() for p, n, ap, _ in rows}
        assert all(len(v) > 0 for v in runs[name].values())
        failed = query(cwd / "imgq.db", "SELECT f.path, j.error_kind FROM jobs j JOIN files f ON f.id = j.file_id WHERE j.state = 'failed'")
        assert {k for _, k in failed} == {"permanent"} and all("truncated" in p for p, _ in failed)
    assert runs["hosts"].keys() == runs["local"].keys() and len(runs["local"]) >= 30
    different = [k for k in runs["local"] if runs["local"][k] != runs["hosts"][k]]
    assert different == []
    db = tmp_path / "hosts" / "imgq.db"
    assert all(done_by(db, h.alias) > 0 for h in hs)  # spread over all three
    assert query(db, "SELECT count(*) FROM events WHERE to_state = 'done' AND host NOT IN ('host11', 'host12', 'host13')")[0][0] == 0
    fleet = status(tmp_path / "hosts")
    assert {h: (fleet[h]["state"], fleet[h]["slots"]) for h in fleet} == {h.alias: ("stopped", 1) for h in hs}
    assert sum(f["done"] for f in fleet.values()) == query(db, "SELECT count(*) FROM jobs WHERE state = 'done'")[0][0]
    counts = json.loads(query(db, "SELECT counts FROM runs WHERE command = 'work'")[0][0])
    assert counts["bytes_out"] > sum(p.stat().st_size for p in Path(inbox).rglob("*.jpg") if p.is_file()) * 0.8


def test_dead_and_hung_hosts_lose_no_job_and_run_none_twice(ssh_hosts, tmp_path, slow_inbox):
    dead, hung, good = ssh_hosts(3)
    total = queue_slow_jobs(tmp_path, slow_inbox, SLOW_OPS[:3])
    db = tmp_path / "imgq.db"
    # leases far longer than the test: jobs can only come back because the loss was noticed
    p = start(tmp_path, "work", "--hosts", "host11/1,host12/1,host13/1", "--prefetch", "1", "--host-timeout", "3", "--lease", "300", *fleet_args([good]))
    try:
        wait_for(lambda: all(done_by(db, h.alias) for h in (dead, hung, good)), 60, "every host to finish a job", p)
        fault = time.time()
        dead.kill()  # sshd and the agent, SIGKILL
        hung.stop()  # SIGSTOP: the kernel still answers TCP, nothing else does
        out, err = p.communicate(timeout=100)
    finally:
        hung.cont()
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert time.time() - fault < 60  # not waiting out a 300 s lease
    assert_each_job_done_exactly_once(db)
    assert sorted(out.split()) == sorted(i for (i,) in query(db, "SELECT id FROM files WHERE state = 'processed'"))  # each once
    later = query(db, "SELECT DISTINCT host FROM events WHERE entity = 'job' AND to_state = 'done' AND at > ?", (fault + 1,))
    assert later == [("host13",)]
    assert done_by(db, "host13") < total  # the others did their share before
    fleet = status(tmp_path)
    assert fleet["host11"]["state"] == "benched" and fleet["host12"]["state"] == "benched"
    assert fleet["host11"]["reason"] and fleet["host12"]["reason"]
    assert fleet["host11"]["lost"] == 1 and fleet["host12"]["lost"] == 1
    assert fleet["host13"]["state"] == "stopped"
    shown = imgq(tmp_path, "status").stdout
    assert "benched" in shown and "host12" in shown
    assert "host host11 benched" in err and "host host12 benched" in err
    requeued = query(db, "SELECT count(*) FROM events WHERE entity = 'job' AND from_state = 'leased' AND to_state = 'ready' AND detail LIKE '%lost%'")[0][0]
    assert requeued >= 2


def test_host_without_opencv_is_benched_by_preflight_and_fails_no_job(ssh_hosts, tmp_path):
    good, broken = ssh_hosts(2)
    fake = tmp_path / "broken-env"
    fake.mkdir()
    (fake / "cv2.py").write_text("raise ImportError('libGL.so.1: cannot open shared object file (simulated)')\n")
    wrapper = tmp_path / "broken-imgq"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={fake} exec {REMOTE_IMGQ} "$@"\n')
    wrapper.chmod(0o755)
    hosts_file = tmp_path / "hosts.txt"
    hosts_file.write_text(f"host11/2\nhost12/2 {wrapper}\n")

    r = imgq(tmp_path, "hosts", "check", "--hosts-file", hosts_file, "--ssh-config", good.ssh_config, "--remote-imgq", REMOTE_IMGQ)
    assert r.returncode == 1
    lines = dict(line.split(": ", 1) for line in r.stdout.splitlines())
    assert lines["host11"].startswith("ok: imgq ") and "opencv" in lines["host11"]
    assert lines["host12"].startswith("FAILED (preflight)") and "cv2" in lines["host12"] and "libGL" in lines["host12"]

    inbox = samples.make_inbox(tmp_path / "inbox", per_owner=2, size=(640, 480), with_broken=False)
    assert imgq(tmp_path, "scan", inbox).returncode == 0
    assert imgq(tmp_path, "enqueue").returncode == 0
    r = imgq(tmp_path, "work", "--hosts-file", hosts_file, "--ssh-config", good.ssh_config, "--remote-imgq", REMOTE_IMGQ)
    assert r.returncode == 0, r.stderr
    db = tmp_path / "imgq.db"
    assert_each_job_done_exactly_once(db)
    assert done_by(db, "host12") == 0
    assert query(db, "SELECT count(*) FROM events WHERE entity = 'job' AND host = 'host12'")[0][0] == 0  # never given one
    fleet = status(tmp_path)
    assert fleet["host12"]["state"] == "benched" and "cv2" in fleet["host12"]["reason"]
    # host states are journalled like files and jobs: each change an event, benching with its reason
    changes = query(db, "SELECT from_state, to_state, detail FROM events WHERE entity = 'host' AND host = 'host12' ORDER BY id")
    assert [(a, b) for a, b, _ in changes[:3]] == [(None, "new"), ("new", "connecting"), ("connecting", "benched")]
    assert changes[2][2].startswith("preflight: ") and "cv2" in changes[2][2]
    assert fleet["host11"]["done"] == query(db, "SELECT count(*) FROM jobs")[0][0]
    # imgq itself may or may not import OpenCV at start-up: either way the host is named
    assert "host host12 benched: preflight: " in r.stderr and "cv2" in r.stderr


def test_hosts_file_edited_while_running(ssh_hosts, tmp_path, slow_inbox):
    a, b, c = ssh_hosts(3)
    queue_slow_jobs(tmp_path, slow_inbox, SLOW_OPS[:2])
    db = tmp_path / "imgq.db"
    hosts_file = tmp_path / "hosts.txt"
    hosts_file.write_text(f"host11/1\nhost12/1 {REMOTE_IMGQ}\n")
    p = start(tmp_path, "work", "--follow", "--poll", "0.2", "--hosts-file", hosts_file, "--prefetch", "1", *fleet_args([a]))
    try:
        wait_for(lambda: done_by(db, "host11") and done_by(db, "host12"), 60, "both hosts to finish a job", p)
        edited = time.time()
        tmp = hosts_file.with_name("hosts.new")
        tmp.write_text("# host12 is gone, host13 joins\nhost11/1\nhost13/1\n")
        os.replace(tmp, hosts_file)
        # more work arrives while it runs (--follow): host13 must get some
        assert imgq(tmp_path, "enqueue", "--op", SLOW_OPS[2]).returncode == 0
        wait_for(lambda: done_by(db, "host13") > 0, 60, "host13 to finish a job", p)
        wait_for(lambda: query(db, "SELECT count(*) FROM jobs WHERE state != 'done'")[0][0] == 0, 90, "the queue to drain", p)
        wait_for(lambda: status(tmp_path)["host12"]["state"] == "removed", 20, "host12 to be removed", p)
    finally:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert_each_job_done_exactly_once(db)
    # host12 finished what it held and took nothing new once the file was re-read
    late = query(db, "SELECT count(*) FROM events WHERE entity = 'job' AND to_state = 'leased' AND host = 'host12' AND at > ?", (edited + RELOAD_SECONDS + 1.0,))
    assert late == [(0,)]
    assert "host host12 draining" in err and "host host12 removed" in err
    wait_for(lambda: not agents_under(b), 15, "host12's agent to exit")


def test_hostile_owner_and_file_names_on_a_remote_host(ssh_hosts, tmp_path):
    (h,) = ssh_hosts(1)
    marker = Path("/tmp/PWNED")
    marker.unlink(missing_ok=True)
    inbox = tmp_path / "inbox"
    owner = inbox / "$(touch /tmp/PWNED)"
    names = ["a;b.jpg", "it's \"quoted\".jpg", "new\nline.jpg", "$(touch /tmp/PWNED).jpg", "`touch /tmp/PWNED`;x.jpg", "-rf .jpg"]
    for i, name in enumerate(names):
        samples.make_photo(owner / name, width=640, height=480, seed=900 + i)
        os.utime(owner / name, (time.time() - 600,) * 2)
    for mode, extra in [("staged", []), ("shared", ["--shared-root", tmp_path])]:
        cwd = tmp_path / mode
        cwd.mkdir()
        assert imgq(cwd, "scan", inbox).returncode == 0
        assert imgq(cwd, "enqueue").returncode == 0
        r = imgq(cwd, "work", "--hosts", "host11", *fleet_args([h]), *extra)
        assert r.returncode == 0, r.stderr
        db = cwd / "imgq.db"
        assert_each_job_done_exactly_once(db)
        assert sorted(p for (p,) in query(db, "SELECT path FROM files WHERE state = 'processed'")) == sorted(f"$(touch /tmp/PWNED)/{n}" for n in names)
        assert done_by(db, "host11") == len(names)
        assert not marker.exists(), f"a name was run by a shell ({mode})"
    staged = json.loads(query(tmp_path / "staged" / "imgq.db", "SELECT counts FROM runs WHERE command = 'work'")[0][0])
    shared = json.loads(query(tmp_path / "shared" / "imgq.db", "SELECT counts FROM runs WHERE command = 'work'")[0][0])
    assert staged["bytes_out"] > 6 * 50_000 > shared["bytes_out"]  # paths, not photos, went out


def test_unknown_host_key_is_refused_by_default(ssh_hosts, tmp_path):
    (h,) = ssh_hosts(1, known=False)
    inbox = samples.make_inbox(tmp_path / "inbox", per_owner=1, size=(320, 240), with_broken=False, with_duplicate=False)
    assert imgq(tmp_path, "scan", inbox).returncode == 0
    assert imgq(tmp_path, "enqueue").returncode == 0
    r = imgq(tmp_path, "hosts", "check", h.alias, "--ssh-config", h.ssh_config, "--remote-imgq", REMOTE_IMGQ)
    assert r.returncode == 1 and "FAILED (connect)" in r.stdout and "is unknown" in r.stdout and "--accept-new-host-keys" in r.stdout
    r = imgq(tmp_path, "work", "--hosts", h.alias, *fleet_args([h]))
    assert r.returncode == 1 and "no host can work" in r.stderr and "is unknown" in r.stderr
    db = tmp_path / "imgq.db"
    assert query(db, "SELECT DISTINCT state FROM jobs") == [("ready",)]  # nothing failed, nothing ran
    assert h.host_key_pub.split()[1] not in h.fleet.known_hosts.read_text()
    r = imgq(tmp_path, "work", "--hosts", h.alias, "--accept-new-host-keys", *fleet_args([h]))
    assert r.returncode == 0, r.stderr
    assert_each_job_done_exactly_once(db)
    assert h.host_key_pub.split()[1] in h.fleet.known_hosts.read_text()


def test_killed_coordinator_restarts_without_redoing_work_beside_a_local_one(ssh_hosts, tmp_path, slow_inbox):
    (h,) = ssh_hosts(1)
    queue_slow_jobs(tmp_path, slow_inbox, SLOW_OPS[:2])
    db = tmp_path / "imgq.db"
    local = start(tmp_path, "work", "-j", "1", "--lease", "3")  # a second coordinator, local workers only
    fleet = start(tmp_path, "work", "--hosts", "host11/1", "--lease", "3", *fleet_args([h]))
    try:
        wait_for(lambda: done_by(db, "host11") >= 2, 60, "host11 to finish two jobs", fleet)
        fleet.send_signal(signal.SIGKILL)
        fleet.wait(10)
        killed = time.time()
        done_before = {j for (j,) in query(db, "SELECT id FROM jobs WHERE state = 'done'")}
        wait_for(lambda: not agents_under(h), 15, "the orphaned agent to exit")  # its stdin closed
        again = imgq(tmp_path, "work", "--hosts", "host11/1", "--lease", "3", *fleet_args([h]), timeout=120)
        assert again.returncode == 0, again.stderr
        local.wait(60)
    finally:
        for p in (local, fleet):
            if p.poll() is None:
                p.kill()
    assert local.returncode == 0
    assert_each_job_done_exactly_once(db)
    redone = query(db, f"SELECT count(*) FROM events WHERE entity = 'job' AND at > ? AND job_id IN ({','.join(map(str, done_before))})", (killed,))
    assert redone == [(0,)]
    # the killed coordinator's leases expired and were taken over, by either coordinator
    assert query(db, "SELECT count(*) FROM events WHERE entity = 'job' AND detail LIKE '%expired; reclaimed'")[0][0] >= 1
    hosts_seen = {hh for (hh,) in query(db, "SELECT DISTINCT host FROM events WHERE entity = 'job' AND to_state = 'done'")}
    assert "host11" in hosts_seen and len(hosts_seen) == 2  # and the local one's hostname


def test_stages_of_a_split_image_run_on_the_coordinator(ssh_hosts, tmp_path):
    """Stripes and joins read and write intermediate stripes in the coordinator's store:
    they run there, the rest of the work on the host."""
    (h,) = ssh_hosts(1)
    inbox = samples.make_inbox(tmp_path / "inbox", per_owner=1, size=(800, 600), with_broken=False, with_duplicate=False, with_loose=False)
    assert imgq(tmp_path, "scan", inbox).returncode == 0
    assert imgq(tmp_path, "enqueue", "--op", "bilateral|fit:400x300", "--split", "--split-pixels", "100000", "--stripes", "2").returncode == 0
    assert imgq(tmp_path, "enqueue").returncode == 0
    r = imgq(tmp_path, "work", "--hosts", "host11", *fleet_args([h]))
    assert r.returncode == 0, r.stderr
    db = tmp_path / "imgq.db"
    assert_each_job_done_exactly_once(db)
    where = dict(query(db, "SELECT DISTINCT j.stage = '', e.host FROM events e JOIN jobs j ON j.id = e.job_id WHERE e.to_state = 'done'"))
    assert where == {1: "host11", 0: socket.gethostname()}


def test_no_stripe_part_is_left_in_the_store_after_a_split_image_under_hosts(ssh_hosts, tmp_path):
    """The coordinator settles a join like a local worker does: once the join is recorded,
    the lossless stripes of the split image are removed from the store."""
    (h,) = ssh_hosts(1)
    inbox = samples.make_inbox(tmp_path / "inbox", per_owner=1, size=(800, 600), with_broken=False, with_duplicate=False, with_loose=False)
    assert imgq(tmp_path, "scan", inbox).returncode == 0
    assert imgq(tmp_path, "enqueue", "--op", "bilateral|fit:400x300", "--split", "--split-pixels", "100000", "--stripes", "2").returncode == 0
    r = imgq(tmp_path, "work", "--hosts", "host11", *fleet_args([h]))
    assert r.returncode == 0, r.stderr
    db = tmp_path / "imgq.db"
    assert_each_job_done_exactly_once(db)
    assert query(db, "SELECT count(*) FROM jobs WHERE stage LIKE 'join%'")[0][0] >= 1  # a split image was joined
    store = tmp_path / "imgq-store"
    assert store.is_dir()
    assert [p for p in store.rglob("*") if "parts" in p.parts] == []


def test_local_workers_beside_the_hosts(ssh_hosts, tmp_path, slow_inbox):
    (h,) = ssh_hosts(1)
    queue_slow_jobs(tmp_path, slow_inbox, SLOW_OPS[:1])
    r = imgq(tmp_path, "work", "-j", "1", "--hosts", "host11/1", *fleet_args([h]))
    assert r.returncode == 0, r.stderr
    db = tmp_path / "imgq.db"
    assert_each_job_done_exactly_once(db)
    workers = dict(query(db, "SELECT host, count(*) FROM events WHERE entity = 'job' AND to_state = 'done' GROUP BY host"))
    assert workers.keys() == {"host11", socket.gethostname()}, workers
    assert sorted(r.stdout.split()) == sorted(i for (i,) in query(db, "SELECT id FROM files WHERE state = 'processed'"))
    counts = json.loads(query(db, "SELECT counts FROM runs WHERE command = 'work'")[0][0])
    assert counts["done"] == sum(workers.values())  # the local workers' jobs are counted too
