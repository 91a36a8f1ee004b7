"""imgq retry [IDS | -]"""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer

from imgq.ledger import queue
from imgq.cli import common
from imgq.cli.options import ConfigOpt, DbOpt, IdsArg, JsonOpt, completes
from imgq.ledger.journal import Actor

EPILOG = """\b
Examples:
  imgq retry                        # every failed job
  imgq retry --error 'No space left'
  imgq status --json | jq -r '.failures[].file_id' | imgq retry -
"""


def retry(
    ids: Annotated[Optional[list[str]], typer.Argument(autocompletion=completes("failed-ids"), help="File ids (or job numbers), or - for stdin. None: every failed job.", metavar=IdsArg, show_default=False)] = None,
    error: Annotated[Optional[str], typer.Option("--error", help="Only jobs whose error contains TEXT.", metavar="TEXT", show_default=False)] = None,
    db: DbOpt = None,
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """Re-arm failed jobs so workers try them again (attempts start over).

    Prints the number of each job re-armed. An id the database does not know is a
    usage error (exit 2): nothing is re-armed.
    """
    inv = common.Invocation("retry", db, config)
    wanted = common.read_ids(ids)
    database = inv.database
    common.require_known(database, wanted, job_numbers=True)
    job_ids = file_ids = None
    if wanted is not None:
        job_ids = [int(x) for x in wanted if x.isdigit()]
        file_ids = [x for x in wanted if not x.isdigit()]
    rearmed: list[int] = []
    with inv.recorded({"ids": wanted, "error": error}, locks=()) as run:
        if wanted is None:
            rearmed = queue.retry(database, pattern=error, now=time.time(), actor=Actor(name="retry"))
        else:
            if job_ids:
                rearmed += queue.retry(database, job_ids=job_ids, pattern=error, now=time.time(), actor=Actor(name="retry"))
            if file_ids:
                rearmed += queue.retry(database, file_ids=file_ids, pattern=error, now=time.time(), actor=Actor(name="retry"))
        for j in rearmed:
            common.out_json({"job": j}) if json else common.out(str(j))
        run["counts"] = {"rearmed": len(rearmed)}
