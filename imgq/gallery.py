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
repairs.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import re
import shutil
import unicodedata
import urllib.parse
from collections import defaultdict
from pathlib import Path

from imgq import gallery_html as H
from imgq import store
from imgq.database import DB
from imgq.errors import StorageError, UsageError

MANIFEST = ".imgq-gallery.json"
MANIFEST_VERSION = 1
SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,100}")
DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
# states whose files may have artifacts worth showing; failed and duplicate ones never do
SHOWN_STATES = ("queued", "processed", "archived", "collected")


@dataclasses.dataclass
class PublishOptions:
    title: str = "Photos"
    per_page: int = 100
    link: bool = True  # hard-link images from the store when OUT is on its file system
    force: bool = False  # rewrite every file, whatever the manifest says
    thumb: str = "thumb"  # artifact names shown as thumbnail and as web version
    web: str = "web"
    originals_urls: dict[str, str] = dataclasses.field(default_factory=dict)  # destination -> public URL


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


@dataclasses.dataclass
class _Output:
    """One file the gallery should hold: page text, or an image to link or copy."""

    sha256: str
    bytes: int
    data: bytes | None = None
    # where an image's bytes may come from, best first: (path, may be hard-linked);
    # only store files are hard-linked, archive copies are copied
    sources: list[tuple[Path, bool]] = dataclasses.field(default_factory=list)
    file_id: str | None = None


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


def publish(db: DB, out: Path, *, store_dir: Path, options: PublishOptions = PublishOptions()) -> PublishReport:
    """Bring the gallery at ``out`` up to date with the database; see the module doc.

    Returns what was written and removed; a second call with nothing changed writes
    nothing at all.
    """
    if options.per_page < 1:
        raise UsageError("--per-page must be at least 1")
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot create {out}: {e.strerror or e}")
    store.sweep_temp(out)
    report = PublishReport()
    photos, outputs = _collect(db, store_dir, options, report)
    outputs.update(_pages(photos, options))
    _apply(out, outputs, options, report)
    report.photos = [p.id for p in photos]
    return report


# --------------------------------------------------------------------------- reading


def _collect(db: DB, store_dir: Path, options: PublishOptions, report: PublishReport) -> tuple[list[H.Photo], dict[str, _Output]]:
    names = (options.thumb, options.web)
    arts: dict[str, dict[str, dict]] = defaultdict(dict)
    # the newest artifact of each name: a changed recipe's outputs replace the old ones
    for r in db.all(
        f"SELECT a.* FROM artifacts a JOIN files f ON f.id = a.file_id"
        f" WHERE a.name IN (?, ?) AND f.state IN ({','.join('?' * len(SHOWN_STATES))}) ORDER BY a.id",
        (*names, *SHOWN_STATES),
    ):
        arts[r["file_id"]][r["name"]] = dict(r)
    copies: dict[int | None, list[dict]] = defaultdict(list)
    originals: dict[str, list[dict]] = defaultdict(list)
    for r in db.all("SELECT file_id, artifact_id, destination, path, sha256 FROM copies ORDER BY destination, id"):
        (originals[r["file_id"]] if r["artifact_id"] is None else copies[r["artifact_id"]]).append(dict(r))
    faces = _faces(db)

    photos: list[H.Photo] = []
    outputs: dict[str, _Output] = {}
    owner_slugs: dict[str, str] = {}
    rows = db.all(f"SELECT * FROM files WHERE state IN ({','.join('?' * len(SHOWN_STATES))}) ORDER BY taken_at, id", SHOWN_STATES)
    for f in rows:
        mine = arts.get(f["id"])
        if not mine:
            continue
        pslug = slug(f["id"])
        images: dict[str, H.Image] = {}
        for role in names:
            a = mine.get(role)
            if a is None:
                continue
            sources = _artifact_sources(store_dir, a, copies.get(a["id"], []))
            if not sources:
                report.skipped.append((f["id"], f"{role} artifact {a['path']} is missing from the store"))
                continue
            ext = (os.path.splitext(a["path"])[1].lstrip(".").lower() or "img")[:5]
            rel = f"img/{pslug}.{slug(role, dots=False)}-{a['sha256'][:10]}.{ext if ext.isalnum() else 'img'}"
            images[role] = H.Image(rel=rel, width=a["width"], height=a["height"], bytes=a["bytes"])
            outputs[rel] = _Output(sha256=a["sha256"], bytes=a["bytes"], sources=sources, file_id=f["id"])
        if not images:
            continue
        thumb = images.get(options.thumb) or images[options.web]
        web = images.get(options.web) or thumb
        owner = f["owner"]
        oslug = owner_slugs.setdefault(owner, slug(owner, dots=False))
        taken = f["taken_at"]
        meta = _json(f["meta"]) or {}
        camera = " ".join(str(meta[k]).strip() for k in ("make", "model") if meta.get(k)) or None
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
                width=f["height"] if meta.get("orientation") in (5, 6, 7, 8) else f["width"],
                height=f["width"] if meta.get("orientation") in (5, 6, 7, 8) else f["height"],
                sha256=f["sha256"],
                faces=faces.get(f["id"]),
                thumb=thumb,
                web=web,
                originals=tuple(_original(c, options.originals_urls) for c in originals.get(f["id"], [])),
            )
        )
    return photos, outputs


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


