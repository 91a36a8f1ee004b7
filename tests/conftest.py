"""Shared fixtures: real files, a real database path, the real CLI in a subprocess.

- ``inbox``      a small generated inbox in ``tmp_path/"inbox"`` (an ``InboxSample``: a dict
                 describing what was made, which also works as the root path:
                 ``str(inbox)``, ``inbox / "alice"``, ``inbox["rotated"]``)
- ``photo``      factory: ``photo("a.jpg", taken=..., orientation=6, ...)`` -> Path of a real
                 JPEG with EXIF in ``tmp_path/"photos"`` (640x480 unless told otherwise)
- ``db_path``    ``tmp_path/"imgq.db"`` (not created), the default ``./imgq.db`` of ``run_imgq``
- ``run_imgq``   ``run_imgq("scan", str(inbox), input=None, env=None)`` runs
                 ``python -m imgq ...`` as a real subprocess in ``tmp_path`` and returns the
                 CompletedProcess (text; stdout and stderr captured separately)

``imgq_subprocess`` is the same runner as a plain function, for a chosen working directory.
"""

from __future__ import annotations

import inspect
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgq import samples

REPO = Path(__file__).resolve().parent.parent


def imgq_env(env: dict[str, str | None] | None = None) -> dict[str, str]:
    """The environment the CLI runs with: ours, minus IMGQ_* settings (so a developer's
    IMGQ_DB cannot leak into a test) and with no user settings file, plus ``env`` (a
    value of None removes a variable).
    The repository is put first on PYTHONPATH so an uninstalled checkout works too."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("IMGQ_")}
    # nor a developer's ~/.config/imgq/imgq.toml (a test that wants one sets its own)
    out["XDG_CONFIG_HOME"] = "/nonexistent/imgq-tests-config"
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), out.get("PYTHONPATH")]))
    for key, value in (env or {}).items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = str(value)
    return out


def imgq_subprocess(
    *args,
    cwd,
    input: str | None = None,
    env: dict[str, str | None] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess:
    """Run ``python -m imgq ARGS`` for real in ``cwd`` and return what happened."""
    return subprocess.run(
        [sys.executable, "-m", "imgq", *(os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in args)],
        cwd=cwd,
        input=input,
        env=imgq_env(env),
        capture_output=True,
        text=True,
        # Without an input, give the child an empty stdin rather than the test runner's.
        stdin=None if input is not None else subprocess.DEVNULL,
        timeout=timeout,
    )


def query(db, sql: str, params=()) -> list[tuple]:
    """Rows of ``sql`` on the database file ``db``, through a connection of its own (the
    tests read what imgq's processes wrote; a 30 s busy timeout rides out their writes)."""
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def wait_for(predicate, timeout=60.0, step=0.02, show=None):
    """The first true value of ``predicate()``, polled every ``step`` seconds; fails the
    test after ``timeout``, saying what ``show()`` (if given) last returned: the state a
    flaky wait ended in is what its diagnosis needs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    seen = f": last seen {show()!r}" if show is not None else ""
    raise AssertionError(f"condition not reached in {timeout:g} s{seen}")


@pytest.fixture
def run_imgq(tmp_path):
    """``run_imgq(*args, input=None, env=None, timeout=120)`` -> CompletedProcess, cwd=tmp_path."""

    def run(*args, input=None, env=None, timeout=120):
        return imgq_subprocess(*args, cwd=tmp_path, input=input, env=env, timeout=timeout)

    return run


@pytest.fixture
def db_path(tmp_path) -> Path:
    """Where the test's database lives: ``tmp_path/"imgq.db"`` (not created)."""
    return tmp_path / "imgq.db"


@pytest.fixture
def inbox(tmp_path) -> samples.InboxSample:
    """A small inbox: alice, bob, carol with 2 photos of 640x480 each (same names across
    owners; alice's second in a sub-folder), a loose photo at the root without a capture
    date, a photo stored rotated (EXIF orientation 6), a duplicate of alice/IMG_0001.jpg as
    bob/"copy of IMG_0001.jpg", and a truncated JPEG. All mtimes are 2 minutes old."""
    return samples.make_inbox(tmp_path / "inbox", per_owner=2, size=(640, 480))


@pytest.fixture
def photo(tmp_path):
    """Factory: ``photo(name="photo.jpg", **make_photo_kwargs)`` -> Path in tmp_path/"photos".

    Defaults to 640x480; each call without a seed gets a new one, so photos differ."""
    counter = iter(range(1, 1_000_000))

    def make(name: str = "photo.jpg", **kwargs) -> Path:
        kwargs.setdefault("width", 640)
        kwargs.setdefault("height", 480)
        kwargs.setdefault("seed", next(counter))
        path = Path(name)
        if not path.is_absolute():
            path = tmp_path / "photos" / path
        return samples.make_photo(path, **kwargs)

    return make


# -- the in-process suite and the slow one ----------------------------------------------------
# A test that starts a real process (the CLI in a subprocess, sshd, Chromium, a worker to
# kill) is marked ``slow`` here, and a few that decode camera-size images say so themselves: ``bin/test -m "not slow"`` runs the in-process tests alone, in
# well under a minute. The mark follows what the test does, so a new test needs no list.
PROCESS_FIXTURES = {"run_imgq", "ssh_hosts", "ssh_fleet"}
_STARTS_A_PROCESS = re.compile(r"\b(subprocess|Popen|imgq_subprocess|run_imgq|os\.fork|multiprocessing|mp\.)\b|\bwork\(|chromium")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("slow"):
            continue
        fn = getattr(item, "function", None)
        try:
            source = inspect.getsource(fn) if fn else ""
        except (OSError, TypeError):
            source = ""
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())) or _STARTS_A_PROCESS.search(source):
            item.add_marker("slow")
