"""imgq config [--path] [--json]"""

from __future__ import annotations

import json as json_lib
import os
import re
from typing import Annotated

import typer

from imgq import config as config_lib
from imgq.cli import common
from imgq.cli.options import ConfigOpt, DbOpt
from imgq.errors import Exit

EPILOG = """\b
Examples:
  imgq config                       # every setting: key = value  # where it came from
  imgq config --path                # the settings file in force
  $EDITOR "$(imgq config --path)"
  imgq --config /srv/imgq.toml config --json | jq -r 'select(.source != "default") | .key'
  IMGQ_DB=/srv/photos.db imgq config | grep '^db '

\b
The settings file is the first found of: --config, $IMGQ_CONFIG, ./imgq.toml,
$XDG_CONFIG_HOME/imgq/imgq.toml (default ~/.config/imgq/imgq.toml), /etc/imgq/imgq.toml.
Only that one file is read (files are not merged); $IMGQ_DB and --db override its db.
"""


def config(
    path: Annotated[bool, typer.Option("--path", help="Print only the settings file in force; exit 1 (printing nothing) if there is none.")] = False,
    db: DbOpt = None,
    config: ConfigOpt = None,
    json: Annotated[bool, typer.Option("--json", help="One JSON object per setting (key, value, source); with --path, one object (path, found_as).")] = False,
) -> None:
    """Show the settings in force and where each came from.

    One line per setting on stdout, in TOML (`key = value  # source`), the source being
    "default", "built-in", the settings file, $IMGQ_DB or --db. The first line, a
    comment, names the settings file and how it was found. The settings file is read
    and checked as every command reads it: a bad one is a usage error (exit 2). No
    database is opened.
    """
    settings = common.Invocation("config", db, config).settings
    for place, name in config_lib.config_places():
        common.detail(f"config: {name} ({place}): {'a file' if place.is_file() else 'none'}")
    found = os.path.abspath(settings.config_path) if settings.config_path is not None else None
    if path:
        if found is None:
            common.note("no settings file: none given (--config, $IMGQ_CONFIG) and none found at " + ", ".join(n for _, n in config_lib.config_places()))
            common.exit_with(Exit.SOME_FAILED)
        elif json:
            common.out_json({"path": found, "found_as": settings.config_source})
        else:
            common.out(found)
        return
    rows = config_lib.effective(settings)
    if json:
        for row in rows:
            common.out_json(row)
        return
    if found is None:
        common.out("# settings file: none (the defaults; looked for " + ", ".join(n for _, n in config_lib.config_places()) + ")")
    else:
        common.out(f"# settings file: {found} (from {settings.config_source})")
    for row in rows:
        common.out(f"{row['key']} = {toml_value(row['value'])}  # {common.printable(row['source'])}")


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_value(value) -> str:
    """``value`` written as TOML (strings, numbers, booleans, lists, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # a JSON string is a TOML basic string, but for DEL, which TOML wants escaped
        return json_lib.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = [f"{k if _BARE_KEY.match(k) else toml_value(k)} = {toml_value(v)}" for k, v in value.items()]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    return toml_value(str(value))
