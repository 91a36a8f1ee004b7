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
:root { color-scheme: light dark; --muted: #666; --line: #ccc; }
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 72rem; padding: 0 1rem 3rem; }
header { border-bottom: 1px solid var(--line); margin-bottom: 1rem; }
header p { margin: .3rem 0 .6rem; }
.skip { position: absolute; left: -999px; }
.skip:focus { left: 1rem; top: 1rem; background: Canvas; padding: .3rem; }
h1 { font-size: 1.5rem; margin: .8rem 0 .2rem; overflow-wrap: anywhere; }
h2 { font-size: 1.15rem; margin: 1.4rem 0 .4rem; }
ul.grid { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: .8rem; }
ul.grid li { width: 132px; font-size: .8rem; overflow-wrap: anywhere; }
ul.grid img { display: block; max-width: 120px; max-height: 90px; margin: 0 auto .2rem; border: 1px solid var(--line); }
ul.grid .thumb { display: flex; align-items: center; justify-content: center; height: 96px; }
ul.list { columns: 16rem; padding-left: 1.2rem; }
.muted { color: var(--muted); }
nav.pages a, nav.pages span { display: inline-block; min-width: 1.6rem; padding: .1rem .3rem; text-align: center; }
nav.pages [aria-current] { font-weight: bold; border: 1px solid var(--line); }
figure { margin: 0; }
figure img { max-width: 100%; height: auto; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; }
dl.meta dt { color: var(--muted); }
dl.meta dd { margin: 0; overflow-wrap: anywhere; }
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


@dataclasses.dataclass(frozen=True)
class Original:
    """An archived copy of the original: where it is, and a URL when there is one."""

    label: str
    url: str | None  # already a complete URL (percent-encoded); None: shown as text only


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


# --------------------------------------------------------------------------- pieces


def _page(*, title: str, site: str, root: str, body: str, crumbs: list[tuple[str, str | None]]) -> str:
    trail = " › ".join(f'<a href="{url}">{esc(text)}</a>' if url else f'<span aria-current="page">{esc(text)}</span>' for text, url in crumbs)
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">\n'
        '<meta name="referrer" content="no-referrer">\n'
        '<meta name="generator" content="imgq publish">\n'
        f"<title>{esc(title)} · {esc(site)}</title>\n"
        f'<link rel="stylesheet" href="{root}style.css">\n'
        "</head>\n<body>\n"
        '<a class="skip" href="#main">Skip to content</a>\n'
        f'<header>\n<nav aria-label="Breadcrumb"><p>{trail}</p></nav>\n</header>\n'
        f'<main id="main">\n{body}</main>\n</body>\n</html>\n'
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
    return f"{p.name} by {p.owner}{when}"


def _time_of(p: Photo) -> str:
    if not p.taken_at:
        return ""
    return p.taken_at.replace("T", " ")[:19]


