"""The destinations of a run grouped by what they are, not how they were spelled.

A symlink to a folder, ``/srv/./x``, ``ssh://nas/x`` and ``ssh://u@nas:22/x`` are each one
destination (``Destination.identity``): archived to once, counted as one copy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from imgq.destinations.base import Destination
from imgq.errors import ImgqError


@dataclasses.dataclass
class Physical:
    """The destinations of a run grouped by what they are (``identity``), read now."""

    unique: list[Destination]  # one per physical destination, in the order given
    identity: dict[str, str]  # url -> identity, for every reachable one
    aliases: list[tuple[str, str]]  # (url, url of the same destination kept in unique)
    down: dict[str, str]  # url -> why its identity could not be read

    def url_of(self, identity: str) -> str | None:
        """The url kept for a physical destination."""
        for d in self.unique:
            if self.identity.get(d.url) == identity:
                return d.url
        return None


def physical(destinations: Iterable[Destination]) -> Physical:
    """Group ``destinations`` by identity: a symlink to a folder, ``/srv/./x``,
    ``ssh://nas/x`` and ``ssh://u@nas:22/x`` are each one destination, not two. One that
    cannot be reached stays in ``unique`` (its copies fail as usual) with its reason."""
    out = Physical([], {}, [], {})
    first: dict[str, str] = {}
    for d in destinations:
        try:
            ident = d.identity()
        except ImgqError as e:
            out.down[d.url] = str(e)
            out.unique.append(d)
            continue
        out.identity[d.url] = ident
        if ident in first:
            out.aliases.append((d.url, first[ident]))
            continue
        first[ident] = d.url
        out.unique.append(d)
    return out
