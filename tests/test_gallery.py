"""imgq publish: the static gallery, checked on disk, by a link checker and in a real
headless Chromium (Debian's ``chromium``; the browser tests skip if it is missing)."""

from __future__ import annotations

import datetime as dt
import functools
import html
import html.parser
import http.server
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgq import samples
from imgq import publish as gallery
from imgq.ledger.database import DB

from conftest import imgq_subprocess

HOSTILE_OWNER = '<i>Mallory & "co"'
HOSTILE_NAME = "<script>alert(1)<script>.jpg"
HOSTILE_NAME2 = "<img src=x onerror=alert(3)> & 'q'.jpg"
HOSTILE_MAKE = '<script>alert("exif")</script>'
HOSTILE_MODEL = '"><img src=x onerror=alert(2)>'


def q(db_path, sql, *params):
    with sqlite3.connect(db_path) as c:
        return c.execute(sql, params).fetchall()


def pipeline(cwd: Path, inbox: Path) -> None:
    """scan | enqueue | work, for real, in ``cwd`` (database ./imgq.db), with the gallery
    recipe as well, as a site that lists it in ``enqueue`` does (publish then has nothing
    to enqueue)."""
    scan = imgq_subprocess("scan", "--settle", "0", inbox, cwd=cwd)
    assert scan.returncode in (0, 1), scan.stderr
    imgq_subprocess("enqueue", "--recipe", "default", "--recipe", "gallery", cwd=cwd)
    work = imgq_subprocess("work", "-j2", "--drain", cwd=cwd)
    assert work.returncode in (0, 1), work.stderr


@pytest.fixture(scope="module")
def processed_base(tmp_path_factory) -> Path:
    """A processed pipeline, made once per module: alice, bob and carol (2 photos each),
    hostile names and a hostile owner, a photo with hostile EXIF text, a truncated JPEG."""
    base = tmp_path_factory.mktemp("gallery-base")
    box = samples.make_inbox(base / "inbox", per_owner=2, size=(640, 480), with_hostile_names=True)
    taken = dt.datetime(2024, 5, 19, 12, 0, 0)
    samples.make_photo(box / HOSTILE_OWNER / HOSTILE_NAME, width=640, height=480, seed=91, taken=taken, make=HOSTILE_MAKE, model=HOSTILE_MODEL)
    samples.make_photo(box / "alice" / HOSTILE_NAME2, width=640, height=480, seed=92, taken=taken + dt.timedelta(minutes=5))
    pipeline(base, box.root)
    return base


@pytest.fixture
def site(processed_base, tmp_path) -> Path:
    """A private copy of the processed pipeline in tmp_path (cwd of run_imgq)."""
    for p in processed_base.iterdir():
        if p.name.startswith("imgq.db") or p.name == "imgq-store":
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, tmp_path / p.name)
    return tmp_path


def published_ids(db_path) -> list[str]:
    return [r[0] for r in q(db_path, "SELECT DISTINCT f.id FROM files f JOIN artifacts a ON a.file_id = f.id WHERE f.state = 'processed' ORDER BY f.id")]


def page_of(db_path, name: str) -> str:
    [(file_id,)] = q(db_path, "SELECT id FROM files WHERE path LIKE ?", "%" + name)
    return f"photo/{gallery.slug(file_id)}.html"


