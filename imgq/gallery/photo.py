"""A photo's own gallery page: the photo (or video) as large as the screen allows,
previous and next in its day and its photographer's photos, its metadata, other versions
and archived originals."""

from __future__ import annotations

import dataclasses

from imgq.gallery.markup import Image, Original, Photo, _img, _page, _plural, _time_of, alt_text, day_title, esc, href, human_bytes, running_time


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
