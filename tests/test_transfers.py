"""Archive transfers as scheduled work: copies made several at a time per destination,
a killed copy to an ssh:// destination continued instead of sent again, and `imgq run`
working on hosts over SSH. Real sshd (tests/sshhosts.py), real processes, real signals."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from conftest import imgq_env, wait_for
from imgq import samples
from sshhosts import ssh_hosts  # noqa: F401

pytestmark = pytest.mark.timeout(240)
REMOTE_IMGQ = str(Path(sys.executable).parent / "imgq")  # as in test_fleet: sshd gives a clean environment


def q(db_path, sql, *params):
    with sqlite3.connect(db_path) as c:
        return c.execute(sql, params).fetchall()


def sha(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def test_transfers_copy_concurrently_to_local_and_ssh_destinations_all_verified(tmp_path, run_imgq, db_path, ssh_hosts):
    [host] = ssh_hosts(1)
    remote = tmp_path / "remote"
    remote.mkdir()
    local = tmp_path / "A"
    local.mkdir()
    inbox = samples.make_inbox(tmp_path / "inbox", per_owner=3, size=(400, 300))
    (tmp_path / "imgq.toml").write_text("transfers = 0\n")
    r = run_imgq("archive", "--to", local)
    assert r.returncode == 2 and "transfers = 0" in r.stderr
    (tmp_path / "imgq.toml").write_text("transfers = 3\n")
    run_imgq("scan", inbox)
    run_imgq("enqueue")
    processed = run_imgq("work", "-j2").stdout.split()
    assert len(processed) >= 6
    url = f"ssh://{host.alias}{remote}"
    log_before = host.log()
    r = run_imgq("archive", "--to", local, "--to", url, "--ssh-config", host.ssh_config, "--transfers", "8")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == sorted(processed)
    rows = q(db_path, "SELECT destination, path, sha256 FROM copies")
    assert {d for d, _, _ in rows} == {str(local), url}
    assert len([1 for d, _, _ in rows if d == url]) == len([1 for d, _, _ in rows if d == str(local)]) >= 3 * len(processed)
    # no command on the host per copy: per connection (one per copying thread, and the
    # archive's own), one to read the marker and one receiver (ssh_receiver, the host's
    # python3) that writes, syncs and verifies every copy made over it; plus the sweep and
    # the choice of sha256 program. Checking free names, renaming and syncing folders take
    # no command (SFTP does them)
    log = host.log()[len(log_before):]
    commands, connections = log.count("Starting session: command"), log.count("Accepted publickey")
    copies_there = len([1 for d, _, _ in rows if d == url])
    assert 1 <= connections <= 8 + 1 and commands <= 2 * connections + 2 < copies_there, (commands, connections, copies_there)
    for d, path, digest in rows:  # every copy, at both, holds what the ledger says
        assert sha((local if d == str(local) else remote) / path) == digest
    assert not list(tmp_path.rglob("*.imgq-tmp"))
    assert q(db_path, "SELECT count(*) FROM files WHERE state = 'archived'") == [(len(processed),)]
    r = run_imgq("archive", "--to", local, "--to", url, "--ssh-config", host.ssh_config, "--transfers", "8")
    assert r.returncode == 0 and r.stdout == "" and len(q(db_path, "SELECT * FROM copies")) == len(rows)


def test_a_killed_copy_of_a_big_file_to_ssh_is_continued_not_sent_again(tmp_path, run_imgq, db_path, ssh_hosts):
    [host] = ssh_hosts(1)
    remote = tmp_path / "remote"
    remote.mkdir()
    photo = tmp_path / "inbox" / "alice" / "big.jpg"
    samples.make_photo(photo, width=320, height=240, seed=3, taken=datetime(2024, 5, 6))
    size = 300 << 20
    os.truncate(photo, size)  # a valid JPEG followed by a 300 MB hole: big to send, nothing on disk
    os.utime(photo, (1e9, 1e9))
    run_imgq("scan", photo.parent.parent)
    run_imgq("enqueue")
    [file_id] = run_imgq("work", "-j1").stdout.split()
    url = f"ssh://{host.alias}{remote}"
    args = [sys.executable, "-m", "imgq", "archive", "--to", url, "--ssh-config", str(host.ssh_config), "--transfers", "1"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=imgq_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def partial():
        temps = [p for p in remote.rglob(".big.jpg.*.imgq-tmp")]
        return temps[0] if temps and temps[0].stat().st_size > 40 << 20 else None

    try:
        left = wait_for(partial, timeout=120, step=0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    # the server writes what it had received, then sees the connection gone
    sizes = []
    wait_for(lambda: (sizes.append(left.stat().st_size), time.sleep(0.3), sizes[-1] == left.stat().st_size)[-1], timeout=30)
    before = left.stat()
    assert 0 < before.st_size < size
    os.link(left, tmp_path / "part")  # holds the inode: its number cannot be reused by a new file
    assert q(db_path, "SELECT state FROM files") == [("processed",)]

    r = run_imgq("archive", "--to", url, "--ssh-config", host.ssh_config, "--transfers", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [file_id]
    [(path, digest)] = q(db_path, "SELECT path, sha256 FROM copies WHERE artifact_id IS NULL")
    final = remote / path
    assert sha(final) == digest == sha(photo)
    # the killed copy's file itself became the copy: its first st_size bytes were kept
    # (the host hashed them to ours), only the rest was sent
    assert final.stat().st_ino == before.st_ino and final.stat().st_nlink == 2
    assert not list(remote.rglob("*.imgq-tmp"))


def test_run_with_hosts_works_on_the_host_then_archives_and_collects(tmp_path, run_imgq, db_path, ssh_hosts):
    [host] = ssh_hosts(1)
    inbox = tmp_path / "inbox"
    photo = inbox / "alice" / "IMG_1.jpg"
    samples.make_photo(photo, width=640, height=480, seed=5, taken=datetime(2024, 7, 8))
    os.utime(photo, (1e9, 1e9))
    want = sha(photo)
    dest = tmp_path / "A"
    dest.mkdir()
    r = run_imgq("run", inbox, "--to", dest, "--hosts", f"{host.alias}/1", "--ssh-config", host.ssh_config, "--remote-imgq", REMOTE_IMGQ, timeout=180)
    assert r.returncode == 0, r.stderr
    [file_id] = r.stdout.split()
    assert q(db_path, "SELECT state FROM files") == [("collected",)] and not photo.exists()
    # every job was done on the host, none here
    jobs = q(db_path, "SELECT count(*) FROM jobs WHERE file_id = ?", file_id)[0][0]
    assert jobs >= 1 and q(db_path, "SELECT host FROM events WHERE entity = 'job' AND to_state = 'done'") == [(host.alias,)] * jobs
    copies = q(db_path, "SELECT path, sha256, artifact_id FROM copies")
    assert len(copies) == 1 + q(db_path, "SELECT count(*) FROM artifacts")[0][0] and len(copies) >= 2
    assert [sha(dest / p) for p, d, a in copies if a is None] == [want]
    assert all(sha(dest / p) == d for p, d, _ in copies)
    [(args,)] = q(db_path, "SELECT args FROM runs WHERE command = 'run'")
    assert host.alias in args


def test_a_host_without_python3_gets_verified_copies_from_shell_commands(tmp_path, ssh_hosts):
    """Where the host has no python3 for the receiver, each copy is one shell command
    (dd, wc, a sha256 program), as verified and as safe: sizes from empty to several MB,
    a name a shell would expand, never written over."""
    from imgq.destinations import NameTaken, SshOptions, open_destination

    [host] = ssh_hosts(1)
    programs = tmp_path / "host-bin"  # the host's PATH: every program this machine has but python
    programs.mkdir()
    for folder in ("/usr/local/bin", "/usr/bin", "/bin"):
        for p in Path(folder).iterdir():
            if not p.name.startswith("python") and not (programs / p.name).exists():
                (programs / p.name).symlink_to(p)
    config = host.config_path.read_text()  # sshd takes its first SetEnv line only
    setenv = "SetEnv SHLVL=1\n" if "SetEnv SHLVL=1\n" in config else ""
    host.config_path.write_text(config.replace(setenv, "") + f"SetEnv {setenv[7:-1]} PATH={programs}\n")
    host.restart()
    remote = tmp_path / "remote"
    remote.mkdir()
    files = {"2024/empty.jpg": b"", "2024/$(touch PWNED) `id`.jpg": b"x" * 1000, "2024/big.jpg": os.urandom(3 << 20)}
    log_before = host.log()
    dest = open_destination(f"ssh://{host.alias}{remote}", SshOptions(config=host.ssh_config))
    try:
        for rel, data in files.items():
            src = tmp_path / "src"
            src.write_bytes(data)
            dest.put(src, rel, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
        assert dest._no_receiver  # it tried, and found no python3 there
        with pytest.raises(NameTaken):
            dest.put(src, "2024/empty.jpg", sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    finally:
        dest.close()
    for rel, data in files.items():
        assert (remote / rel).read_bytes() == data
    assert not list(tmp_path.rglob("*.imgq-tmp")) and not list(tmp_path.rglob("PWNED"))
    log = host.log()[len(log_before):]
    assert log.count("Starting session: command") >= len(files) + 1 + 1  # a command per copy, the marker's, the receiver tried


def test_one_receiver_on_the_host_takes_every_copy_of_a_connection_and_stays_in_step(tmp_path, ssh_hosts):
    """Copies over one connection go to one program on the host: a name with a newline
    and shell syntax lands exactly; a source that is not what the ledger says is refused
    and leaves nothing; the copies after it are still made and verified by the same
    program, and an occupied name is never written over."""
    from imgq.destinations import NameTaken, SourceChanged, SshOptions, open_destination

    [host] = ssh_hosts(1)
    remote = tmp_path / "remote"
    remote.mkdir()
    src = tmp_path / "src"
    log_before = host.log()
    dest = open_destination(f"ssh://{host.alias}{remote}", SshOptions(config=host.ssh_config))
    try:
        copies = {"2024/a\nb $(touch PWNED).jpg": os.urandom(2 << 20), "2024/empty.jpg": b"", "2024/c.jpg": b"c" * 5000}
        for rel, data in copies.items():
            src.write_bytes(data)
            dest.put(src, rel, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
        src.write_bytes(b"not what the ledger says")
        with pytest.raises(SourceChanged):
            dest.put(src, "2024/changed.jpg", sha256=hashlib.sha256(b"expected").hexdigest(), size=len(b"expected"))
        src.write_bytes(b"after")
        dest.put(src, "2024/after.jpg", sha256=hashlib.sha256(b"after").hexdigest(), size=5)
        copies["2024/after.jpg"] = b"after"
        with pytest.raises(NameTaken):
            dest.put(src, "2024/c.jpg", sha256=hashlib.sha256(b"after").hexdigest(), size=5)
    finally:
        dest.close()
    assert sorted(p.name for p in (remote / "2024").iterdir()) == sorted(rel[5:] for rel in copies)
    for rel, data in copies.items():
        assert (remote / rel).read_bytes() == data
    assert not list(tmp_path.rglob("PWNED"))
    log = host.log()[len(log_before):]
    # the marker, the choice of sha256 program, the receiver: nothing per copy
    assert log.count("Accepted publickey") == 1 and log.count("Starting session: command") == 3