def snapshot(out: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, mtime_ns, size) of every file under ``out``: a rewrite changes the inode."""
    snap = {}
    for p in sorted(out.rglob("*")):
        if p.is_file():
            st = p.stat()
            snap[str(p.relative_to(out))] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return snap


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self.tags: list[str] = []
        self.attributes: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes.update(k for k, v in attrs)
        for k, v in attrs:
            if k in ("href", "src") and v is not None:
                self.urls.append(v)


def check_links(out: Path, *, beside: Path | None = None) -> int:
    """Every relative href/src of every page resolves to a file inside ``out`` (or inside
    ``beside``: an archive published beside the gallery), and every file:// link to an
    existing file. Returns how many links were checked."""
    checked = 0
    for page in out.rglob("*.html"):
        parser = _Links()
        parser.feed(page.read_text("utf-8"))
        assert "script" not in parser.tags, page
        assert not any(a.startswith("on") for a in parser.attributes), page
        for url in parser.urls:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme == "file":
                assert Path(urllib.parse.unquote(parts.path)).is_file(), (page, url)
            elif parts.scheme:
                continue
            elif parts.path:
                target = (page.parent / urllib.parse.unquote(parts.path)).resolve()
                assert target.is_file(), (page, url)
                assert out.resolve() in target.parents or (beside is not None and beside.resolve() in target.parents), (page, url)
            checked += 1
    return checked


# --------------------------------------------------------------------------- on disk


def test_publish_writes_a_complete_self_contained_gallery(site, run_imgq, db_path):
    out = site / "out"
    r = run_imgq("publish", "out", "--title", "Dig <2024> & co")
    assert r.returncode == 0, r.stderr
    ids = published_ids(db_path)
    assert sorted(r.stdout.split()) == ids  # every photo is new: all printed
    assert (out / "index.html").is_file() and (out / "style.css").is_file()
    days = {t[:10] for (t,) in q(db_path, "SELECT taken_at FROM files WHERE state = 'processed'")}
    assert {"2024-05-17", "2024-05-18", "2024-05-19"} < days  # and the day of the loose photo's file time
    assert {p.name for p in (out / "date").iterdir()} == {f"{d}.html" for d in days}
    assert len(list((out / "photo").iterdir())) == len(ids)
    # images are the store's artifacts, byte for byte: every thumbnail, web version and
    # gallery size, except a size that is the web version's very bytes (one file for both)
    expected = {}
    for file_id, name, path, sha in q(db_path, "SELECT file_id, name, path, sha256 FROM artifacts"):
        [(web_sha,)] = q(db_path, "SELECT sha256 FROM artifacts WHERE file_id = ? AND name = 'web'", file_id)
        if not (name.startswith("gallery") and sha == web_sha):
            expected[f"{gallery.slug(file_id)}.{name}"] = (site / "imgq-store" / path).read_bytes()
    assert {"thumb", "web", "gallery320"} <= {k.rsplit(".", 1)[1] for k in expected}
    published = {p.name.rsplit("-", 1)[0]: p.read_bytes() for p in (out / "img").iterdir()}
    assert published == expected
    assert check_links(out) > 10 * len(ids)
    # no page needs JavaScript; none contains any
    assert not any(b"<script" in p.read_bytes().lower() for p in out.rglob("*.html"))
    manifest = json.loads((out / ".imgq-gallery.json").read_text())
    assert set(manifest["files"]) == {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != ".imgq-gallery.json"}
    # the title is escaped like every other string
    index = (out / "index.html").read_text()
    assert "Dig &lt;2024&gt; &amp; co" in index and "<2024>" not in index


def test_hostile_names_and_exif_are_escaped(site, run_imgq, db_path):
    assert run_imgq("publish", "out").returncode == 0
    page = (site / "out" / page_of(db_path, HOSTILE_NAME)).read_text()
    parser = _Links()
    parser.feed(page)
    assert "script" not in parser.tags and not any(a.startswith("on") for a in parser.attributes)
    assert "<script" not in page.lower() and "<img src=x" not in page
    assert html.escape(HOSTILE_NAME) in page
    assert html.escape(HOSTILE_MAKE) in page and html.escape(HOSTILE_MODEL) in page
    assert html.escape(HOSTILE_OWNER) in page
    for name in samples.HOSTILE_NAMES:
        assert html.escape(name) in (site / "out" / page_of(db_path, name)).read_text()
    owner_pages = [p for p in (site / "out" / "owner").iterdir() if html.escape(HOSTILE_OWNER) in p.read_text()]
    assert len(owner_pages) == 1 and re.fullmatch(r"[A-Za-z0-9_~.-]+", owner_pages[0].name)


def test_metadata_on_the_photo_page(site, run_imgq, db_path):
    # the faces operation records boxes in its job's result; publish shows their count
    [(job_id, file_id)] = q(db_path, "SELECT j.id, j.file_id FROM jobs j JOIN files f ON f.id = j.file_id WHERE f.path = 'alice/IMG_0001.jpg' AND j.recipe = 'default'")
    with sqlite3.connect(db_path) as c:
        c.execute("UPDATE jobs SET result = ? WHERE id = ?", (json.dumps({"faced": {"faces": [[1, 2, 30, 30], [40, 2, 30, 30]]}, "seconds": 0.1}), job_id))
    assert run_imgq("publish", "out").returncode == 0
    page = (site / "out" / page_of(db_path, "alice/IMG_0001.jpg")).read_text()
    [(size, sha)] = q(db_path, "SELECT size, sha256 FROM files WHERE id = ?", file_id)
    for text in ("<dt>Photographer</dt>", ">alice</a>", "2024-05-17 08:00:00", "imgqCam Field 1", f"({size} bytes)", "640 × 480 pixels", "<dt>Faces found</dt><dd>2</dd>", sha):
        assert text in page, text
    rotated = (site / "out" / page_of(db_path, "portrait_rotated.jpg")).read_text()
    assert "480 × 640 pixels" in rotated  # as seen upright, not as stored
    assert 'alt="IMG_0001.jpg by alice, taken 2024-05-17"' in page


def test_second_publish_rewrites_nothing(site, run_imgq, db_path):
    assert run_imgq("publish", "out").returncode == 0
    before = snapshot(site / "out")
    again = run_imgq("publish", "out")
    assert again.returncode == 0 and again.stdout == ""
    assert snapshot(site / "out") == before
    # the library says the same: nothing written, nothing removed
    report = gallery.publish(DB(db_path), site / "out", store_dir=site / "imgq-store")
    assert report.written == [] and report.removed == [] and report.changed == []
    assert report.unchanged == len(before) - 1  # every file but the manifest


def test_a_new_photo_rewrites_only_what_shows_it(site, run_imgq, db_path):
    out = site / "out"
    assert run_imgq("publish", "out").returncode == 0
    before = snapshot(out)
    new = site / "more" / "dora" / "DSC_0001.jpg"
    samples.make_photo(new, width=640, height=480, seed=77, taken=dt.datetime(2023, 1, 2, 3, 4, 5))
    pipeline(site, site / "more")
    [new_id] = [i for i in published_ids(db_path) if i.startswith("dora_")]
    r = run_imgq("publish", "out")
    assert r.returncode == 0 and r.stdout.split() == [new_id]
    after = snapshot(out)
    changed = {p for p in after if before.get(p) != after[p]}
    slug = gallery.slug(new_id)
    assert {p for p in changed if not p.startswith("img/")} == {
        "index.html", "date/2023-01-02.html", "owner/dora.html", f"photo/{slug}.html", ".imgq-gallery.json",
        "status.html",  # its counts
    }
    assert {p.split("-")[0] for p in changed if p.startswith("img/")} == {f"img/{slug}.thumb", f"img/{slug}.web", f"img/{slug}.gallery320"}
    assert set(before) <= set(after)
    # publish counts them too: 5 pages and 3 images written (the manifest aside), of all it holds
    counts = json.loads(q(db_path, "SELECT counts FROM runs WHERE command = 'publish' ORDER BY id DESC LIMIT 1")[0][0])
    assert counts["written"] == len(changed) - 1 == 8 and counts["unchanged"] == len(after) - 1 - 8


def test_stale_pages_are_removed_and_foreign_files_kept(site, run_imgq):
    out = site / "out"
    out.mkdir()
    (out / "robots.txt").write_text("User-agent: *\n")
    assert run_imgq("publish", "out", "--per-page", "3").returncode == 0
    paged = sorted(p.name for p in (out / "date").glob("*.p*.html"))
    assert "2024-05-17.p2.html" in paged
    r = run_imgq("publish", "out", "--per-page", "100")
    assert r.returncode == 0
    assert list((out / "date").glob("*.p*.html")) == [] and list((out / "owner").glob("*.p*.html")) == []
    assert (out / "robots.txt").read_text() == "User-agent: *\n"
    check_links(out)


def test_pagination_shows_every_photo_once(site, run_imgq, db_path):
    out = site / "out"
    assert run_imgq("publish", "out", "--per-page", "2").returncode == 0
    pages = sorted((out / "date").glob("2024-05-17*.html"))
    assert len(pages) >= 3
    seen = []
    for p in pages:
        text = p.read_text()
        seen += re.findall(r'<li><a class="thumb" href="\.\./photo/([^"]+)\.html"', text)
        assert 'aria-label="Pages"' in text and 'aria-current="page"' in text
    day = [i for (i,) in q(db_path, "SELECT id FROM files WHERE state = 'processed' AND taken_at LIKE '2024-05-17%'")]
    assert sorted(seen) == sorted(urllib.parse.quote(gallery.slug(i), safe="") for i in day)
    check_links(out)


def test_damaged_gallery_is_repaired_and_killed_writers_temp_files_swept(site, run_imgq):
    out = site / "out"
    assert run_imgq("publish", "out").returncode == 0
    (out / "index.html").unlink()
    img = next((out / "img").glob("*.web-*"))
    img.unlink()
    img.write_bytes(b"")  # truncated (a new file: writing into the old one would write into the store)
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = out / "date" / f".2024-05-17.html.{dead.pid}-0123abcd.imgq-tmp"
    leftover.write_text("half a page")
    before = snapshot(out)
    assert run_imgq("publish", "out").returncode == 0
    after = snapshot(out)
    assert {p for p in after if before.get(p) != after[p]} == {"index.html", str(img.relative_to(out))}
    assert not leftover.exists()
    assert img.stat().st_size > 0


def test_a_damaged_store_file_is_never_published(site, run_imgq, db_path):
    [(art_id, file_id, path, sha, size)] = q(
        db_path, "SELECT a.id, a.file_id, a.path, a.sha256, a.bytes FROM artifacts a JOIN files f ON f.id = a.file_id WHERE f.path = 'bob/IMG_0002.jpg' AND a.name = 'web'"
    )
    stored = site / "imgq-store" / path
    good = stored.read_bytes()
    stored.unlink()
    stored.write_bytes(good[:-100] + b"\0" * 100)  # same size, other bytes
    r = run_imgq("publish", "out")
    assert r.returncode == 1
    assert file_id in r.stderr and "sha256" in r.stderr
    assert not list((site / "out" / "img").glob(f"{gallery.slug(file_id)}.web-*"))
    assert (site / "out" / f"photo/{gallery.slug(file_id)}.html").is_file()  # the rest is there
    # a verified archived copy of the artifact is used instead (copied, never linked)
    copy = site / "archive" / "bob.web.jpg"
    copy.parent.mkdir()
    copy.write_bytes(good)
    with sqlite3.connect(db_path) as c:
        c.execute(
            "INSERT INTO copies (file_id, artifact_id, destination, path, sha256, bytes, verified_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (file_id, art_id, str(site / "archive"), "bob.web.jpg", sha, size, time.time(), time.time()),
        )
    r = run_imgq("publish", "out")
    assert r.returncode == 0, r.stderr
    [img] = (site / "out" / "img").glob(f"{gallery.slug(file_id)}.web-*")
    assert img.read_bytes() == good and img.stat().st_ino != copy.stat().st_ino
    assert run_imgq("publish", "out").stdout == ""


def test_images_are_hard_linked_or_copied(site, run_imgq, db_path):
    [(file_id, path)] = q(db_path, "SELECT file_id, a.path FROM artifacts a JOIN files f ON f.id = a.file_id WHERE f.path = 'bob/IMG_0001.jpg' AND a.name = 'web'")
    source = site / "imgq-store" / path
    assert run_imgq("publish", "linked").returncode == 0
    assert run_imgq("publish", "--copy", "copied").returncode == 0
    [linked] = (site / "linked" / "img").glob(f"{gallery.slug(file_id)}.web-*")
    [copied] = (site / "copied" / "img").glob(f"{gallery.slug(file_id)}.web-*")
    assert linked.stat().st_ino == source.stat().st_ino
    assert copied.stat().st_ino != source.stat().st_ino and copied.read_bytes() == source.read_bytes()
    assert copied.stat().st_mode & 0o444 == 0o444


def _archive_one(site: Path, db_path: Path) -> tuple[Path, Path]:
    """What `imgq archive` records for the hostile photo: a verified copy of its original
    at a local destination (site/archive) and one at an ssh:// destination."""
    [(file_id, sha, size, inbox, rel)] = q(db_path, "SELECT id, sha256, size, inbox, path FROM files WHERE path = ?", f"{HOSTILE_OWNER}/{HOSTILE_NAME}")
    dest = site / "archive"
    at = dest / "2024" / "2024-05-19" / HOSTILE_OWNER / HOSTILE_NAME
    at.parent.mkdir(parents=True)
    shutil.copyfile(Path(inbox) / rel, at)
    with sqlite3.connect(db_path) as c:
        for destination, path in ((str(dest), str(at)), ("ssh://backup/srv/photos", "2024/2024-05-19/x.jpg")):
            c.execute(
                "INSERT INTO copies (file_id, artifact_id, destination, path, sha256, bytes, verified_at, created_at) VALUES (?, NULL, ?, ?, ?, ?, ?, ?)",
                (file_id, destination, path, sha, size, time.time(), time.time()),
            )
    return dest, at


