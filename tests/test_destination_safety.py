"""Destinations identified by what they are, not how they are spelled (issue 8: items 3,
4, 10, 11, 14, 15), with real folders, symlinks, a real sshd, a real FUSE FAT mount
(case-insensitive, refuses ``:`` ``?`` ``*``…) and real SIGKILLed archive runs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from conftest import imgq_env
from imgq import archive_names, samples
from imgq import destinations as dest_lib
from sshhosts import ssh_hosts  # noqa: F401


def q(db_path, sql, *params):
    with sqlite3.connect(db_path) as c:
        return c.execute(sql, params).fetchall()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def process(run_imgq, inbox) -> list[str]:
    """scan | enqueue | work; the processed ids."""
    scan = run_imgq("scan", inbox)
    assert scan.returncode == 0, scan.stderr
    run_imgq("enqueue", "-", input=scan.stdout)
    work = run_imgq("work", "-j2")
    return work.stdout.split()


def two_photos(tmp_path) -> Path:
    root = tmp_path / "inbox"
    for i, name in enumerate(["alice/IMG_1.jpg", "bob/IMG_2.jpg"]):
        samples.make_photo(root / name, width=320, height=240, seed=i + 1, taken=datetime(2024, 3, 4))
    for p in root.rglob("*.jpg"):
        os.utime(p, (1e9, 1e9))
    return root


def originals_in(root: Path) -> set[str]:
    return {sha(p.read_bytes()) for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")}


# --- item 3: one folder reached two ways is one copy -------------------------------------------


def test_a_symlinked_or_respelled_destination_counts_as_one_copy(tmp_path, run_imgq, db_path):
    root = two_photos(tmp_path)
    ids = process(run_imgq, root)
    disk1 = tmp_path / "disk1"
    disk1.mkdir()
    backup2 = tmp_path / "backup2"
    backup2.symlink_to(disk1)  # "a second backup disk" that is the first one
    respelled = "/" + str(disk1)  # //tmp/.../disk1: another string, the same folder
    r = run_imgq("archive", "--to", disk1, "--to", backup2, "--to", respelled, "--to", f"{disk1}/./")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == sorted(ids)
    # two copies are asked for: there is one, whatever the spellings
    c = run_imgq("collect", "--min-copies", "2", "--to", disk1, "--to", backup2, "--json")
    assert c.returncode == 0, c.stderr
    verdicts = [json.loads(line) for line in c.stdout.splitlines()]
    assert {v["action"] for v in verdicts} == {"wait"} and all(v["verified"] == [str(disk1)] for v in verdicts)
    assert len(list(root.rglob("*.jpg"))) == 2
    assert "same destination" in r.stderr and str(backup2) in r.stderr and respelled in r.stderr
    # archived once, recorded once, at one identity
    assert q(db_path, "SELECT DISTINCT destination FROM copies") == [(str(disk1),)]
    st = disk1.stat()
    [(ident,)] = q(db_path, "SELECT DISTINCT destination_id FROM copies")
    assert ident == f"local:{st.st_dev}:{st.st_ino}"
    assert {u: i for u, i in q(db_path, "SELECT url, identity FROM destinations")} == {str(disk1): ident, str(backup2): ident, respelled: ident}

    # a later run through the other spelling records no second copy that counts
    r = run_imgq("archive", "--to", backup2)
    assert r.returncode == 0, r.stderr
    c = run_imgq("collect", "--min-copies", "2")  # every destination holding copies
    assert c.stdout == "" and len(list(root.rglob("*.jpg"))) == 2, c.stderr

    # one copy at "each configured destination" is what both spellings ask for: it is there
    c = run_imgq("collect", "--to", disk1, "--to", backup2)
    assert c.returncode == 0, c.stderr
    assert sorted(c.stdout.split()) == sorted(ids)
    events = " ".join(d for (d,) in q(db_path, "SELECT detail FROM events WHERE to_state = 'collected'"))
    assert "1 verified copy:" in events and "2 verified" not in events


def test_ssh_spellings_of_one_remote_folder_are_one_destination(tmp_path, run_imgq, db_path, ssh_hosts):
    [host] = ssh_hosts(1)
    config = host.ssh_config
    remote = tmp_path / "remote"  # the sshd runs on this machine: we can look at what lands
    remote.mkdir()
    other = tmp_path / "remote2"
    other.mkdir()
    root = two_photos(tmp_path)
    ids = process(run_imgq, root)
    urls = [f"ssh://{host.alias}{remote}", f"ssh://root@{host.alias}{remote}", f"ssh://{host.alias}:{host.port}{remote}/"]
    r = run_imgq("archive", *[a for u in urls for a in ("--to", u)], "--ssh-config", config, timeout=90)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == sorted(ids)
    c = run_imgq("collect", "--min-copies", "2", *[a for u in urls for a in ("--to", u)], "--ssh-config", config, timeout=90)
    assert c.stdout == "" and len(list(root.rglob("*.jpg"))) == 2, c.stderr
    assert r.stderr.count("same destination") == 2
    marker = (remote / ".imgq-destination").read_text()
    assert marker.startswith("imgq-destination ") and len(marker.split()[1]) == 32
    ident = "marker:" + marker.split()[1]
    assert set(q(db_path, "SELECT DISTINCT destination_id FROM copies")) == {(ident,)}
    assert {i for _, i in q(db_path, "SELECT url, identity FROM destinations")} == {ident}
    assert not list(remote.rglob("*.imgq-tmp"))

    # a second folder on the same host is another destination: two copies now
    r = run_imgq("archive", "--to", urls[1], "--to", f"ssh://{host.alias}{other}", "--ssh-config", config, timeout=90)
    assert r.returncode == 0, r.stderr
    assert "same destination" not in r.stderr
    assert (other / ".imgq-destination").read_text() != marker  # read back: the first id stays
    assert (remote / ".imgq-destination").read_text() == marker
    c = run_imgq("collect", "--min-copies", "2", "--to", urls[0], "--to", f"ssh://{host.alias}{other}", "--ssh-config", config, timeout=90)
    assert c.returncode == 0, c.stderr
    assert sorted(c.stdout.split()) == sorted(ids)


# --- item 4: archive reads the original by identity and checks its sha256 ------------------------


@pytest.mark.parametrize("swap", ["symlink", "changed"])
def test_archive_never_copies_a_swapped_or_changed_original(tmp_path, run_imgq, db_path, swap):
    root = tmp_path / "inbox"
    photo = root / "alice" / "IMG_1.jpg"
    samples.make_photo(photo, width=320, height=240, seed=1, taken=datetime(2024, 3, 4))
    os.utime(photo, (1e9, 1e9))
    [file_id] = process(run_imgq, root)
    good = photo.read_bytes()
    private = tmp_path / "private.jpg"
    if swap == "symlink":
        private.write_bytes(good)  # same bytes, so only the symlink betrays it
        photo.unlink()
        photo.symlink_to(private)
    else:
        photo.write_bytes(good[:-100] + os.urandom(100))
    dest = tmp_path / "A"
    dest.mkdir()
    r = run_imgq("archive", "--to", dest)
    assert r.returncode == 1 and "changed in the inbox" in r.stderr
    assert not [p for p in dest.rglob("*") if p.is_file() and "IMG_1.jpg" == p.name]
    assert q(db_path, "SELECT count(*) FROM copies WHERE artifact_id IS NULL") == [(0,)]
    [(error, kind)] = q(db_path, "SELECT error, error_kind FROM archive_targets")
    assert "changed in the inbox" in error and kind == "permanent"
    assert q(db_path, "SELECT state FROM files WHERE id = ?", file_id) == [("processed",)]


# --- item 10: killed copies' temporary files are swept and reported ------------------------------


def big_photo(root: Path) -> Path:
    big = root / "alice" / "big.jpg"
    samples.make_photo(big, width=320, height=240, seed=5, taken=datetime(2024, 2, 3))
    block = os.urandom(1 << 20)
    with open(big, "ab") as f:  # decodes as usual, takes long to copy
        for _ in range(160):
            f.write(block)
    os.utime(big, (1e9, 1e9))
    return big


def kill_mid_copy(cwd: Path, to: str, folder: Path, *extra: str) -> Path:
    """Start `imgq archive --to TO`, SIGKILL it while its temporary file is in ``folder``;
    the temporary file left behind."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgq", "archive", "--to", to, *extra],
        cwd=cwd, env=imgq_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while not (folder.exists() and list(folder.glob(".big.jpg.*.imgq-tmp"))):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    [temp] = folder.glob(".big.jpg.*.imgq-tmp")
    return temp


