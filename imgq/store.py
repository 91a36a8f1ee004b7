"""The artifact store: where a job's outputs live, beside the database by default."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import time
from pathlib import Path

TEMP_MARK = ".imgq-tmp"
# Longest name component imgq makes (ids, store folders, artifact names): far below the
# 255-byte limit of every file system, with room for suffixes (temporary names, "-N").
NAME_MAX = 120
_TEMP_PID = re.compile(r"\.(\d+)-[0-9a-f]+\.imgq-tmp$")


def temp_name(name: str) -> str:
    """The temporary name every imgq writer uses for ``name`` in the same folder:
    ".NAME.<pid>-<hex>.imgq-tmp" — hidden, skipped by scan, and its writer's pid lets a
    sweep tell a killed writer's leftover from a live one's file."""
    return f".{name}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_MARK}"


def temp_writer(name: str) -> int | None:
    """The pid in a temporary name made by temp_name, or None."""
    m = _TEMP_PID.search(name)
    return int(m.group(1)) if m else None


def short_name(name: str, limit: int = NAME_MAX) -> str:
    """``name`` if it is at most ``limit`` bytes in UTF-8; else a prefix of it and a short
    hash of the whole name, together at most ``limit`` bytes (the hash keeps two long
    names that share a prefix apart)."""
    data = name.encode("utf-8", "surrogateescape")
    if len(data) <= limit:
        return name
    tail = "~" + hashlib.sha256(data).hexdigest()[:12]
    head = data[: limit - len(tail)].decode("utf-8", "ignore").rstrip("._-")
    return head + tail


def artifact_path(file_id: str, name: str, spec_hash: str, ext: str = "jpg") -> str:
    """Store-relative path of an artifact: one folder per file; the recipe's hash in the
    name keeps outputs of a changed recipe apart from the old ones. Each component is at
    most NAME_MAX bytes (a long id from an older version, a long artifact name)."""
    return f"{short_name(file_id)}/{short_name(name, NAME_MAX - 14 - len(ext))}-{spec_hash[:8]}.{ext}"


def sweep_temp(store: Path, *, older_than: float = 0.0, now: float | None = None) -> int:
    """Remove temporary files left by killed writers; returns how many.

    A temp name carries its writer's pid; a file whose writer is gone (on this host) or
    that is older than ``older_than`` seconds is removed. A live writer's file stays.
    """
    now = time.time() if now is None else now
    removed = 0
    if not store.is_dir():
        return 0
    for path in store.rglob(f"*{TEMP_MARK}*"):
        pid = temp_writer(path.name)
        alive = pid is not None and pid_alive(pid)
        try:
            old = older_than > 0 and now - path.stat().st_mtime > older_than
            if not alive or old:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            pass
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_parts(store: Path, file_id: str, spec_hash: str) -> int:
    """Remove the stripes of a split image once its join is recorded; returns how many."""
    folder = store / file_id / "parts"
    removed = 0
    for path in folder.glob(f"*-{spec_hash[:8]}.*of*.npy"):
        path.unlink(missing_ok=True)
        removed += 1
    try:
        folder.rmdir()
    except OSError:
        pass  # other recipes' stripes are still there
    return removed
