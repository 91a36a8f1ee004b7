"""Owners and the spellings of their folders.

Owners are stored in Unicode NFC (``imgq.scan.owner_of``): a folder ``Zoë Müller``
synced from a Mac (NFD) and the same name from Linux (NFC) are one photographer. Each
spelling found on disk is kept in ``owner_spellings`` so that ``imgq status`` can say
which ones were merged; the files keep their paths exactly as found.
"""

from __future__ import annotations

import unicodedata

from imgq.ledger.database import DB


def note_spelling(db: DB, owner: str, spelling: str, *, now: float) -> None:
    """Remember that ``owner``'s folder was found spelled ``spelling`` (inside the
    caller's transaction; a spelling already known is left as it was)."""
    db.execute("INSERT OR IGNORE INTO owner_spellings (owner, spelling, first_seen_at) VALUES (?, ?, ?)", (owner, spelling, now))


def form_of(text: str) -> str:
    """Which Unicode normalisation form ``text`` is in: NFC, NFD, or 'mixed'."""
    for form in ("NFC", "NFD"):
        if unicodedata.is_normalized(form, text):
            return form
    return "mixed"


def merged(db: DB) -> list[dict]:
    """Owners whose folder was found under more than one spelling: ``owner``,
    ``spellings`` (sorted) and ``forms`` (the normalisation form of each, same order)."""
    out = []
    for r in db.all("SELECT owner FROM owner_spellings GROUP BY owner HAVING count(*) > 1 ORDER BY owner"):
        spellings = sorted(x[0] for x in db.all("SELECT spelling FROM owner_spellings WHERE owner = ?", (r[0],)))
        out.append({"owner": r[0], "spellings": spellings, "forms": [form_of(s) for s in spellings]})
    return out
