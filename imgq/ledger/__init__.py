"""The ledger: the one SQLite file that is both queue and journal.

Lives here: the database opener and its migrations (``database``), every state transition
of files and jobs with its event (``journal``), the queue's claims, leases and fenced
completion (``queue``) and the run records (``runs``). This is the only code that writes
state. It may import ``imgq.errors``, ``imgq.store`` and ``imgq.config``, never a step,
the fleet, imaging or the CLI.
"""
