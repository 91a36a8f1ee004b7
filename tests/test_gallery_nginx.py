"""The gallery behind HTTP basic authentication, as docs/gallery.md says to serve it: the
nginx block of the doc, run by a real nginx (Debian's nginx-light) on a free loopback
port, with a password file made by htpasswd (apache2-utils). Pages, images and the
originals need the password; the manifest is never served."""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from imgq import samples

from conftest import REPO, imgq_subprocess

USER, PASSWORD = "alice", "trowel & brush"


def doc_block() -> str:
    text = (REPO / "docs" / "gallery.md").read_text()
    m = re.search(r"```nginx\n(# /etc/nginx/sites-enabled/photos.*?)```", text, re.S)
    assert m, "docs/gallery.md has no nginx block for the gallery"
    return m.group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def nginx(tmp_path):
    """``start(www) -> base URL``: the doc's server block with www as its root."""
    exe, htpasswd = shutil.which("nginx") or "/usr/sbin/nginx", shutil.which("htpasswd")
    if not os.path.exists(exe) or htpasswd is None:
        pytest.skip("nginx or htpasswd is not installed (Debian packages nginx-light, apache2-utils; bin/test installs them when run as root)")
    procs = []

    def start(www: Path) -> str:
        run = tmp_path / "nginx"
        run.mkdir()
        passwords = run / "imgq.htpasswd"
        subprocess.run([htpasswd, "-b", "-c", str(passwords), USER, PASSWORD], check=True, capture_output=True)
        port = free_port()
        block = doc_block()
        for old, new in (("listen 80;", f"listen 127.0.0.1:{port};"), ("root /var/www;", f"root {www};"),
                         ("/etc/nginx/imgq.htpasswd", str(passwords))):
            assert old in block, old
            block = block.replace(old, new)
        temps = "".join(f"{k}_temp_path {run}/{k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (run / "nginx.conf").write_text(
            ("user root;\n" if os.geteuid() == 0 else "")  # the test's files are under root's private /tmp folder
            + f"worker_processes 1;\npid {run}/nginx.pid;\nerror_log {run}/error.log;\nevents {{}}\n"
            + f"http {{\ninclude /etc/nginx/mime.types;\naccess_log off;\n{temps}{block}\n}}\n"
        )
        p = subprocess.Popen([exe, "-e", str(run / "error.log"), "-p", str(run), "-c", str(run / "nginx.conf"), "-g", "daemon off;"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(p)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert p.poll() is None, p.stdout.read().decode()
                assert time.monotonic() < deadline, "nginx did not listen"
                time.sleep(0.05)
        return f"http://127.0.0.1:{port}/"

    yield start
    for p in procs:
        p.terminate()
        p.wait(timeout=10)


def get(url: str, *, auth: bool) -> tuple[int, bytes]:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_gallery_and_originals_need_the_password(tmp_path, nginx):
    box = samples.make_inbox(tmp_path / "inbox", photographers=("alice",), per_owner=2, size=(320, 240),
                             with_rotated=False, with_duplicate=False, with_broken=False, with_loose=False)
    www = tmp_path / "www"
    (www / "archive").mkdir(parents=True)
    for step in (("scan", "--settle", "0", box.root), ("enqueue",), ("work", "-j1", "--drain"),
                 ("archive", "--to", www / "archive"), ("publish", www / "photos", "--no-enqueue")):
        r = imgq_subprocess(*step, cwd=tmp_path)
        assert r.returncode == 0, (step, r.stderr)
    base = nginx(www)
    page = next(p for p in (www / "photos" / "photo").iterdir())
    page_url = urllib.parse.urljoin(base, f"photos/photo/{page.name}")
    status, body = get(page_url, auth=True)
    assert status == 200 and body == page.read_bytes()
    image = re.search(r'<img src="([^"]+)"', body.decode()).group(1)
    original = re.search(r'class="download" href="([^"]+)"', body.decode()).group(1)
    assert original.startswith("../../archive/")  # the archive beside the gallery, linked relatively
    urls = [urllib.parse.urljoin(base, "photos/"), page_url, urllib.parse.urljoin(page_url, image), urllib.parse.urljoin(page_url, original)]
    for url in urls:
        assert get(url, auth=False)[0] == 401, url
        status, data = get(url, auth=True)
        assert status == 200 and data, url
    # the original is the archived copy, byte for byte
    copy = www / urllib.parse.unquote(urllib.parse.urlsplit(urls[-1]).path).lstrip("/")
    assert get(urls[-1], auth=True)[1] == copy.read_bytes()
    # a wrong password is refused too, and the manifest is not served even with the right one
    req = urllib.request.Request(page_url, headers={"Authorization": "Basic " + base64.b64encode(b"alice:wrong").decode()})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 401
    assert get(urllib.parse.urljoin(base, "photos/.imgq-gallery.json"), auth=True)[0] == 403
