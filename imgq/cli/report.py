"""imgq report [--run ID | --last COMMAND | --since TIME] [--json]"""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer

from imgq import report as report_lib
from imgq.cli import common
from imgq.cli.options import ConfigOpt, DbOpt
from imgq.errors import UsageError

# the line in `imgq --help` (the docstring's first sentence is a whole list)
SUMMARY = "What a run did: inputs, outputs, hosts, throughput and failures."

EPILOG = """\b
Examples:
  imgq report                       # the latest `imgq work` or `imgq run`
  imgq report --last work           # the latest `imgq work` (or scan, archive, publish, …)
  imgq report --run 42
  imgq report --since 1d --json | jq .throughput
  imgq report --since 2024-05-17T08:00
  imgq work --drain --report last-run.txt
"""


def report(
    run: Annotated[Optional[int], typer.Option("--run", help="Report on this run (an id from the runs table).", metavar="ID", show_default=False)] = None,
    last: Annotated[Optional[str], typer.Option("--last", help="Report on the latest run of this command (work, run, scan, archive, collect, publish, …).", metavar="COMMAND", show_default=False)] = None,
    since: Annotated[Optional[str], typer.Option("--since", help="Report on everything from TIME until now: ISO time (local unless it has Z or an offset) or a duration such as 30m, 1h, 2d.", metavar="TIME", show_default=False)] = None,
    failures: Annotated[int, typer.Option("--failures", help="How many failures the text lists (--json lists all).", min=0, metavar="N")] = 50,
    db: DbOpt = None,
    config: ConfigOpt = None,
    json: Annotated[bool, typer.Option("--json", help="Write the report as one JSON object.")] = False,
) -> None:
    """What a run did: inputs and outputs, photos processed, hosts used, wall time,
    throughput, bytes in and out, counts per host and per recipe, and every failure
    with its reason.

    By default the latest run that processed photos: `imgq work`, or `imgq run` (from
    cron), whichever started last; a run's report covers all its steps. --last picks the
    latest run of one command, --run any run by id, --since every run from a time until
    now.
    """
    if sum(x is not None for x in (run, last, since)) > 1:
        raise UsageError("--run, --last and --since cannot be used together")
    inv = common.Invocation("report", db, config)
    now = time.time()
    start = report_lib.parse_since(since, now=now) if since is not None else None
    rep = report_lib.build(inv.database, now=now, run_id=run, since=start, last=last, store_dir=inv.settings.store_dir.resolve())
    if json:
        common.out_json(rep)
    else:
        common.out(report_lib.format_text(rep, max_failures=failures).rstrip("\n"))
