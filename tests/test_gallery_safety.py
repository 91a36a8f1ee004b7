"""imgq publish never writes outside its output folder: it writes through directory
handles opened without following symlinks, refuses (and names) a symlink where it wants a
folder or a file, publishes only bytes it verified from a regular file, and sweeps the
temporary files of writers that are gone, saying what it swept."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from imgq import samples
from imgq import publish as gallery

from conftest import imgq_subprocess


def q(db_path, sql, *params):
    with sqlite3.connect(db_path) as c:
        return c.execute(sql, params).fetchall()


@pytest.fixture(scope="module")
def processed_base(tmp_path_factory) -> Path:
    """scan | enqueue | work of alice's and bob's photos (2 each, small), made once."""
    base = tmp_path_factory.mktemp("gallery-safety-base")
    box = samples.make_inbox(base / "inbox", photographers=("alice", "bob"), per_owner=2, size=(320, 240), with_broken=False, with_rotated=False, with_duplicate=False, with_loose=False)
    assert imgq_subprocess("scan", "--settle", "0", box.root, cwd=base).returncode == 0
    assert imgq_subprocess("enqueue", cwd=base).returncode == 0
    assert imgq_subprocess("work", "-j2", "--drain", cwd=base).returncode == 0
    return base


@pytest.fixture
def site(processed_base, tmp_path) -> Path:
    """A private copy of the processed pipeline in tmp_path (the cwd of run_imgq)."""
    for p in processed_base.iterdir():
        if p.name.startswith("imgq.db") or p.name == "imgq-store":
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, tmp_path / p.name)
    return tmp_path


def fingerprint(root: Path) -> dict[str, tuple]:
    """Everything under ``root`` as it is: type, inode, mtime and content (sha256 of a
    file, target of a link), walked without following links. Any write changes it."""
    seen = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            p = Path(folder) / name
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                what = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                what = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
            else:
                what = ("dir", tuple(sorted(os.listdir(p))))
            seen[str(p.relative_to(root))] = (what, st.st_ino, st.st_mtime_ns, st.st_nlink)
    return seen


def links_in(root: Path) -> list[Path]:
    return [Path(f) / n for f, dirs, files in os.walk(root) for n in dirs + files if (Path(f) / n).is_symlink()]


def outside_tree(site: Path) -> Path:
    """A folder outside the gallery with a private page and image in each sub-folder."""
    outside = site / "outside"
    for sub in ("img", "photo", "owner", "date"):
        (outside / sub).mkdir(parents=True)
        (outside / sub / "private.html").write_text(f"private {sub}\n")
        samples.make_photo(outside / sub / "private.jpg", width=64, height=48, seed=7)
    (outside / "index.html").write_text("someone else's index\n")
    return outside


def test_symlinked_folders_in_the_output_are_refused_not_written_through(site, run_imgq):
    outside = outside_tree(site)
    out = site / "out"
    out.mkdir()
    (out / "img").symlink_to(outside / "img")
    (out / "photo").symlink_to(outside / "photo")
    before = fingerprint(outside)
    r = run_imgq("publish", "out")
    assert fingerprint(outside) == before, "publish wrote through a symlinked folder"
    assert r.returncode == 1
    for name in ("img", "photo"):
        assert (out / name).is_symlink()  # not the gallery's own: left as it is
        assert f"out/{name} is a symlink" in r.stderr  # named as OUT was given
    # the rest of the gallery is there: index, day and photographer pages
    assert (out / "index.html").is_file() and (out / "date").is_dir() and (out / "owner").is_dir()
    # once the links are gone, the next run completes the gallery
    (out / "img").unlink(), (out / "photo").unlink()
    r = run_imgq("publish", "out")
    assert r.returncode == 0, r.stderr
    assert len(list((out / "photo").iterdir())) == 4 and len(list((out / "img").iterdir())) == 8
    assert fingerprint(outside) == before


def test_symlinks_planted_after_a_publish_are_refused_and_kept(site, run_imgq, db_path):
    outside = outside_tree(site)
    out = site / "out"
    assert run_imgq("publish", "out", "--per-page", "1").returncode == 0
    # the owner folder becomes a link to a folder holding files of the same names (a
    # re-publish with fewer pages would remove owner/*.p2.html), and single pages and an
    # image become links to private files
    for p in (out / "owner").iterdir():
        shutil.copyfile(p, outside / "owner" / p.name)
    shutil.rmtree(out / "owner")
    (out / "owner").symlink_to(outside / "owner")
    (out / "index.html").unlink()
    (out / "index.html").symlink_to(outside / "index.html")
    page = sorted((out / "photo").iterdir())[0]
    page.unlink()
    page.symlink_to(outside / "photo" / "private.html")
    image = sorted((out / "img").iterdir())[0]
    image.unlink()
    image.symlink_to(outside / "img" / "private.jpg")
    before = fingerprint(outside)

    for args in (("--per-page", "100"), ("--per-page", "100", "--force")):
        r = run_imgq("publish", "out", *args)
        assert fingerprint(outside) == before, "publish wrote or removed through a symlink"
        assert r.returncode == 1, r.stderr
        for link in (out / "owner", out / "index.html", page, image):
            assert link.is_symlink(), link
            assert f"{link.relative_to(site)} is a symlink" in r.stderr, (link, r.stderr)
    # pages that are not in the way were brought up to date
    assert not list((out / "date").glob("*.p2.html"))


def test_a_file_where_a_folder_belongs_is_refused(site, run_imgq):
    out = site / "out"
    out.mkdir()
    (out / "img").write_text("not a folder\n")
    r = run_imgq("publish", "out")
    assert r.returncode == 1
    assert "out/img is not a folder" in r.stderr
    assert (out / "img").read_text() == "not a folder\n"
    assert (out / "index.html").is_file()


def test_the_output_folder_itself_may_be_a_symlink(site, run_imgq):
    # OUT is the user's choice (a link to the web server's root is common): it is
    # followed; nothing below it is
    (site / "www-real").mkdir()
    (site / "www").symlink_to(site / "www-real")
    r = run_imgq("publish", "www")
    assert r.returncode == 0, r.stderr
    assert (site / "www-real" / "index.html").is_file() and len(list((site / "www-real" / "img").iterdir())) == 8
    assert links_in(site / "www-real") == []


def test_a_store_artifact_swapped_for_a_symlink_is_never_published(site, run_imgq, db_path):
    [(file_id, path)] = q(db_path, "SELECT a.file_id, a.path FROM artifacts a JOIN files f ON f.id = a.file_id WHERE f.path = 'bob/IMG_0001.jpg' AND a.name = 'web'")
    stored = site / "imgq-store" / path
    private = site / "private" / "web.jpg"  # same bytes, so only the kind of file can tell
    private.parent.mkdir()
    shutil.copyfile(stored, private)
    os.chmod(private, 0o644)
    stored.unlink()
    stored.symlink_to(private)
    r = run_imgq("publish", "out")
    out = site / "out"
    assert all(p.stat().st_ino != private.stat().st_ino for p in (out / "img").iterdir()), "a private file was hard-linked into the gallery"
    assert links_in(out) == []
    assert r.returncode == 1
    assert file_id in r.stderr and "regular file" in r.stderr
    assert not list((out / "img").glob(f"{gallery.slug(file_id)}.web-*"))
    assert private.stat().st_nlink == 1


def test_temporary_files_of_writers_that_are_gone_are_swept_and_reported(site, run_imgq):
    out = site / "out"
    assert run_imgq("publish", "out").returncode == 0
    dead = subprocess.Popen(["true"])
    dead.wait()
    gone = [out / f".index.html.{dead.pid}-0123abcd.imgq-tmp", out / "img" / f".x.web-0123.jpg.{dead.pid}-89abcdef.imgq-tmp"]
    live = out / "photo" / f".x.html.{os.getpid()}-0123abcd.imgq-tmp"  # this test's own: alive
    foreign = out / "extra" / f".notes.txt.{dead.pid}-0123abcd.imgq-tmp"  # a folder imgq never writes
    outside = site / "outside"
    outside.mkdir()
    beyond = outside / f".y.{dead.pid}-0123abcd.imgq-tmp"
    (out / "mirror").symlink_to(outside)  # not imgq's; never walked into
    foreign.parent.mkdir()
    for p in gone + [live, foreign, beyond]:
        p.write_text("half written\n")
    r = run_imgq("publish", "out", "--json")
    assert r.returncode == 0, r.stderr
    assert not any(p.exists() for p in gone)
    assert live.exists() and foreign.exists() and beyond.exists()
    swept = [json.loads(line) for line in r.stdout.splitlines() if "swept" in json.loads(line)]
    assert sorted(s["swept"] for s in swept) == sorted(str(p.relative_to(out)) for p in gone)
    assert all(s["pid"] == dead.pid for s in swept)
    for p in gone:
        assert f"swept {p.relative_to(site)}" in r.stderr
    counts = json.loads(q(site / "imgq.db", "SELECT counts FROM runs WHERE command = 'publish' ORDER BY id DESC LIMIT 1")[0][0])
    assert counts["swept"] == 2


def test_folders_and_pages_swapped_for_symlinks_while_publish_runs(site, run_imgq):
    """The check on a name is not what keeps writes inside OUT, the handles are: a thread
    swaps folders and a page for symlinks to an outside folder, and back, while publish
    rewrites everything again and again; nothing outside changes."""
    outside = outside_tree(site)
    out = site / "out"
    assert run_imgq("publish", "out").returncode == 0
    before = fingerprint(outside)
    stop = threading.Event()
    swaps = [0]

    def swap(name: str, target: Path) -> None:
        real, away = out / name, out / f".{name}-away"
        try:
            os.rename(real, away)  # the gallery's own, taken aside (still inside OUT)
            try:
                os.symlink(target, real)
                swaps[0] += 1
                time.sleep(0.005)
                os.unlink(real)
            finally:
                os.rename(away, real) if not os.path.lexists(real) else None
        except OSError:
            pass  # publish made the name again meanwhile: try again

    def swapper() -> None:
        while not stop.is_set():
            for name, target in (("img", outside / "img"), ("photo", outside / "photo"), ("index.html", outside / "index.html"), ("owner", outside / "owner")):
                swap(name, target)

    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    try:
        runs = [run_imgq("publish", "out", "--force") for _ in range(6)]
    finally:
        stop.set()
        thread.join(timeout=10)
    assert swaps[0] > 50, swaps
    for r in runs:  # done, or a link in the way refused and named; never a crash
        assert r.returncode in (0, 1) and "Traceback" not in r.stderr, r.stderr
    assert fingerprint(outside) == before, "publish wrote through a symlink swapped in while it ran"


def test_page_names_are_unique_case_folded(tmp_path, run_imgq):
    # Photographers "Ann" and "ann" are two folders on a case-sensitive inbox; a gallery
    # served from a case-insensitive disk (macOS, SMB, FAT) must not merge their pages.
    inbox = tmp_path / "inbox"
    for i, owner in enumerate(("Ann", "ann", "bob")):
        p = samples.make_photo(inbox / owner / "IMG_0001.JPG", width=320, height=240, seed=40 + i)
        t = os.stat(p).st_mtime - 600
        os.utime(p, (t, t))
    scan = run_imgq("scan", inbox)
    assert run_imgq("enqueue", "-", input=scan.stdout).returncode == 0
    assert run_imgq("work", "-j1").returncode == 0
    out = tmp_path / "site"
    r = run_imgq("publish", out)
    assert r.returncode == 0, r.stderr
    for folder in ("owner", "photo", "img"):
        names = [p.name for p in (out / folder).iterdir()]
        assert len({n.casefold() for n in names}) == len(names), (folder, sorted(names))
    assert (out / "owner" / "bob.html").exists()  # names that do not clash stay as they were


def test_fold_unique_changes_only_clashing_slugs():
    got = gallery.fold_unique({"Ann": "Ann", "ann": "ann", "bob": "bob"})
    assert got["bob"] == "bob"
    assert got["Ann"].startswith("Ann~") and got["ann"].startswith("ann~")
    assert got["Ann"].casefold() != got["ann"].casefold()


def test_publish_enqueues_the_gallery_recipe_unless_told_or_dry(site, run_imgq, db_path):
    """Photos in the gallery that lack the gallery recipe's job get one from publish (so an
    existing site gets the large sizes by publishing); not with --no-enqueue, not in a dry
    run, and never twice."""
    def gallery_jobs():
        return q(db_path, "SELECT count(*) FROM jobs WHERE recipe = 'gallery'")[0][0]

    assert run_imgq("publish", "out", "--dry-run").returncode == 0 and gallery_jobs() == 0
    assert run_imgq("publish", "out", "--no-enqueue").returncode == 0 and gallery_jobs() == 0
    r = run_imgq("publish", "out")
    assert r.returncode == 0 and "gallery recipe enqueued for 4 photo(s)" in r.stderr
    assert gallery_jobs() == 4
    again = run_imgq("publish", "out")
    assert again.returncode == 0 and "enqueued" not in again.stderr and gallery_jobs() == 4
