"""Routing: which destinations take which items (the original, each artifact) of a file.

From imgq.toml (no ``--to`` given; ``--to`` sends everything to each, as it always did):

- ``destinations = [...]``: everything to each;
- ``[[route]]`` rules: ``to`` plus optional ``artifacts`` (item names, ``original`` for
  the original), ``owners`` (compared in NFC) and ``recipes`` (the artifacts those recipes
  made, and the original of a file one of them processed); a missing selector selects
  everything;
- ``route_command``: a program (argv, never a shell string) asked once per file with the
  arguments FILE_ID OWNER PATH TAKEN KIND (PATH: the file in the inbox; TAKEN: ISO 8601
  or empty), answering on stdout with JSON ``{"destinations": ["/mnt/b", ...]}`` (every
  item) or ``{"destinations": {"/mnt/b": ["original", "web"], ...}}``; only configured
  destinations and known items are accepted. Its answer is kept in the database
  (``ledger.routes``); a failure, a timeout or an invalid answer raises ``RouteFailed``.

A destination named by several rules (or by a rule and the command) gets the union.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import unicodedata
from collections.abc import Callable, Iterable, Sequence

from imgq.config import RouteRule, Settings
from imgq.destinations import configured
from imgq.errors import RouteFailed, UsageError
from imgq.ledger import routes as answers
from imgq.ledger.database import DB
from imgq.recipes import OPTIONS as RECIPE_OPTIONS

ORIGINAL = "original"
# the archive target (file, 'route_command') that records the route command's failures
ROUTE_COMMAND = "route_command"
_STDOUT_LIMIT = 1 << 20


@dataclasses.dataclass(frozen=True)
class Rule:
    to: str  # canonical
    artifacts: frozenset[str] | None = None
    owners: frozenset[str] | None = None
    recipes: frozenset[str] | None = None

    def takes(self, owner: str, role: str, recipe: str | None, file_recipes: set[str]) -> bool:
        if self.owners is not None and unicodedata.normalize("NFC", owner) not in self.owners:
            return False
        if self.artifacts is not None and role not in self.artifacts:
            return False
        if self.recipes is not None:
            return bool(file_recipes & self.recipes) if role == ORIGINAL else recipe in self.recipes
        return True

    def describe(self) -> str:
        parts = [", ".join(sorted(self.artifacts)) if self.artifacts is not None else "everything"]
        if self.owners is not None:
            parts.append("of " + ", ".join(sorted(self.owners)))
        if self.recipes is not None:
            parts.append("from recipe " + ", ".join(sorted(self.recipes)))
        return " ".join(parts)


@dataclasses.dataclass
class Routing:
    rules: list[Rule]
    command: list[str] = dataclasses.field(default_factory=list)
    timeout: float = 30.0
    known: frozenset[str] = frozenset({ORIGINAL})  # item names an answer may use

    @property
    def urls(self) -> list[str]:
        """Every destination routing may send something to, in order."""
        return list(dict.fromkeys(r.to for r in self.rules))

    def may_take_originals(self) -> list[str]:
        """Destinations some rule (or the command, which may name any) sends originals to."""
        if self.command:
            return self.urls
        return list(dict.fromkeys(r.to for r in self.rules if r.artifacts is None or ORIGINAL in r.artifacts))

    def lacking_sql(self, url: str) -> tuple[str, list]:
        """An SQL condition on ``files f``: its routes send something to ``url`` that is not
        there: the original (by a rule's owners and recipes, or the route command's kept
        answer) without an original's copy there, or (a rule taking only artifacts) an
        artifact it makes without any copy of the file there."""
        original = "EXISTS (SELECT 1 FROM copies c WHERE c.file_id = f.id AND c.artifact_id IS NULL AND c.destination = ?)"
        terms, params = [], []
        for r in self.rules:
            if r.to != url:
                continue
            parts = ["1"]
            if r.owners is not None:
                parts.append("f.owner IN (SELECT value FROM json_each(?))")
                params.append(json.dumps(sorted(r.owners)))
            if r.recipes is not None:
                parts.append("EXISTS (SELECT 1 FROM jobs j WHERE j.file_id = f.id AND j.state = 'done' AND j.recipe IN (SELECT value FROM json_each(?)))")
                params.append(json.dumps(sorted(r.recipes)))
            if r.artifacts is None or ORIGINAL in r.artifacts:
                parts.append(f"NOT {original}")
            else:
                parts.append(
                    "EXISTS (SELECT 1 FROM artifacts a JOIN jobs j ON j.id = a.job_id WHERE a.file_id = f.id AND j.state = 'done'"
                    " AND a.name IN (SELECT value FROM json_each(?)))"
                    " AND NOT EXISTS (SELECT 1 FROM copies c WHERE c.file_id = f.id AND c.destination = ?)"
                )
                params.append(json.dumps(sorted(r.artifacts)))
            params.append(url)
            terms.append("(" + " AND ".join(parts) + ")")
        if self.command:
            terms.append(
                "(EXISTS (SELECT 1 FROM route_answers ra, json_each(ra.answer) e WHERE ra.file_id = f.id AND ra.command = ? AND e.key = ?"
                f" AND (e.type = 'null' OR EXISTS (SELECT 1 FROM json_each(e.value) i WHERE i.value = 'original'))) AND NOT {original})"
            )
            params += [json.dumps(self.command), url, url]
        return ("(" + " OR ".join(terms) + ")" if terms else "0"), params

    def takes(self) -> dict[str, list[str]]:
        """Per destination, what it takes, in words (for ``imgq status``)."""
        out: dict[str, list[str]] = {u: [] for u in self.urls}
        for r in self.rules:
            out[r.to].append(r.describe())
        if self.command:
            for u in out:
                out[u].append("what the route command sends")
        return out


def from_settings(to: Sequence[str] | None, settings: Settings) -> Routing | None:
    """The routing in force: None (everything to every destination) with ``to`` or when
    imgq.toml has no ``[[route]]`` and no ``route_command``."""
    if to or not (settings.route or settings.route_command):
        return None
    rules = [Rule(configured(d, settings)) for d in settings.destinations]
    rules += [_rule(r, settings) for r in settings.route]
    known = {ORIGINAL} | {name for chains in settings.recipes.values() for name in chains if name not in RECIPE_OPTIONS}
    return Routing(rules, list(settings.route_command), settings.route_timeout, frozenset(known))


def _rule(r: RouteRule, settings: Settings) -> Rule:
    def opt(v):
        return None if v is None else frozenset(v)

    return Rule(configured(r.to, settings), opt(r.artifacts), opt(r.owners), opt(r.recipes))


def file_recipes(db: DB, file_id: str) -> set[str]:
    """The recipes whose jobs finished on the file."""
    return {r[0] for r in db.all("SELECT DISTINCT recipe FROM jobs WHERE file_id = ? AND state = 'done'", (file_id,))}


def route(
    db: DB,
    routing: Routing,
    f,
    items: Iterable[tuple[str, str | None]],
    *,
    now: float,
    ask: bool = True,
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
) -> dict[str, set[str]] | None:
    """Where each item of file row ``f`` goes: destination -> item names. ``items``:
    (name, recipe) of each (the original's recipe is None). The rules' answer united with
    the route command's (kept in the database; asked now if ``ask``, else None is
    returned while it has not answered). Raises RouteFailed if the command fails."""
    items = list(items)
    recipes = {rc for _, rc in items if rc} or file_recipes(db, f["id"])
    out: dict[str, set[str]] = {}
    for rule in routing.rules:
        for role, recipe in items:
            if rule.takes(f["owner"], role, recipe, recipes):
                out.setdefault(rule.to, set()).add(role)
    if routing.command:
        said = answers.answer(db, f["id"], routing.command)
        if said is None:
            if not ask:
                return None
            said = _ask(routing, f, run)
            answers.remember(db, f["id"], routing.command, said, now=now)
        names = {role for role, _ in items}
        for url, which in said.items():
            out.setdefault(url, set()).update(names if which is None else names & set(which))
    return out


def _ask(routing: Routing, f, run) -> dict[str, list[str] | None]:
    """Run the route command for ``f`` and validate its answer."""
    argv = [*routing.command, f["id"], f["owner"], os.path.join(f["inbox"], f["path"]), f["taken_at"] or "", f["kind"] or "photo"]
    shown = f"route command {routing.command[0]} for {f['id']}"
    try:
        p = run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=routing.timeout, check=False)
    except subprocess.TimeoutExpired:
        raise RouteFailed(f"{shown}: no answer within {routing.timeout:g}s (route_timeout)") from None
    except OSError as e:
        raise RouteFailed(f"{shown}: cannot run it: {e.strerror or e}") from None
    if p.returncode != 0:
        err = p.stderr.decode(errors="replace").strip().splitlines()
        raise RouteFailed(f"{shown}: exited with status {p.returncode}" + (f": {err[-1][:300]}" if err else ""))
    try:
        data = json.loads(p.stdout[:_STDOUT_LIMIT].decode())
    except (UnicodeDecodeError, ValueError):
        raise RouteFailed(f"{shown}: its answer is not JSON: {p.stdout[:80]!r}") from None
    return validate(routing, data, shown)


def validate(routing: Routing, data, shown: str = "route command") -> dict[str, list[str] | None]:
    """The answer ``data`` as destination -> items (None: all), or RouteFailed naming what
    is wrong: not {"destinations": [...] or {...}}, a destination not configured, an
    unknown item."""
    if not isinstance(data, dict) or "destinations" not in data:
        raise RouteFailed(f'{shown}: answered {json.dumps(data)[:120]}; expected {{"destinations": ["DEST", ...]}} or {{"destinations": {{"DEST": ["original", "web"]}}}}')
    dests = data["destinations"]
    if isinstance(dests, list):
        dests = {d: None for d in dests}
    if not isinstance(dests, dict):
        raise RouteFailed(f"{shown}: destinations must be a list or an object, not {type(dests).__name__}")
    out: dict[str, list[str] | None] = {}
    for text, which in dests.items():
        try:
            url = configured(text, Settings()) if isinstance(text, str) and text else None
        except UsageError:
            url = None
        if url not in routing.urls:
            raise RouteFailed(f"{shown}: named destination {text!r}, which is not one of imgq.toml's ({', '.join(routing.urls)})")
        if which is not None and (not isinstance(which, list) or not all(isinstance(w, str) for w in which)):
            raise RouteFailed(f"{shown}: the items for {text} must be a list of names")
        unknown = sorted(set(which or ()) - routing.known)
        if unknown:
            raise RouteFailed(f"{shown}: unknown item(s) {', '.join(unknown)} for {text}; known: {', '.join(sorted(routing.known))}")
        out[url] = None if which is None else sorted(set(which) | set(out.get(url) or ()))
    return out