def test_a_killed_local_copy_leaves_nothing_behind_after_the_next_archive(tmp_path, run_imgq, db_path):
    root = tmp_path / "inbox"
    big_photo(root)
    process(run_imgq, root)
    dest = tmp_path / "A"
    dest.mkdir()
    folder = dest / "2024" / "2024-02-03" / "alice"
    temp = kill_mid_copy(tmp_path, str(dest), folder)
    live = folder / f".other.jpg.{os.getpid()}-0123abcd.imgq-tmp"  # a live writer's: kept
    live.write_bytes(b"being written")
    # the next archive has nothing to copy (an empty pipe means nothing) and still sweeps
    r = run_imgq("archive", "--to", dest, "--json", "-", input="")
    assert r.returncode == 0, r.stderr
    assert not temp.exists() and live.exists()
    rel = str(temp.relative_to(dest))
    assert f"removed {rel}" in r.stderr and "killed" in r.stderr
    assert r.stdout == ""  # stdout stays ids (or --json objects of files) only
    [(counts,)] = q(db_path, "SELECT counts FROM runs WHERE command = 'archive' ORDER BY id DESC LIMIT 1")
    assert json.loads(counts)["swept"] == 1


def test_a_killed_ssh_copy_leaves_nothing_behind_after_the_next_archive(tmp_path, run_imgq, db_path, ssh_hosts):
    [host] = ssh_hosts(1)
    remote = tmp_path / "remote"
    remote.mkdir()
    url = f"ssh://{host.alias}{remote}"
    root = tmp_path / "inbox"
    big_photo(root)
    process(run_imgq, root)
    folder = remote / "2024" / "2024-02-03" / "alice"
    temp = kill_mid_copy(tmp_path, url, folder, "--ssh-config", str(host.ssh_config))
    # the writer's pid means nothing at a remote folder another machine may write to: a
    # temporary file counts as abandoned once it has not changed for an hour
    young = folder / ".young.jpg.1-0123abcd.imgq-tmp"
    young.write_bytes(b"another coordinator's copy in progress")
    r = run_imgq("archive", "--to", url, "--ssh-config", host.ssh_config, "-", input="", timeout=90)
    assert r.returncode == 0, r.stderr
    assert temp.exists() and young.exists() and "removed" not in r.stderr
    hour_ago = time.time() - 3700
    os.utime(temp, (hour_ago, hour_ago))
    r = run_imgq("archive", "--to", url, "--ssh-config", host.ssh_config, "--json", "-", input="", timeout=90)
    assert r.returncode == 0, r.stderr
    assert not temp.exists() and young.exists()
    rel = str(temp.relative_to(remote))
    assert f"removed {rel}" in r.stderr and r.stdout == ""
    [(counts,)] = q(db_path, "SELECT counts FROM runs WHERE command = 'archive' ORDER BY id DESC LIMIT 1")
    assert json.loads(counts)["swept"] == 1


