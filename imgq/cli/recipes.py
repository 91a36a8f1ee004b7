"""imgq recipes [NAME...] [--ops]"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from imgq import recipes as recipes_lib
from imgq.cli import common
from imgq.cli.options import ConfigOpt, JsonOpt
from imgq.config import DEFAULT_RECIPES
from imgq.errors import Exit, UsageError

EPILOG = """\b
Examples:
  imgq recipes                      # every recipe: its chains, canonical, and its hash
  imgq recipes --json | jq -r .spec_hash
  imgq recipes --ops                # every operation, its parameters and an example
  imgq recipes --ops faces brightness

\b
A recipe is a table in imgq.toml, one artifact per line, all made from one decode:
  enqueue = ["default", "people"]   # what `imgq enqueue` applies by default
  [recipes.people]
  web = "web|sharpness=1.3|faces"
  on_no_faces = "skip"              # keep (default) | tag | skip
A chain is OP[:VALUE,...] or OP[:PARAM=VALUE,...] steps joined by |; factors may be
written on the 0-100 slider scale, where 50% is unchanged: brightness=60% = brightness=1.2
"""


def recipes(
    names: Annotated[Optional[list[str]], typer.Argument(help="Only these recipes (or operations, with --ops).", metavar="[NAME...]", show_default=False)] = None,
    ops: Annotated[bool, typer.Option("--ops", help="List the operations a chain can use instead of the recipes.")] = False,
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """List the recipes (built in and from imgq.toml) or the operations they are made of.

    Each recipe is shown with its chains in canonical form and its hash, which is part
    of every job's identity: when the hash changes, `imgq enqueue` makes new jobs for
    that recipe (and only that one). Exits 1 if a recipe in imgq.toml does not parse.
    """
    if ops:
        _list_ops(names, json)
        return
    settings = common.Invocation("recipes", None, config).settings
    wanted = names or list(settings.recipes)
    unknown = [n for n in wanted if n not in settings.recipes]
    if unknown:
        raise UsageError(f"unknown recipe(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(settings.recipes))}")
    broken = 0
    rows = []
    for name in wanted:
        r = recipes_lib.describe_recipe(name, settings.recipes[name])
        built_in = DEFAULT_RECIPES.get(name) == settings.recipes[name]
        r["source"] = "built-in" if built_in else str(settings.config_path)
        r["enqueued_by_default"] = name in settings.enqueue
        rows.append(r)
        if r["error"]:
            broken += 1
            common.warn(f"recipe {name!r} in {r['source']}: {r['error']}")
    if json:
        for r in rows:
            common.out_json(r)
    else:
        for r in rows:
            flags = [r["source"]] + (["enqueued by default"] if r["enqueued_by_default"] else [])
            common.out(f"{r['name']}  {r['spec_hash'] or 'INVALID'}  ({', '.join(flags)})")
            lines = r["chains"] if not r["error"] else {k: v for k, v in r["given"].items()}
            lines = dict(lines, **r["options"])
            width = max((len(k) for k in lines), default=0)
            for k, v in lines.items():
                common.out(f"  {k:<{width}}  {v}")
    common.exit_with(Exit.SOME_FAILED if broken else Exit.OK)


def _list_ops(names: list[str] | None, json: bool) -> None:
    table = recipes_lib.describe_operations()
    if names:
        known = {o["name"] for o in table}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UsageError(f"unknown operation(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}")
        table = [o for o in table if o["name"] in names]
    for o in table:
        if json:
            common.out_json(o)
            continue
        usage = o["name"] + ("" if not o["params"] else ":" + ",".join(p["name"].upper() for p in o["params"]))
        common.out(f"{usage}  -  {o['summary']}")
        for p in o["params"]:
            default = "required" if p["required"] else f"default {p['default']}"
            common.out(f"    {p['name']}: {p['help']} ({default})")
        if o["alias_of"]:
            common.out(f"    same as {o['alias_of']}")
        common.out(f"    example: imgq enqueue --op '{o['example']}'")
