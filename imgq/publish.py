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
or a file is refused and named, never written through or replaced (see ``imgq.gallery_files``).
Image bytes are taken only from a regular file opened without following a symlink and
hashed on that handle: what is hard-linked or copied is the file whose sha256 matched.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import re
import stat
import unicodedata
import urllib.parse
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from imgq.gallery import files as gf
from imgq.gallery import pages as H
from imgq.gallery import monitor
from imgq.ledger import queue
from imgq.ledger.database import DB
from imgq.ledger.journal import Actor
from imgq.config import DEFAULT_RECIPES
from imgq.errors import StorageError, UsageError
from imgq.original import Unsafe

MANIFEST = ".imgq-gallery.json"
MANIFEST_VERSION = 1
SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,100}")
DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
# states whose files may have artifacts worth showing; failed and duplicate ones never do
SHOWN_STATES = ("queued", "processed", "archived", "collected")
GALLERY_RECIPE = "gallery"  # its outputs are the sizes photo pages choose from


@dataclasses.dataclass
class PublishOptions:
    title: str = "Photos"
    per_page: int = 100
    link: bool = True  # hard-link images from the store when OUT is on its file system
    force: bool = False  # rewrite every file, whatever the manifest says
    thumb: str = "thumb"  # artifact names shown as thumbnail and as web version
    web: str = "web"
    preview: str = "preview"  # a video's artifact played on its page (else its first video artifact)
    # destination -> URL its layout is published under ("*": every destination); a
    # destination given no URL is linked relatively when it lies beside OUT, else not at all
    originals_urls: dict[str, str] = dataclasses.field(default_factory=dict)
    # the gallery recipe (artifact -> chain): its outputs are the sizes a photo page picks
    # from; photos lacking its job get one when ``enqueue`` (see ``publish``)
    gallery: dict[str, str] = dataclasses.field(default_factory=lambda: dict(DEFAULT_RECIPES[GALLERY_RECIPE]))
    enqueue: bool = True  # never in a dry run
    max_attempts: int = 0  # the gallery jobs' limit by count (imgq.toml's max_attempts; 0: none)


@dataclasses.dataclass
class PublishReport:
    photos: list[str] = dataclasses.field(default_factory=list)  # ids in the gallery
    changed: list[str] = dataclasses.field(default_factory=list)  # ids whose page or images were written
    written: list[str] = dataclasses.field(default_factory=list)  # OUT-relative paths written
    removed: list[str] = dataclasses.field(default_factory=list)  # OUT-relative paths removed
    unchanged: int = 0
    linked: int = 0
    copied: int = 0
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (id, why not shown)
    refused: list[str] = dataclasses.field(default_factory=list)  # links or files in the way, each named
    swept: list[tuple[str, int]] = dataclasses.field(default_factory=list)  # (OUT-relative path, dead writer's pid)
    enqueued: list[str] = dataclasses.field(default_factory=list)  # ids given a gallery job by this publish


@dataclasses.dataclass
class _Output:
    """One file the gallery should hold: page text, or an image to link or copy."""

    sha256: str
    bytes: int
    data: bytes | None = None
    # where an image's bytes may come from, best first: (root, path below it, may be
    # hard-linked); only store files are hard-linked, archive copies are copied
    sources: list[tuple[Path, str, bool]] = dataclasses.field(default_factory=list)
    file_id: str | None = None


# Not names.slug on purpose: a gallery name must be plain ASCII (any web root, any URL)
# and must never be shared by two texts, so non-plain texts get a hash; ids keep the
# letters people wrote and are made unique by the scan.
def slug(text: str, *, dots: bool = True) -> str:
    """A file and URL name for ``text``: itself when already plain ASCII, else a plain
    form plus ``~`` and a hash, so different texts never share a slug (``~`` never
    appears in a plain one). Without ``dots``, ``.`` is not plain (page names use it)."""
    plain = SAFE.fullmatch(text) and (dots or "." not in text)
    if plain:
        return text
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    keep = "._-" if dots else "_-"
    base = re.sub(r"_+", "_", "".join(c if c.isalnum() or c in keep else "_" for c in folded)).strip("_.-")[:60]
    return f"{base or 'x'}~{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def fold_unique(slugs: dict[str, str]) -> dict[str, str]:
    """``slugs`` (text -> slug) with every slug unique case-folded: on a case-insensitive
    web root (macOS, SMB, FAT) owner/Ann.html and owner/ann.html are one file. Slugs
    that clash case-folded get a hash of their own text; the others stay as they were,
    so adding a photographer never moves anyone else's pages."""
    by_fold: dict[str, set[str]] = {}
    for text, s in slugs.items():
        by_fold.setdefault(s.casefold(), set()).add(text)
    clashing = {t for texts in by_fold.values() if len(texts) > 1 for t in texts}
    return {t: f"{s}~{hashlib.sha256(t.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}" if t in clashing else s for t, s in slugs.items()}


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