def test_originals_are_never_linked_by_a_local_path_unless_asked(site, run_imgq, db_path):
    # a file:// link is useless over HTTP and tells the world the server's paths
    dest, at = _archive_one(site, db_path)
    for out in ("out", "deep/er/out"):
        assert run_imgq("publish", out).returncode == 0
        pages = "".join(p.read_text() for p in (site / out).rglob("*.html"))
        assert "file:" not in pages, out
        hrefs = re.findall(r'href="([^"]*)"', pages)
        assert not any(h.startswith(("file:", "/")) for h in hrefs), out
    # only when asked for, explicitly
    assert run_imgq("publish", "asked", "--originals-url", f"{dest}={dest.as_uri()}").returncode == 0
    assert f'href="{html.escape(at.as_uri())}"' in (site / "asked" / page_of(db_path, HOSTILE_NAME)).read_text()


def test_links_to_archived_originals(site, run_imgq, db_path, serve):
    dest, at = _archive_one(site, db_path)
    # the archive beside the gallery (both in site/): linked relatively, so the links work
    # wherever one web server serves both
    assert run_imgq("publish", "out").returncode == 0
    page = (site / "out" / page_of(db_path, HOSTILE_NAME)).read_text()
    rel = "../../archive/2024/2024-05-19/" + urllib.parse.quote(HOSTILE_OWNER, safe="") + "/" + urllib.parse.quote(HOSTILE_NAME, safe="")
    assert f'href="{html.escape(rel)}"' in page and f'class="download" href="{html.escape(rel)}"' in page
    assert "<li>ssh://backup/srv/photos/2024/2024-05-19/x.jpg</li>" in page
    check_links(site / "out", beside=dest)
    base = serve(site)  # as `python -m http.server` in site/ serves it
    page_url = base + "out/" + urllib.parse.quote(page_of(db_path, HOSTILE_NAME))
    with urllib.request.urlopen(urllib.parse.urljoin(page_url, rel)) as r:
        assert r.status == 200 and r.read() == at.read_bytes()
    # a gallery elsewhere: no link at all (the copy is named as text)
    assert run_imgq("publish", "deep/er/out").returncode == 0
    page = (site / "deep/er/out" / page_of(db_path, HOSTILE_NAME)).read_text()
    assert f"<li>{html.escape(str(dest))}/2024/2024-05-19/" in page and 'class="download"' not in page
    # under a URL: for one destination, or for every destination
    url = "https://archive.example.org/dig/2024/2024-05-19/" + urllib.parse.quote(HOSTILE_OWNER, safe="") + "/" + urllib.parse.quote(HOSTILE_NAME, safe="")
    for arg in (f"{dest}=https://archive.example.org/dig/", "https://archive.example.org/dig"):
        r = run_imgq("publish", "out2", "--originals-url", arg, "--force")
        assert r.returncode == 0, r.stderr
        page = (site / "out2" / page_of(db_path, HOSTILE_NAME)).read_text()
        assert f'href="{html.escape(url)}"' in page, arg


