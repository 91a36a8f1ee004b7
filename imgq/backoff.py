"""The one backoff rule: wait twice as long after each failure in a row, up to a cap.

Used by the job queue (a transient failure), the archive (a copy that failed at a
destination) and the fleet (a benched host). The base and the cap are settings
(``backoff_seconds``, ``backoff_max_seconds``) or the caller's constants.
"""

from __future__ import annotations

import random


def delay(failures: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after ``failures`` failures in a row: ``base``, doubled for each
    failure after the first, at most ``cap``; with ``rng``, then spread over 0.5-1.5x so
    that things which failed together do not all retry at the same instant."""
    wait = min(cap, base * 2 ** max(0, failures - 1))
    return wait * rng.uniform(0.5, 1.5) if rng is not None else wait
