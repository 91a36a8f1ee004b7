"""What a file needs at every destination (its original and its artifacts: ``Item``), and
copying one item there from the best source: the inbox original (opened by identity,
``imgq.original``), the artifact store, or another destination's good copy (``Sources``).

A helper of the archive step: it reads the ledger and writes nothing to it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path, PurePosixPath

from imgq.destinations import Destination, Found, NameTaken, SourceChanged, SourceUnavailable, hash_fd
from imgq.errors import ImgqError
from imgq.ledger.database import DB
from imgq.original import ChangedInInbox, Original, Unsafe
from imgq.store import temp_name

ORIGINAL = "original"


@dataclasses.dataclass
class Item:
    """One thing a file needs at every destination: its original or one artifact."""

    role: str  # 'original' or the artifact's name
    artifact_id: int | None
    sha256: str
    bytes: int
    source: Path  # where it is on this machine
    ext: str = ""  # the artifact's extension (".jpg")
    inbox: str | None = None  # for the original: read by identity from inbox/rel (imgq.original)
    rel: str | None = None
    recipe: str | None = None  # the recipe that made the artifact (routing by recipe)


def items_of(db: DB, f, store_dir: Path) -> list[Item]:
    """The original and the newest artifact of each name from the file's finished jobs."""
    items = [Item(ORIGINAL, None, f["sha256"], f["size"], Path(f["inbox"]) / f["path"], inbox=f["inbox"], rel=f["path"])]
    latest: dict[str, object] = {}
    for a in db.all(
        "SELECT a.*, j.recipe FROM artifacts a JOIN jobs j ON j.id = a.job_id WHERE a.file_id = ? AND j.state = 'done' ORDER BY a.id",
        (f["id"],),
    ):
        latest[a["name"]] = a
    for name, a in sorted(latest.items()):
        items.append(Item(name, a["id"], a["sha256"], a["bytes"], store_dir / a["path"], PurePosixPath(a["path"]).suffix, recipe=a["recipe"]))
    return items


class Sources:
    """Where else the bytes of an item can be read from: good copies at other destinations."""

    def __init__(self, db: DB, destinations: dict[str, Destination], scratch: Path):
        self.db, self.destinations, self.scratch = db, destinations, scratch
        self.bad: set[tuple[str, str]] = set()  # (destination, path) known not to be good

    def put_from_elsewhere(self, dest: Destination, item: Item, file_id: str, rel: str, *, replace: Found | None = None) -> str:
        """Copy ``item`` to ``dest`` from another destination's copy; returns where from.

        Errors of the other destinations are reasons to try the next one; errors of
        ``dest`` itself propagate.
        """
        rows = self.db.all(
            "SELECT destination, path FROM copies WHERE file_id IN (?, (SELECT duplicate_of FROM files WHERE id = ?))"
            " AND sha256 = ? AND destination != ? ORDER BY verified_at DESC",
            (file_id, file_id, item.sha256, dest.url),
        )
        reasons = []
        for r in rows:
            other = self.destinations.get(r["destination"])
            where = f"{r['destination']}/{r['path']}"
            if other is None or (r["destination"], r["path"]) in self.bad:
                continue
            self.scratch.mkdir(parents=True, exist_ok=True)
            tmp = self.scratch / temp_name("repair")
            try:
                try:
                    other.fetch(r["path"], tmp)
                    with open(tmp, "rb") as fh:
                        got = hash_fd(fh.fileno())
                except (ImgqError, OSError) as e:
                    reasons.append(f"cannot read {where}: {e}")
                    continue
                if got != Found(item.bytes, item.sha256):
                    self.bad.add((r["destination"], r["path"]))
                    reasons.append(f"{where} does not match either")
                    continue
                dest.put(tmp, rel, sha256=item.sha256, size=item.bytes, replace=replace)
                return where
            finally:
                tmp.unlink(missing_ok=True)
        raise SourceUnavailable("; ".join(reasons) or "no other good copy to copy from")


def _source_of(item: Item):
    """What ``put`` reads: an artifact's path in the store, or, for the original, an opener
    that opens it by identity in the inbox (no symlink followed, a regular file only);
    the bytes are hashed as they are copied and checked against the journal."""
    if item.role != ORIGINAL or item.inbox is None:
        return item.source

    def open_original():
        try:
            with Original(item.inbox, item.rel) as o:
                if o.stat.st_size != item.bytes:
                    raise ChangedInInbox(f"{o.path}: changed in the inbox since it was scanned (size {o.stat.st_size}, recorded {item.bytes}); scan again")
                return os.fdopen(os.dup(o.fd), "rb")
        except Unsafe as e:
            raise ChangedInInbox(f"{item.source}: changed in the inbox since it was scanned: {e}") from e
        except FileNotFoundError as e:
            raise SourceUnavailable(f"{item.source} is missing from the inbox") from e
        except OSError as e:
            raise SourceUnavailable(f"cannot read {item.source}: {e.strerror or e}") from e

    open_original.shown = str(item.source)
    return open_original


_LOOK = object()


def copy_item(dest: Destination, file_id: str, item: Item, rel: str, sources: Sources, *, replace: Found | None = None, found=_LOOK) -> str:
    """Make sure ``rel`` at ``dest`` holds ``item``; returns 'found', 'copied' or
    'copied from WHERE' (another destination's copy, when the local source is gone).

    A name holding anything else is never written over (NameTaken), unless it holds
    exactly ``replace``: a damaged copy proven to be this item's (verify). ``found``:
    what ``dest.check`` just said is at ``rel``, if the caller looked (for many at once);
    the final rename never replaces a file whatever it said."""
    if found is _LOOK:
        found = dest.check([rel])[rel]
    if found == Found(item.bytes, item.sha256):
        return "found"
    if found is not None and found != replace:
        raise NameTaken(f"{dest.url}: {rel} (or a name differing only in case) holds another file; imgq never replaces it")
    try:
        dest.put(_source_of(item), rel, sha256=item.sha256, size=item.bytes, replace=replace)
        return "copied"
    except (SourceUnavailable, ChangedInInbox) as first:
        if item.role == ORIGINAL and isinstance(first, SourceChanged):
            first = ChangedInInbox(f"{item.source}: changed in the inbox since it was scanned ({first}); scan again")
        try:
            return "copied from " + sources.put_from_elsewhere(dest, item, file_id, rel, replace=replace)
        except SourceUnavailable as e:
            raise type(first)(f"{first}; {e}") from None
