"""imgq log ID"""

from __future__ import annotations

import datetime as dt
import os
from typing import Annotated

import typer

from imgq import faces, status
from imgq.ledger import journal
from imgq.cli import common
from imgq.cli.options import ConfigOpt, DbOpt, JsonOpt, completes
from imgq.errors import NotFound, UsageError

EPILOG = """\b
Examples:
  imgq log alice_1700000000_IMG_0001.jpg
  imgq log ~/Dropbox/dig-photos/alice/IMG_0001.jpg   # its path (gone from the inbox or not)
  imgq log alice/IMG_0001.jpg                         # relative to the inbox
  imgq log DSC_0042.jpg                               # its file name, if only one photo has it
  imgq log 1234                                       # the photo of job 1234
  imgq log --json bob_1699999999_DSC_0042.jpg | jq .to_state
"""


def log(
    ref: Annotated[str, typer.Argument(autocompletion=completes("ids"), help="The photo: its id (as printed by scan), its path (absolute, or relative to here or to the inbox), its file name, or a job number.", metavar="ID|PATH|NAME|JOB", show_default=False)],
    db: DbOpt = None,
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """Show the whole history of one file and its jobs, from the journal.

    The photo is named by its id, its path (absolute, or relative to the current folder
    or to the inbox; a photo collected from the inbox keeps its path), its file name, or
    the number of one of its jobs, tried in that order. A name several photos share
    lists them with their ids (exit 2); a name nothing matches suggests close ids.

    Includes the faces each faces step found (count and boxes) and tags such as
    no_faces, at the time their job completed.
    """
    database = common.Invocation("log", db, config).database
    found = status.find_file(database, ref, cwd=os.getcwd())
    if not found.matches:
        hint = f"; did you mean {', '.join(found.close)}?" if found.close else ""
        raise NotFound(f"no file with the id, path, file name or job number {ref!r}{hint}")
    if len(found.matches) > 1:
        width = max(len(m["id"]) for m in found.matches)
        listed = "".join(f"\n  {m['id']:<{width}}  {m['state']:<10} {m['path']}" for m in found.matches)
        by = {"path": "by path", "name": "by file name"}.get(found.how or "", "")
        raise UsageError(f"{ref!r} names {len(found.matches)} files {by}; give one of these ids:{listed}")
    file_id = found.matches[0]["id"]
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
