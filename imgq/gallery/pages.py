"""The gallery's HTML: pure functions from plain data to page text.

Every string that comes from the world (a file name, an owner folder, EXIF text, a path
at an archive destination) goes through ``esc`` before it reaches the page, and every URL
is built from percent-encoded segments by ``href``. The pages need no JavaScript, and each
carries a Content-Security-Policy that forbids scripts, so even a mistake in escaping
could not run one. Nothing on a page depends on the clock: the same data gives the same
bytes, which is what lets ``publish`` rewrite only what changed.
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


# a grid cell is at most about 16rem wide, and half a phone's width
GRID_SIZES = "(max-width: 36rem) 50vw, 16rem"
COVER_SIZES = "(max-width: 36rem) 100vw, 22rem"


def _grid(photos: list[Photo], root: str, *, show_owner: bool, show_day: bool) -> str:
    items = []
    for n, p in enumerate(photos):
        page = href(*([".."] if root else []), "photo", p.slug + ".html")
        when = _time_of(p)
        bits = [f"<b>{esc(p.name)}</b>"]
        if when:
            bits.append(esc(when if show_day else when[11:]))
        if show_owner:
            bits.append(esc(p.owner))
        items.append(
            f'<li><a class="thumb" href="{page}">{_img(root, p, sizes=GRID_SIZES, upto=640, lazy=n >= 24)}{_badge(p)}</a>'
            f'<span class="cap">{"<br>".join(bits)}</span></li>'
        )
    return '<ul class="grid">\n' + "\n".join(items) + "\n</ul>\n"


def page_name(base: str, number: int) -> str:
    """The file name of page ``number`` (1-based) of a paginated listing."""
    return f"{base}.html" if number == 1 else f"{base}.p{number}.html"


def _pager(base: str, number: int, count: int) -> str:
    if count <= 1:
        return ""
    links = []
    if number > 1:
        links.append(f'<a href="{href(page_name(base, number - 1))}" rel="prev">‹ previous</a>')
    for n in range(1, count + 1):
        if n == number:
            links.append(f'<span aria-current="page">{n}</span>')
        else:
            links.append(f'<a href="{href(page_name(base, n))}" aria-label="page {n}">{n}</a>')
    if number < count:
        links.append(f'<a href="{href(page_name(base, number + 1))}" rel="next">next ›</a>')
    return f'<nav class="pages" aria-label="Pages">{" ".join(links)}</nav>\n'


# --------------------------------------------------------------------------- pages


@dataclasses.dataclass(frozen=True)
class Group:
    """A day or a photographer on the index: its page, its size, its cover photo."""

    title: str
    page: str  # OUT-relative, e.g. "date/2024-05-17.html"
    count: int
    cover: Photo
    latest: str | None  # the newest capture time in it


def _covers(groups: list[Group], *, subtitle) -> str:
    items = []
    for n, g in enumerate(groups):
        url = href(*g.page.split("/"))
        alt = f"{g.title}: {alt_text(g.cover)}"
        items.append(
            f'<li><a class="thumb" href="{url}">{_img("", g.cover, sizes=COVER_SIZES, upto=640, lazy=n >= 24, alt=alt)}</a>'
            f'<span class="cap"><a href="{url}"><b>{esc(g.title)}</b></a><br>{esc(subtitle(g))}</span></li>'
        )
    return '<ul class="grid covers">\n' + "\n".join(items) + "\n</ul>\n"


def index_page(*, site: str, days: list[Group], owners: list[Group], recent: list[Photo], total: int) -> str:
    """The front page: the newest photos, then every photographer and every day (newest
    first), each shown by a cover photo with its count."""
    parts = [f"<h1>{esc(site)}</h1>\n<p class=\"lede\">{_plural(total, 'photo')} by {_plural(len(owners), 'photographer')} on {_plural(len([d for d in days if d.page != 'date/undated.html']), 'day')}.</p>\n"]
    if recent:
        parts.append('<section aria-labelledby="recent">\n<h2 id="recent">Latest photos</h2>\n')
        parts.append(_grid(recent, "", show_owner=True, show_day=True))
        parts.append("</section>\n")
    parts.append('<section aria-labelledby="by-owner">\n<h2 id="by-owner">By photographer</h2>\n')
    parts.append(_covers(owners, subtitle=lambda g: f"{_plural(g.count, 'photo')}" + (f", latest {g.latest[:10]}" if g.latest else "")))
    parts.append("</section>\n")
    parts.append('<section aria-labelledby="by-date">\n<h2 id="by-date">By date</h2>\n')
    parts.append(_covers(days, subtitle=lambda g: _plural(g.count, "photo")))
    parts.append("</section>\n")
    return _page(title="Home", site=site, root="", body="".join(parts), crumbs=[(site, None)])


def listing_page(*, site: str, kind: str, title: str, base: str, photos: list[Photo], number: int, count: int, total: int) -> str:
    """One page of a day's (kind 'date') or a photographer's (kind 'owner') photos."""
    heading = f"{title}" + (f" — page {number} of {count}" if count > 1 else "")
    pager = _pager(base, number, count)
    body = (
        f"<h1>{esc(heading)}</h1>\n<p class=\"lede\">{_plural(total, 'photo')}"
        + (" by this photographer" if kind == "owner" else " this day")
        + ".</p>\n"
        + pager
        + _grid(photos, "../", show_owner=kind == "date", show_day=kind == "owner")
        + pager
    )
    section = "By date" if kind == "date" else "By photographer"
    anchor = "by-date" if kind == "date" else "by-owner"
    crumbs = [(site, "../index.html"), (section, f"../index.html#{anchor}"), (title, None)]
    return _page(title=heading, site=site, root="../", body=body, crumbs=crumbs)


@dataclasses.dataclass(frozen=True)
class Neighbours:
    """Where a photo stands in its day and in its photographer's photos."""

    day_prev: Photo | None = None
    day_next: Photo | None = None
    owner_prev: Photo | None = None
    owner_next: Photo | None = None


