"""Writing a gallery: every file ``imgq publish`` wants in OUT is written only when it
differs from the manifest (``.imgq-gallery.json``) or from what is on disk, images are
hard-linked or copied from a source whose sha256 matches, files the manifest lists but
the gallery no longer wants are removed, and the manifest is rewritten. Every write goes
through ``imgq.gallery.files``' folder handles, which never follow a symlink.
"""

from __future__ import annotations

import json
from pathlib import Path

from imgq.gallery import files as gf
from imgq.gallery.photos import PublishOptions, PublishReport, _json, _Output
from imgq.original import Unsafe

MANIFEST = ".imgq-gallery.json"
MANIFEST_VERSION = 1


def _apply(out: Path, outputs: dict[str, _Output], options: PublishOptions, report: PublishReport, *, dry_run: bool, on_progress) -> None:
    with gf.Folder(out, dry_run=dry_run) as g:
        report.swept = g.sweep()
        previous = _manifest_files(g.read(MANIFEST))
        old = {} if options.force else previous
        changed: set[str] = set()
        failed: set[str] = set()
        total = len(outputs)
        for n, (rel, o) in enumerate(sorted(outputs.items()), 1):
            on_progress(n - 1, total)
            known = old.get(rel)
            if known and known.get("sha256") == o.sha256 and g.size(rel) == o.bytes:
                report.unchanged += 1
                continue
            try:
                if o.data is not None:
                    g.write(rel, o.data)
                elif not _place_image(g, rel, o, options, report):
                    failed.add(rel)
                    continue
            except gf.UnsafeOutput as e:
                g.refuse(str(e))
                failed.add(rel)
                continue
            report.written.append(rel)
            if o.file_id:
                changed.add(o.file_id)
        on_progress(total, total)
        for rel in sorted(set(previous) - set(outputs)):
            if g.remove(rel):
                report.removed.append(rel)
        # a file that could not be written keeps its old entry, if any, so the next run retries it
        files = {rel: {"sha256": o.sha256, "bytes": o.bytes} for rel, o in outputs.items() if rel not in failed}
        files.update({rel: previous[rel] for rel in failed if rel in previous})
        manifest = {"version": MANIFEST_VERSION, "files": dict(sorted(files.items()))}
        data = (json.dumps(manifest, separators=(",", ":"), sort_keys=True) + "\n").encode()
        if g.read(MANIFEST) != data:
            try:
                g.write(MANIFEST, data, sync=True)
            except gf.UnsafeOutput as e:
                g.refuse(str(e))
        report.refused = list(g.refused)
    report.changed = sorted(changed)


def _manifest_files(text: bytes | None) -> dict[str, dict]:
    data = _json(text)
    if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION or not isinstance(data.get("files"), dict):
        return {}  # none or unreadable: every file is rewritten, nothing is removed
    return data["files"]


def _place_image(g: gf.Folder, rel: str, o: _Output, options: PublishOptions, report: PublishReport) -> bool:
    """Publish an artifact's bytes at ``rel`` from the first source that is a regular
    file holding exactly the bytes recorded with the artifact (a damaged store file falls
    back to an archived copy); False, with the reason in the report, if none does."""
    why = []
    for root, path, linkable in o.sources:
        try:
            src = gf.Source(root, path)
        except FileNotFoundError:
            why.append(f"{root}/{path} is gone")
            continue
        except Unsafe as e:
            why.append(str(e))
            continue
        except OSError as e:
            why.append(f"cannot read {root}/{path}: {e.strerror or e}")
            continue
        with src:
            how = g.place(rel, src, o.sha256, link=options.link and linkable and bool(src.stat.st_mode & 0o004))
        if how == "linked":
            report.linked += 1
            return True
        if how == "copied":
            report.copied += 1
            return True
        why.append(f"{root}/{path} holds other bytes")
    report.skipped.append((o.file_id, f"{rel}: no regular file holding the artifact matches its recorded sha256 {o.sha256[:12]}… (damaged store?): {'; '.join(why)}"))
    return False
