"""What an agent finds on its host and asks of its process: whether the store it sees is
the coordinator's (the owner marker), which imaging libraries import, session folders
that agents gone without cleaning up left behind, and a larger pipe buffer for the
channel. Used by ``imgq.fleet.agent`` when it starts and says hello."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

_SESSION = re.compile(r"s-(\d+)-[0-9a-f]{8}$")


def store_id(folder: str | None) -> str | None:
    """The database id in a store's owner marker (``store.own``), or None: what tells
    the coordinator that the store this agent sees is its own."""
    if not folder:
        return None
    import json

    from imgq import store

    try:
        return str(json.loads((Path(folder) / store.OWNER_MARK).read_text())["database_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def libraries() -> tuple[dict, dict]:
    """Versions of the imaging libraries, and the import error of each that fails."""
    libs, errors = {}, {}
    for name, module in (("pillow", "PIL"), ("opencv", "cv2"), ("numpy", "numpy")):
        try:
            mod = __import__(module)
            libs[name] = getattr(mod, "__version__", "?")
        except Exception as e:  # ImportError, or a broken build raising anything at import
            libs[name] = None
            errors[name] = f"{type(e).__name__}: {e}".strip()[:300]
    return libs, errors


def sweep_sessions(root: Path) -> None:
    """Remove session folders of agents that are gone (killed with SIGKILL, host crashed)."""
    for d in root.glob("s-*"):
        m = _SESSION.match(d.name)
        if not m or not d.is_dir() or d.is_symlink():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass


def grow_pipe(fd: int) -> None:
    """A 1 MB pipe buffer instead of 64 kB: sshd hands a photo to us in 16x fewer writes,
    and both sides wake up 16x less often (Linux; elsewhere nothing changes)."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (OSError, ValueError):
        pass  # not a pipe, or over /proc/sys/fs/pipe-max-size