def _step(what: str, prev: Photo | None, nxt: Photo | None, up: str, up_text: str, *, keys: bool) -> str:
    bits = [f'<span class="what">{esc(what)}</span>']
    rel_prev = ' rel="prev" accesskey="p"' if keys else ""
    rel_next = ' rel="next" accesskey="n"' if keys else ""
    bits.append(f'<a href="{href(prev.slug + ".html")}"{rel_prev}>‹ {esc(prev.name)}</a>' if prev else '<span class="muted">‹ first</span>')
    bits.append(f'<a href="{up}">{esc(up_text)}</a>')
    bits.append(f'<a href="{href(nxt.slug + ".html")}"{rel_next}>{esc(nxt.name)} ›</a>' if nxt else '<span class="muted">last ›</span>')
    return f'<nav class="step" aria-label="{esc(what)}">{" ".join(bits)}</nav>\n'


# the large image: the width of the window, or of its height less the page's top at the
# photo's aspect ratio, whichever is smaller
def _ratio(p: Photo) -> float:
    return (p.web.width / p.web.height) if p.web.width and p.web.height else 1.5


def _stage_sizes(p: Photo) -> str:
    # (a media query cannot subtract the page's top, so the switch is at the photo's
    # own aspect ratio: close enough to pick a size, and every validator reads it)
    w, h = (p.web.width, p.web.height) if p.web.width and p.web.height else (3, 2)
    return f"(min-aspect-ratio: {w}/{h}) calc((100vh - 12rem) * {_ratio(p):.4f}), calc(100vw - 2rem)"


