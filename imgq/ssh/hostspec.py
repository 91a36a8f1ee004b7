"""Where a host is and how a command reaches it: ``[user@]host[:port][/slots]`` specs and
remote command lines in which every argument is quoted (nothing from a file name or an
owner folder is ever interpreted by the remote shell)."""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass

from imgq.errors import UsageError

_SPEC = re.compile(
    r"""^(?:(?P<user>[^@\s:/]+)@)?     # user@
        (?P<host>[A-Za-z0-9_.%+-]+)    # host name, address or ssh_config alias
        (?::(?P<port>\d+))?            # :port
        (?:/(?P<slots>\d+))?$          # /slots
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class HostSpec:
    """Where to run: ``[user@]host[:port][/slots]``; None means "from ssh_config / default"."""

    host: str
    user: str | None = None
    port: int | None = None
    slots: int | None = None

    def __str__(self) -> str:
        text = self.host
        if self.user:
            text = f"{self.user}@{text}"
        if self.port:
            text = f"{text}:{self.port}"
        if self.slots:
            text = f"{text}/{self.slots}"
        return text


def parse_host_spec(text: str) -> HostSpec:
    """Parse ``[user@]host[:port][/slots]``; raise UsageError naming what is wrong."""
    form = "expected [user@]host[:port][/slots], e.g. alice@gpu1:2222/8"
    raw = text
    text = text.strip()
    if not text:
        raise UsageError(f"empty host spec ({form})")
    if text.count(":") > 1 or text.startswith("["):
        raise UsageError(
            f"bad host spec {raw!r}: IPv6 addresses are not supported; "
            "give the host an alias in ~/.ssh/config"
        )
    if text.startswith("-"):
        raise UsageError(f"bad host spec {raw!r}: a host name cannot start with '-'")
    m = _SPEC.match(text)
    if not m:
        raise UsageError(f"bad host spec {raw!r} ({form})")
    port = int(m["port"]) if m["port"] is not None else None
    if port is not None and not 1 <= port <= 65535:
        raise UsageError(f"bad host spec {raw!r}: port {port} is not in 1-65535")
    slots = int(m["slots"]) if m["slots"] is not None else None
    if slots is not None and slots < 1:
        raise UsageError(f"bad host spec {raw!r}: slots must be at least 1")
    return HostSpec(host=m["host"], user=m["user"], port=port, slots=slots)


def remote_command(argv: list[str]) -> str:
    """One shell command line that runs ``argv`` exactly, every argument quoted.

    The remote login shell must be POSIX-like (sh, bash, dash, zsh, ksh). To run a script
    with arguments, pass ``["sh", "-c", SCRIPT, "sh", arg1, ...]`` and refer to "$1"...
    inside SCRIPT, never format arguments into it.
    """
    if isinstance(argv, (str, bytes)) or not argv:
        raise TypeError("remote_command takes a non-empty list of arguments")
    parts = []
    for arg in argv:
        arg = os.fspath(arg)
        if not isinstance(arg, str):
            raise TypeError(f"remote command arguments must be str, not {type(arg).__name__}")
        if "\0" in arg:
            raise ValueError(f"a remote command argument cannot contain NUL: {arg!r}")
        parts.append(shlex.quote(arg))
    return " ".join(parts)
