"""What an agent sends is checked, never trusted; what the coordinator sends is the journal's.

Fuzzed agent replies (issue 8, item 7 and the chaos suite): a fake agent
(tests/fake_agent.py, a real program started over a real SSH session to a test sshd, named
as the host's imgq command in the hosts file) answers its first job wrongly in one way per
case. For each: the coordinator does not crash (exit 0: a second, good host did every
job), the fake host is benched with the reason shown by ``imgq status``, and the journal
has one ``done`` per job and no job left leased.

Inputs (item 4, fleet side): the coordinator reads an original by identity and sends only
bytes whose sha256 is the journal's; with --shared-root the agent opens it the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import imgq_subprocess, query
from imgq import samples
from imgq.fleet import protocol
from imgq.store import OWNER_MARK
from sshhosts import ssh_hosts  # noqa: F401

pytestmark = pytest.mark.timeout(120)

REMOTE_IMGQ = str(Path(sys.executable).parent / "imgq")
FAKE_AGENT = Path(__file__).with_name("fake_agent.py")
MODES = ["bad_json", "wrong_name", "duplicate", "missing", "empty", "sizes", "big_field", "big_frame",
         "wrong_pixels", "not_jpeg", "truncated", "hang", "twice"]
# what `imgq status` must show as the fake host's reason, per case
REASONS = {
    "bad_json": "header is not JSON",
    "wrong_name": "artifact 'not-in-the-recipe' the recipe does not make",
    "duplicate": "more than once",
    "missing": "lacks artifact",
    "empty": "lacks artifact",
    "sizes": "add up to",
    "big_field": "more than its chain can make",
    "big_frame": "more than it can carry",
    "wrong_pixels": "larger than its chain can make",
    "not_jpeg": "not a JPEG",
    "truncated": "ended",
    "hang": "timed out",
    "twice": "answered already",
}


def imgq(cwd, *args, timeout=90):
    return imgq_subprocess(*args, cwd=cwd, timeout=timeout)


def assert_each_job_done_once(db: Path) -> None:
    assert query(db, "SELECT state, count(*) FROM jobs GROUP BY state") == [("done", query(db, "SELECT count(*) FROM jobs")[0][0])]
    twice = query(db, "SELECT job_id, count(*) FROM events WHERE entity = 'job' AND to_state = 'done' GROUP BY job_id HAVING count(*) != 1")
    assert twice == []
    # every job made every artifact of its recipe (default: thumb and web), once
    per_job = query(db, "SELECT j.id, count(a.name), count(DISTINCT a.name) FROM jobs j LEFT JOIN artifacts a ON a.job_id = j.id GROUP BY j.id")
    assert all(n == distinct == 2 for _, n, distinct in per_job), per_job


@pytest.fixture(scope="module")
def queued(tmp_path_factory) -> Path:
    """A database with 6 photos scanned and queued (default recipe), copied by each case."""
    root = tmp_path_factory.mktemp("replies")
    samples.make_inbox(root / "inbox", per_owner=2, size=(640, 480), with_broken=False, with_duplicate=False, with_loose=False)
    assert imgq(root, "scan", root / "inbox").returncode == 0
    assert imgq(root, "enqueue").returncode == 0
    return root


def copy_queue(src: Path, dest: Path) -> Path:
    dest.mkdir()
    out = sqlite3.connect(dest / "imgq.db")
    with sqlite3.connect(src / "imgq.db") as conn:
        conn.backup(out)
    out.close()
    return dest / "imgq.db"


@pytest.mark.parametrize("mode", MODES)
def test_a_bad_reply_benches_the_host_and_its_jobs_run_elsewhere_once(ssh_hosts, tmp_path, queued, mode):
    fake, good = ssh_hosts(2)
    db = copy_queue(queued, tmp_path / "run")
    cwd = db.parent
    hosts_file = cwd / "hosts.txt"
    hosts_file.write_text(f"{fake.alias}/1 {sys.executable} {FAKE_AGENT} {mode}\n{good.alias}/1\n")
    started = time.monotonic()
    r = imgq(cwd, "work", "--hosts-file", hosts_file, "--ssh-config", fake.ssh_config, "--remote-imgq", REMOTE_IMGQ,
             "--host-timeout", "3", "--prefetch", "1")
    took = time.monotonic() - started
    assert r.returncode == 0, r.stderr  # no crash; every job done (by the good host)
    assert took < 20, f"{mode}: took {took:.0f} s"
    assert "Traceback" not in r.stderr
    assert_each_job_done_once(db)
    # the fake host held a job, did none, and is benched with the reason
    assert query(db, "SELECT count(*) FROM events WHERE entity = 'job' AND to_state = 'leased' AND host = ?", (fake.alias,))[0][0] >= 1
    # (a reply sent twice: the first, a good one, may be settled before the second arrives)
    done_by_fake = query(db, "SELECT count(*) FROM events WHERE entity = 'job' AND to_state = 'done' AND host = ?", (fake.alias,))[0][0]
    assert done_by_fake <= (1 if mode == "twice" else 0)
    st = imgq(cwd, "status", "--json")
    fleet = {h["host"]: h for h in json.loads(st.stdout)["fleet"]}
    assert fleet[fake.alias]["state"] == "benched", fleet
    assert REASONS[mode] in fleet[fake.alias]["reason"], fleet[fake.alias]["reason"]
    shown = imgq(cwd, "status").stdout
    assert fake.alias in shown and "benched" in shown
    # nothing half-written left in the store (spilled replies, temporary artifacts)
    store = cwd / "imgq-store"
    assert [p for p in store.rglob("*") if p.name.startswith(".") and p.name != OWNER_MARK] == []  # (the marker saying whose store it is stays)


# --- the frame limit, without SSH ------------------------------------------------------------


def test_a_frame_over_its_limit_is_refused_before_its_blob_is_read(tmp_path):
    """The limit is checked on the header alone: a writer that sends only the header of a
    2 GiB message is refused at once (a reader that tried to read the blob would wait)."""
    r, w = os.pipe()
    head = json.dumps({"type": "done", "job": 1}).encode()
    os.write(w, protocol.FRAME.pack(4 + len(head) + (2 << 30)) + protocol.HEAD.pack(len(head)) + head)
    with os.fdopen(r, "rb") as stream:
        t = threading.Timer(10, lambda: os.close(w))  # unblocks a reader that waits for the blob
        t.start()
        try:
            with pytest.raises(protocol.ProtocolError, match="more than it can carry"):
                protocol.read_message(stream.read, limit=lambda header, size: 1 << 20)
        finally:
            t.cancel()
    os.close(w)


def test_a_big_blob_is_streamed_to_a_file_not_held(tmp_path):
    blob = os.urandom(3 << 20)
    data = b"".join(bytes(p) for p in protocol.encode({"type": "done", "job": 3}, blob))
    r, w = os.pipe()
    threading.Thread(target=lambda: (os.write(w, data), os.close(w)), daemon=True).start()
    with os.fdopen(r, "rb") as stream:
        header, got = protocol.read_message(stream.read, limit=lambda h, n: n, spill_dir=tmp_path, spill_over=1 << 20)
    assert header == {"type": "done", "job": 3}
    assert isinstance(got, protocol.FileBlob) and got.path.parent == tmp_path and got.path.stat().st_size == len(blob)
    assert bytes(got) == blob and protocol.sha256_of(got, 100, 1000) == __import__("hashlib").sha256(blob[100:1100]).hexdigest()
    got.close()
    assert list(tmp_path.iterdir()) == []


# --- inputs: sent or opened by identity --------------------------------------------------------


def scanned(tmp_path: Path, inbox: Path) -> Path:
    cwd = tmp_path / "run"
    cwd.mkdir()
    assert imgq(cwd, "scan", inbox).returncode == 0
    assert imgq(cwd, "enqueue").returncode == 0
    return cwd


def swap_inputs(inbox: Path, private: Path) -> tuple[Path, Path]:
    """After the scan: one photo rewritten in place (same size, other bytes), another
    replaced by a symlink to a private file outside the inbox holding the same bytes (so
    only the symlink, not the hash, gives it away). Returns (changed, linked)."""
    photos = sorted(p for p in inbox.rglob("*.jpg") if p.is_file())
    changed, linked = photos[0], photos[1]
    data = bytearray(changed.read_bytes())
    data[-100] ^= 0xFF  # inside the entropy-coded data: still decodes, other sha256
    changed.write_bytes(bytes(data))
    private.write_bytes(linked.read_bytes())
    linked.unlink()
    linked.symlink_to(private)
    return changed, linked


@pytest.mark.parametrize("mode", ["staged", "shared"])
def test_inputs_are_read_by_identity_and_must_be_what_was_scanned(ssh_hosts, tmp_path, mode):
    (h,) = ssh_hosts(1)
    inbox = Path(samples.make_inbox(tmp_path / "inbox", per_owner=2, size=(640, 480), with_broken=False, with_duplicate=False, with_loose=False).root)
    cwd = scanned(tmp_path, inbox)
    private = tmp_path / "private.jpg"
    changed, linked = swap_inputs(inbox, private)
    extra = ["--shared-root", tmp_path] if mode == "shared" else []
    r = imgq(cwd, "work", "--hosts", f"{h.alias}/1", "--ssh-config", h.ssh_config, "--remote-imgq", REMOTE_IMGQ, *extra)
    assert r.returncode == 1, r.stderr  # two files failed, each named
    db = cwd / "imgq.db"
    failed = dict(query(db, "SELECT f.path, j.error FROM jobs j JOIN files f ON f.id = j.file_id WHERE j.state = 'failed'"))
    kinds = {k for (k,) in query(db, "SELECT DISTINCT error_kind FROM jobs WHERE state = 'failed'")}
    rel = lambda p: str(p.relative_to(inbox))  # noqa: E731
    assert set(failed) == {rel(changed), rel(linked)} and kinds == {"permanent"}, failed
    assert "changed in the inbox" in failed[rel(changed)] and changed.name in failed[rel(changed)]
    assert "symlink" in failed[rel(linked)] and linked.name in failed[rel(linked)]
    # the others were done on the host, which stays in service: the files were bad, not it
    others = query(db, "SELECT count(*) FROM jobs WHERE state = 'done' AND host = ?", (h.alias,))[0][0]
    assert others == query(db, "SELECT count(*) FROM jobs")[0][0] - 2
    fleet = {x["host"]: x for x in json.loads(imgq(cwd, "status", "--json").stdout)["fleet"]}
    assert fleet[h.alias]["state"] == "stopped"
    assert not any(p for p in (cwd / "imgq-store").rglob("*") if rel_id_of(db, linked) in str(p))
    shutil.rmtree(cwd / "imgq-store", ignore_errors=True)


def rel_id_of(db: Path, photo: Path) -> str:
    return query(db, "SELECT id FROM files WHERE path LIKE ?", (f"%{photo.name}",))[0][0]


def test_a_reply_bigger_than_memory_is_spilled_and_lands_intact(ssh_hosts, tmp_path):
    """An artifact over protocol.SPILL_BYTES travels through a temporary file in the store
    (never held whole), and is byte for byte what local processing makes."""
    import numpy as np
    from PIL import Image

    (h,) = ssh_hosts(1)
    inbox = tmp_path / "inbox" / "alice"
    inbox.mkdir(parents=True)
    noise = np.random.default_rng(7).integers(0, 256, (2600, 3200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(inbox / "noise.jpg", quality=95, subsampling=0)
    os.utime(inbox / "noise.jpg", (time.time() - 600,) * 2)
    made = {}
    for name, args in [("local", ["-j", "1"]), ("hosts", ["--hosts", f"{h.alias}/1", "--ssh-config", h.ssh_config, "--remote-imgq", REMOTE_IMGQ])]:
        cwd = tmp_path / name
        cwd.mkdir()
        (cwd / "imgq.toml").write_text("jpeg_quality = 98\n")
        assert imgq(cwd, "scan", tmp_path / "inbox").returncode == 0
        assert imgq(cwd, "enqueue", "--op", "invert").returncode == 0
        r = imgq(cwd, "work", *args)
        assert r.returncode == 0, r.stderr
        (path,) = [p for (p,) in query(cwd / "imgq.db", "SELECT path FROM artifacts")]
        made[name] = (cwd / "imgq-store" / path).read_bytes()
        assert [p for p in (cwd / "imgq-store").rglob("*") if p.name.startswith(".") and p.name != OWNER_MARK] == []
    assert len(made["hosts"]) > protocol.SPILL_BYTES
    assert made["hosts"] == made["local"]


def test_a_recipe_that_skips_photos_without_faces_is_a_valid_empty_reply(ssh_hosts, tmp_path):
    """The check follows the recipe's own option: on_no_faces = "skip" with a result that
    found no face is the one reply with no artifacts, and it is not held against the host."""
    from test_faces import CONFIG, make_face_inbox

    (h,) = ssh_hosts(1)
    ids = make_face_inbox(tmp_path / "inbox")
    cwd = tmp_path / "run"
    cwd.mkdir()
    (cwd / "imgq.toml").write_text(CONFIG)
    assert imgq(cwd, "scan", tmp_path / "inbox").returncode == 0
    assert imgq(cwd, "enqueue").returncode == 0
    r = imgq(cwd, "work", "--hosts", f"{h.alias}/1", "--ssh-config", h.ssh_config, "--remote-imgq", REMOTE_IMGQ)
    assert r.returncode == 0, r.stderr
    db = cwd / "imgq.db"
    assert query(db, "SELECT DISTINCT state FROM jobs") == [("done",)]
    made = dict(query(db, "SELECT j.recipe, count(a.id) FROM jobs j LEFT JOIN artifacts a ON a.job_id = j.id WHERE j.file_id = ? GROUP BY j.recipe", (ids["land"],)))
    assert made == {"default": 2, "people": 0, "marked": 1}
    fleet = {x["host"]: x for x in json.loads(imgq(cwd, "status", "--json").stdout)["fleet"]}
    assert fleet[h.alias]["state"] == "stopped" and fleet[h.alias]["done"] == 6


# --- --shared-store: the agent writes its artifacts into our store -------------------------------


@pytest.mark.parametrize("mode", ["stored_missing", "stored_sha"])
def test_a_shared_store_artifact_missing_or_changed_is_not_accepted_and_the_job_retries(ssh_hosts, tmp_path, queued, mode):
    """With --shared-store the agent writes each artifact into the store under its
    attempt's staged name and sends only the header. The fake agent's first reply names
    a file it removed (stored_missing) or changed after writing (stored_sha): that
    attempt is not completed, its files are removed, and the job is retried (here, by
    the same host, whose later replies are right); every job ends done once, with
    artifacts whose bytes are what the journal records."""
    (fake,) = ssh_hosts(1)
    db = copy_queue(queued, tmp_path / "run")
    cwd = db.parent
    (cwd / "imgq.toml").write_text("backoff_seconds = 0\n")
    hosts_file = cwd / "hosts.txt"
    hosts_file.write_text(f"{fake.alias}/1 {sys.executable} {FAKE_AGENT} {mode}\n")
    r = imgq(cwd, "work", "--hosts-file", hosts_file, "--ssh-config", fake.ssh_config, "--remote-imgq", REMOTE_IMGQ,
             "--host-timeout", "5", "--prefetch", "1", "--shared-store", "-v")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert f"host {fake.alias} up: 1 slots, writes into the shared store" in r.stderr
    assert_each_job_done_once(db)
    why = {"stored_missing": "is not in the shared store", "stored_sha": "does not have the sha256 the host sent"}[mode]
    retried = query(db, "SELECT job_id, detail FROM events WHERE entity = 'job' AND from_state = 'leased' AND to_state = 'ready'")
    assert len(retried) == 1 and why in retried[0][1], retried
    assert query(db, "SELECT attempts FROM jobs WHERE id = ?", (retried[0][0],)) == [(2,)]
    store = cwd / "imgq-store"
    import hashlib

    for path, sha in query(db, "SELECT path, sha256 FROM artifacts"):
        assert hashlib.sha256((store / path).read_bytes()).hexdigest() == sha
    assert [p for p in store.rglob("*") if p.name.startswith(".") and p.name != OWNER_MARK] == []
    st = imgq(cwd, "status", "--json")
    assert {h["host"]: h["state"] for h in json.loads(st.stdout)["fleet"]} == {fake.alias: "stopped"}