# --------------------------------------------------------------------------- reading


def _collect(db: DB, out: Path, store_dir: Path, options: PublishOptions, report: PublishReport) -> tuple[list[H.Photo], dict[str, _Output]]:
    sized = set(options.gallery)
    arts: dict[str, dict[str, dict]] = defaultdict(dict)
    # the newest artifact of each name: a changed recipe's outputs replace the old ones
    # a video artifact's job result names its encoder (what a page's <source type> says)
    for r in db.all(
        f"SELECT a.*, json_extract(j.result, '$.\"' || a.name || '\".encoder') AS encoder"
        f" FROM artifacts a JOIN files f ON f.id = a.file_id LEFT JOIN jobs j ON j.id = a.job_id"
        f" WHERE f.state IN ({','.join('?' * len(SHOWN_STATES))}) ORDER BY a.id",
        SHOWN_STATES,
    ):
        arts[r["file_id"]][r["name"]] = dict(r)
    copies: dict[int | None, list[dict]] = defaultdict(list)
    originals: dict[str, list[dict]] = defaultdict(list)
    for r in db.all("SELECT file_id, artifact_id, destination, path, sha256 FROM copies ORDER BY destination, id"):
        (originals[r["file_id"]] if r["artifact_id"] is None else copies[r["artifact_id"]]).append(dict(r))
    faces = _faces(db)
    boxes = _boxes(db)
    here = Path(os.path.realpath(out))

    photos: list[H.Photo] = []
    outputs: dict[str, _Output] = {}
    rows = db.all(f"SELECT * FROM files WHERE state IN ({','.join('?' * len(SHOWN_STATES))}) ORDER BY taken_at, id", SHOWN_STATES)
    photo_slugs = fold_unique({f["id"]: slug(f["id"]) for f in rows})
    owner_slugs = fold_unique({f["owner"]: slug(f["owner"], dots=False) for f in rows})
    for f in rows:
        mine = arts.get(f["id"])
        if not mine or not (options.thumb in mine or options.web in mine):
            continue
        pslug = photo_slugs[f["id"]]
        images: dict[str, H.Image] = {}
        web_sha = mine.get(options.web, {}).get("sha256")
        for role, a in sorted(mine.items()):
            if role in sized and a["sha256"] == web_sha:
                continue  # a size the web version already is (a landscape photo's 640): one file
            sources = _artifact_sources(store_dir, a, copies.get(a["id"], []))
            if not sources:
                report.skipped.append((f["id"], f"{role} artifact {a['path']} is missing from the store"))
                continue
            ext = (os.path.splitext(a["path"])[1].lstrip(".").lower() or "img")[:5]
            rel = f"img/{pslug}.{slug(role, dots=False)}-{a['sha256'][:10]}.{ext if ext.isalnum() else 'img'}"
            images[role] = H.Image(rel=rel, width=a["width"], height=a["height"], bytes=a["bytes"], name=role, type=_video_type(a, ext))
            outputs[rel] = _Output(sha256=a["sha256"], bytes=a["bytes"], sources=sources, file_id=f["id"])
        if not (options.thumb in images or options.web in images):
            continue
        thumb = images.get(options.thumb) or images[options.web]
        web = images.get(options.web) or thumb
        renditions = tuple(sorted((i for n, i in images.items() if n in sized), key=lambda i: (i.width or 0, i.name)))
        movies = {n: i for n, i in images.items() if i.type}
        versions = tuple(i for n, i in images.items() if n not in sized and n not in movies and i is not thumb and i is not web)
        preview = movies.get(options.preview) or next(iter(movies.values()), None)
        owner = f["owner"]
        oslug = owner_slugs[owner]
        taken = f["taken_at"]
        meta = _json(f["meta"]) or {}
        camera = " ".join(str(meta[k]).strip() for k in ("make", "model") if meta.get(k)) or None
        turned = meta.get("orientation") in (5, 6, 7, 8)
        photos.append(
            H.Photo(
                id=f["id"],
                slug=pslug,
                name=os.path.basename(f["path"]) or f["id"],
                owner=owner,
                owner_slug=oslug,
                day=taken[:10] if taken and DAY.fullmatch(taken[:10]) else "undated",
                taken_at=taken,
                taken_source=f["taken_source"],
                camera=camera,
                size=f["size"],
                # as the photo is seen: EXIF orientations 5-8 turn it on its side
                width=f["height"] if turned else f["width"],
                height=f["width"] if turned else f["height"],
                sha256=f["sha256"],
                faces=max(faces.get(f["id"], 0), len(boxes.get(f["id"], ()))) if f["id"] in faces or f["id"] in boxes else None,
                thumb=thumb,
                web=web,
                originals=tuple(_original(c, options.originals_urls, here) for c in originals.get(f["id"], [])),
                renditions=renditions,
                versions=versions,
                boxes=tuple(boxes.get(f["id"], ())),
                exif=tuple((label, str(meta[k])) for k, label in EXIF_SHOWN if meta.get(k)),
                kind=f["kind"],
                duration=f["duration"],
                frame_rate=f["frame_rate"],
                preview=preview,
                movies=tuple(i for i in movies.values() if i is not preview),
            )
        )
    return photos, outputs


