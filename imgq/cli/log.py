"""imgq log ID"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer

from imgq import faces
from imgq.ledger import journal
from imgq.cli import common
from imgq.cli.options import ConfigOpt, DbOpt, JsonOpt
from imgq.errors import NotFound

EPILOG = """\b
Examples:
  imgq log alice_1700000000_IMG_0001.jpg
  imgq log --json bob_1699999999_DSC_0042.jpg | jq .to_state
"""


def log(
    file_id: Annotated[str, typer.Argument(help="A file id (as printed by scan).", metavar="ID", show_default=False)],
    db: DbOpt = None,
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """Show the whole history of one file and its jobs, from the journal.

    Includes the faces each faces step found (count and boxes) and tags such as
    no_faces, at the time their job completed.
    """
    database = common.Invocation("log", db, config).database
    row = database.one("SELECT * FROM files WHERE id = ?", (file_id,))
    if row is None:
        raise NotFound(f"no file with id {file_id!r}")
    # the journal, with what faces steps found (recorded as their job completed) after
    # the event of that completion: entries with entity "faces" and "tag" in --json
    entries = [(e["at"], 0, e) for e in journal.history(database, file_id)]
    entries += [(s["at"], 1, dict(s, entity="faces", file_id=file_id)) for s in faces.scans_of(database, file_id)]
    entries += [(t["at"], 2, dict(t, entity="tag", file_id=file_id)) for t in faces.tags_of(database, file_id)]
    for _, _, e in sorted(entries, key=lambda x: (x[0], x[1])):
        if json:
            common.out_json(e)
            continue
        when = dt.datetime.fromtimestamp(e["at"], dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        if e["entity"] == "faces":
            common.out(f"{when}Z  {'job ' + str(e['job_id']):<10} faces: {faces.describe(e)}")
        elif e["entity"] == "tag":
            common.out(f"{when}Z  {'job ' + str(e['job_id']):<10} tagged {e['tag']} by recipe {e['source']}: {e['detail']}")
        else:
            what = f"job {e['job_id']}" if e["entity"] == "job" else e["entity"]  # file, target (archive), copy
            who = "/".join(x for x in (e["host"], e["actor"]) if x)
            detail = f"  {e['detail']}" if e["detail"] else ""
            common.out(f"{when}Z  {what:<10} {e['from_state'] or 'new'} -> {e['to_state']}  {who}{detail}")