def _grid(photos: list[Photo], root: str, *, show_owner: bool, show_day: bool) -> str:
    items = []
    for p in photos:
        page = href(*([".."] if root else []), "photo", p.slug + ".html")
        t = p.thumb
        size = f' width="{t.width}" height="{t.height}"' if t.width and t.height else ""
        bits = [f'<a href="{page}">{esc(p.name)}</a>']
        if show_owner:
            bits.append(f'<span class="muted">{esc(p.owner)}</span>')
        when = _time_of(p)
        if when:
            bits.append(f'<span class="muted">{esc(when if show_day else when[11:])}</span>')
        items.append(
            f'<li><a class="thumb" href="{page}"><img src="{root}{href(*t.rel.split("/"))}"{size} alt="{esc(alt_text(p))}"></a>'
            + "<br>".join(bits)
            + "</li>"
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


def index_page(*, site: str, days: list[tuple[str, int]], owners: list[tuple[str, str, int]], total: int) -> str:
    """The front page: every day and every photographer, with their photo counts."""
    parts = [f"<h1>{esc(site)}</h1>\n<p>{total} photo{'s' if total != 1 else ''}.</p>\n"]
    parts.append('<section aria-labelledby="by-owner">\n<h2 id="by-owner">By photographer</h2>\n<ul class="list">\n')
    for owner, slug, n in owners:
        parts.append(f'<li><a href="{href("owner", page_name(slug, 1))}">{esc(owner)}</a> <span class="muted">({n})</span></li>\n')
    parts.append("</ul>\n</section>\n")
    parts.append('<section aria-labelledby="by-date">\n<h2 id="by-date">By date</h2>\n')
    year = None
    for day, n in days:
        y = day[:4] if day != "undated" else "Undated"
        if y != year:
            if year is not None:
                parts.append("</ul>\n")
            parts.append(f"<h3>{esc(y)}</h3>\n<ul class=\"list\">\n")
            year = y
        parts.append(f'<li><a href="{href("date", page_name(day, 1))}">{esc(day_title(day))}</a> <span class="muted">({n})</span></li>\n')
    if year is not None:
        parts.append("</ul>\n")
    parts.append("</section>\n")
    return _page(title="Home", site=site, root="", body="".join(parts), crumbs=[(site, None)])


def listing_page(*, site: str, kind: str, title: str, base: str, photos: list[Photo], number: int, count: int, total: int) -> str:
    """One page of a day's (kind 'date') or a photographer's (kind 'owner') photos."""
    heading = f"{title}" + (f" — page {number} of {count}" if count > 1 else "")
    pager = _pager(base, number, count)
    body = (
        f"<h1>{esc(heading)}</h1>\n<p class=\"muted\">{total} photo{'s' if total != 1 else ''}"
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


def photo_page(*, site: str, photo: Photo, prev: Photo | None, next: Photo | None, day_page: str, owner_page: str) -> str:
    """A photo's own page: its web version, its metadata, links to its originals."""
    p = photo
    w = p.web
    size = f' width="{w.width}" height="{w.height}"' if w.width and w.height else ""
    web_url = "../" + href(*w.rel.split("/"))
    rows = [
        ("File", esc(p.name)),
        ("Photographer", f'<a href="{href("..", "owner", owner_page)}">{esc(p.owner)}</a>'),
        ("Taken", esc(_time_of(p) or "unknown") + (' <span class="muted">(file time; no EXIF date)</span>' if p.taken_source == "mtime" else "")),
        ("Day", f'<a href="{href("..", "date", day_page)}">{esc(day_title(p.day))}</a>'),
        ("Camera", esc(p.camera or "unknown")),
        ("Size", esc(human_bytes(p.size)) + (f' <span class="muted">({p.size} bytes)</span>' if p.size and p.size >= 1000 else "")),
        ("Dimensions", esc(f"{p.width} × {p.height} pixels" if p.width and p.height else "unknown")),
    ]
    if p.faces is not None:
        rows.append(("Faces found", esc(p.faces)))
    rows.append(("Id", f"<code>{esc(p.id)}</code>"))
    if p.sha256:
        rows.append(("SHA-256", f"<code>{esc(p.sha256)}</code>"))
    versions = [f'<a href="{web_url}">web version</a> <span class="muted">({esc(_dims(w))})</span>']
    versions.append(f'<a href="../{href(*p.thumb.rel.split("/"))}">thumbnail</a> <span class="muted">({esc(_dims(p.thumb))})</span>')
    rows.append(("Versions", ", ".join(versions)))
    if p.originals:
        links = []
        for o in p.originals:
            links.append(f'<li><a href="{esc(o.url)}">{esc(o.label)}</a></li>' if o.url else f"<li>{esc(o.label)}</li>")
        rows.append(("Archived originals", '<ul class="originals">' + "".join(links) + "</ul>"))
    else:
        rows.append(("Archived originals", '<span class="muted">not archived yet</span>'))
    meta = "".join(f"<dt>{k}</dt><dd>{v}</dd>\n" for k, v in rows)
    nav = []
    if prev is not None:
        nav.append(f'<a href="{href(prev.slug + ".html")}" rel="prev">‹ {esc(prev.name)}</a>')
    if next is not None:
        nav.append(f'<a href="{href(next.slug + ".html")}" rel="next">{esc(next.name)} ›</a>')
    pager = f'<nav class="pages" aria-label="This day">{" · ".join(nav)}</nav>\n' if nav else ""
    body = (
        f"<h1>{esc(p.name)}</h1>\n{pager}"
        f'<figure>\n<a href="{web_url}"><img src="{web_url}"{size} alt="{esc(alt_text(p))}"></a>\n'
        f"<figcaption>{esc(p.owner)}{', ' + esc(_time_of(p)) if _time_of(p) else ''}</figcaption>\n</figure>\n"
        f'<dl class="meta">\n{meta}</dl>\n{pager}'
    )
    crumbs = [(site, "../index.html"), (day_title(p.day), href("..", "date", day_page)), (p.name, None)]
    return _page(title=p.name, site=site, root="../", body=body, crumbs=crumbs)


def _dims(i: Image) -> str:
    dims = f"{i.width} × {i.height}, " if i.width and i.height else ""
    return dims + human_bytes(i.bytes)
