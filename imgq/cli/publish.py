"""imgq publish OUT"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from imgq import publish as publish_step
from imgq.cli import common
from imgq.cli.options import ConfigOpt, DbOpt, JsonOpt, WaitOpt, dry_run_option
from imgq.errors import Exit, UsageError

EPILOG = """\b
Examples:
  imgq publish /var/www/photos
  imgq publish --title 'Dig 2024' --per-page 60 site/
  imgq publish -n /var/www/photos   # which pages and images would be written or removed
  imgq publish site/ --originals-url /mnt/archive=https://archive.example.org/photos
  imgq publish site/ --originals-url https://archive.example.org/photos
  cd site && python3 -m http.server 8000     # then browse http://localhost:8000/
"""


def publish(
    out: Annotated[Path, typer.Argument(help="Folder to write the gallery to (created if needed).", metavar="OUT", show_default=False)],
    title: Annotated[str, typer.Option("--title", help="The gallery's name, shown on every page.", metavar="TEXT")] = "Photos",
    per_page: Annotated[int, typer.Option("--per-page", help="Photos on one page of a day or a photographer.", min=1, metavar="N")] = 100,
    copy: Annotated[bool, typer.Option("--copy", help="Copy images even when OUT is on the store's file system (default: hard-link them).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Rewrite every page and image, whatever the manifest says.")] = False,
    originals_url: Annotated[Optional[list[str]], typer.Option("--originals-url", help="Link copies archived at DEST to URL/PATH (repeatable; a URL alone: every destination). Without it, copies beside OUT are linked relatively, others not at all; a file:// URL only when given.", metavar="[DEST=]URL", show_default=False)] = None,
    thumb: Annotated[str, typer.Option("--thumb", help="Artifact shown as the thumbnail.", metavar="NAME")] = "thumb",
    web: Annotated[str, typer.Option("--web", help="Artifact shown as the web version.", metavar="NAME")] = "web",
    enqueue: Annotated[bool, typer.Option("--enqueue/--no-enqueue", help="Enqueue the gallery recipe (the large sizes photo pages show) for photos that lack it; imgq work makes them, the next publish shows them.")] = True,
    dry_run: Annotated[bool, dry_run_option("print the photos whose page or images would be written, and name on stderr every file that would be written or removed.")] = False,
    db: DbOpt = None,
    config: ConfigOpt = None,
    json: JsonOpt = False,
    wait: WaitOpt = False,
) -> None:
    """Write a static web gallery of the processed photos to OUT, incrementally.

    An index of the latest photos and of every photographer and day by a cover photo, a
    page per day and per photographer (a grid of thumbnails, paginated), and a page per
    photo: as large as the screen allows (from the sizes the gallery recipe makes, which
    publish enqueues for photos lacking them), previous/next in its day and its
    photographer's photos, the faces found, other recipes' outputs, metadata and links to
    its archived originals (relative when the archive lies beside OUT, else under
    --originals-url; never file:// unless given). A status page (counts, throughput per
    hour, hosts, failures, what collect keeps) and a failures page are rewritten too.
    Images are hard-linked or copied into OUT, so any web server can serve it as it is; no
    JavaScript is used. Only pages and images that changed are rewritten, each
    atomically. Prints the id of each photo whose page or images were written; --json
    prints an object per such photo (and one per temporary file of a killed publish that
    was swept). Nothing is written outside OUT: a symlink where the gallery wants a folder
    or a file is named and left alone, and the exit status is 1.
    """
    urls: dict[str, str] = {}
    for item in originals_url or []:
        if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", item):  # a URL alone: for every destination
            urls["*"] = item
            continue
        dest, sep, url = item.partition("=")
        if not sep or not dest or not url:
            raise UsageError(f"--originals-url expects DEST=URL or a URL, got {item!r}")
        urls[dest] = url
    inv = common.Invocation("publish", db, config, dry_run=dry_run)
    options = publish_step.PublishOptions(title=title, per_page=per_page, link=not copy, force=force, thumb=thumb, web=web, originals_urls=urls,
        gallery=inv.settings.recipes.get(publish_step.GALLERY_RECIPE, {}), enqueue=enqueue, max_attempts=inv.settings.max_attempts,
    )
    with inv.recorded({"out": str(out), "title": title, "per_page": per_page}, wait=wait) as run:
        with common.Meter("publish") as meter:
            report = publish_step.publish(inv.database, out, store_dir=inv.settings.store_dir, options=options, dry_run=dry_run, on_progress=meter)
        if dry_run:
            for rel in report.written:
                common.warn(f"publish: would write {out / rel}")
            for rel in report.removed:
                common.warn(f"publish: would remove {out / rel}")
        for rel, pid in report.swept:
            common.note(f"publish: {'would sweep' if dry_run else 'swept'} {out / rel}: a temporary file its writer (pid {pid}) left when it was killed")
            if json:
                common.out_json({"swept": rel, "pid": pid})
        pages = {pid: f"photo/{publish_step.slug(pid)}.html" for pid in report.changed}
        for pid in report.changed:
            common.out_json({"id": pid, "page": os.path.abspath(out / pages[pid])}) if json else common.out(pid)
        if report.enqueued:
            common.note(f"publish: the gallery recipe enqueued for {len(report.enqueued)} photo(s); after imgq work, publish again to show their large sizes")
        for pid, why in report.skipped:
            common.warn(f"{pid}: {why}")
        for why in report.refused:
            common.warn(f"publish: {why}")
        run["counts"] = {
            "photos": len(report.photos),
            "changed": len(report.changed),
            "written": len(report.written),
            "unchanged": report.unchanged,
            "removed": len(report.removed),
            "linked": report.linked,
            "copied": report.copied,
            "skipped": len(report.skipped),
            "refused": len(report.refused),
            "swept": len(report.swept),
            "enqueued": len(report.enqueued),
        }
        c = run["counts"]
        would = "would be " if dry_run else ""
        common.summary(f"publish: {c['photos']} photos; {c['written']} files {would}written, {c['unchanged']} unchanged, {c['removed']} {would}removed -> {out / 'index.html'}")
        if not dry_run:  # a dry run names them all anyway
            for path in report.written:
                common.detail(f"wrote {out / path}")
        if report.skipped or report.refused:
            run["exit_code"] = int(Exit.SOME_FAILED)
