"""Faces found in photos: read by status, log and the gallery.

They are recorded by the ledger (``imgq.ledger.faces.record``) in the transaction that
completes a job, with the recipe's ``on_no_faces`` option applied as a ``no_faces`` tag
on the file (tags are not states: the file's lifecycle is unchanged, it is still
archived like any other). This module only reads them, and says from a job's result
whether a recipe skips the photo.

Which scan speaks for a file: the one of its latest job, and within that job the one
with the largest frame (a changed recipe's newer result replaces the older one).
"""

from __future__ import annotations

from imgq.ledger.database import DB
from imgq.ledger.faces import NO_FACES, found_none, scans_in

# the best scan of each file: latest job first, then the largest frame
_BEST_SCANS = (
    "SELECT * FROM (SELECT s.*, row_number() OVER (PARTITION BY s.file_id"
    " ORDER BY s.job_id DESC, coalesce(s.width * s.height, 0) DESC, s.id) AS rank FROM face_scans s) WHERE rank = 1"
)


def skips(options: dict[str, str], result: dict | None) -> bool:
    """Whether a recipe with these options keeps no artifacts for this result: its
    ``on_no_faces`` is ``skip`` and its faces steps found nobody."""
    return options.get("on_no_faces") == "skip" and found_none(result)


def faces_for(db: DB, file_id: str) -> list[dict]:
    """The faces of one file, from its best scan (see the module docstring), left to right.

    Each is ``{"x", "y", "w", "h"}`` in the pixels of the scan's frame, plus
    ``"frame": [width, height]``, ``"rel": [x, y, w, h]`` as fractions of the frame (to
    draw on any artifact of the photo, whatever its size), ``"artifact"`` and ``"job_id"``.
    An empty list when the file was scanned and nobody found, or never scanned.
    """
    scan = db.one(_BEST_SCANS.replace("FROM face_scans s)", "FROM face_scans s WHERE s.file_id = ?)"), (file_id,))
    if scan is None:
        return []
    out = []
    for r in db.all("SELECT x, y, w, h FROM faces WHERE scan_id = ? ORDER BY x, y, id", (scan["id"],)):
        face = {"x": r["x"], "y": r["y"], "w": r["w"], "h": r["h"], "artifact": scan["artifact"], "job_id": scan["job_id"]}
        face["frame"] = [scan["width"], scan["height"]]
        if scan["width"] and scan["height"]:
            fw, fh = scan["width"], scan["height"]
            face["rel"] = [round(r["x"] / fw, 5), round(r["y"] / fh, 5), round(r["w"] / fw, 5), round(r["h"] / fh, 5)]
        else:
            face["rel"] = None
        out.append(face)
    return out


def face_counts(db: DB) -> dict[str, int]:
    """File id -> faces found by its best scan, for every file that was scanned."""
    return {r["file_id"]: r["faces"] for r in db.all(_BEST_SCANS)}


def scans_of(db: DB, file_id: str) -> list[dict]:
    """Every faces scan of one file, oldest first: ``at``, ``job_id``, ``recipe``,
    ``artifact``, ``faces`` (the count), ``boxes`` ([x, y, w, h] each) and ``frame``."""
    out = []
    for s in db.all(
        "SELECT s.*, j.recipe FROM face_scans s JOIN jobs j ON j.id = s.job_id WHERE s.file_id = ? ORDER BY s.at, s.id", (file_id,)
    ):
        boxes = [list(b) for b in db.all("SELECT x, y, w, h FROM faces WHERE scan_id = ? ORDER BY x, y, id", (s["id"],))]
        out.append({
            "at": s["at"], "job_id": s["job_id"], "recipe": s["recipe"], "artifact": s["artifact"],
            "faces": s["faces"], "boxes": boxes, "frame": [s["width"], s["height"]],
        })
    return out


def tags_of(db: DB, file_id: str) -> list[dict]:
    """The tags on one file: ``tag``, ``source`` (the recipe), ``job_id``, ``detail``, ``at``."""
    return [dict(r) for r in db.all("SELECT tag, source, job_id, detail, at FROM tags WHERE file_id = ? ORDER BY at, id", (file_id,))]


def summary(db: DB) -> dict:
    """Totals for status: photos scanned for faces, photos with faces, faces found (each
    file counted by its best scan), and files tagged ``no_faces`` by how (tag or skip)."""
    row = db.one(f"SELECT count(*) AS scanned, coalesce(sum(faces > 0), 0) AS with_faces, coalesce(sum(faces), 0) AS faces FROM ({_BEST_SCANS})")
    tagged = db.one(
        "SELECT count(DISTINCT file_id) AS n, count(DISTINCT CASE WHEN detail LIKE 'skipped%' THEN file_id END) AS skipped"
        " FROM tags WHERE tag = ?",
        (NO_FACES,),
    )
    return {
        "photos_scanned": row["scanned"],
        "photos_with_faces": row["with_faces"],
        "faces_found": row["faces"],
        "tagged_no_faces": tagged["n"],
        "skipped_no_faces": tagged["skipped"],
    }


def describe(scan: dict) -> str:
    """One line for a person: ``web: 2 faces at 181,58 92x92; 300,70 80x80 (in 512x512)``."""
    n = scan["faces"]
    text = f"{scan['artifact']}: {n} face{'' if n == 1 else 's'}"
    if scan["boxes"]:
        text += " at " + "; ".join(f"{x},{y} {w}x{h}" for x, y, w, h in scan["boxes"])
    if scan.get("frame") and all(scan["frame"]):
        text += f" (in {scan['frame'][0]}x{scan['frame'][1]})"
    return text


__all__ = ["NO_FACES", "describe", "face_counts", "faces_for", "found_none", "scans_in", "scans_of", "skips", "summary", "tags_of"]
