"""Faces found by a completed job: the ``face_scans``, ``faces`` and ``tags`` rows.

A worker's result for a job holds, for each artifact whose chain ran a ``faces`` step,
``{"faces": [[x, y, w, h], ...], "frame": [width, height]}`` (the boxes are in the
pixels of that frame, the artifact as rendered). ``record`` writes them in the
transaction that completes the job (``queue.settle``), so a done job and its faces are
never seen apart, and applies the recipe's ``on_no_faces`` option as a ``no_faces`` tag
on the file (tags are not states: the file's lifecycle is unchanged). Reading them back
is ``imgq.faces``.
"""

from __future__ import annotations

from collections.abc import Iterable

from imgq.ledger.database import DB

NO_FACES = "no_faces"


def scans_in(result: dict | None) -> dict[str, dict]:
    """Artifact name -> its facts, for each artifact of a job result that ran a faces step."""
    return {
        name: facts
        for name, facts in (result or {}).items()
        if isinstance(facts, dict) and isinstance(facts.get("faces"), list)
    }


def found_none(result: dict | None) -> bool:
    """True when the result has faces scans and none of them found a face."""
    scans = scans_in(result)
    return bool(scans) and not any(s["faces"] for s in scans.values())


def record(
    db: DB,
    *,
    job_id: int,
    file_id: str,
    recipe: str,
    spec: dict[str, str],
    result: dict | None,
    artifacts: Iterable = (),
    now: float | None = None,
) -> int:
    """Record the faces a completed job found, and tag or untag the file per its recipe.

    Runs inside the caller's transaction (the one completing the job). ``artifacts``
    (objects with name, width, height) give the frame when the result does not.
    Returns the number of faces recorded.
    """
    if not db.conn.in_transaction:
        raise RuntimeError("faces.record must run inside the transaction that completes the job")
    scans = scans_in(result)
    if not scans:
        return 0
    now = db.when(now)
    sizes = {a.name: (a.width, a.height) for a in artifacts}
    total = 0
    for name, facts in sorted(scans.items()):
        width, height = facts.get("frame") or sizes.get(name) or (None, None)
        boxes = [tuple(int(v) for v in box) for box in facts["faces"]]
        cur = db.execute(
            "INSERT INTO face_scans (file_id, job_id, artifact, faces, width, height, at) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (job_id, artifact) DO NOTHING",
            (file_id, job_id, name, len(boxes), width, height, now),
        )
        if cur.rowcount != 1:
            continue  # already recorded: a job completes once, but stay idempotent
        db.conn.executemany(
            "INSERT INTO faces (scan_id, file_id, job_id, x, y, w, h) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(cur.lastrowid, file_id, job_id, *box) for box in boxes],
        )
        total += len(boxes)
    from imgq import recipes  # the operations behind it (Pillow, OpenCV): not for `imgq status`

    _, options = recipes.split_spec(spec)
    policy = options["on_no_faces"]
    if policy != "keep" and found_none(result):
        detail = "skipped: the recipe kept no artifacts" if policy == "skip" else "tagged: artifacts kept"
        db.execute(
            "INSERT INTO tags (file_id, tag, source, job_id, detail, at) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (file_id, tag, source) DO UPDATE SET job_id = excluded.job_id, detail = excluded.detail, at = excluded.at",
            (file_id, NO_FACES, recipe, job_id, detail, now),
        )
    else:
        # this recipe, as it is now, does not tag the file (it found someone, or keeps all)
        db.execute("DELETE FROM tags WHERE file_id = ? AND tag = ? AND source = ?", (file_id, NO_FACES, recipe))
    return total
