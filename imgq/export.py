"""imgq export: a recipe's artifacts handed over in a folder, under names people read.

The bulk enhancer and the image processor imgq learns from gave their results back in a
folder the user chose; ``export`` does that from the store: each artifact a recipe made
(the current version of the recipe: its ``spec_hash``) is copied to ``DIR/NAME``, where
NAME comes from a template (default ``{owner}/{date}/{stem}.{artifact}{ext}``).

- Idempotent: a file already holding the same bytes is left alone (nothing written, its
  mtime kept); running export again after new photos writes only the new ones.
- Never overwrites what it did not write: ``DIR/.imgq-export`` remembers the sha256 of
  every file export wrote, and a file at a wanted name holding other bytes is replaced
  only if export wrote it (an older version of a changed recipe); anything else is
  named and left alone.
- Never touches originals (not even reading them) and never writes outside DIR: every
  name component is made safe, and folders are created without following symlinks out.
- Every copy streams from the store, is checked against the artifact's recorded sha256,
  and lands atomically (``store.write_atomically``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import string
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

from imgq import recipes, store
from imgq.archive_names import cap, safe_component
from imgq.errors import UsageError
from imgq.ledger.database import DB

DEFAULT_NAME = "{owner}/{date}/{stem}.{artifact}{ext}"
MANIFEST = ".imgq-export"
FIELDS = {
    "owner": "the photographer (the first folder in the inbox)",
    "date": "the day it was taken, YYYY-MM-DD (undated without one)",
    "year": "YYYY", "month": "MM", "day": "DD",
    "time": "the time it was taken, HHMMSS",
    "stem": "the original's file name without its extension",
    "name": "the original's file name",
    "id": "the file's id",
    "artifact": "the artifact's name in the recipe (thumb, web, ...)",
    "ext": "the artifact's extension, with its dot (.jpg)",
    "recipe": "the recipe's name",
}
CHUNK = 1 << 20


@dataclasses.dataclass
class Item:
    file_id: str
    artifact: str
    source: str  # store-relative
    sha256: str
    bytes: int
    name: str  # DIR-relative, '/'-separated
    status: str = ""  # written, unchanged, would write, conflict, damaged, missing
    reason: str = ""


@dataclasses.dataclass
class ExportReport:
    items: list[Item] = dataclasses.field(default_factory=list)
    not_made: list[str] = dataclasses.field(default_factory=list)  # file ids the recipe has not processed

    def count(self, status: str) -> int:
        return sum(1 for i in self.items if i.status == status)


def check_template(template: str) -> None:
    """UsageError unless ``template`` names only known fields and is a relative name."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise UsageError(f"--name {template!r}: {e}") from None
    unknown = [f for f in fields if f not in FIELDS]
    if unknown:
        raise UsageError(f"--name {template!r}: unknown field(s) {', '.join('{' + f + '}' for f in unknown)}; known: {', '.join('{' + f + '}' for f in FIELDS)}")
    if not fields:
        raise UsageError(f"--name {template!r} names no field: every artifact would get the same name")
    if template.startswith("/"):
        raise UsageError(f"--name {template!r} must be relative to the export folder")


def plan(db: DB, recipe: str, chains: dict[str, str], *, template: str = DEFAULT_NAME, file_ids: Iterable[str] | None = None) -> ExportReport:
    """What export would do: one Item per artifact of ``recipe`` (at its current
    chains) of the files given (default: every file), named by ``template``; files
    without the recipe's done job are listed in ``not_made``."""
    check_template(template)
    # a recipe's current version, for each kind of file it has chains for (a photo's
    # jobs leave out its video chains, so their hash differs from a video's)
    digests = [
        recipes.spec_hash(recipes.normalize_recipe(part))
        for kind in recipes.KINDS if recipes.has_chains(part := recipes.for_kind(chains, kind))
    ]
    wanted = None if file_ids is None else list(dict.fromkeys(file_ids))
    rows = db.all(
        "SELECT a.name AS artifact, a.path, a.sha256, a.bytes, f.id AS file_id, f.owner, f.path AS inbox_path, f.taken_at"
        " FROM jobs j JOIN artifacts a ON a.job_id = j.id JOIN files f ON f.id = j.file_id"
        " WHERE j.recipe = ? AND j.spec_hash IN (SELECT value FROM json_each(?)) AND j.state = 'done' AND j.stage NOT LIKE 'stripe:%'"
        + ("" if wanted is None else " AND j.file_id IN (SELECT value FROM json_each(?))")
        + " ORDER BY f.id, a.name",
        (recipe, json.dumps(digests)) if wanted is None else (recipe, json.dumps(digests), json.dumps(wanted)),
    )
    report = ExportReport()
    taken: dict[str, str] = {}  # folded name -> file id holding it
    for r in rows:
        name = _name(template, r, recipe)
        if name.casefold() in taken and taken[name.casefold()] != r["file_id"]:
            name = _disambiguated(name, r["file_id"])  # two photos, one human name
        taken[name.casefold()] = r["file_id"]
        report.items.append(Item(r["file_id"], r["artifact"], r["path"], r["sha256"], r["bytes"], name))
    made = {i.file_id for i in report.items}
    if wanted is not None:
        report.not_made = [f for f in wanted if f not in made]
    else:
        report.not_made = [
            r[0] for r in db.all(
                "SELECT f.id FROM files f WHERE f.state IN ('queued', 'processed', 'archived', 'collected')"
                " AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.file_id = f.id AND j.recipe = ? AND j.spec_hash IN (SELECT value FROM json_each(?)) AND j.state = 'done')"
                " ORDER BY f.id",
                (recipe, json.dumps(digests)),
            )
        ]
    return report


