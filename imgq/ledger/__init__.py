"""The ledger: the one SQLite file that is both queue and journal.

Lives here: the database opener and its migrations (``database``), every state transition
of files and jobs with its event (``journal``), the queue's claims, leases and fenced
completion (``queue``), the run records (``runs``), archive targets with their checked
transitions and events (``archive_targets``) and archive's other writes: copies, reserved
names, destinations seen (``copies``). This is the only code that writes
state. It may import ``imgq.errors``, ``imgq.store`` and ``imgq.config``, never a step,
the fleet, imaging or the CLI.
"""
