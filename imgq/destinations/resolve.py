"""Which destinations are in force, and opening them: from ``--to`` or imgq.toml."""

from __future__ import annotations

import os
from pathlib import Path

from imgq.config import Settings
from imgq.destinations.base import Destination
from imgq.destinations.local import LocalDestination
from imgq.destinations.ssh import SshDestination, SshOptions, parse_ssh_url
from imgq.errors import UsageError


def canonical(text: str) -> str:
    """The form a destination is recorded under: an absolute path, or the ssh:// URL."""
    if text.startswith("ssh://"):
        parse_ssh_url(text)
        return text.rstrip("/")
    if "://" in text:
        raise UsageError(f"unsupported destination {text!r}: use a local folder or ssh://[user@]host[:port]/path")
    if not text:
        raise UsageError("empty destination")
    return os.path.abspath(os.path.expanduser(text))


def open_destination(text: str, ssh: SshOptions = SshOptions()) -> Destination:
    """A destination for ``text`` (a local folder or ssh://...); connects lazily."""
    url = canonical(text)
    if url.startswith("ssh://"):
        return SshDestination(url, ssh)
    return LocalDestination(url)


def configured(text: str, settings: Settings) -> str:
    """A destination named in imgq.toml, canonical: a relative path there is relative to
    the file."""
    base = settings.config_path.parent if settings.config_path else Path(".")
    return canonical(text if text.startswith("ssh://") or os.path.isabs(os.path.expanduser(text)) else str(base / text))


def in_force(to: list[str] | None, settings: Settings) -> list[str]:
    """The destinations in force, canonical: ``to`` (--to), else imgq.toml's
    ``destinations`` then the ``to`` of each ``[[route]]``, deduplicated in order."""
    if to:
        urls = [canonical(t) for t in to]
    else:
        urls = [configured(t, settings) for t in [*settings.destinations, *(r.to for r in settings.route)]]
    return list(dict.fromkeys(urls))


def open_all(urls: list[str], ssh: SshOptions) -> dict[str, Destination]:
    """A destination for each url (connected lazily), by url."""
    return {u: open_destination(u, ssh) for u in urls}


def close_all(dests: dict[str, Destination]) -> None:
    for d in dests.values():
        d.close()
