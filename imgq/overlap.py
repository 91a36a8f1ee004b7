"""A destination may not be, contain, or lie inside an inbox.

A copy written inside an inbox is scanned as a new photo (a duplicate of its original),
and collect then deletes the original and, as a verified duplicate, the copy itself: the
photo is gone. A destination around an inbox has imgq write among the photos it is about
to delete. Both are refused before anything is written or deleted.

Paths are compared by what they are, not how they are spelled: each folder on the way up
from one path is compared by (device, inode) with the other path's folder, so a symlink,
a bind mount, ``/srv/./x`` or ``/srv//x`` cannot hide an overlap. A path that does not
exist (an inbox not mounted now, a destination not made yet) is represented by its
nearest existing folder, and the real paths are compared as text too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from imgq.ledger.database import DB
from imgq.errors import UsageError


def _existing(path: str) -> str:
    """``path`` made absolute, or its nearest existing ancestor."""
    p = os.path.abspath(path)
    while not os.path.exists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    return p


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _chain(path: str) -> set[tuple[int, int]]:
    """(device, inode) of ``path`` (or its nearest existing ancestor) and of every folder
    above it, walking up its real path (what a bind mount is mounted on counts)."""
    out = set()
    p = os.path.realpath(_existing(path))
    while True:
        ident = _identity(p)
        if ident is not None:
            out.add(ident)
        parent = os.path.dirname(p)
        if parent == p:
            return out
        p = parent


def _inside(inner: str, outer: str) -> bool:
    """Whether ``inner`` is ``outer`` or lies below it (by identity, then by real path)."""
    outer_id = _identity(outer)
    if outer_id is not None and outer_id in _chain(inner):
        # A missing ``inner`` is stood for by its nearest ancestor: that ancestor being
        # ``outer`` (or below it) puts ``inner`` inside ``outer`` as well.
        return True
    a, b = os.path.realpath(inner), os.path.realpath(outer)
    return a == b or a.startswith(b.rstrip("/") + "/")


def relation(destination: str, inbox: str) -> str | None:
    """How a local destination overlaps an inbox: 'is', 'lies inside', 'contains', or None."""
    d_in_i = _inside(destination, inbox)
    i_in_d = _inside(inbox, destination)
    if d_in_i and i_in_d:
        return "is"
    if d_in_i:
        return "lies inside"
    if i_in_d:
        return "contains"
    return None


def inbox_roots(db: DB, extra: Iterable[str | os.PathLike] = ()) -> list[str]:
    """Every inbox root: the ones files were scanned from, and ``extra`` (the command
    line's), absolute, in order, without repeats."""
    roots = [os.path.abspath(os.fspath(p)) for p in extra]
    roots += [r[0] for r in db.all("SELECT DISTINCT inbox FROM files ORDER BY inbox")]
    return list(dict.fromkeys(roots))


def refuse_overlap(destinations: Iterable[str], inboxes: Iterable[str]) -> None:
    """Raise UsageError naming both paths if a local destination is, contains or lies
    inside an inbox. Remote (ssh://) destinations are not checked here."""
    inboxes = list(inboxes)
    for dest in destinations:
        if dest.startswith("ssh://"):
            continue
        for inbox in inboxes:
            how = relation(dest, inbox)
            if how is None:
                continue
            what = "the inbox" if how == "is" else f"{how} the inbox"
            why = "copies written there would mix with the photos collect deletes" if how == "contains" else "its copies would be scanned as new photos and collect could delete the only copy"
            raise UsageError(f"the destination {dest} {what} {inbox}: {why}; choose a destination outside every inbox")


def check_destinations(db: DB, destinations: Iterable[str], inboxes: Iterable[str | os.PathLike] = ()) -> None:
    """``refuse_overlap`` against every inbox the database knows and ``inboxes``."""
    refuse_overlap(destinations, inbox_roots(db, inboxes))