def _video_type(artifact: dict, ext: str) -> str | None:
    """The media type of a video artifact from the encoder its job recorded (ffmpeg's
    H.264 MP4, OpenCV's VP8/VP9 WebM); None for a still image."""
    encoder = (artifact.get("encoder") or "").lower()
    if not encoder:
        return None
    if "webm" in encoder or ext == "webm":
        return "video/webm"
    if "mp4" in encoder or ext == "mp4":
        return "video/mp4"
    return f"video/{ext}" if ext.isalnum() else "video/octet-stream"


# what scan may record in a file's meta beyond the camera, and how a page labels it
EXIF_SHOWN = (("lens", "Lens"), ("exposure", "Exposure"))


def _boxes(db: DB) -> dict[str, list[H.Face]]:
    """The faces found in each file, as fractions of the frame they were found in (the
    latest scan of each file: a recipe run again replaces what it found)."""
    latest = {r[0]: r for r in db.all("SELECT file_id, id, width, height FROM face_scans WHERE faces > 0 ORDER BY id")}
    found: dict[str, list[H.Face]] = defaultdict(list)
    for file_id, scan_id, w, h in latest.values():
        if not w or not h:
            continue
        for x, y, bw, bh in db.all("SELECT x, y, w, h FROM faces WHERE scan_id = ? ORDER BY id", (scan_id,)):
            found[file_id].append(H.Face(left=x / w, top=y / h, width=bw / w, height=bh / h))
    return found


def _json(text):
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _faces(db: DB) -> dict[str, int]:
    """Faces found per file, from the results of its done jobs (the largest count any
    of its chains reported; a chain reports ``{"faces": [boxes]}`` or a number)."""
    found: dict[str, int] = {}
    for r in db.all("SELECT file_id, result FROM jobs WHERE state = 'done' AND result LIKE '%faces%'"):
        n = _count_faces(_json(r["result"]))
        if n is not None:
            found[r["file_id"]] = max(n, found.get(r["file_id"], 0))
    return found


def _count_faces(value) -> int | None:
    if isinstance(value, dict):
        counts = []
        for k, v in value.items():
            if k == "faces" and isinstance(v, list):
                counts.append(len(v))
            elif k == "faces" and isinstance(v, int) and not isinstance(v, bool):
                counts.append(v)
            else:
                n = _count_faces(v)
                if n is not None:
                    counts.append(n)
        return max(counts) if counts else None
    return None


def _artifact_sources(store_dir: Path, artifact: dict, copies: list[dict]) -> list[tuple[Path, str, bool]]:
    """Where an artifact's bytes can be taken from: the store, then local archived copies,
    as (root, path below it, may be hard-linked). Only names are looked at here; what is
    behind them is opened and checked when the bytes are taken (see gf.Source)."""
    found = []
    if os.path.lexists(os.path.join(store_dir, artifact["path"])):
        found.append((Path(store_dir), artifact["path"], True))
    for c in copies:
        if c["sha256"] != artifact["sha256"] or "://" in c["destination"]:
            continue
        root, rel = Path(c["destination"]), Path(c["path"])
        if rel.is_absolute():
            try:
                rel = rel.relative_to(root)
            except ValueError:
                root, rel = rel.parent, Path(rel.name)
        if os.path.lexists(root / rel):
            found.append((root, rel.as_posix(), False))  # never hard-link an archive copy into a served folder
    return found