def test_usage_errors(site, run_imgq):
    assert run_imgq("publish").returncode == 2
    r = run_imgq("publish", "out", "--originals-url", "nothing")
    assert r.returncode == 2 and "DEST=URL" in r.stderr
    assert run_imgq("publish", "out", "--per-page", "0").returncode == 2


def test_slugs_are_safe_and_distinct():
    texts = ["alice_1_IMG.jpg", "Zoë", "Zoe", "<script>", "a/b", "..", ".hidden", "x" * 300, "a~b", "", "CON", "a.b"]
    slugs = [gallery.slug(t) for t in texts]
    assert len(set(slugs)) == len(slugs)
    for s in slugs:
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._~-]{0,120}", s), s
    assert gallery.slug("alice_1_IMG.jpg") == "alice_1_IMG.jpg"
    assert "." not in gallery.slug("a.b", dots=False)


# --------------------------------------------------------------------------- in Chromium


def _chromium_exe() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (Debian package `chromium`; bin/test installs it when run as root)")
    return exe


def chromium(*args, timeout: float = 20) -> subprocess.CompletedProcess:
    """Run headless Chromium once with a throw-away profile and no network chatter."""
    exe = _chromium_exe()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="imgq-chromium-") as profile:
        r = subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )
    assert r.returncode == 0, r.stderr[-2000:]
    print(f"chromium {args[-1]}: {time.monotonic() - started:.1f} s")  # shown with pytest -s / on failure
    return r


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """``serve(folder)`` -> base URL of a real HTTP server on 127.0.0.1 for the test."""
    servers = []

    def start(folder: Path) -> str:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


