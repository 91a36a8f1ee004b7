"""The ledger: the one SQLite file that is both queue and journal, and the only code that
writes to it.

Lives here: the database opener, its write lock and clock (``database``), the schema's
versioned steps (``migrations``, the steps themselves in ``schema_tables`` and
``schema_growth``), every state transition of files and jobs with its event
(``journal``), the queue's claims and leases (``queue``), the fenced completion of what
workers report with the artifacts it records (``settle``, re-exported by ``queue``), the
faces a completed job found (``faces``), what collect checked (``checks``), the run records (``runs``), archive targets and hosts with their checked
transitions and events (``archive_targets``, ``hosts``) and archive's other writes: copies, reserved names,
destinations seen (``copies``). Code outside this package reads the database
but never executes INSERT, UPDATE or DELETE on it (tests/test_house.py checks). It may
import ``imgq.errors``, ``imgq.store``, ``imgq.config``, ``imgq.recipes`` and the pure
planning of ``imgq.split`` (stripe and join stage names), never a step, the fleet,
imaging or the CLI.

The clock: every ledger function that writes or compares a time takes it as the keyword
``now``. Left as None (the default everywhere) it is the database's clock, ``DB.now()``,
read inside the function's transaction (``DB.when(now)``): one clock for every process,
read after the write lock is held, so a lease is never measured from a time read before
a wait. A caller passes a number only to give several changes one time or, in tests, to
replay a moment. No ledger function takes a clock callable or reads the process's clock.
"""