# --- item 14: generated names are capped with a hash ------------------------------------------


def test_every_generated_archive_name_fits_with_its_temporary_suffix():
    digest = "ab" * 32
    for name in ["x" * 250 + ".jpg", "é" * 120 + ".jpeg", "y" * 300]:
        for candidate in archive_names.name_candidates(name, digest):
            base = f"2024/2024-05-17/alice/{candidate}"
            for role in ("thumb", "web", "a-rather-long-recipe-output-name" * 3):
                for suffix in ("", f"-{digest[:8]}", f"-{digest}"):
                    last = archive_names.artifact_rel(base, role, ".jpg", suffix).rsplit("/", 1)[1]
                    assert len(last.encode()) <= archive_names.NAME_BYTES, (role, suffix)
                    assert len(f".{last}.4194304-deadbeef.imgq-tmp".encode()) <= 255
    # capped names stay distinct: the hash covers the whole name
    a = archive_names.artifact_rel("d/" + archive_names.name_candidates("x" * 250 + ".jpg", digest)[0], "thumb", ".jpg", "-1")
    b = archive_names.artifact_rel("d/" + archive_names.name_candidates("x" * 250 + ".jpg", digest)[0], "thumb", ".jpg", "-2")
    assert a != b
    assert archive_names.name_candidates("IMG_0001.JPG", digest)[0] == "IMG_0001.JPG"  # short names unchanged
    owner = archive_names.folder_for("2024-05-17T08:00:00", "o" * 300).rsplit("/", 1)[1]
    assert len(owner.encode()) <= archive_names.NAME_BYTES
    assert owner != archive_names.folder_for("2024-05-17T08:00:00", "o" * 301).rsplit("/", 1)[1]


