"""``python -m imgq.samples DIR --count N --size WxH``: generate a sample inbox."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

from imgq.samples.inbox import make_inbox


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 4000x3000, not {text!r}")
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError("size must be at least 16x16")
    return w, h


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imgq.samples",
        description="Generate a sample inbox of photo-like JPEGs with real EXIF (one folder per photographer).",
    )
    parser.add_argument("dir", type=Path, help="inbox root to create or add to")
    parser.add_argument("--count", type=int, default=None, help="good photos in all, spread over the photographers (default: 4 each)")
    parser.add_argument("--size", type=_size, default=(1600, 1200), help="pixel size WxH of each photo (default 1600x1200; 5472x3648 is 20 MP)")
    parser.add_argument("--owners", default="alice,bob,carol", help="comma-separated photographer names")
    parser.add_argument("--seed", type=int, default=0, help="vary the pictures")
    parser.add_argument("--progressive", action="store_true", help="write progressive JPEGs")
    parser.add_argument("--hostile", action="store_true", help="add hostile file and folder names")
    parser.add_argument("--junk", action="store_true", help="add hidden and temporary files a scan must skip")
    parser.add_argument("--clean", action="store_true", help="only good photos: no rotated, duplicate, broken or loose extras")
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1, help="processes to render with (default: all cores)")
    parser.add_argument("--json", action="store_true", help="print a JSON description of what was made on stdout")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    info = make_inbox(
        args.dir,
        photographers=[o for o in args.owners.split(",") if o],
        count=args.count,
        size=args.size,
        with_rotated=not args.clean,
        with_duplicate=not args.clean,
        with_broken=not args.clean,
        with_loose=not args.clean,
        with_hostile_names=args.hostile,
        with_junk=args.junk,
        progressive=args.progressive,
        seed=args.seed,
        jobs=args.jobs,
    )
    elapsed = time.perf_counter() - t0
    total = sum(p.stat().st_size for p in info["files"])
    print(
        f"imgq.samples: {len(info['files'])} files ({len(info['photos'])} photos, "
        f"{len(info['broken'])} broken) in {info['root']}, {total / 1e6:.1f} MB, {elapsed:.1f} s",
        file=sys.stderr,
    )
    if args.json:
        print(json.dumps(_jsonable(info), ensure_ascii=False, sort_keys=True))
    return 0


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (Path, datetime)):
        return str(value)
    return value