# The page the test opens (the gallery itself has no script): it frames gallery pages
# from the same origin and, once everything has loaded, writes what it found as JSON.
HARNESS = """<!doctype html><meta charset="utf-8"><title>check</title>
<pre id="result">pending</pre>
{frames}
<script>
window.addEventListener("load", () => {{
  const out = [];
  for (const f of document.querySelectorAll("iframe")) {{
    const d = f.contentDocument;
    const handlers = [...d.querySelectorAll("*")].filter(e => [...e.attributes].some(a => a.name.startsWith("on"))).length;
    out.push({{
      page: f.getAttribute("src"), title: d.title, text: d.body ? d.body.innerText : "",
      scripts: d.querySelectorAll("script").length, handlers: handlers,
      images: [...d.images].map(i => ({{src: i.getAttribute("src"), alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}})),
    }});
  }}
  document.getElementById("result").textContent = JSON.stringify(out);
}});
</script>
"""


def test_gallery_in_headless_chromium(site, run_imgq, db_path, serve):
    _chromium_exe()
    root = site / "www"
    assert run_imgq("publish", root / "g", "--per-page", "6").returncode == 0
    hostile = page_of(db_path, HOSTILE_NAME)
    pages = ["index.html", "date/2024-05-17.html", "date/2024-05-17.p2.html", "date/2024-05-19.html", hostile, page_of(db_path, HOSTILE_NAME2)]
    pages += ["owner/" + p.name for p in (root / "g" / "owner").iterdir() if html.escape(HOSTILE_OWNER) in p.read_text()]
    frames = "\n".join(f'<iframe src="g/{html.escape(urllib.parse.quote(p))}" width="1200" height="1600"></iframe>' for p in pages)
    (root / "check.html").write_text(HARNESS.format(frames=frames))
    base = serve(root)

    # 1. every page renders, every <img> loaded and decoded, hostile text stays text
    dom = chromium("--virtual-time-budget=5000", "--dump-dom", base + "check.html").stdout
    m = re.search(r'<pre id="result">(.*?)</pre>', dom, re.S)
    assert m and m.group(1) != "pending", dom[:2000]
    frames = json.loads(html.unescape(m.group(1)))
    assert [f["page"] for f in frames] == ["g/" + urllib.parse.quote(p) for p in pages]
    images = 0
    for f in frames:
        assert f["title"].endswith("· Photos"), f
        assert f["scripts"] == 0 and f["handlers"] == 0, f
        for img in f["images"]:
            assert img["complete"] and img["width"] > 0 and img["height"] > 0, (f["page"], img)
            assert img["alt"], img
            images += 1
    assert images == sum((root / "g" / p).read_text().count("<img ") for p in pages) > 10
    by_page = {f["page"]: f for f in frames}
    text = by_page["g/" + urllib.parse.quote(hostile)]["text"]
    for literal in (HOSTILE_NAME, HOSTILE_MAKE, HOSTILE_MODEL, HOSTILE_OWNER):
        assert literal in text, literal
    day = by_page["g/date/2024-05-19.html"]
    assert {i["alt"] for i in day["images"]} == {f"{HOSTILE_NAME} by {HOSTILE_OWNER}, taken 2024-05-19", f"{HOSTILE_NAME2} by alice, taken 2024-05-19"}

    # 2. the hostile photo's page on its own: the DOM holds the literal text, no script
    dom = chromium("--dump-dom", base + "g/" + urllib.parse.quote(hostile)).stdout
    parser = _Links()
    parser.feed(dom)
    assert "figure" in parser.tags and "script" not in parser.tags
    assert not any(a.startswith("on") for a in parser.attributes)
    assert f"<h1>{html.escape(HOSTILE_NAME, quote=False)}</h1>" in dom

    # 3. a screenshot of a day page shows the thumbnails' pixels (a broken image is grey)
    shot = site / "day.png"
    chromium("--window-size=1000,700", "--hide-scrollbars", f"--screenshot={shot}", base + "g/date/2024-05-17.html")
    with Image.open(shot) as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    colourful = int(((rgb.max(axis=2) - rgb.min(axis=2)) > 60).sum())
    assert colourful > 6 * 120 * 90 * 0.3, colourful  # six 120x90 thumbnails, mostly colour