# --- items 11 and 15: a real case-insensitive FAT file system (FUSE) ---------------------------


@pytest.fixture
def fat(tmp_path):
    """A 64 MiB FAT file system mounted with fusefat at tmp_path/fat (case-insensitive,
    refuses : ? * " < > | \\ in names, no hard links); unmounted after the test."""
    if not (shutil.which("fusefat") and shutil.which("mkfs.vfat") and shutil.which("fusermount")):
        pytest.skip("fusefat, mkfs.vfat or fusermount missing (apt-get install fusefat dosfstools)")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse: FUSE is not available here")
    image = tmp_path / "fat.img"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.vfat", str(image)], check=True, capture_output=True)
    mnt = tmp_path / "fat"
    mnt.mkdir()
    r = subprocess.run(["fusefat", "-o", "rw+", str(image), str(mnt)], capture_output=True, text=True)
    if r.returncode != 0 or not os.path.ismount(mnt):
        pytest.skip(f"cannot mount a FUSE file system here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["fusermount", "-u", str(mnt)], capture_output=True)


def test_the_fat_mount_is_case_insensitive_and_renames_never_replace(fat):
    (fat / "IMG_0001.JPG").write_bytes(b"photo A")
    assert (fat / "img_0001.jpg").read_bytes() == b"photo A"
    dest = dest_lib.LocalDestination(fat)
    src = fat.parent / "b.jpg"
    src.write_bytes(b"photo B")
    with pytest.raises(dest_lib.NameTaken):
        dest.put(src, "img_0001.jpg", sha256=sha(b"photo B"), size=7)
    assert (fat / "IMG_0001.JPG").read_bytes() == b"photo A"
    assert not [p for p in fat.iterdir() if p.name.endswith(".imgq-tmp")]


def test_case_only_different_photos_both_survive_interruption_retry_collect_and_verify(tmp_path, run_imgq, db_path, fat):
    root = tmp_path / "inbox"
    a = samples.make_photo(root / "alice" / "IMG_0001.JPG", width=320, height=240, seed=1, taken=datetime(2024, 5, 1, 10))
    b = samples.make_photo(root / "alice" / "img_0001.jpg", width=320, height=240, seed=2, taken=datetime(2024, 5, 1, 11))
    for p in (a, b):
        os.utime(p, (1e9, 1e9))
    wanted = {sha(a.read_bytes()), sha(b.read_bytes())}
    process(run_imgq, root)
    ids = {path: i for i, path in q(db_path, "SELECT id, path FROM files")}
    a_id, b_id = ids["alice/IMG_0001.JPG"], ids["alice/img_0001.jpg"]

    # an interrupted archive of A: its names are reserved, no copy lands (A is unreadable
    # as recorded while it is being re-synced into the inbox)
    aside = tmp_path / "aside.jpg"
    os.rename(a, aside)
    a.write_bytes(b"still syncing")
    r = run_imgq("archive", "--to", fat, a_id)
    assert r.returncode == 1
    os.rename(aside, a)
    # B archived meanwhile, then the retry of A, a collect, a verify, a collect
    r = run_imgq("archive", "--to", fat, b_id)
    assert r.returncode == 0, r.stderr
    r = run_imgq("archive", "--to", fat, "--retry-now")
    assert r.returncode == 0, r.stderr
    run_imgq("collect", "--to", fat)
    run_imgq("archive", "--verify", "--to", fat)
    run_imgq("archive", "--to", fat, "--retry-now")
    run_imgq("collect", "--to", fat)

    survivors = originals_in(root) | originals_in(fat)
    assert wanted <= survivors, "a photo's bytes are nowhere any more"
    # and both are archived under names of their own, both readable back
    paths = dict(q(db_path, "SELECT file_id, path FROM copies WHERE artifact_id IS NULL"))
    assert set(paths) == {a_id, b_id} and paths[a_id].casefold() != paths[b_id].casefold()
    for file_id, path in paths.items():
        assert sha((fat / path).read_bytes()) == q(db_path, "SELECT sha256 FROM files WHERE id = ?", file_id)[0][0]


def test_verify_does_not_repair_a_copy_it_cannot_prove_is_its_own(tmp_path, run_imgq, db_path, fat):
    """Two recorded copies whose names fold to one file (recorded by an older imgq): the
    "corrupt" one holds the other photo's only archived bytes; verify must not overwrite it."""
    root = tmp_path / "inbox"
    a = samples.make_photo(root / "alice" / "IMG_0001.JPG", width=320, height=240, seed=1, taken=datetime(2024, 5, 1, 10))
    b = samples.make_photo(root / "alice" / "img_0001.jpg", width=320, height=240, seed=2, taken=datetime(2024, 5, 1, 11))
    for p in (a, b):
        os.utime(p, (1e9, 1e9))
    a_bytes = a.read_bytes()
    process(run_imgq, root)
    ids = {path: i for i, path in q(db_path, "SELECT id, path FROM files")}
    a_id, b_id = ids["alice/IMG_0001.JPG"], ids["alice/img_0001.jpg"]
    r = run_imgq("archive", "--to", fat, a_id)
    assert r.returncode == 0, r.stderr
    [(a_path,)] = q(db_path, "SELECT path FROM copies WHERE file_id = ? AND artifact_id IS NULL", a_id)
    # what an older imgq recorded for B: a copy under the name differing only in case
    b_path = a_path.rsplit("/", 1)[0] + "/img_0001.jpg"
    with sqlite3.connect(db_path) as c:
        c.execute(
            "INSERT INTO copies (file_id, artifact_id, destination, path, sha256, bytes, verified_at, created_at)"
            " SELECT id, NULL, ?, ?, sha256, size, 0, 0 FROM files WHERE id = ?",
            (str(fat), b_path, b_id),
        )
        columns = {row[1] for row in c.execute("PRAGMA table_info(archive_paths)")}
        if "folded" in columns:  # (the starting code had no such column: the test ran against it too)
            c.execute("INSERT INTO archive_paths (file_id, destination, role, path, created_at, folded) VALUES (?, ?, 'original', ?, 0, ?)", (b_id, str(fat), b_path, b_path.casefold()))
        else:
            c.execute("INSERT INTO archive_paths (file_id, destination, role, path, created_at) VALUES (?, ?, 'original', ?, 0)", (b_id, str(fat), b_path))
    a.unlink()  # A collected: the FAT copy is its only one
    with sqlite3.connect(db_path) as c:
        c.execute("UPDATE files SET state = 'collected' WHERE id = ?", (a_id,))
    v = run_imgq("archive", "--verify", "--to", fat)
    assert v.returncode == 1 and "not repaired in place" in v.stderr
    assert (fat / a_path).read_bytes() == a_bytes  # A's only copy is intact
    assert q(db_path, "SELECT count(*) FROM copies WHERE file_id = ? AND artifact_id IS NULL", b_id) == [(0,)]
    r = run_imgq("archive", "--to", fat, "--retry-now")
    assert r.returncode == 0, r.stderr
    [(new_b,)] = q(db_path, "SELECT path FROM copies WHERE file_id = ? AND artifact_id IS NULL", b_id)
    assert new_b.casefold() != a_path.casefold() and (fat / new_b).read_bytes() == b.read_bytes()
    assert (fat / a_path).read_bytes() == a_bytes


def test_a_name_fat_refuses_is_archived_under_a_safe_name(tmp_path, run_imgq, db_path, fat):
    root = tmp_path / "inbox"
    odd = samples.make_photo(root / "alice" / 'what? "a:b" <c>|*.jpg', width=320, height=240, seed=3, taken=datetime(2024, 5, 1))
    os.utime(odd, (1e9, 1e9))
    [file_id] = process(run_imgq, root)
    r = run_imgq("archive", "--to", fat)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [file_id]
    rows = q(db_path, "SELECT path, sha256 FROM copies WHERE file_id = ?", file_id)
    assert len(rows) == 3  # the original and its two artifacts
    for path, digest in rows:
        name = path.rsplit("/", 1)[1]
        assert all(ch not in name for ch in ':?*"<>|\\') and sha((fat / path).read_bytes()) == digest
    [(orig,)] = q(db_path, "SELECT path FROM copies WHERE file_id = ? AND artifact_id IS NULL", file_id)
    assert orig.endswith(".jpg") and q(db_path, "SELECT sha256 FROM files")[0][0][:8] in orig
    c = run_imgq("collect", "--to", fat)
    assert c.returncode == 0 and c.stdout.split() == [file_id], c.stderr


@pytest.fixture(params=["local", "ssh"])
def fat_destination(request, fat):
    """A Destination whose root is the FAT mount: directly, or through a real sshd (whose
    SFTP server then meets FAT's refusals)."""
    if request.param == "local":
        d = dest_lib.LocalDestination(fat)
    else:
        [host] = request.getfixturevalue("ssh_hosts")(1)
        d = dest_lib.open_destination(f"ssh://{host.alias}{fat}", dest_lib.SshOptions(config=host.ssh_config))
    yield d
    d.close()


def test_a_fat_destination_never_replaces_a_case_twin_and_refuses_odd_names(fat_destination, fat, tmp_path):
    dest = fat_destination
    (fat / "2024").mkdir()
    (fat / "2024" / "IMG_0001.JPG").write_bytes(b"photo A")
    src = tmp_path / "b.jpg"
    src.write_bytes(b"photo B")
    with pytest.raises(dest_lib.NameTaken):
        dest.put(src, "2024/img_0001.jpg", sha256=sha(b"photo B"), size=7)
    assert (fat / "2024" / "IMG_0001.JPG").read_bytes() == b"photo A"
    with pytest.raises(dest_lib.NameRefused):
        dest.put(src, "2024/a:b?.jpg", sha256=sha(b"photo B"), size=7)
    assert sorted(p.name for p in (fat / "2024").iterdir()) == ["IMG_0001.JPG"]  # no temporary file left
    # a damaged copy proven to be ours is replaced, and only while it holds those bytes
    (fat / "2024" / "c.jpg").write_bytes(b"photo B, rotten")
    damaged = dest.check(["2024/c.jpg"])["2024/c.jpg"]
    dest.put(src, "2024/c.jpg", sha256=sha(b"photo B"), size=7, replace=damaged)
    assert (fat / "2024" / "c.jpg").read_bytes() == b"photo B"
    assert dest.identity() == dest.identity()