def _original(copy: dict, urls: dict[str, str], out: Path) -> H.Original:
    """How a photo page shows an archived copy of its original: under the URL given for
    its destination (``--originals-url``), else by a link relative to the gallery when
    the destination lies beside OUT (in OUT's parent folder, so one web server serves
    both), else as text. Never a file:// URL unless one was given as the URL."""
    dest, path = copy["destination"], copy["path"]
    rel = path
    if Path(path).is_absolute() and "://" not in dest:
        try:
            rel = str(Path(path).relative_to(dest))
        except ValueError:
            rel = None
    label = f"{dest.rstrip('/')}/{rel}" if rel is not None and not Path(rel).is_absolute() else path
    base = urls.get(dest) or urls.get(dest.rstrip("/")) or urls.get("*")
    if base is not None and rel is not None:
        url = base.rstrip("/") + "/" + "/".join(urllib.parse.quote(s, safe="") for s in Path(rel).parts)
        return H.Original(label=label, url=url)
    if "://" not in dest and rel is not None:
        full = Path(os.path.realpath(Path(dest) / rel))
        if out.parent != Path(out.anchor) and out.parent in full.parents and os.path.isfile(full):
            # from OUT/photo/PAGE.html: up to OUT, up to its parent, down to the copy
            up = os.path.relpath(full, out / "photo")
            return H.Original(label=label, url="/".join(urllib.parse.quote(s, safe="") if s != ".." else s for s in Path(up).parts))
    return H.Original(label=label, url=None)


# --------------------------------------------------------------------------- pages


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


# --------------------------------------------------------------------------- writing


def _apply(out: Path, outputs: dict[str, _Output], options: PublishOptions, report: PublishReport, *, dry_run: bool, on_progress) -> None:
    with gf.Folder(out, dry_run=dry_run) as g:
        report.swept = g.sweep()
        previous = _manifest_files(g.read(MANIFEST))
        old = {} if options.force else previous
        changed: set[str] = set()
        failed: set[str] = set()
        total = len(outputs)
        for n, (rel, o) in enumerate(sorted(outputs.items()), 1):
            on_progress(n - 1, total)
            known = old.get(rel)
            if known and known.get("sha256") == o.sha256 and g.size(rel) == o.bytes:
                report.unchanged += 1
                continue
            try:
                if o.data is not None:
                    g.write(rel, o.data)
                elif not _place_image(g, rel, o, options, report):
                    failed.add(rel)
                    continue
            except gf.UnsafeOutput as e:
                g.refuse(str(e))
                failed.add(rel)
                continue
            report.written.append(rel)
            if o.file_id:
                changed.add(o.file_id)
        on_progress(total, total)
        for rel in sorted(set(previous) - set(outputs)):
            if g.remove(rel):
                report.removed.append(rel)
        # a file that could not be written keeps its old entry, if any, so the next run retries it
        files = {rel: {"sha256": o.sha256, "bytes": o.bytes} for rel, o in outputs.items() if rel not in failed}
        files.update({rel: previous[rel] for rel in failed if rel in previous})
        manifest = {"version": MANIFEST_VERSION, "files": dict(sorted(files.items()))}
        data = (json.dumps(manifest, separators=(",", ":"), sort_keys=True) + "\n").encode()
        if g.read(MANIFEST) != data:
            try:
                g.write(MANIFEST, data, sync=True)
            except gf.UnsafeOutput as e:
                g.refuse(str(e))
        report.refused = list(g.refused)
    report.changed = sorted(changed)


def _manifest_files(text: bytes | None) -> dict[str, dict]:
    data = _json(text)
    if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION or not isinstance(data.get("files"), dict):
        return {}  # none or unreadable: every file is rewritten, nothing is removed
    return data["files"]


def _place_image(g: gf.Folder, rel: str, o: _Output, options: PublishOptions, report: PublishReport) -> bool:
    """Publish an artifact's bytes at ``rel`` from the first source that is a regular
    file holding exactly the bytes recorded with the artifact (a damaged store file falls
    back to an archived copy); False, with the reason in the report, if none does."""
    why = []
    for root, path, linkable in o.sources:
        try:
            src = gf.Source(root, path)
        except FileNotFoundError:
            why.append(f"{root}/{path} is gone")
            continue
        except Unsafe as e:
            why.append(str(e))
            continue
        except OSError as e:
            why.append(f"cannot read {root}/{path}: {e.strerror or e}")
            continue
        with src:
            how = g.place(rel, src, o.sha256, link=options.link and linkable and bool(src.stat.st_mode & 0o004))
        if how == "linked":
            report.linked += 1
            return True
        if how == "copied":
            report.copied += 1
            return True
        why.append(f"{root}/{path} holds other bytes")
    report.skipped.append((o.file_id, f"{rel}: no regular file holding the artifact matches its recorded sha256 {o.sha256[:12]}… (damaged store?): {'; '.join(why)}"))
    return False
