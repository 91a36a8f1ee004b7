"""The hosts of a fleet: how they are listed, when one is fit to work, and what the
``hosts`` table remembers about each (for ``imgq status``).

A host is written ``[user@]host[:port][/slots]`` (``imgq.ssh.parse_host_spec``); a
hosts file has one per line, optionally followed by the command that runs imgq there
(for a virtual environment), ``#`` starting a comment::

    # name            remote imgq (default: imgq, or --remote-imgq)
    gpu1/8
    alice@render2:2222  /opt/imgq/venv/bin/imgq
    render3             python3 -m imgq

The words of the command are split like a shell would (quotes work) but never given to
a shell unquoted: each becomes one quoted argument (``imgq.ssh.remote_command``).
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

from typing import TYPE_CHECKING

from imgq import __version__, backoff
from imgq.fleet import protocol
from imgq.ledger.database import DB
from imgq.errors import UsageError

if TYPE_CHECKING:  # imgq.ssh brings paramiko: not for `imgq status`, which reads the table
    from imgq.ssh import HostSpec

MIN_FREE_DISK = 256 * 2**20  # the agent stages inputs and outputs of a few jobs at a time
BENCH_BASE = 5.0  # seconds benched after a first failure; doubles with each one in a row
BENCH_MAX = 300.0
FAILS_IN_A_ROW = 3  # jobs failing transiently on one host, none done between: benched


class PreflightFailed(Exception):
    """The host answers but cannot do the work (library missing, wrong imgq version)."""


@dataclasses.dataclass(frozen=True)
class HostEntry:
    """One host of the fleet: where, how many slots, and the command that runs imgq there."""

    spec: HostSpec
    remote_imgq: tuple[str, ...] = ("imgq",)

    @property
    def name(self) -> str:
        """The host as written, without its slots: the key in the ``hosts`` table."""
        return str(dataclasses.replace(self.spec, slots=None))


def parse_line(line: str, *, remote_imgq: tuple[str, ...] = ("imgq",), where: str = "") -> HostEntry | None:
    """One hosts-file line (or one ``--hosts`` item); None for a blank or comment line."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError as e:
        raise UsageError(f"{where}cannot read {line.strip()!r}: {e}") from None
    if not words:
        return None
    from imgq.ssh import parse_host_spec

    try:
        spec = parse_host_spec(words[0])
    except UsageError as e:
        raise UsageError(f"{where}{e}") from None
    return HostEntry(spec, tuple(words[1:]) or tuple(remote_imgq))


def parse_hosts(items: list[str], *, remote_imgq: tuple[str, ...] = ("imgq",), where: str = "") -> list[HostEntry]:
    """Host entries from ``--hosts`` items or file lines; the first of a repeated host wins."""
    out: dict[str, HostEntry] = {}
    for i, item in enumerate(items, start=1):
        entry = parse_line(item, remote_imgq=remote_imgq, where=f"{where}line {i}: " if where else "")
        if entry is not None:
            out.setdefault(entry.name, entry)
    return list(out.values())


def split_hosts_option(values: list[str]) -> list[str]:
    """``--hosts a,b --hosts c`` -> ["a", "b", "c"]."""
    return [item.strip() for v in values for item in v.split(",") if item.strip()]


def read_hosts_file(path: Path, *, remote_imgq: tuple[str, ...] = ("imgq",)) -> list[HostEntry]:
    """The hosts listed in ``path`` (UsageError if it cannot be read or a line is bad)."""
    try:
        text = path.read_text()
    except OSError as e:
        raise UsageError(f"cannot read hosts file {path}: {e.strerror or e}") from None
    return parse_hosts(text.splitlines(), remote_imgq=remote_imgq, where=f"{path}: ")


class HostsFile:
    """A hosts file watched while the fleet runs: parsed again only when it changed; a
    file that cannot be read or parsed (being edited, a typo) keeps the last good list."""

    def __init__(self, path: Path, *, remote_imgq: tuple[str, ...] = ("imgq",)):
        self.path, self.remote_imgq = path, remote_imgq
        self.entries: list[HostEntry] = []
        self._seen = None

    def refresh(self) -> str | None:
        """Update ``entries`` if the file changed; what is wrong with it, or None."""
        try:
            text = self.path.read_text()  # a few lines: comparing them beats trusting mtimes
        except OSError as e:
            return f"cannot read hosts file {self.path}: {e.strerror or e}"
        if text != self._seen:
            try:
                self.entries = parse_hosts(text.splitlines(), remote_imgq=self.remote_imgq, where=f"{self.path}: ")
            except UsageError as e:
                return str(e)
            self._seen = text
        return None


def check_hello(hello: dict, *, min_free_disk: int = MIN_FREE_DISK) -> list[str]:
    """What makes a host unfit to work, from its agent's hello; empty when it is fit."""
    problems = []
    if hello.get("protocol") != protocol.PROTOCOL:
        problems.append(f"agent speaks protocol {hello.get('protocol')!r}, this imgq speaks {protocol.PROTOCOL}")
    if hello.get("version") != __version__:
        problems.append(f"imgq {hello.get('version')} on the host, {__version__} here: install the same version")
    for lib, error in sorted((hello.get("errors") or {}).items()):
        module = {"pillow": "PIL", "opencv": "cv2"}.get(lib, lib)
        problems.append(f"{lib} does not import (import {module}: {error})" if module != lib else f"{lib} does not import: {error}")
    free = hello.get("free_disk") or 0
    if free < min_free_disk:
        problems.append(f"only {free // 2**20} MB free in the agent's folder (need {min_free_disk // 2**20} MB)")
    if not hello.get("cores"):
        problems.append("reports no cores")
    return problems


def bench_delay(failures: int) -> float:
    """Seconds to wait before trying a host again after ``failures`` failures in a row."""
    return backoff.delay(failures, BENCH_BASE, BENCH_MAX)


# --- the hosts table (written by imgq.ledger.hosts; read here for `imgq status`) --------------

STALE_AFTER = 30.0  # a host 'up' whose coordinator wrote nothing for this long: the coordinator is gone


def summary(db: DB, *, now: float, window: float = 300.0) -> list[dict]:
    """Each host the fleet has used: slots, jobs done, in flight, recent rate, benched and why."""
    rows = db.all("SELECT * FROM hosts ORDER BY name")
    if not rows:
        return []
    inflight = {r[0]: r[1] for r in db.all("SELECT host, count(*) FROM jobs WHERE state = 'leased' AND lease_until >= ? GROUP BY host", (now,))}
    recent = {r[0]: r[1] for r in db.all("SELECT host, count(*) FROM events WHERE entity = 'job' AND to_state = 'done' AND at >= ? GROUP BY host", (now - window,))}
    out = []
    for r in rows:
        state = r["state"]
        if state in ("up", "connecting", "draining") and now - (r["updated_at"] or 0) > STALE_AFTER and now - (r["seen_at"] or 0) > STALE_AFTER:
            state = "stale"  # its coordinator stopped without saying so (killed)
        out.append({
            "host": r["name"], "slots": r["slots"], "state": state, "benched": state == "benched",
            "reason": r["reason"], "benched_until": r["benched_until"], "done": r["done"] or 0,
            "failed": r["failed"] or 0, "lost": r["lost"] or 0, "in_flight": inflight.get(r["name"], 0),
            "per_minute": round(recent.get(r["name"], 0) / window * 60, 2), "version": r["version"],
            "cores": r["cores"], "free_disk": r["free_disk"], "seen_at": r["seen_at"], "coordinator": r["coordinator"],
        })
    return out
