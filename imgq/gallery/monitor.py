"""The gallery as a monitor: ``status.html`` (counts per state, throughput per hour as a
static SVG plot, hosts, recent failures, what collect keeps) and ``failures.html`` (every
problem standing now, and the files that are not in the gallery yet).

``read`` takes what the pages show from the database (through the views of migration 9
where one answers); the page functions are pure, like ``pages``. Nothing here reads the
clock: times are the journal's, and the plot covers the 24 hours up to its latest event,
so an unchanged database gives the same bytes and ``publish`` rewrites nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter

from imgq.gallery.markup import _page, _plural, esc
from imgq.ledger.database import DB

FILE_STATES = ("seen", "queued", "processed", "archived", "collected", "duplicate", "failed")
JOB_STATES = ("ready", "leased", "done", "failed")
WAITING_STATES = ("seen", "queued")
MAX_ROWS = 500  # a page that lists more than this says how many it left out


@dataclasses.dataclass
class Monitor:
    files: dict[str, int]
    jobs: dict[str, int]
    hours: list[tuple[float, int, int]]  # (hour start, jobs done, jobs failed), 24, oldest first
    hosts: list[dict]
    rates: list[tuple[str, int, int, int]]  # (host, jobs done, failed, most done in one hour) over the plot's 24 hours
    failures: list[dict]  # the failures view, newest first
    failures_total: int
    waiting: list[dict]  # files not in the gallery yet: id, path, state, since
    waiting_total: int
    keeps: list[tuple[str, str, int]]  # (verdict, reason, files) of collect_checks


def _iso(t: float | None) -> str:
    if t is None:
        return ""
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def read(db: DB, shown: set[str]) -> Monitor:
    """What the status and failures pages show; ``shown`` are the ids in the gallery."""
    files = {r[0]: r[1] for r in db.all("SELECT state, count(*) FROM files GROUP BY state")}
    jobs = {r[0]: r[1] for r in db.all("SELECT state, count(*) FROM jobs GROUP BY state")}
    hours: list[tuple[float, int, int]] = []
    latest = db.one("SELECT max(at) FROM events")[0]
    if latest is not None:
        end = (int(latest) // 3600 + 1) * 3600
        per = {int(r[0]): (r[1], r[2]) for r in db.all(
            "SELECT CAST(minute_at / 3600 AS INTEGER) * 3600, sum(jobs_done), sum(jobs_failed) FROM throughput GROUP BY 1"
        )}
        hours = [(h, *per.get(h, (0, 0))) for h in range(end - 24 * 3600, end, 3600)]
    hosts = [dict(r) for r in db.all("SELECT name, slots, state, reason, done, failed, lost, seen_at FROM hosts ORDER BY name")]
    rates = [(r[0] or "?", r[1], r[2], r[3]) for r in db.all(
        "SELECT host, sum(done), sum(failed), max(done) FROM (SELECT host, CAST(minute_at / 3600 AS INTEGER) AS hour,"
        " sum(jobs_done) AS done, sum(jobs_failed) AS failed FROM throughput GROUP BY host, hour) GROUP BY host ORDER BY sum(done) DESC, host"
    )]
    failures_total = db.one("SELECT count(*) FROM failures")[0]
    failures = [dict(r) for r in db.all(
        "SELECT step, file_id, destination, inbox_path, reason, kind, attempts, max_attempts, retrying, failed_at FROM failures"
        " ORDER BY failed_at DESC, file_id LIMIT ?", (MAX_ROWS,)
    )]
    marks = ",".join("?" * len(WAITING_STATES))
    waiting_rows = db.all(
        f"SELECT id, inbox || '/' || path AS path, state, updated_at FROM files WHERE state IN ({marks}) ORDER BY updated_at DESC, id",
        WAITING_STATES,
    )
    waiting = [dict(r) for r in waiting_rows if r["id"] not in shown]
    keeps = [(r[0], r[1] or "", r[2]) for r in db.all(
        "SELECT k.verdict, k.reason, count(*) FROM collect_checks k JOIN files f ON f.id = k.file_id"
        " WHERE f.state != 'collected' GROUP BY k.verdict, k.reason ORDER BY count(*) DESC, k.verdict, k.reason"
    )]
    return Monitor(files=files, jobs=jobs, hours=hours, hosts=hosts, rates=rates, failures=failures, failures_total=failures_total,
                   waiting=waiting[:MAX_ROWS], waiting_total=len(waiting), keeps=keeps)


# --------------------------------------------------------------------------- pieces


def plot(hours: list[tuple[float, int, int]]) -> str:
    """Jobs done per hour as an inline SVG bar chart (failed jobs on top, marked), with
    its numbers also as a text alternative."""
    if not hours:
        return '<p class="muted">Nothing has been processed yet.</p>\n'
    w, h, left, bottom, top = 720, 200, 44, 28, 12
    peak = max(d + f for _, d, f in hours) or 1
    step = (w - left - 8) / len(hours)
    bars, labels = [], []
    for i, (at, done, failed) in enumerate(hours):
        x = left + i * step + 1
        for n, cls, base in ((done, "bar", 0), (failed, "bar bad", done)):
            if n:
                bh = (h - bottom - top) * n / peak
                y = h - bottom - (h - bottom - top) * base / peak - bh
                bars.append(f'<rect class="{cls}" x="{x:.1f}" y="{y:.1f}" width="{step - 2:.1f}" height="{bh:.1f}"><title>{esc(_iso(at))}: {n} {"done" if cls == "bar" else "failed"}</title></rect>')
        if i % 3 == 0:
            labels.append(f'<text x="{x + (step - 2) / 2:.1f}" y="{h - bottom + 16}" text-anchor="middle">{dt.datetime.fromtimestamp(at, dt.timezone.utc):%H}h</text>')
    axis = (
        f'<line class="axis" x1="{left}" y1="{h - bottom}" x2="{w - 4}" y2="{h - bottom}"/>'
        f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}"/>'
        f'<text x="{left - 6}" y="{top + 8}" text-anchor="end">{peak}</text>'
        f'<text x="{left - 6}" y="{h - bottom}" text-anchor="end">0</text>'
    )
    total_done = sum(d for _, d, _ in hours)
    total_failed = sum(f for _, _, f in hours)
    desc = f"Jobs done per hour, {_iso(hours[0][0])} to {_iso(hours[-1][0] + 3600)}: {total_done} done, {total_failed} failed; at most {peak} in one hour."
    return (
        f'<figure>\n<svg class="plot" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-labelledby="plot-title plot-desc" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="plot-title">Throughput per hour</title><desc id="plot-desc">{esc(desc)}</desc>'
        f'{axis}{"".join(bars)}{"".join(labels)}</svg>\n'
        f"<figcaption class=\"muted\">{esc(desc)} Hours in UTC.</figcaption>\n</figure>\n"
    )


def _table(head: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    th = "".join(f'<th scope="col"{" class=n" if i in numeric else ""}>{esc(c)}</th>' for i, c in enumerate(head))
    body = "".join("<tr>" + "".join(f'<td{" class=n" if i in numeric else ""}>{c}</td>' for i, c in enumerate(r)) + "</tr>\n" for r in rows)
    return f'<div class="scroll"><table>\n<thead><tr>{th}</tr></thead>\n<tbody>\n{body}</tbody>\n</table></div>\n'


def _photo_link(file_id: str, pages: dict[str, str]) -> str:
    page = pages.get(file_id)
    return f'<a href="{esc(page)}"><code>{esc(file_id)}</code></a>' if page else f"<code>{esc(file_id)}</code>"


def _failure_rows(failures: list[dict], pages: dict[str, str]) -> list[list[str]]:
    rows = []
    for f in failures:
        tries = f"{f['attempts']}/{f['max_attempts']}" if f["attempts"] is not None and f["max_attempts"] else (str(f["attempts"]) if f["attempts"] is not None else "")
        where = esc(f["inbox_path"] or "") + (f'<br><span class="muted">to {esc(f["destination"])}</span>' if f["destination"] else "")
        rows.append([
            esc(f["step"]), _photo_link(f["file_id"], pages), where, f'<span class="bad">{esc(f["reason"] or "")}</span>',
            esc(f["kind"] or ""), esc(tries), "retried by itself" if f["retrying"] else "needs a person", esc(_iso(f["failed_at"])),
        ])
    return rows


FAILURE_HEAD = ["Step", "Photo", "File", "Reason", "Kind", "Tries", "Next", "When"]


# --------------------------------------------------------------------------- pages


def status_page(*, site: str, m: Monitor, pages: dict[str, str], shown: int) -> str:
    """Counts per state, throughput per hour, hosts, recent failures, what collect keeps.
    ``pages``: file id -> its photo page, relative to OUT."""
    parts = [f"<h1>Status</h1>\n<p class=\"lede\">{_plural(sum(m.files.values()), 'file')} in the journal, {shown} in the gallery. Written by <code>imgq publish</code>; every publish brings it up to date.</p>\n"]
    parts.append('<section aria-labelledby="states">\n<h2 id="states">Files and jobs</h2>\n<div class="details">\n')
    parts.append(_table(["File state", "Files"], [[esc(s), str(m.files.get(s, 0))] for s in FILE_STATES if m.files.get(s) or s in ("processed", "failed")], {1}))
    parts.append(_table(["Job state", "Jobs"], [[esc(s), str(m.jobs.get(s, 0))] for s in JOB_STATES], {1}))
    parts.append("</div>\n</section>\n")
    parts.append('<section aria-labelledby="throughput">\n<h2 id="throughput">Throughput per hour</h2>\n' + plot(m.hours) + "</section>\n")
    parts.append('<section aria-labelledby="hosts">\n<h2 id="hosts">Hosts</h2>\n')
    if m.rates:
        parts.append(_table(["Host", "Jobs done (24 h)", "Failed", "Most in one hour"],
                            [[f"<code>{esc(h)}</code>", str(d), str(f), str(top)] for h, d, f, top in m.rates], {1, 2, 3}))
    if m.hosts:
        parts.append(_table(["Host", "Slots", "State", "Jobs done", "Failed", "Lost", "Last seen"], [
            [f"<code>{esc(h['name'])}</code>", esc(h["slots"]), esc(h["state"]) + (f'<br><span class="muted">{esc(h["reason"])}</span>' if h["reason"] else ""),
             esc(h["done"]), esc(h["failed"]), esc(h["lost"]), esc(_iso(h["seen_at"]))] for h in m.hosts
        ], {1, 3, 4, 5}))
    else:
        parts.append('<p class="muted">No remote hosts (imgq work --hosts): every job ran where the database is.</p>\n')
    parts.append("</section>\n")
    parts.append('<section aria-labelledby="recent-failures">\n<h2 id="recent-failures">Recent failures</h2>\n')
    if m.failures:
        parts.append(_table(FAILURE_HEAD, _failure_rows(m.failures[:10], pages)))
        parts.append(f'<p><a href="failures.html">All {_plural(m.failures_total, "failure")} and the files still waiting</a></p>\n')
    else:
        parts.append('<p>No failures.</p>\n')
    parts.append("</section>\n")
    parts.append('<section aria-labelledby="collect">\n<h2 id="collect">What collect keeps in the inbox, and why</h2>\n')
    if m.keeps:
        parts.append(_table(["Verdict", "Reason", "Files"], [[esc(v), esc(r), str(n)] for v, r, n in m.keeps], {2}))
    else:
        parts.append('<p class="muted">Collect has kept nothing back (or has not run).</p>\n')
    parts.append("</section>\n")
    return _page(title="Status", site=site, root="", body="".join(parts), crumbs=[(site, "index.html"), ("Status", None)])


def failures_page(*, site: str, m: Monitor, pages: dict[str, str]) -> str:
    """Every problem standing now, with its reason, and the files not in the gallery yet."""
    parts = ["<h1>Failures</h1>\n"]
    parts.append('<section aria-labelledby="failed">\n<h2 id="failed">What failed, and why</h2>\n')
    if m.failures:
        more = m.failures_total - len(m.failures)
        parts.append(f'<p class="lede">{_plural(m.failures_total, "problem")} standing now, newest first{f"; the {more} oldest are left out" if more else ""}.</p>\n')
        parts.append(_table(FAILURE_HEAD, _failure_rows(m.failures, pages)))
    else:
        parts.append("<p>Nothing has failed.</p>\n")
    parts.append("</section>\n")
    parts.append('<section aria-labelledby="waiting">\n<h2 id="waiting">Still waiting</h2>\n')
    if m.waiting:
        counts = Counter(w["state"] for w in m.waiting)
        more = m.waiting_total - len(m.waiting)
        parts.append(f'<p class="lede">{_plural(m.waiting_total, "file")} not in the gallery yet ({", ".join(f"{n} {s}" for s, n in sorted(counts.items()))}){f"; {more} more not listed" if more else ""}.</p>\n')
        parts.append(_table(["Photo", "File", "State", "Since"], [
            [f"<code>{esc(w['id'])}</code>", esc(w["path"]), esc(w["state"]), esc(_iso(w["updated_at"]))] for w in m.waiting
        ]))
    else:
        parts.append("<p>Nothing is waiting: every photo scanned is in the gallery, failed, or a duplicate.</p>\n")
    parts.append("</section>\n")
    return _page(title="Failures", site=site, root="", body="".join(parts), crumbs=[(site, "index.html"), ("Failures", None)])