def _artifact_sources(store_dir: Path, artifact: dict, copies: list[dict]) -> list[tuple[Path, bool]]:
    """Where an artifact's bytes can be taken from: the store, then local archived copies."""
    found = []
    path = os.path.join(store_dir, artifact["path"])
    if os.path.isfile(path):
        found.append((Path(path), True))
    for c in copies:
        if c["sha256"] != artifact["sha256"] or "://" in c["destination"]:
            continue
        p = Path(c["path"])
        p = p if p.is_absolute() else Path(c["destination"]) / p
        if p.is_file():
            found.append((p, False))  # never hard-link an archive copy into a served folder
    return found


def _original(copy: dict, urls: dict[str, str]) -> H.Original:
    dest, path = copy["destination"], copy["path"]
    rel = path
    if Path(path).is_absolute() and "://" not in dest:
        try:
            rel = str(Path(path).relative_to(dest))
        except ValueError:
            rel = None
    label = f"{dest.rstrip('/')}/{rel}" if rel is not None and not Path(rel).is_absolute() else path
    base = urls.get(dest) or urls.get(dest.rstrip("/"))
    if base is not None and rel is not None:
        url = base.rstrip("/") + "/" + "/".join(urllib.parse.quote(s, safe="") for s in Path(rel).parts)
        return H.Original(label=label, url=url)
    if "://" not in dest:
        full = Path(path) if Path(path).is_absolute() else Path(dest) / path
        if full.is_absolute():
            return H.Original(label=label, url=full.as_uri())
    return H.Original(label=label, url=None)


# --------------------------------------------------------------------------- pages


def _pages(photos: list[H.Photo], options: PublishOptions) -> dict[str, _Output]:
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

    for group in by_day.values():
        for i, p in enumerate(group):
            pages[f"photo/{p.slug}.html"] = H.photo_page(
                site=site,
                photo=p,
                prev=group[i - 1] if i > 0 else None,
                next=group[i + 1] if i + 1 < len(group) else None,
                day_page=day_page[p.id],
                owner_page=owner_page[p.id],
            )

    # newest day first, photos without a date last
    days = sorted(((d, len(g)) for d, g in by_day.items() if d != "undated"), reverse=True)
    days += [("undated", len(by_day["undated"]))] if "undated" in by_day else []
    owners = sorted(((g[0].owner, s, len(g)) for s, g in by_owner.items()), key=lambda x: (x[0].casefold(), x[1]))
    pages["index.html"] = H.index_page(site=site, days=days, owners=owners, total=len(photos))

    outputs = {}
    ids_by_page = {f"photo/{p.slug}.html": p.id for p in photos}
    for rel, text in pages.items():
        data = text.encode("utf-8")
        outputs[rel] = _Output(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), data=data, file_id=ids_by_page.get(rel))
    return outputs


