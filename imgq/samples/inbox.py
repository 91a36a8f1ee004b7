"""Whole sample inboxes: one folder per photographer, with the extras a real inbox has
(a rotated portrait, a duplicate, a truncated file, hostile names, junk), described by
``InboxSample``."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import time
from datetime import datetime, timedelta
from pathlib import Path

from imgq.samples.broken import make_truncated_jpeg
from imgq.samples.photo import _write_atomically, make_photo

# Names that break anything which pastes a file name into a shell or splits on spaces.
HOSTILE_NAMES = (
    "with space.jpg",
    "it's \"quoted\".jpg",
    "$(touch x).jpg",
    "`touch y`.jpg",
    "-leading-dash.jpg",
    "Ängström ✓.jpg",
    "semi;colon && echo.jpg",
    "star*glob?[1].jpg",
)
HOSTILE_OWNER = "Zoë O'Brien & co"


class InboxSample(dict):
    """What ``make_inbox`` made: a dict, which also stands for the inbox root as a path
    (``str(inbox)``, ``os.fspath(inbox)`` and ``inbox / "alice"`` work).

    Keys:
      root        Path of the inbox root
      owners      photographer folder names, in order
      photos      every decodable photo (including the rotated one, the duplicate copy,
                  the loose one at the root and the hostile-named ones)
      unique      ``photos`` minus the duplicate copy: distinct contents
      by_owner    {owner: [paths]} for photos inside an owner folder (the loose file is not)
      loose       photos directly in the root (no owner folder)
      rotated     the photo stored rotated with EXIF orientation 6, or None
      duplicate   {"original": path, "copy": path} (same bytes, other owner), or None
      broken      files that look like images by their header but do not decode
      hostile     photos with hostile names (empty unless asked for)
      junk        hidden and temporary files a scan must skip (empty unless asked for)
      taken       {path: datetime or None} capture date written into each photo's EXIF
      sha256      {path: hex digest} of every file made
      files       every file made, in creation order
    """

    @property
    def root(self) -> Path:
        return self["root"]

    def __fspath__(self) -> str:
        return str(self["root"])

    def __str__(self) -> str:
        return str(self["root"])

    def __truediv__(self, other) -> Path:
        return self["root"] / other


def _photo_job(args: tuple[str, dict]) -> str:
    path, kwargs = args
    make_photo(path, **kwargs)
    return path


def make_inbox(
    root,
    *,
    photographers=("alice", "bob", "carol"),
    per_owner: int = 4,
    count: int | None = None,
    size=(1600, 1200),
    with_rotated: bool = True,
    with_duplicate: bool = True,
    with_broken: bool = True,
    with_hostile_names: bool = False,
    with_junk: bool = False,
    with_loose: bool = True,
    progressive: bool = False,
    seed: int = 0,
    age: float = 120.0,
    jobs: int = 1,
) -> InboxSample:
    """Generate a sample inbox under ``root`` and describe it (see ``InboxSample``).

    One folder per photographer with ``per_owner`` photos each (or ``count`` photos in all,
    spread evenly); camera-style names repeat across owners (IMG_0001.jpg in each), and the
    first owner's last photo sits in a sub-folder. Extras, each optional: a photo loose at
    the root without a capture date, a portrait stored rotated with EXIF orientation 6, an
    exact duplicate of one photo under another owner and name, a truncated JPEG, hostile
    names (in a folder with a hostile owner name too), hidden/temporary junk files.

    Capture dates are spread over two days from 2024-05-17 08:00. Every file's mtime is set
    ``age`` seconds in the past so a scan's settle check accepts it at once. ``jobs`` > 1
    renders photos in that many processes.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    width, height = size
    owners = list(photographers)
    if not owners:
        raise ValueError("make_inbox needs at least one photographer")
    if count is not None:
        base, extra = divmod(count, len(owners))
        counts = [base + (1 if i < extra else 0) for i in range(len(owners))]
    else:
        counts = [per_owner] * len(owners)

    start = datetime(2024, 5, 17, 8, 0, 0)
    info = InboxSample(
        root=root, owners=owners, photos=[], unique=[], by_owner={o: [] for o in owners},
        loose=[], rotated=None, duplicate=None, broken=[], hostile=[], junk=[], taken={},
        sha256={}, files=[],
    )
    plans: list[tuple[Path, dict, str | None]] = []  # (path, make_photo kwargs, owner)
    n = 0

    def plan(path: Path, owner: str | None, **kwargs) -> Path:
        nonlocal n
        kwargs.setdefault("width", width)
        kwargs.setdefault("height", height)
        kwargs.setdefault("seed", seed * 100_003 + n)
        kwargs.setdefault("taken", start + timedelta(minutes=37 * n) if n % 2 == 0 else start + timedelta(days=1, minutes=23 * n))
        kwargs.setdefault("progressive", progressive)
        kwargs.setdefault("model", f"Field {1 + n % 3}")
        n += 1
        plans.append((path, kwargs, owner))
        return path

    for owner, k in zip(owners, counts):
        for i in range(1, k + 1):
            sub = "day2" if owner == owners[0] and i == k and k > 1 else ""
            plan(root / owner / sub / f"IMG_{i:04d}.jpg", owner)
    if with_loose:
        plan(root / "loose-at-root.jpg", None, taken=None)
    if with_rotated:
        info["rotated"] = plan(root / owners[0] / "portrait_rotated.jpg", owners[0], orientation=6)
    if with_hostile_names:
        for i, name in enumerate(HOSTILE_NAMES):
            where = root / HOSTILE_OWNER if i % 2 else root / owners[-1]
            plan(where / name, HOSTILE_OWNER if i % 2 else owners[-1],
                 width=min(width, 640), height=min(height, 480))

    made = _render_all([(str(p), kw) for p, kw, _ in plans], jobs)
    for (path, kwargs, owner), _ in zip(plans, made):
        info["photos"].append(path)
        info["unique"].append(path)
        info["taken"][path] = kwargs["taken"]
        if owner is None:
            info["loose"].append(path)
        else:
            info["by_owner"].setdefault(owner, []).append(path)
        if path.name in HOSTILE_NAMES and with_hostile_names:
            info["hostile"].append(path)

    if with_duplicate and plans:
        original = plans[0][0]
        other = owners[1] if len(owners) > 1 else owners[0]
        copy = root / other / f"copy of {original.stem}.jpg"
        _write_atomically(copy, original.read_bytes())
        info["duplicate"] = {"original": original, "copy": copy}
        info["photos"].append(copy)
        info["by_owner"][other].append(copy)
        info["taken"][copy] = info["taken"][original]
    if with_broken:
        broken = root / owners[-1] / "IMG_9999_truncated.jpg"
        make_truncated_jpeg(broken, keep=0.4, width=min(width, 800), height=min(height, 600),
                            seed=seed + 999, taken=start)
        info["broken"].append(broken)
    if with_junk:
        for rel, data in (
            (".DS_Store", b"\x00\x00\x00\x01Bud1"),
            (f"{owners[0]}/.hidden.jpg", None),
            (f"{owners[0]}/IMG_0100.jpg.part", None),
            (f"{owners[0]}/~IMG_0101.jpg.tmp", None),
        ):
            p = root / rel
            if data is None:
                make_photo(p, width=64, height=48, seed=seed + 7)
            else:
                _write_atomically(p, data)
            info["junk"].append(p)

    all_files = [p for p, _, _ in plans]
    if info["duplicate"]:
        all_files.append(info["duplicate"]["copy"])
    all_files += info["broken"] + info["junk"]
    past = time.time() - age
    for i, p in enumerate(all_files):
        # Slightly different mtimes, all comfortably older than any settle window.
        os.utime(p, (past - i, past - i))
        info["sha256"][p] = hashlib.sha256(p.read_bytes()).hexdigest()
    info["files"] = all_files
    return info


def _render_all(tasks: list[tuple[str, dict]], jobs: int) -> list[str]:
    if jobs <= 1 or len(tasks) <= 1:
        return [_photo_job(t) for t in tasks]
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(_photo_job, tasks))
