"""Names imgq makes from people's text: ``slug`` for ids and archive path components.

Two other name makers differ on purpose and stay where they are:
``publish.slug`` (gallery page and image names: plain ASCII for any web root and URL,
and a hash suffix so that two texts never share a page) and ``archive.safe_name`` (a
name a FAT or SMB destination refused: ASCII plus the photo's sha256, so the copy is
still found by content). A ``slug`` keeps the letters people wrote (ids are read by
people: ``zoë_1700000000_IMG_1.jpg``) and needs no hash: ids are made unique by the scan.
"""

from __future__ import annotations

import re
import unicodedata


def slug(text: str) -> str:
    """A form of ``text`` safe in ids, file names and shell words: letters, digits, . _ -."""
    text = unicodedata.normalize("NFC", text)
    out = "".join(ch if (ch.isalnum() or ch in "._-") else "_" for ch in text)
    out = re.sub(r"_+", "_", out).strip("_")
    out = out.lstrip("-.")  # never looks like an option or a hidden/relative name
    return out or "x"