def test_publish_after_a_real_archive(site, run_imgq, db_path):
    """`imgq archive` records the copies; the photo pages link to the originals there,
    and archived files (state archived) stay in the gallery."""
    dest = site / "archive"
    dest.mkdir()
    r = run_imgq("archive", "--to", dest)
    assert r.returncode == 0, r.stderr
    archived = set(r.stdout.split())
    assert archived and {i for (i,) in q(db_path, "SELECT id FROM files WHERE state = 'archived'")} == archived
    r = run_imgq("publish", "out", "--json")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert {x["id"] for x in lines} == archived | {i for (i,) in q(db_path, "SELECT id FROM files WHERE state = 'processed'")}
    assert all(Path(x["page"]).is_file() for x in lines)
    page = (site / "out" / page_of(db_path, HOSTILE_NAME)).read_text()
    [(copy_path,)] = q(db_path, "SELECT c.path FROM copies c JOIN files f ON f.id = c.file_id WHERE c.artifact_id IS NULL AND f.path LIKE ?", "%" + HOSTILE_NAME)
    original = (dest / copy_path) if not Path(copy_path).is_absolute() else Path(copy_path)
    rel = os.path.relpath(original, site / "out" / "photo")
    assert original.is_file() and f'href="{html.escape("/".join(urllib.parse.quote(s) if s != ".." else s for s in Path(rel).parts))}"' in page
    check_links(site / "out", beside=dest)


