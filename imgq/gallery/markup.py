"""The gallery's shared HTML: the stylesheet, the page frame, escaping and URLs, the
plain data the pages are made from (Photo, Image, Original, Face), and the small pieces
every page uses (an <img> with its srcset, sizes in bytes, days and running times).

Every string that comes from the world (a file name, an owner folder, EXIF text, a path
at an archive destination) goes through ``esc`` before it reaches the page, and every URL
is built from percent-encoded segments by ``href``. The pages need no JavaScript, and each
carries a Content-Security-Policy that forbids scripts, so even a mistake in escaping
could not run one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import html
import re
import urllib.parse

CSS = """\
:root {
  color-scheme: light dark;
  --bg: #f6f5f3; --fg: #1c1c1c; --muted: #595959; --line: #d8d6d2; --card: #ffffff;
  --accent: #0b57d0; --tile: #e4e2de; --bad: #a50e0e; --face: #ffd400;
}
@media (prefers-color-scheme: dark) {
  :root { --bg: #151515; --fg: #ececec; --muted: #a9a9a9; --line: #363636; --card: #202020;
          --accent: #8ab4f8; --tile: #2a2a2a; --bad: #f28b82; }
}
* { box-sizing: border-box; }
html { background: var(--bg); color: var(--fg); }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; }
a { color: var(--accent); }
a:focus-visible { outline: 3px solid var(--accent); outline-offset: 2px; }
.skip { position: absolute; left: -999px; }
.skip:focus { left: 1rem; top: 1rem; background: var(--card); padding: .3rem; z-index: 2; }
header.top { display: flex; flex-wrap: wrap; align-items: baseline; gap: .2rem 1.2rem; padding: .55rem 1rem;
  border-bottom: 1px solid var(--line); background: var(--card); }
header.top .site { font-weight: 650; color: var(--fg); text-decoration: none; }
header.top nav a { margin-right: .8rem; }
.crumbs { margin: .8rem 0 0; font-size: .9rem; color: var(--muted); overflow-wrap: anywhere; }
main { padding: 0 1rem 3rem; max-width: 120rem; margin: 0 auto; }
h1 { font-size: 1.5rem; margin: .8rem 0 .2rem; overflow-wrap: anywhere; }
h2 { font-size: 1.15rem; margin: 1.6rem 0 .6rem; }
.muted { color: var(--muted); }
.lede { margin: 0 0 1rem; color: var(--muted); }
ul.grid { list-style: none; padding: 0; margin: 0; display: grid; gap: 6px;
  grid-template-columns: repeat(auto-fill, minmax(min(14rem, calc(50% - 3px)), 1fr)); }