def photo_page(*, site: str, photo: Photo, near: Neighbours, day_page: str, owner_page: str) -> str:
    """A photo's own page: the photo as large as the screen allows, previous and next in
    its day and its photographer's photos, its metadata, other versions, originals."""
    p = photo
    w = p.web
    day_url = href("..", "date", day_page)
    owner_url = href("..", "owner", owner_page)
    rows = [
        ("File", esc(p.name)),
        ("Photographer", f'<a href="{owner_url}">{esc(p.owner)}</a>'),
        ("Taken", esc(_time_of(p) or "unknown") + (' <span class="muted">(file time; no EXIF date)</span>' if p.taken_source == "mtime" else "")),
        ("Day", f'<a href="{day_url}">{esc(day_title(p.day))}</a>'),
        ("Camera", esc(p.camera or "unknown")),
    ]
    rows += [(esc(k), esc(v)) for k, v in p.exif]
    rows += [
        ("Size", esc(human_bytes(p.size)) + (f' <span class="muted">({p.size} bytes)</span>' if p.size and p.size >= 1000 else "")),
        ("Dimensions", esc(f"{p.width} × {p.height} pixels" if p.width and p.height else "unknown")),
    ]
    if p.is_video:
        rate = f", {p.frame_rate:g} frames a second" if p.frame_rate else ""
        rows.append(("Running time", esc(running_time(p.duration)) + (f' <span class="muted">({p.duration:g} s{esc(rate)})</span>' if p.duration is not None else "")))
        if p.preview:
            rows.append(("Preview", f'<a href="../{href(*p.preview.rel.split("/"))}" type="{esc(p.preview.type)}">{esc(_dims(p.preview))}</a>'))
        for m in p.movies:
            rows.append((esc(m.name), f'<a href="../{href(*m.rel.split("/"))}" type="{esc(m.type)}">{esc(_dims(m))}</a>'))
    if p.faces is not None:
        rows.append(("Faces found", esc(p.faces)))
    rows.append(("Id", f"<code>{esc(p.id)}</code>"))
    if p.sha256:
        rows.append(("SHA-256", f"<code>{esc(p.sha256)}</code>"))
    sizes = [f'<a href="../{href(*i.rel.split("/"))}">{esc(_dims(i))}</a>' for i in p.srcset()]
    rows.append(("Sizes", ", ".join(sizes)))
    if p.originals:
        links = []
        for o in p.originals:
            links.append(f'<li><a href="{esc(o.url)}">{esc(o.label)}</a></li>' if o.url else f"<li>{esc(o.label)}</li>")
        rows.append(("Archived originals", '<ul class="originals">' + "".join(links) + "</ul>"))
    else:
        rows.append(("Archived originals", '<span class="muted">not archived yet</span>'))
    meta = "".join(f"<dt>{k}</dt><dd>{v}</dd>\n" for k, v in rows)

    faces = "".join(
        f'<span class="face" style="left:{f.left * 100:.2f}%;top:{f.top * 100:.2f}%;width:{f.width * 100:.2f}%;height:{f.height * 100:.2f}%" title="face"></span>'
        for f in p.boxes
    )
    big = _img("../", p, sizes=_stage_sizes(p), upto=100_000, lazy=False)
    download = next((o for o in p.originals if o.url), None)
    what = "video" if p.is_video else ""
    down = f'<a class="download" href="{esc(download.url)}" download>Download the original{" " + what if what else ""} ({esc(human_bytes(p.size))})</a>\n' if download else ""
    caption = esc(p.owner) + (f", {esc(_time_of(p))}" if _time_of(p) else "") + (f" · {esc(p.camera)}" if p.camera else "")
    if p.is_video:
        caption += f" · {esc(running_time(p.duration))}"
    stage = _video_stage(p, download) if p.is_video and p.preview else (
        f'<a class="frame" style="--r: {_ratio(p):.4f}" href="../{href(*p.srcset()[-1].rel.split("/"))}">{big}{faces}</a>'
    )
    nav = _step("This day", near.day_prev, near.day_next, day_url, day_title(p.day), keys=True)
    nav += _step("This photographer", near.owner_prev, near.owner_next, owner_url, p.owner, keys=False)
    body = (
        f"<h1>{esc(p.name)}</h1>\n{nav}"
        f'<figure class="stage">\n{stage}\n'
        f"<figcaption>{caption}{' · ' + _plural(len(p.boxes), 'face') + ' marked' if p.boxes else ''}</figcaption>\n</figure>\n"
        f"{down}"
    )
    if p.versions:
        body += '<section aria-labelledby="versions">\n<h2 id="versions">Versions</h2>\n<ul class="grid versions">\n'
        for v in (w, *p.versions):
            label = "as taken" if v is w else v.name
            size = f' width="{v.width}" height="{v.height}"' if v.width and v.height else ""
            body += (
                f'<li><a class="thumb" href="../{href(*v.rel.split("/"))}"><img src="../{href(*v.rel.split("/"))}"{size} loading="lazy" alt="{esc(alt_text(p))}: {esc(label)}"></a>'
                f'<span class="cap"><b>{esc(label)}</b><br>{esc(_dims(v))}</span></li>\n'
            )
        body += "</ul>\n</section>\n"
    body += f'<section aria-labelledby="details">\n<h2 id="details">Details</h2>\n<dl class="meta">\n{meta}</dl>\n</section>\n'
    crumbs = [(site, "../index.html"), (day_title(p.day), day_url), (p.name, None)]
    head = ""
    if near.day_prev:
        head += f'<link rel="prev" href="{href(near.day_prev.slug + ".html")}">\n'
    if near.day_next:
        head += f'<link rel="next" href="{href(near.day_next.slug + ".html")}">\n'
    return _page(title=p.name, site=site, root="../", body=body, crumbs=crumbs, head=head)


def _video_stage(p: Photo, original: Original | None) -> str:
    """The video played where a photo would be shown: its preview with the web still as
    poster, the browser's own controls (no script), and links for a browser that cannot
    play it."""
    v = p.preview
    src = f"../{href(*v.rel.split('/'))}"
    size = f' width="{v.width}" height="{v.height}"' if v.width and v.height else ""
    fallback = f'<a href="{src}">the preview</a>' + (f' or <a href="{esc(original.url)}">the original</a>' if original else "")
    return (
        f'<div class="frame" style="--r: {_ratio(p):.4f}">'
        f'<video controls preload="metadata" poster="../{href(*p.web.rel.split("/"))}"{size} aria-label="{esc(alt_text(p))}">'
        f'<source src="{src}" type="{esc(v.type)}">'
        f"<p>This browser cannot play the video here: download {fallback}.</p></video></div>"
    )


def _dims(i: Image) -> str:
    dims = f"{i.width} × {i.height}, " if i.width and i.height else ""
    return dims + human_bytes(i.bytes)
