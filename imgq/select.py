"""``--where``: files chosen by what the journal knows of them, for follow-up work.

The systems imgq learns from ran a coarse pass on everything and detailed passes on what
the first one marked (faces found, a tag). ``imgq enqueue --where`` picks files that way:
each condition is ``FIELD OP VALUE``, all of them must hold.

    state=archived,processed     the file's state, one of a list
    owner=alice                  the photographer (compared in Unicode NFC)
    taken>=2024-05-01            capture time (ISO 8601 text, compared as text: a date
    taken<2024-05-17T12:00       or a date and time, as precise as given)
    tag=no_faces  tag!=no_faces  a tag a recipe set (or none of that tag)
    faces>0  faces=0             faces found by the file's latest faces scan
    recipe=people  recipe!=enhance   a done job of that recipe (or none)

Operators: ``=`` and ``!=`` (a comma list means any of them), and for ``taken`` and
``faces`` also ``<``, ``<=``, ``>``, ``>=``. Values are bound as SQL parameters, never
spliced into the query.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata

from imgq.errors import UsageError
from imgq.ledger.database import DB
from imgq.ledger.journal import FILE_STATES

FIELDS = ("state", "owner", "taken", "tag", "faces", "recipe")
ORDERED = {"taken", "faces"}
_COND = re.compile(r"\s*([a-z]+)\s*(!=|<=|>=|=|<|>)\s*(.*?)\s*$", re.S)


@dataclasses.dataclass(frozen=True)
class Condition:
    field: str
    op: str
    values: tuple[str, ...]


def parse(text: str) -> Condition:
    """One condition; UsageError saying what is wrong and what is allowed."""
    m = _COND.fullmatch(text)
    if not m:
        raise UsageError(f"--where {text!r}: expected FIELD OP VALUE, e.g. state=archived or taken>=2024-05-01 (fields: {', '.join(FIELDS)})")
    field, op, raw = m.groups()
    if field not in FIELDS:
        raise UsageError(f"--where {text!r}: unknown field {field!r} (fields: {', '.join(FIELDS)})")
    if op not in ("=", "!=") and field not in ORDERED:
        raise UsageError(f"--where {text!r}: {field} takes = or != only")
    values = tuple(v.strip() for v in raw.split(",")) if op in ("=", "!=") else (raw,)
    if not raw or not all(values):
        raise UsageError(f"--where {text!r}: no value")
    if field == "state":
        bad = [v for v in values if v not in FILE_STATES]
        if bad:
            raise UsageError(f"--where {text!r}: unknown state {', '.join(bad)} (states: {', '.join(FILE_STATES)})")
    if field == "faces":
        if not all(v.isdigit() for v in values):
            raise UsageError(f"--where {text!r}: faces is a number")
    if field == "taken" and not re.fullmatch(r"\d{4}(-\d\d(-\d\d([T ]\d\d(:\d\d(:\d\d)?)?)?)?)?", values[0]):
        raise UsageError(f"--where {text!r}: taken is compared with an ISO date or time, e.g. 2024-05-17 or 2024-05-17T08:00")
    if field == "owner":
        values = tuple(unicodedata.normalize("NFC", v) for v in values)
    return Condition(field, op, values)


def _clause(c: Condition) -> tuple[str, list]:
    marks = ", ".join("?" for _ in c.values)
    neg = c.op == "!="
    if c.field in ("state", "owner"):
        return f"f.{c.field} {'NOT IN' if neg else 'IN'} ({marks})", list(c.values)
    if c.field == "taken":
        value = c.values[0].replace(" ", "T")
        if c.op in ("=", "!="):
            return f"{'NOT ' if neg else ''}(substr(f.taken_at, 1, ?) = ?)", [len(value), value]
        # "taken < 2024-05-17" holds for every time of the 16th; "taken <= 2024-05-17" for the 17th too
        if c.op in ("<=", ">"):
            return f"substr(f.taken_at, 1, ?) {c.op} ?", [len(value), value]
        return f"f.taken_at {c.op} ?", [value]
    if c.field == "tag":
        return f"{'NOT ' if neg else ''}EXISTS (SELECT 1 FROM tags t WHERE t.file_id = f.id AND t.tag IN ({marks}))", list(c.values)
    if c.field == "recipe":
        return f"{'NOT ' if neg else ''}EXISTS (SELECT 1 FROM jobs j WHERE j.file_id = f.id AND j.state = 'done' AND j.recipe IN ({marks}))", list(c.values)
    # faces: the count of the file's latest scan (its newest job's, largest frame)
    latest = (
        "(SELECT s.faces FROM face_scans s WHERE s.file_id = f.id"
        " ORDER BY s.job_id DESC, coalesce(s.width * s.height, 0) DESC, s.id LIMIT 1)"
    )
    if c.op in ("=", "!="):
        return f"{latest} {'NOT IN' if neg else 'IN'} ({marks})", [int(v) for v in c.values]
    return f"{latest} {c.op} ?", [int(c.values[0])]


def files(db: DB, conditions: list[Condition], among: list[str] | None = None) -> list[str]:
    """The ids of the files meeting every condition (among ``among`` when given), oldest first."""
    where, params = [], []
    for c in conditions:
        sql, p = _clause(c)
        where.append(sql)
        params += p
    if among is not None:
        where.append("f.id IN (SELECT value FROM json_each(?))")
        import json

        params.append(json.dumps(among))
    sql = "SELECT f.id FROM files f" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY f.created_at, f.id"
    return [r[0] for r in db.all(sql, params)]
