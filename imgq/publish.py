"""``imgq publish``: a static web gallery of the processed photos, rewritten incrementally.

Layout under OUT (every name is made safe for any file system and web server)::

    index.html                 every day and every photographer, with counts
    date/YYYY-MM-DD.html       one day's photos (date/YYYY-MM-DD.p2.html, … when large)
    owner/SLUG.html            one photographer's photos (owner/SLUG.p2.html, …)
    photo/SLUG.html            one photo: its web version, metadata, archived originals
    img/SLUG.NAME-HASH.EXT     thumbnails and web versions, hard-linked from the store
                               when OUT is on the same file system, else copied
    style.css
    .imgq-gallery.json         the manifest: sha256 and size of every file written here

Incremental: every page is rendered in memory (cheap) and written only when its sha256
differs from the manifest's or the file on disk is missing or has another size. Images
carry their content hash in their name, so a changed artifact is a new name and the old
one is removed. Only files the manifest lists are ever removed: whatever else is in OUT
stays. Each file is written under a temporary name and renamed into place, so a web
server never serves half a page, and a killed publish leaves a gallery the next run
repairs; the temporary files of a killed publish are swept by the next one (and listed).

Nothing is written outside OUT: every write goes through a handle on a folder opened
without following symlinks, and a symlink (or a file) where the gallery wants a folder
or a file is refused and named, never written through or replaced (see ``imgq.gallery.files``).
Image bytes are taken only from a regular file opened without following a symlink and
hashed on that handle: what is hard-linked or copied is the file whose sha256 matched.

Gathering the photos from the ledger lives in ``imgq.gallery.photos`` and writing OUT in
``imgq.gallery.write``; this module enqueues the gallery sizes and renders the pages.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from imgq.gallery import pages as H
from imgq.gallery import monitor
from imgq.gallery.photos import (  # noqa: F401 (re-exported: callers and tests import them from here)
    DAY,
    EXIF_SHOWN,
    GALLERY_RECIPE,
    SAFE,
    SHOWN_STATES,
    PublishOptions,
    PublishReport,
    _collect,
    _json,
    _Output,
    fold_unique,
    slug,
)
from imgq.gallery.write import MANIFEST, MANIFEST_VERSION, _apply  # noqa: F401 (re-exported)
from imgq.ledger import queue
from imgq.ledger.journal import Actor
from imgq.errors import StorageError, UsageError


def publish(
    db: DB,
    out: Path,
    *,
    store_dir: Path,
    options: PublishOptions = PublishOptions(),
    dry_run: bool = False,
    on_progress: Callable[[int, int], None] = lambda done, total: None,
) -> PublishReport:
    """Bring the gallery at ``out`` up to date with the database; see the module doc.

    Returns what was written, removed, swept and refused; a second call with nothing
    changed writes nothing at all. Something in the way (a symlink where a folder or file
    belongs) is refused and listed in ``report.refused``; the rest is still written.
    With ``dry_run`` nothing is created, written or removed: the report says what would
    be. ``on_progress(done, total)`` is told as the files to write are gone through.
    """
    if options.per_page < 1:
        raise UsageError("--per-page must be at least 1")
    out = Path(out)
    try:
        if not dry_run:
            out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot create {out}: {e.strerror or e}")
    report = PublishReport()
    if options.enqueue and options.gallery and not dry_run:
        report.enqueued = _enqueue_gallery(db, options)
    photos, outputs = _collect(db, out, store_dir, options, report)
    outputs.update(_pages(db, photos, options))
    _apply(out, outputs, options, report, dry_run=dry_run, on_progress=on_progress)
    report.photos = [p.id for p in photos]
    return report


def _enqueue_gallery(db: DB, options: PublishOptions) -> list[str]:
    """Give every photo in the gallery that may still get one (processed or archived, not
    collected) and lacks it the gallery recipe's job: existing sites get the large sizes
    by publishing, whatever their ``enqueue`` list says; the next ``imgq work`` makes them
    and the next publish shows them (until then a photo page shows the web version). A
    photo not in the gallery yet is left to ``imgq enqueue``."""
    chains = {GALLERY_RECIPE: options.gallery}
    shown = {r[0] for r in db.all("SELECT DISTINCT file_id FROM artifacts WHERE name IN (?, ?)", (options.thumb, options.web))}
    wanted = [i for i in queue.lacking(db, chains) if i in shown]
    if not wanted:
        return []
    done = queue.enqueue(db, wanted, chains, max_attempts=options.max_attempts, actor=Actor(name="publish"))
    return [r.file_id for r in done if r.created]




RECENT = 12  # photos in the index's "Latest photos"


def _pages(db: DB, photos: list[H.Photo], options: PublishOptions) -> dict[str, _Output]:
    site = options.title
    per = options.per_page
    pages: dict[str, str] = {"style.css": H.CSS}
    by_day: dict[str, list[H.Photo]] = defaultdict(list)
    by_owner: dict[str, list[H.Photo]] = defaultdict(list)
    for p in photos:  # already in taken order
        by_day[p.day].append(p)
        by_owner[p.owner_slug].append(p)

    day_page: dict[str, str] = {}
    owner_page: dict[str, str] = {}
    for kind, groups, where in (("date", by_day, day_page), ("owner", by_owner, owner_page)):
        for base, group in groups.items():
            chunks = [group[i : i + per] for i in range(0, len(group), per)]
            title = H.day_title(base) if kind == "date" else group[0].owner
            for n, chunk in enumerate(chunks, start=1):
                name = H.page_name(base, n)
                pages[f"{kind}/{name}"] = H.listing_page(site=site, kind=kind, title=title, base=base, photos=chunk, number=n, count=len(chunks), total=len(group))
                for p in chunk:
                    where[p.id] = name

    near: dict[str, dict] = defaultdict(dict)
    for groups, prev, nxt in ((by_day, "day_prev", "day_next"), (by_owner, "owner_prev", "owner_next")):
        for group in groups.values():
            for i, p in enumerate(group):
                near[p.id][prev] = group[i - 1] if i > 0 else None
                near[p.id][nxt] = group[i + 1] if i + 1 < len(group) else None
    for p in photos:
        pages[f"photo/{p.slug}.html"] = H.photo_page(
            site=site, photo=p, near=H.Neighbours(**near[p.id]), day_page=day_page[p.id], owner_page=owner_page[p.id]
        )

    # newest first, photos without a date last; a group's cover is its newest photo
    def group(title: str, page: str, g: list[H.Photo]) -> H.Group:
        return H.Group(title=title, page=page, count=len(g), cover=g[-1], latest=g[-1].taken_at)

    days = [group(H.day_title(d), f"date/{H.page_name(d, 1)}", by_day[d]) for d in sorted((d for d in by_day if d != "undated"), reverse=True)]
    if "undated" in by_day:
        days.append(group("Undated", f"date/{H.page_name('undated', 1)}", by_day["undated"]))
    owners = [group(g[0].owner, f"owner/{H.page_name(s, 1)}", g) for s, g in by_owner.items()]
    owners.sort(key=lambda o: (o.latest or "", o.title.casefold()), reverse=True)
    dated = [p for p in photos if p.day != "undated"]
    recent = list(reversed(dated[-RECENT:]))
    pages["index.html"] = H.index_page(site=site, days=days, owners=owners, recent=recent, total=len(photos))

    links = {p.id: f"photo/{p.slug}.html" for p in photos}
    m = monitor.read(db, set(links))
    pages["status.html"] = monitor.status_page(site=site, m=m, pages=links, shown=len(photos))
    pages["failures.html"] = monitor.failures_page(site=site, m=m, pages=links)

    outputs = {}
    ids_by_page = {f"photo/{p.slug}.html": p.id for p in photos}
    for rel, text in pages.items():
        data = text.encode("utf-8")
        outputs[rel] = _Output(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), data=data, file_id=ids_by_page.get(rel))
    return outputs