def export(report: ExportReport, store_dir: Path, to: Path, *, dry_run: bool = False, on_item: Callable[[Item], None] = lambda i: None) -> ExportReport:
    """Copy the planned items into ``to`` (see the module docstring); each item's
    ``status`` says what happened. With ``dry_run`` nothing is created or written."""
    manifest = _read_manifest(to)
    ours = dict(manifest)
    for item in report.items:
        try:
            _export_one(item, store_dir, to, ours, dry_run)
        except OSError as e:
            item.status, item.reason = "failed", f"{to / item.name}: {e.strerror or e}"
        on_item(item)
    if not dry_run and ours != manifest:
        store.write_atomically(to / MANIFEST, lambda f: f.write(json.dumps(ours, sort_keys=True, indent=0).encode()))
    return report


def _export_one(item: Item, store_dir: Path, to: Path, ours: dict[str, str], dry_run: bool) -> None:
    dest = to / item.name
    _check_inside(to, item.name)
    if dest.is_symlink() or (dest.exists() and not dest.is_file()):
        item.status, item.reason = "conflict", f"{dest} is not a regular file: left alone"
        return
    if dest.is_file():
        have = _sha256(dest)
        if have == item.sha256:
            item.status = "unchanged"
            ours[item.name] = have
            return
        if ours.get(item.name) != have:
            item.status, item.reason = "conflict", f"{dest} exists and export did not write it: left alone"
            return
    source = store_dir / item.source
    if not source.is_file():
        item.status, item.reason = "missing", f"{source}: the artifact is missing from the store (imgq work again after imgq retry)"
        return
    if dry_run:
        item.status = "would write"
        return
    got = store.write_atomically(dest, lambda f: _copy(source, f))
    if got != item.sha256:
        dest.unlink(missing_ok=True)
        item.status, item.reason = "damaged", f"{source}: its bytes no longer match the sha256 recorded when it was made; not exported"
        return
    item.status = "written"
    ours[item.name] = got


def _copy(source: Path, f) -> str:
    h = hashlib.sha256()
    with open(source, "rb") as src:
        while chunk := src.read(CHUNK):
            h.update(chunk)
            f.write(chunk)
    return h.hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check_inside(to: Path, name: str) -> None:
    """Refuse a name whose folders lead out of ``to`` through a symlink placed there."""
    here = to
    for part in PurePosixPath(name).parts[:-1]:
        here = here / part
        if here.is_symlink():
            raise OSError(0, f"{here} is a symlink: export writes only inside {to}")


def _name(template: str, r, recipe: str) -> str:
    taken = r["taken_at"] or ""
    date = taken[:10] if len(taken) >= 10 else "undated"
    inbox_name = PurePosixPath(r["inbox_path"]).name
    stem, dot, _ = inbox_name.rpartition(".")
    stem = stem if dot else inbox_name
    ext = os.path.splitext(r["path"])[1]
    clock = taken[11:19].replace(":", "") if len(taken) >= 19 else ""
    values = {
        "owner": r["owner"], "date": date, "year": date[:4], "month": date[5:7], "day": date[8:10], "time": clock,
        "stem": stem, "name": inbox_name, "id": r["file_id"], "artifact": r["artifact"], "ext": ext, "recipe": recipe,
    }
    raw = template.format_map(values)
    parts = [cap(safe_component(p)) for p in raw.split("/") if p not in ("", ".")]
    return "/".join(parts)


def _disambiguated(name: str, file_id: str) -> str:
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.rpartition(".")
    tag = hashlib.sha256(file_id.encode()).hexdigest()[:8]
    base = f"{stem}-{tag}.{ext}" if dot else f"{base}-{tag}"
    return f"{folder}/{base}" if folder else base


def _read_manifest(to: Path) -> dict[str, str]:
    try:
        data = json.loads((to / MANIFEST).read_text())
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except (OSError, ValueError) as e:
        raise UsageError(f"{to / MANIFEST}: cannot read export's record of what it wrote ({e}); move it away to start afresh") from None
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
