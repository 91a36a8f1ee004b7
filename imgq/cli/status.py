"""imgq status [--json] [--watch]"""

from __future__ import annotations

import datetime as dt
import time
from typing import Annotated, Optional

import typer
from rich.table import Table

from imgq import status as status_lib
from imgq import routing
from imgq.report import running_time
from imgq.cli import common
from imgq.cli.options import ConfigOpt, DbOpt, JsonOpt

EPILOG = """\b
Examples:
  imgq status
  imgq status --json | jq .files
  imgq status --watch 2
"""


def status(
    watch: Annotated[Optional[float], typer.Option("--watch", help="Redraw every SECONDS until interrupted.", min=0.2, metavar="SECONDS", show_default=False)] = None,
    failures: Annotated[int, typer.Option("--failures", help="How many recent failures to list.", min=0, metavar="N")] = 10,
    db: DbOpt = None,
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """Files and jobs per state, throughput over recent minutes, ETA, recent failures.

    The report is for people (plain tables, colour only on a terminal); --json writes
    the same facts as one JSON object for scripts.
    """
    inv = common.Invocation("status", db, config)
    database = inv.database
    routes = routing.from_settings(None, inv.settings)
    takes = routes.takes() if routes else None
    console = common.stdout()
    while True:
        snap = status_lib.snapshot(database, now=time.time(), failures=failures, takes=takes)
        if json:
            common.out_json(snap)
        else:
            if watch and console.is_terminal:
                console.clear()
            render(console, snap)
        if not watch:
            break
        try:
            time.sleep(watch)
        except KeyboardInterrupt:
            break


def render(console, snap: dict) -> None:
    """Draw a snapshot as tables for a person."""
    t = Table(title="files", title_justify="left", show_edge=False)
    for s in snap["files"]:
        t.add_column(s, justify="right")
    t.add_row(*(str(v) for v in snap["files"].values()))
    console.print(t)
    media = snap.get("media") or {}
    if media.get("videos"):
        console.print(f"media: {media['photos']} photos, {media['videos']} videos ({running_time(media['video_seconds'])} of video)", markup=False)
    t = Table(title="jobs", title_justify="left", show_edge=False)
    for s in snap["jobs"]:
        t.add_column(s, justify="right")
    t.add_column("in backoff", justify="right")
    t.add_row(*(str(v) for v in snap["jobs"].values()), str(snap["jobs_waiting_backoff"]))
    console.print(t)
    rate = snap["jobs_per_minute"]
    eta = snap["eta_seconds"]
    eta_text = "done" if eta == 0 else ("unknown" if eta is None else str(dt.timedelta(seconds=int(eta))))
    console.print(f"throughput (jobs/min): 1m {rate['1m']}  5m {rate['5m']}  15m {rate['15m']}   ETA {eta_text}", markup=False)
    fleet = snap.get("fleet") or []
    for h in snap.get("hosts", []):
        if not any(f["host"] == h["host"] for f in fleet):
            console.print(f"  host {h['host']}: {h['done']} done in 5m ({h['per_minute']}/min)", markup=False)
    if fleet:
        _render_fleet(console, fleet)
    fc = snap.get("faces") or {}
    if fc.get("photos_scanned"):
        console.print(
            f"faces: {fc['faces_found']} found in {fc['photos_with_faces']} of {fc['photos_scanned']} photos scanned"
            f"; {fc['tagged_no_faces']} tagged no_faces ({fc['skipped_no_faces']} skipped)",
            markup=False,
        )
    for m in snap.get("owners_merged") or []:
        # the spellings look alike on screen: say how each is encoded
        ways = ", ".join(f"{ascii(sp)[1:-1]} ({form})" for sp, form in zip(m["spellings"], m["forms"]))
        console.print(f"owner {m['owner']}: folders spelled {len(m['spellings'])} ways merged into one: {ways}", markup=False)
    _render_archive(console, snap.get("archive") or {}, snap.get("collect") or {})
    if snap["failures"]:
        t = Table(title="recent failures", title_justify="left", show_edge=False)
        t.add_column("file")
        t.add_column("kind")
        t.add_column("reason")
        for f in snap["failures"]:
            t.add_row(f["file_id"], f["kind"] or "", (f["error"] or "").splitlines()[0] if f["error"] else "")
        console.print(t)


def _render_fleet(console, fleet: list[dict]) -> None:
    """The hosts of `imgq work --hosts` and agents that connected to `--listen`: state
    (benched, and why; where a connect-back agent connected from), slots, jobs, recent rate."""
    t = Table(title="hosts", title_justify="left", show_edge=False)
    for col in ("host", "state", "slots", "done", "in flight", "per min (5m)", "why"):
        t.add_column(col, justify="left" if col in ("host", "state", "why") else "right")
    for h in fleet:
        t.add_row(h["host"], h["state"], str(h["slots"] or ""), str(h["done"]), str(h["in_flight"]), str(h["per_minute"]),
                  (h["reason"] or "").splitlines()[0] if h["reason"] else "")
    console.print(t)


def _render_archive(console, archive: dict, collect: dict) -> None:
    """Archive destinations (copies, failing, last error) and why originals stay in the inbox."""
    dests = archive.get("destinations") or []
    if dests:
        t = Table(title="archive", title_justify="left", show_edge=False)
        routed = any("takes" in d for d in dests)
        for col in ("destination",) + (("takes",) if routed else ()) + ("copies", "MB", "failing", "in backoff", "last error"):
            t.add_column(col, justify="left" if col in ("destination", "takes", "last error") else "right")
        for d in dests:
            t.add_row(
                d["destination"],
                *((common.printable(d.get("takes") or ("(its failures, per file)" if d["destination"] == routing.ROUTE_COMMAND else "nothing routed here")),) if routed else ()),
                str(d["copies"]),
                f"{d['bytes'] / 1e6:.1f}",
                str(d["failing"]),
                str(d["in_backoff"]),
                (d.get("last_error") or "").splitlines()[0] if d.get("last_error") else "",
            )
        console.print(t)
    if collect.get("keep") or collect.get("wait"):
        console.print(f"collect: {collect.get('wait', 0)} original(s) waiting for copies, {collect.get('keep', 0)} kept because something is wrong", markup=False)
        for r in (collect.get("reasons") or [])[:10]:
            # one line per original: what collect decided, where, why, and when it last looked
            console.print(
                f"  {r['verdict']} {common.printable(r['path'] or r['file_id'])}: {common.printable(r['reason'])} (checked {common.when(r['checked_at'])})",
                markup=False,
            )
