"""imgq datasette-metadata [--name NAME]"""

from __future__ import annotations

from typing import Annotated

import typer

from imgq.cli import common
from imgq.ledger import catalog

SUMMARY = "Print Datasette metadata describing the database: tables, views, columns, canned queries."

EPILOG = """\b
Examples:
  imgq datasette-metadata > metadata.json
  datasette imgq.db --metadata metadata.json      # browse photos, failures, queue, throughput
  imgq datasette-metadata --name photos > metadata.json && datasette photos.db -m metadata.json
  sqlite-utils query imgq.db "select state, count(*) as n from photos group by state"

\b
The same file (for a database named imgq.db) is docs/datasette-metadata.json. The
views and their columns are described in the README, section "The database".
"""


def datasette_metadata(
    name: Annotated[
        str,
        typer.Option("--name", help="The database's name in Datasette: its file name without the extension (photos for photos.db).", metavar="NAME"),
    ] = "imgq",
) -> None:
    """Print, as JSON on stdout, Datasette metadata for imgq's database: a description of
    every table and view and of each of their columns, facets, and canned queries
    (failed today, in the inbox over an hour, copies per destination, throughput of the
    last hour, leases run out).

    Datasette finds a database's metadata by the name it gives the database, its file
    name without the extension: imgq for imgq.db, the default; give --name for another.
    No database is opened.
    """
    common.out(catalog.datasette_json(name).rstrip("\n"))