ul.grid li { min-width: 0; }
ul.grid a.thumb { display: block; position: relative; aspect-ratio: 4 / 3; background: var(--tile); overflow: hidden; border-radius: 3px; }
ul.grid img { position: absolute; inset: 0; display: block; width: 100%; height: 100%; object-fit: cover; }
ul.grid a.thumb:hover img { opacity: .88; }
.badge { position: absolute; right: 4px; bottom: 4px; padding: 0 .35rem; border-radius: 3px; font-size: .75rem;
  line-height: 1.5; background: rgba(0, 0, 0, .72); color: #fff; font-variant-numeric: tabular-nums; }
.frame video { display: block; width: 100%; height: auto; background: #000; }
.cap { display: block; font-size: .78rem; line-height: 1.3; padding: .25rem .1rem .35rem; color: var(--muted);
  overflow-wrap: anywhere; }
.cap b { color: var(--fg); font-weight: 500; }
ul.covers { grid-template-columns: repeat(auto-fill, minmax(min(15rem, 100%), 1fr)); gap: 14px; }
ul.covers a.thumb { aspect-ratio: 3 / 2; }
ul.covers .cap { font-size: .9rem; }
ul.covers .cap b { font-weight: 600; }
nav.pages { margin: .8rem 0; }
nav.pages a, nav.pages span { display: inline-block; min-width: 1.8rem; padding: .15rem .35rem; text-align: center; }
nav.pages [aria-current] { font-weight: bold; border: 1px solid var(--line); border-radius: 3px; }
nav.step { display: flex; flex-wrap: wrap; gap: .3rem 1rem; align-items: baseline; margin: .4rem 0; font-size: .92rem; }
nav.step .what { color: var(--muted); min-width: 7.5rem; }
nav.step a { overflow-wrap: anywhere; }
figure.stage { margin: .6rem 0 0; text-align: center; }
/* the photo as large as the window allows: its width, or its height less the page's top
   at the photo's aspect ratio (--r, set on the page), whichever is smaller */
.frame { display: block; position: relative; margin: 0 auto; width: min(100%, calc((100vh - 12rem) * var(--r, 1.5))); }
.frame img { display: block; width: 100%; height: auto; background: var(--tile); }
.face { position: absolute; border: 2px solid var(--face); box-shadow: 0 0 0 1px #000; border-radius: 2px; }
figure.stage figcaption { margin-top: .4rem; color: var(--muted); font-size: .9rem; line-height: 1.4; }
.download { display: inline-block; margin: .6rem 0; padding: .35rem .8rem; border: 1px solid var(--accent);
  border-radius: 4px; text-decoration: none; }
.details { display: flex; flex-wrap: wrap; gap: 0 3rem; }
dl.meta { display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: .2rem 1rem; margin: 0; }
dl.meta dt { color: var(--muted); }
dl.meta dd { margin: 0; overflow-wrap: anywhere; }
dl.meta ul { margin: 0; padding-left: 1.1rem; }
ul.versions { grid-template-columns: repeat(auto-fill, minmax(min(18rem, 100%), 1fr)); }
ul.versions a.thumb { aspect-ratio: auto; }
ul.versions img { position: static; height: auto; object-fit: contain; }
table { border-collapse: collapse; margin: .3rem 0 1rem; font-size: .92rem; }
th, td { text-align: left; padding: .25rem .7rem .25rem 0; border-bottom: 1px solid var(--line); vertical-align: top;
  overflow-wrap: break-word; }
th { white-space: nowrap; }
td code { word-break: break-all; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; max-width: 100%; }
.bad { color: var(--bad); }
svg.plot { max-width: 100%; height: auto; color: var(--fg); }
svg.plot .bar { fill: var(--accent); }
svg.plot .bar.bad { fill: #d93025; }
svg.plot .axis { stroke: var(--line); }
svg.plot text { fill: var(--muted); font: 11px system-ui, sans-serif; }
"""

# No script may run on any page, whatever ends up in it.
# (Only scripts, plugins, <base> and forms are restricted: a 'self' source does not match
# file:// pages in every browser, and the gallery must also work opened from disk.)
CSP = "script-src 'none'; object-src 'none'; base-uri 'none'; form-action 'none'"


def esc(text) -> str:
    """Text made safe for HTML content and for quoted attribute values."""
    return _esc(text) if isinstance(text, str) else html.escape("" if text is None else str(text), quote=True)


@functools.lru_cache(maxsize=65536)
def _esc(text: str) -> str:
    # the same names, owners and days recur on many pages
    return html.escape(text, quote=True)


_PLAIN = re.compile(r"[A-Za-z0-9._~-]*")


@functools.lru_cache(maxsize=65536)
def _segment(s: str) -> str:
    # most segments are our own plain names: skip the (slow) general path for them
    return s if _PLAIN.fullmatch(s) else esc(urllib.parse.quote(s, safe=""))


def href(*segments: str) -> str:
    """A relative URL from path segments, each percent-encoded, escaped for an attribute.

    ``..`` is kept as a segment (it only ever comes from the page's own depth)."""
    return "/".join(_segment(s) for s in segments)


@dataclasses.dataclass(frozen=True)
class Image:
    """One image in the gallery: where it is under OUT, and how large."""

    rel: str  # e.g. "img/alice_1715932800_IMG_0001.jpg.thumb-3fa2b1c0aa.jpg"
    width: int | None
    height: int | None
    bytes: int
    name: str = ""  # the artifact's name (thumb, web, gallery1280, web-brightness1.2, ...)
    type: str | None = None  # a video's media type (video/mp4, video/webm); None: a still image


@dataclasses.dataclass(frozen=True)
class Original:
    """An archived copy of the original: where it is, and a URL when there is one."""

    label: str
    url: str | None  # already a complete URL (percent-encoded); None: shown as text only


@dataclasses.dataclass(frozen=True)
class Face:
    """A face found, as fractions (0-1) of the frame it was found in."""

    left: float
    top: float
    width: float
    height: float


@dataclasses.dataclass(frozen=True)
class Photo:
    id: str
    slug: str  # page name under photo/, safe for any file system and URL
    name: str  # the original file name, as the photographer gave it
    owner: str
    owner_slug: str
    day: str  # YYYY-MM-DD, or "undated"
    taken_at: str | None
    taken_source: str | None
    camera: str | None
    size: int | None
    width: int | None
    height: int | None
    sha256: str | None
    faces: int | None
    thumb: Image
    web: Image
    originals: tuple[Original, ...] = ()
    renditions: tuple[Image, ...] = ()  # the gallery recipe's sizes (and web), smallest first
    versions: tuple[Image, ...] = ()  # other outputs of recipes (enhancements, faces drawn)
    boxes: tuple[Face, ...] = ()
    exif: tuple[tuple[str, str], ...] = ()  # (label, text): lens, exposure, ... when recorded
    kind: str = "photo"  # or "video": thumb and web are then stills of it, poster of preview
    duration: float | None = None  # a video's running time in seconds
    frame_rate: float | None = None
    preview: Image | None = None  # the video played on its page
    movies: tuple[Image, ...] = ()  # its other video artifacts, linked

    @property
    def is_video(self) -> bool:
        return self.kind == "video"

    def srcset(self, *, upto: int | None = None) -> tuple[Image, ...]:
        """Images of this photo fit for a srcset (distinct widths, smallest first), at most
        ``upto`` pixels wide (the smallest is always kept)."""
        seen, out = set(), []
        for i in sorted((self.thumb, self.web, *self.renditions), key=lambda i: (i.width or 0, i.rel)):
            if not i.width or i.width in seen:
                continue
            if upto is not None and out and i.width > upto:
                break
            seen.add(i.width)
            out.append(i)
        return tuple(out)


# --------------------------------------------------------------------------- pieces

NAV = (("Home", "index.html"), ("Status", "status.html"), ("Failures", "failures.html"))


def _page(*, title: str, site: str, root: str, body: str, crumbs: list[tuple[str, str | None]], head: str = "") -> str:
    trail = " › ".join(f'<a href="{url}">{esc(text)}</a>' if url else f'<span aria-current="page">{esc(text)}</span>' for text, url in crumbs)
    links = " ".join(f'<a href="{root}{url}">{text}</a>' for text, url in NAV)
    # the home page is the whole trail: no breadcrumb there
    crumbs_nav = f'<nav class="crumbs" aria-label="Breadcrumb">{trail}</nav>\n' if len(crumbs) > 1 else ""
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">\n'
        '<meta name="referrer" content="no-referrer">\n'
        '<meta name="generator" content="imgq publish">\n'
        '<meta name="color-scheme" content="light dark">\n'
        f"<title>{esc(title)} · {esc(site)}</title>\n"
        f'<link rel="stylesheet" href="{root}style.css">\n{head}'
        "</head>\n<body>\n"
        '<a class="skip" href="#main">Skip to content</a>\n'
        f'<header class="top">\n<a class="site" href="{root}index.html">{esc(site)}</a>\n'
        f'<nav aria-label="Site">{links}</nav>\n</header>\n'
        f'<main id="main">\n{crumbs_nav}{body}</main>\n</body>\n</html>\n'
    )


def human_bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    size = float(n)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{int(size)} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} bytes"  # not reached


@functools.lru_cache(maxsize=4096)
def day_title(day: str) -> str:
    try:
        d = dt.date.fromisoformat(day)
    except ValueError:
        return "Undated"
    return f"{d.strftime('%A')} {d.day} {d.strftime('%B %Y')}"


def alt_text(p: Photo) -> str:
    when = f", taken {p.day}" if p.day != "undated" else ""
    video = f" (video, {running_time(p.duration)})" if p.is_video else ""
    return f"{p.name} by {p.owner}{when}{video}"


def running_time(seconds: float | None) -> str:
    """A video's running time as people read it: 0:07, 12:34, 1:02:03 (whole seconds,
    rounded; "unknown" when none was recorded)."""
    if seconds is None:
        return "unknown"
    total = int(round(seconds))
    h, rest = divmod(total, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _badge(p: Photo) -> str:
    # a video's tile says so at a glance; the alt text says it to a screen reader
    return f'<span class="badge" aria-hidden="true">▶ {esc(running_time(p.duration))}</span>' if p.is_video else ""


def _time_of(p: Photo) -> str:
    if not p.taken_at:
        return ""
    return p.taken_at.replace("T", " ")[:19]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _src(root: str, i: Image) -> str:
    return root + href(*i.rel.split("/"))


def _img(root: str, p: Photo, *, sizes: str, upto: int, lazy: bool, alt: str | None = None) -> str:
    """An <img> of ``p`` choosing among its renditions up to ``upto`` px wide."""
    options = p.srcset(upto=upto)
    best = options[-1]
    size = f' width="{best.width}" height="{best.height}"' if best.width and best.height else ""
    srcset = ", ".join(f"{_src(root, i)} {i.width}w" for i in options)
    extra = f' srcset="{srcset}" sizes="{esc(sizes)}"' if len(options) > 1 else ""
    loading = ' loading="lazy" decoding="async"' if lazy else ""
    return f'<img src="{_src(root, best)}"{extra}{size}{loading} alt="{esc(alt_text(p) if alt is None else alt)}">'