def test_lens_and_exposure_from_exif_on_the_photo_page(tmp_path, run_imgq, db_path):
    """What the camera wrote of the lens and the exposure is recorded by scan and shown,
    escaped like every EXIF string."""
    from PIL import Image as PILImage

    path = tmp_path / "inbox" / "erin" / "DSC_0100.jpg"
    samples.make_photo(path, width=640, height=480, seed=12, taken=dt.datetime(2024, 6, 1, 9, 30), make="Nikon", model="Z6")
    with PILImage.open(path) as im:
        exif = im.getexif()
        ifd = exif.get_ifd(0x8769)
        ifd[0xA434] = '24-70mm <b>"f/4"</b>'  # LensModel
        ifd[0x829A] = (1, 250)  # ExposureTime
        ifd[0x829D] = (56, 10)  # FNumber
        ifd[0x8827] = 400  # ISO
        ifd[0x920A] = (35, 1)  # FocalLength
        im.load()
        im.save(path, exif=exif.tobytes(), quality=90)
    old = path.stat().st_mtime - 600
    os.utime(path, (old, old))
    assert run_imgq("scan", "--settle", "0", tmp_path / "inbox").returncode == 0
    [(meta,)] = q(db_path, "SELECT meta FROM files")
    assert json.loads(meta)["exposure"] == "1/250 s · f/5.6 · ISO 400 · 35 mm"
    assert run_imgq("enqueue").returncode == 0 and run_imgq("work", "-j1", "--drain").returncode == 0
    assert run_imgq("publish", "out", "--no-enqueue").returncode == 0
    page = next((tmp_path / "out" / "photo").iterdir()).read_text()
    assert "<dt>Lens</dt><dd>24-70mm &lt;b&gt;&quot;f/4&quot;&lt;/b&gt;</dd>" in page
    assert "<dt>Exposure</dt><dd>1/250 s · f/5.6 · ISO 400 · 35 mm</dd>" in page
