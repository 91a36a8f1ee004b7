"""imgq run --watch: a real watcher process on a real inbox, photos dropped into it, real
signals, a real systemd notify socket."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import imgq_env, wait_for
from imgq import samples
from imgq.ledger.database import lock_path

SETTLE = 1.0
SLACK = 30.0  # seconds past the settle time a test waits: a loaded 2-core machine, not a target (bin/bench watch measures)


def q(db_path, sql, *params):
    with sqlite3.connect(db_path) as c:
        return c.execute(sql, params).fetchall()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Watcher:
    """``imgq run --watch`` as a real process in its own session (systemd signals a
    service's whole process group), its stdout and stderr lines read as they come."""

    def __init__(self, cwd: Path, *args, env: dict | None = None, tty: bool = False):
        """With ``tty``, stderr is a real pseudo-terminal (a person watching), stdout a pipe."""
        master = slave = None
        if tty:
            master, slave = os.openpty()
            env = {"TERM": "xterm-256color", "NO_COLOR": None, "COLUMNS": "120", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imgq", "run", "--watch", *map(str, args)],
            cwd=cwd, env=imgq_env(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=slave if tty else subprocess.PIPE, text=True, start_new_session=True,
        )
        self.out: list[tuple[float, str]] = []
        self.err: list[str] = []
        err_stream = self.proc.stderr
        if tty:
            os.close(slave)
            err_stream = _pty_lines(master)
        self._threads = [threading.Thread(target=self._read, args=(self.proc.stdout, self.out, True), daemon=True),
                         threading.Thread(target=self._read, args=(err_stream, self.err, False), daemon=True)]
        for t in self._threads:
            t.start()

    @staticmethod
    def _read(stream, into, stamped):
        for line in stream:
            into.append((time.monotonic(), line.rstrip("\n")) if stamped else line.rstrip("\n"))

    def ready(self, timeout=60.0) -> None:
        wait_for(lambda: any(line.endswith(": ready") for line in self.err) or self.proc.poll() is not None, timeout=timeout)
        assert self.proc.poll() is None, f"exited {self.proc.returncode}: {self.stderr}"

    def until(self, predicate, timeout: float):
        """``wait_for``, with what the watcher said on stderr when it fails."""
        try:
            return wait_for(predicate, timeout=timeout)
        except AssertionError:
            raise AssertionError(f"condition not reached in {timeout:g} s; the watcher said:\n{self.stderr}") from None

    @property
    def lines(self) -> list[str]:
        return [line for _, line in self.out]

    @property
    def stderr(self) -> str:
        return "\n".join(self.err)

    def stop(self, sig=signal.SIGTERM, timeout=90.0, group=True) -> int:
        """Signal the process group (as systemd does by default), or the main process alone."""
        if self.proc.poll() is None:
            (os.killpg if group else os.kill)(self.proc.pid, sig)
        rc = self.proc.wait(timeout=timeout)
        for t in self._threads:
            t.join(timeout=5)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _pty_lines(master: int):
    """The lines a terminal received, without escape codes, until the last writer is gone."""
    escape = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
    buf = b""
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the slave end is closed
                chunk = b""
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                yield escape.sub("", line.decode("utf-8", "replace")).replace("\r", "")
    finally:
        os.close(master)


@pytest.fixture
def watcher(tmp_path):
    started: list[Watcher] = []

    def start(*args, env=None, tty=False) -> Watcher:
        w = Watcher(tmp_path, *args, env=env, tty=tty)
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()


def land(made: Path, inbox: Path, owner: str = "alice") -> Path:
    """A photo lands in the inbox the way sync clients and `mv` do it: renamed in whole."""
    (inbox / owner).mkdir(parents=True, exist_ok=True)
    target = inbox / owner / made.name
    os.rename(made, target)
    return target


def file_id(db_path, path: Path) -> str | None:
    row = q(db_path, "SELECT id FROM files WHERE path = ? ORDER BY created_at DESC LIMIT 1", f"{path.parent.name}/{path.name}")
    return row[0][0] if row else None


def verified_copy(db_path, fid: str, dest: Path) -> Path:
    [(rel, digest, verified_at)] = q(db_path, "SELECT path, sha256, verified_at FROM copies WHERE file_id = ? AND artifact_id IS NULL AND destination = ?", fid, str(dest))
    assert verified_at is not None
    copy = dest / rel
    assert sha256(copy) == digest
    return copy


def test_watch_archives_a_dropped_photo_and_the_one_that_came_before_it(tmp_path, watcher, photo, db_path):
    inbox, dest = tmp_path / "inbox", tmp_path / "dest"
    dest.mkdir()
    early = land(photo("early.jpg"), inbox)  # arrived while no watcher ran: the first run takes it
    w = watcher(inbox, "--to", dest, "--settle", SETTLE, "-j1")
    w.ready()
    w.until(lambda: not early.exists(), timeout=SETTLE + SLACK)

    made = photo("IMG_0100.jpg", width=1600, height=1200)
    digest = sha256(made)
    landed_at = time.monotonic()
    path = land(made, inbox)
    fid = w.until(lambda: file_id(db_path, path), timeout=SETTLE + SLACK)
    w.until(lambda: fid in w.lines, timeout=SETTLE + SLACK)
    archived_at = next(t for t, line in w.out if line == fid)
    assert archived_at - landed_at < SETTLE + SLACK
    copy = verified_copy(db_path, fid, dest)
    assert sha256(copy) == digest
    w.until(lambda: q(db_path, "SELECT state FROM files WHERE id = ?", fid) == [("collected",)], timeout=SLACK)
    assert not path.exists()  # collected: its copy verified again first

    assert w.stop() == 0, w.stderr
    assert len(w.lines) == 2 and len(set(w.lines)) == 2  # each id once: stdout is data
    assert "SIGTERM: stopped" in w.stderr
    runs = q(db_path, "SELECT json_extract(args, '$.watch'), exit_code, ended_at FROM runs WHERE command = 'run' ORDER BY id")
    assert runs[0][0] == "start" and {r[0] for r in runs[1:]} <= {"change", "retry", "rescan"}
    assert all(code == 0 and ended for _, code, ended in runs), runs


def test_a_slowly_written_photo_is_taken_once_whole(tmp_path, watcher, photo, db_path):
    inbox, dest = tmp_path / "inbox", tmp_path / "dest"
    dest.mkdir()
    (inbox / "bob").mkdir(parents=True)
    w = watcher(inbox, "--to", dest, "--settle", 2, "-j1", "--json")
    w.ready()
    data = photo("slow.jpg", width=1600, height=1200).read_bytes()
    target = inbox / "bob" / "slow.jpg"
    chunks = 8
    step = -(-len(data) // chunks)
    with open(target, "wb") as f:  # 8 pieces over 4 s: longer than the settle time (2 s), never a pause as long
        for i in range(chunks):
            f.write(data[i * step:(i + 1) * step])
            f.flush()
            time.sleep(0.5)
    complete_at = time.monotonic()
    w.until(lambda: any(json.loads(line).get("step") == "archive" and json.loads(line)["archived"] for line in w.lines), timeout=2 + SLACK)
    rows = q(db_path, "SELECT id, state, sha256 FROM files WHERE path = 'bob/slow.jpg'")
    assert len(rows) == 1, rows  # never recorded half-written
    fid, state, digest = rows[0]
    assert state in ("archived", "collected") and digest == hashlib.sha256(data).hexdigest()
    assert verified_copy(db_path, fid, dest).read_bytes() == data
    assert not q(db_path, "SELECT id FROM files WHERE state = 'failed'")
    # stdout held NDJSON only, and the archive came after the last byte was written
    assert all(isinstance(json.loads(line), dict) for line in w.lines)
    first_archive = next(t for t, line in w.out if json.loads(line).get("step") == "archive" and json.loads(line)["archived"])
    assert first_archive > complete_at
    assert w.stop() == 0


def test_a_file_still_settling_is_come_back_for_without_another_event(tmp_path, watcher, photo, db_path):
    """No notifications and a rescan far away: the file the first run found half-written is
    taken at its mtime + settle, because that run's scan said it was still settling."""
    inbox, dest = tmp_path / "inbox", tmp_path / "dest"
    dest.mkdir()
    (inbox / "erin").mkdir(parents=True)
    data = photo("growing.jpg").read_bytes()
    target = inbox / "erin" / "growing.jpg"
    half = len(data) // 2
    with open(target, "wb") as f:
        f.write(data[:100])
        f.flush()
        w = watcher(inbox, "--to", dest, "--settle", 2, "--no-notify", "--rescan", 600, "-j1")
        w.ready()
        # keep writing, slower than nothing and faster than the settle time, until the first run is over
        deadline = time.monotonic() + 60
        while not q(db_path, "SELECT 1 FROM runs WHERE command = 'run' AND ended_at IS NOT NULL") if db_path.exists() else True:
            assert time.monotonic() < deadline
            f.write(data[f.tell():min(half, f.tell() + 100)])
            f.flush()
            os.utime(f.fileno())
            time.sleep(0.2)
        f.write(data[f.tell():])
    done_at = time.monotonic()
    fid = w.until(lambda: file_id(db_path, target), timeout=2 + SLACK)
    w.until(lambda: fid in w.lines, timeout=SLACK)
    assert verified_copy(db_path, fid, dest).read_bytes() == data
    assert time.monotonic() - done_at < 60  # long before the rescan (600 s)
    reasons = [r[0] for r in q(db_path, "SELECT json_extract(args, '$.watch') FROM runs WHERE command = 'run' ORDER BY id")]
    assert reasons[0] == "start" and "rescan" not in reasons, reasons
    [(new_at_start,)] = q(db_path, "SELECT json_extract(counts, '$.scan.new') FROM runs WHERE command = 'run' ORDER BY id LIMIT 1")
    assert new_at_start == 0  # the first run left it: still being written
    assert len(q(db_path, "SELECT id FROM files")) == 1  # and it was recorded once, whole
    assert w.stop() == 0


def test_the_rescan_catches_what_no_notification_announced(tmp_path, watcher, photo, db_path):
    inbox, dest = tmp_path / "inbox", tmp_path / "dest"
    dest.mkdir()
    inbox.mkdir()
    w = watcher(inbox, "--to", dest, "--settle", 0.5, "--no-notify", "--rescan", 3, "-j1")
    w.ready()
    w.until(lambda: q(db_path, "SELECT 1 FROM runs WHERE command = 'run' AND ended_at IS NOT NULL"), timeout=SLACK)
    path = land(photo("missed.jpg"), inbox)
    fid = w.until(lambda: file_id(db_path, path), timeout=3 + SLACK)
    w.until(lambda: fid in w.lines, timeout=SLACK)
    verified_copy(db_path, fid, dest)
    reasons = [r[0] for r in q(db_path, "SELECT json_extract(args, '$.watch') FROM runs WHERE command = 'run' ORDER BY id")]
    assert reasons[0] == "start" and set(reasons[1:]) == {"rescan"}, reasons  # no event: only the rescan saw it
    assert "notifications off" in w.stderr
    assert w.stop(signal.SIGINT) == 130  # Ctrl-C: interrupted, as every imgq command


def test_a_burst_of_photos_is_a_few_runs_not_one_per_photo(tmp_path, watcher, db_path):
    inbox, dest = tmp_path / "inbox", tmp_path / "dest"
    dest.mkdir()
    inbox.mkdir()
    w = watcher(inbox, "--to", dest, "--settle", SETTLE, "-j2", "--no-collect")
    w.ready()
    w.until(lambda: q(db_path, "SELECT 1 FROM runs WHERE command = 'run' AND ended_at IS NOT NULL"), timeout=SLACK)
    staging = tmp_path / "staging"
    made = [samples.make_photo(staging / f"IMG_{i:04d}.jpg", width=320, height=240, seed=i) for i in range(40)]
    for m in made:
        land(m, inbox, owner="carol")
    w.until(lambda: len(w.lines) == 40, timeout=SETTLE + 60)
    runs = q(db_path, "SELECT count(*) FROM runs WHERE command = 'run'")[0][0]
    assert runs <= 1 + 3, runs  # the first run, then one or a few for the 40 photos
    assert w.stop() == 0


@pytest.mark.parametrize("to", ["group", "main"])
def test_sigterm_mid_batch_exits_0_and_leaves_nothing_half_done(tmp_path, watcher, db_path, run_imgq, to):
    """systemd's default KillMode signals every process of the service; KillMode=mixed
    (and `kill PID`) only the main one, which must then stop its workers itself."""
    inbox, dest = tmp_path / "inbox", tmp_path / "dest"
    dest.mkdir()
    for i in range(12):
        samples.make_photo(inbox / "dave" / f"IMG_{i:04d}.jpg", width=2400, height=1800, seed=100 + i)
    w = watcher(inbox, "--to", dest, "--settle", 0, "-j1")
    w.ready()
    w.until(lambda: q(db_path, "SELECT 1 FROM jobs WHERE state = 'done'") if db_path.exists() else None, timeout=120)
    rc = w.stop(group=(to == "group"))
    assert rc == 0, w.stderr
    assert "SIGTERM: stopped" in w.stderr and "Traceback" not in w.stderr

    assert q(db_path, "PRAGMA integrity_check") == [("ok",)]
    assert not q(db_path, "SELECT id FROM jobs WHERE state = 'leased'")  # handed back, not left leased
    leftovers = [p for p in tmp_path.rglob("*") if "imgq-staged" in p.name or "imgq-tmp" in p.name]
    assert leftovers == []
    [(code, ended)] = q(db_path, "SELECT exit_code, ended_at FROM runs WHERE command = 'run'")
    assert code == 130 and ended is not None  # the interrupted run is recorded as such
    states = dict(q(db_path, "SELECT path, state FROM files"))
    assert "collected" not in states.values() or all((inbox / p).exists() == (s != "collected") for p, s in states.items())
    assert set(states.values()) - {"collected", "archived"}, states  # it really stopped mid-batch
    # what it left is finished by the next run, as after any stopped run
    again = run_imgq("run", inbox, "--to", dest, "--settle", 0)
    assert again.returncode == 0, again.stderr
    assert set(dict(q(db_path, "SELECT path, state FROM files")).values()) == {"collected"}


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_systemd_notify_socket_gets_ready_status_and_stopping(tmp_path, watcher, abstract):
    inbox, dest = tmp_path / "inbox", tmp_path / "dest"
    dest.mkdir()
    inbox.mkdir()
    short = tempfile.mkdtemp(prefix="imgq-ns-")  # a unix socket path must stay under 108 bytes
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        if abstract:
            name = f"imgq-test-{os.getpid()}-{time.monotonic_ns()}"
            sock.bind("\0" + name)
            env = {"NOTIFY_SOCKET": "@" + name}
        else:
            path = os.path.join(short, "notify")
            sock.bind(path)
            env = {"NOTIFY_SOCKET": path}
        sock.settimeout(60)
        w = watcher(inbox, "--to", dest, "--settle", SETTLE, env=env)
        got: list[str] = []

        def until(word: str) -> None:
            while not any(word in m.split("\n") for m in got):
                got.append(sock.recv(4096).decode())

        until("READY=1")
        w.until(lambda: any(line.endswith(": ready") for line in w.err), timeout=5)
        assert any(line.startswith("STATUS=watching") for m in got for line in m.split("\n"))
        os.killpg(w.proc.pid, signal.SIGTERM)
        until("STOPPING=1")
        assert w.proc.wait(timeout=60) == 0
    finally:
        sock.close()
        shutil.rmtree(short, ignore_errors=True)


def test_rescan_without_watch_is_a_usage_error(tmp_path, run_imgq):
    (tmp_path / "inbox").mkdir()
    (tmp_path / "dest").mkdir()
    r = run_imgq("run", "inbox", "--to", "dest", "--rescan", "5")
    assert r.returncode == 2 and "only go with --watch" in r.stderr


def test_archive_and_run_stop_between_files_when_asked(tmp_path, run_imgq, db_path):
    """What SIGTERM does to a watcher's run, in-process: archive stops before the next
    file (each copy it made is whole and recorded), run leaves the later steps, and the
    next run finishes the rest."""
    from imgq import archive as archive_step
    from imgq import run as run_step
    from imgq.config import load_settings
    from imgq.destinations import LocalDestination
    from imgq.ledger.database import DB

    inbox = samples.make_inbox(tmp_path / "inbox", per_owner=2, size=(320, 240), with_broken=False, with_duplicate=False)
    dest = tmp_path / "dest"
    dest.mkdir()
    scan = run_imgq("scan", inbox)
    run_imgq("enqueue", "-", input=scan.stdout)
    assert run_imgq("work", "-j1").returncode == 0
    processed = q(db_path, "SELECT count(*) FROM files WHERE state = 'processed'")[0][0]
    assert processed >= 4

    db = DB(db_path)
    settings = load_settings(None, str(db_path))
    asked = []
    report = archive_step.archive(db, [LocalDestination(str(dest))], store_dir=settings.store_dir, clock=time.time,
                                  stop=lambda: asked.append(1) or len(asked) > 2)
    assert report.stopped and len(report.archived) == 2
    assert q(db_path, "SELECT count(*) FROM files WHERE state = 'archived'")[0][0] == 2
    assert not [p for p in dest.rglob("*") if "imgq-tmp" in p.name]
    for (rel, digest) in q(db_path, "SELECT path, sha256 FROM copies"):
        assert sha256(dest / rel) == digest  # every recorded copy is whole

    opts = run_step.RunOptions(inboxes=[inbox], destinations=[LocalDestination(str(dest))])
    stopped = run_step.run(db, settings, opts, stop=lambda: True)
    assert stopped.stopped and stopped.exit_code == 130 and stopped.archive is None and stopped.collect is None
    done = run_step.run(db, settings, opts)
    assert done.exit_code == 0 and not done.stopped
    assert {s for (s,) in q(db_path, "SELECT state FROM files")} == {"collected"}
    db.close()


def test_a_watcher_run_takes_the_same_locks_as_imgq_run_and_waits_its_turn(tmp_path, watcher, photo, db_path):
    inbox, dest = tmp_path / "inbox", tmp_path / "dest"
    dest.mkdir()
    inbox.mkdir()
    w = watcher(inbox, "--to", dest, "--settle", 0.5, "-j1")
    w.ready()
    w.until(lambda: q(db_path, "SELECT 1 FROM runs WHERE command = 'run' AND ended_at IS NOT NULL"), timeout=SLACK)
    fd = os.open(lock_path(db_path, "archive"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a manual `imgq archive` (or a cron `imgq run`) holds
        path = land(photo("queued.jpg"), inbox)
        w.until(lambda: "another `imgq archive` is running" in w.stderr, timeout=SLACK)
        time.sleep(1)
        assert file_id(db_path, path) is None and w.lines == []  # nothing ran while the lock was held
    finally:
        os.close(fd)
    fid = w.until(lambda: file_id(db_path, path), timeout=SLACK)
    w.until(lambda: fid in w.lines, timeout=SLACK)
    verified_copy(db_path, fid, dest)
    assert w.stop() == 0
    assert w.stderr.count("another `imgq archive` is running") == 1  # said once, not every retry


def test_a_folder_moved_in_is_taken_and_imgqs_own_changes_start_no_run(tmp_path, watcher, photo, db_path):
    """A photographer's folder moved in whole gives one event, for the folder: its photos
    are found anyway. What imgq itself does in the inbox (collect deleting originals, its
    reads) is no reason for another run, even with a file that stays (a broken one)."""
    inbox, dest = tmp_path / "inbox", tmp_path / "dest"
    dest.mkdir()
    (inbox / "alice").mkdir(parents=True)
    (inbox / "alice" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    w = watcher(inbox, "--to", dest, "--settle", SETTLE, "-j1")
    w.ready()
    w.until(lambda: q(db_path, "SELECT 1 FROM runs WHERE command = 'run' AND ended_at IS NOT NULL"), timeout=SLACK)
    folder = tmp_path / "staging" / "frank"
    for name in ("DSC_0001.jpg", "DSC_0002.jpg"):
        photo(folder / name)
    os.rename(folder, inbox / "frank")
    w.until(lambda: len(w.lines) == 2, timeout=SETTLE + SLACK)
    w.until(lambda: not any((inbox / "frank").iterdir()), timeout=SLACK)  # collected
    time.sleep(SETTLE + 1.5)  # room for a run that should not come
    reasons = [r[0] for r in q(db_path, "SELECT json_extract(args, '$.watch') FROM runs WHERE command = 'run' ORDER BY id")]
    assert reasons == ["start", "change"], reasons
    assert w.stop() == 0


def test_when_the_watcher_comes_back_for_a_file(tmp_path):
    """The schedule alone, in-process, on real files: a file is due at its mtime + settle;
    temporary names, imgq's store and the database are no reason to run; a file that one
    run after another finds still settling is come back for after 1, 2, 4 settle times."""
    from imgq.watch import MARGIN, Watcher, WatchOptions

    inbox, store = tmp_path / "inbox", tmp_path / "inbox" / "imgq-store"
    (inbox / "alice").mkdir(parents=True)
    store.mkdir()
    now = [1000.0]
    settling: list[str] = []
    watcher = Watcher(WatchOptions(inboxes=[inbox], settle=2.0, rescan=60.0, ignore=[store, tmp_path / "imgq.db"]),
                      run_once=lambda reason, stop: list(settling), on_state=lambda s, d: None, clock=lambda: now[0])

    for name in ("alice/.IMG_1.jpg.tmp", "alice/IMG_1.jpg.part", "alice/IMG_1.thumb.jpg", "imgq-store/x.jpg"):
        (inbox / name).write_bytes(b"x")
        watcher.note(str(inbox / name))
    watcher.note(str(inbox))
    assert watcher.due == {}

    fresh = inbox / "alice" / "IMG_1.jpg"
    fresh.write_bytes(b"x")
    watcher.note(str(fresh))
    due = watcher.due[str(fresh)][0]
    assert now[0] + 2.0 - 0.5 < due <= now[0] + 2.0 + MARGIN  # its mtime is now: due a settle time later
    old = inbox / "alice" / "IMG_2.jpg"
    old.write_bytes(b"y")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    watcher.note(str(old))
    assert watcher.due[str(old)][0] == pytest.approx(now[0] + MARGIN)  # settled long ago: due at once

    settling[:] = [str(fresh)]
    gaps = []
    for _ in range(4):
        now[0] += 100
        os.utime(fresh)  # still being written
        watcher.run("change", lambda: False)
        gaps.append(round(watcher.due[str(fresh)][0] - now[0]))
    assert gaps == [2, 4, 8, 16]
    settling[:] = []
    now[0] += 100
    watcher.run("change", lambda: False)
    assert str(fresh) not in watcher.due and watcher.unsettled == {}
    # a run was started for exactly this file: an event that changes nothing (our own read) is no reason for another
    watcher.note(str(fresh))
    assert str(fresh) not in watcher.due


def test_stdout_stays_ids_while_a_person_watches_the_terminal(tmp_path, watcher, photo, db_path):
    """stderr a real terminal, stdout a pipe: the ids go down the pipe, one a line, as they
    happen; the readiness line and each run's summary go to the terminal."""
    inbox, dest = tmp_path / "inbox", tmp_path / "dest"
    dest.mkdir()
    inbox.mkdir()
    w = watcher(inbox, "--to", dest, "--settle", SETTLE, "-j1", tty=True)
    w.ready()
    path = land(photo("tty.jpg"), inbox)
    fid = w.until(lambda: file_id(db_path, path), timeout=SETTLE + SLACK)
    w.until(lambda: fid in w.lines, timeout=SLACK)
    w.until(lambda: any("scan 1 new" in line for line in w.err), timeout=SLACK)
    assert w.stop() == 0
    assert w.lines == [fid]
    screen = " ".join(w.err)  # the summary may be wrapped to the terminal's width
    assert "run: scan 1 new" in screen and "1 archived" in screen and "1 deleted" in screen
    assert fid not in screen  # the id went to the pipe only


def test_every_inbox_is_watched(tmp_path, watcher, photo, db_path):
    inboxes = [tmp_path / "dropbox", tmp_path / "sdcards"]
    dest = tmp_path / "dest"
    dest.mkdir()
    for inbox in inboxes:
        inbox.mkdir()
    w = watcher(*inboxes, "--to", dest, "--settle", SETTLE, "-j1")
    w.ready()
    w.until(lambda: q(db_path, "SELECT 1 FROM runs WHERE command = 'run' AND ended_at IS NOT NULL"), timeout=SLACK)
    paths = [land(photo(f"IMG_{i}.jpg"), inbox, owner="gina") for i, inbox in enumerate(inboxes)]
    ids = [w.until(lambda p=p: file_id(db_path, p), timeout=SETTLE + SLACK) for p in paths]
    w.until(lambda: set(ids) <= set(w.lines), timeout=SLACK)
    for fid in ids:
        verified_copy(db_path, fid, dest)
    assert w.stop() == 0


def test_dry_run_does_not_go_with_watch(tmp_path, run_imgq, db_path):
    (tmp_path / "inbox").mkdir()
    (tmp_path / "dest").mkdir()
    r = run_imgq("run", "--watch", "--dry-run", "inbox", "--to", "dest", timeout=60)
    assert r.returncode == 2 and "does not go with --watch" in r.stderr
    assert not db_path.exists()
