"""What a gallery shows, read from the ledger: ``imgq publish``'s options and report, the
plain gallery names (``slug``, ``fold_unique``), and the photos with the image files each
needs (``_collect``: artifacts from the store or local archived copies, faces, EXIF,
links to archived originals). Nothing here writes; ``imgq.publish`` renders the pages and
``imgq.gallery.write`` writes OUT.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import unicodedata
import urllib.parse
from collections import defaultdict
from pathlib import Path

from imgq.gallery import pages as H
from imgq.ledger.database import DB
from imgq.config import DEFAULT_RECIPES

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
