"""imgq complete-values KIND [PREFIX] (hidden): the values the shell completions offer.

``imgq.__main__`` answers the console script and ``python -m imgq`` itself, before this
command line is imported; this command is the same answer for ``imgq --debug
complete-values`` and callers of ``imgq.cli.main``, and it keeps the name taken.
"""

from __future__ import annotations

from typing import Annotated

import typer

from imgq import completion
from imgq.cli import common
from imgq.cli.options import ConfigOpt, DbOpt

EPILOG = """\b
Examples:
  imgq complete-values recipes          # recipe names: built in and from imgq.toml
  imgq complete-values ops 'web|sh'     # web|sharpness: the last step of a chain
  imgq complete-values ids alice_       # file ids from the database
  imgq complete-values failed-ids       # files with a failed job (for imgq retry)
"""


def complete_values(
    kind: Annotated[str, typer.Argument(help=f"One of: {', '.join(completion.KINDS)}.", metavar="KIND", show_default=False)],
    prefix: Annotated[str, typer.Argument(help="Only values that start with this.", metavar="PREFIX", show_default=False)] = "",
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Print the values a shell completes, one per line: nothing (exit 0) on any problem."""
    db = db if db is not None else common.state.get("global_db")  # imgq --db x complete-values
    config = config if config is not None else common.state.get("global_config")
    for value in completion.values(kind, prefix, db=db, config=config):
        common.out(value)
