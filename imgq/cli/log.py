"""imgq log ID"""

from __future__ import annotations

import datetime as dt
import time
from typing import Annotated

import typer

from imgq import journal
from imgq.cli import common
from imgq.errors import NotFound

EPILOG = """\b
Examples:
  imgq log alice_1700000000_IMG_0001.jpg
  imgq log --json bob_1699999999_DSC_0042.jpg | jq .to_state
"""


def log(
    file_id: Annotated[str, typer.Argument(help="A file id (as printed by scan).", metavar="ID", show_default=False)],
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
    json: common.JsonOpt = False,
) -> None:
    """Show the whole history of one file and its jobs, from the journal."""
    settings = common.settings_for(db, config)
    database = common.open_db(settings)
    row = database.one("SELECT * FROM files WHERE id = ?", (file_id,))
    if row is None:
        raise NotFound(f"no file with id {file_id!r}")
    for e in journal.history(database, file_id):
        if json:
            common.out_json(e)
        else:
            when = dt.datetime.fromtimestamp(e["at"], dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
            what = "file" if e["entity"] == "file" else f"job {e['job_id']}"
            who = "/".join(x for x in (e["host"], e["actor"]) if x)
            detail = f"  {e['detail']}" if e["detail"] else ""
            common.out(f"{when}Z  {what:<10} {e['from_state'] or 'new'} -> {e['to_state']}  {who}{detail}")
