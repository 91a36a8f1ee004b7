"""The gallery's HTML: pure functions from plain data to page text.

Every string that comes from the world (a file name, an owner folder, EXIF text, a path
at an archive destination) goes through ``esc`` before it reaches the page, and every URL
is built from percent-encoded segments by ``href``. The pages need no JavaScript, and each
carries a Content-Security-Policy that forbids scripts, so even a mistake in escaping
could not run one. Nothing on a page depends on the clock: the same data gives the same
bytes, which is what lets ``publish`` rewrite only what changed.

The shared pieces (stylesheet, page frame, escaping, the Photo data) live in
``imgq.gallery.markup``; a photo's own page in ``imgq.gallery.photo``. This module holds
the listing pages (the index, a day's or a photographer's photos) and re-exports the rest,
so ``from imgq.gallery import pages`` still reaches every name.
"""

from __future__ import annotations

import dataclasses

from imgq.gallery.markup import (  # noqa: F401  (re-exported: publish and the tests use pages.X)
    CSP,
    CSS,
    NAV,
    Face,
    Image,
    Original,
    Photo,
    _badge,
    _img,
    _page,
    _plural,
    _time_of,
    alt_text,
    day_title,
    esc,
    href,
    human_bytes,
    running_time,
)
from imgq.gallery.photo import Neighbours, photo_page  # noqa: F401  (re-exported)

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