# --------------------------------------------------------------------------- writing


def _apply(out: Path, outputs: dict[str, _Output], options: PublishOptions, report: PublishReport) -> None:
    previous = _read_manifest(out)
    old = {} if options.force else previous
    changed: set[str] = set()
    failed: set[str] = set()
    for rel, o in sorted(outputs.items()):
        known = old.get(rel)
        if known and known.get("sha256") == o.sha256 and _size(os.path.join(out, rel)) == o.bytes:
            report.unchanged += 1
            continue
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if o.data is not None:
            _write(target, o.data)
        else:
            # bytes are checked against the sha256 recorded with the artifact before they
            # are published: a damaged store file falls back to an archived copy, or fails
            source = next((p for p in o.sources if _sha256(p[0]) == o.sha256), None)
            if source is None:
                report.skipped.append((o.file_id, f"{rel}: no copy of the artifact matches its recorded sha256 {o.sha256[:12]}… (damaged store?)"))
                failed.add(rel)
                continue
            linked = _place(source[0], target, link=options.link and source[1] and _world_readable(source[0]))
            if linked:
                report.linked += 1
            else:
                report.copied += 1
        report.written.append(rel)
        if o.file_id:
            changed.add(o.file_id)
    for rel in sorted(set(previous) - set(outputs)):
        target = out / rel
        if _inside(out, target):
            try:
                target.unlink()
                report.removed.append(rel)
            except FileNotFoundError:
                pass
    # a file that could not be written keeps its old entry, if any, so the next run retries it
    files = {rel: {"sha256": o.sha256, "bytes": o.bytes} for rel, o in outputs.items() if rel not in failed}
    files.update({rel: previous[rel] for rel in failed if rel in previous})
    manifest = {"version": MANIFEST_VERSION, "files": dict(sorted(files.items()))}
    data = (json.dumps(manifest, separators=(",", ":"), sort_keys=True) + "\n").encode()
    if _read_bytes(out / MANIFEST) != data:
        _write(out / MANIFEST, data, sync=True)
    report.changed = sorted(changed)


def _read_manifest(out: Path) -> dict[str, dict]:
    data = _json(_read_bytes(out / MANIFEST))
    if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION or not isinstance(data.get("files"), dict):
        return {}  # none or unreadable: every file is rewritten, nothing is removed
    return data["files"]


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _size(path: str | Path) -> int | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return st.st_size if os.path.stat.S_ISREG(st.st_mode) else None


def _world_readable(path: Path) -> bool:
    # a hard link shares the store file's mode: a web server running as another user
    # must be able to read it, else the image is copied with a readable mode
    try:
        return bool(os.stat(path).st_mode & 0o004)
    except OSError:
        return False


def _inside(out: Path, target: Path) -> bool:
    # manifest entries are our own names, but the manifest is a file anyone could edit
    try:
        return os.path.commonpath([os.path.realpath(out), os.path.realpath(target.parent)]) == os.path.realpath(out)
    except ValueError:
        return False


def _temp_name(target: Path) -> Path:
    # the pid in the name lets store.sweep_temp tell a killed writer's file from a live one's
    return target.with_name(store.temp_name(target.name))


def _write(target: Path, data: bytes, *, sync: bool = False) -> None:
    tmp = _temp_name(target)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except OSError as e:
        _discard(tmp)
        raise StorageError(f"cannot write {target}: {e.strerror or e}")


def _place(source: Path, target: Path, *, link: bool) -> bool:
    """Put ``source``'s bytes at ``target`` atomically; True if by a hard link."""
    tmp = _temp_name(target)
    try:
        if link:
            try:
                os.link(source, tmp)
                os.replace(tmp, target)
                # rename() between two links of one file does nothing: the target already
                # was this very file, and the temporary name is left over
                _discard(tmp)
                return True
            except OSError as e:
                _discard(tmp)
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                    raise
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        return False
    except OSError as e:
        _discard(tmp)
        raise StorageError(f"cannot place {source} at {target}: {e.strerror or e}")


def _sha256(path: Path) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def _discard(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
