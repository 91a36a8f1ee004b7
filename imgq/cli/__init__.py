"""The imgq command line: one thin module per command around one library call.

``main()`` is the one place that turns errors into exit codes: ``imgq: error: …`` on
stderr and a code from ``errors.Exit`` (0 ok, 1 some items failed, 2 usage). Tracebacks
only with --debug or IMGQ_DEBUG=1.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from imgq import __version__
from imgq.cli import common, enqueue, log, retry, scan, status, work
from imgq.cli import publish, report
from imgq.cli import archive, collect, run
from imgq.cli import recipes
from imgq.cli import agent, hosts
from imgq.errors import Exit, ImgqError

app = typer.Typer(
    name="imgq",
    help=(
        "Turn a folder where photos arrive into a processed, replicated, browsable archive.\n\n"
        "Steps share one SQLite database (./imgq.db, --db, $IMGQ_DB) that is both the job queue "
        "and the journal. Each step prints ids on stdout, so steps compose in pipes and run from cron."
    ),
    epilog="""\b
Examples:
  imgq scan inbox/ | imgq enqueue - ; imgq work --drain
  imgq status
  imgq log alice_1700000000_IMG_0001.jpg
""",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"imgq {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", callback=_version, is_eager=True)] = False,
) -> None:
    common.state["debug"] = debug or os.environ.get("IMGQ_DEBUG") == "1"


for module, name in [(scan, "scan"), (enqueue, "enqueue"), (work, "work"), (status, "status"), (log, "log"), (retry, "retry"), (publish, "publish"), (report, "report"), (archive, "archive"), (collect, "collect"), (run, "run"), (recipes, "recipes")]:
    app.command(name, epilog=module.EPILOG)(getattr(module, name))
app.command("agent", epilog=agent.EPILOG, hidden=True)(agent.agent)  # started by `work --hosts`
app.add_typer(hosts.app, name="hosts")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``imgq`` console script and ``python -m imgq``.

    Click handles its own usage errors (exit 2) and typer.Exit; everything imgq raises
    on purpose is turned into one line on stderr and the error's exit code here.
    """
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="imgq", standalone_mode=True)
        code = 0
    except ImgqError as e:
        if common.state["debug"]:
            import traceback

            traceback.print_exc()
        sys.stderr.write(f"imgq: {'' if e.exit_code == Exit.OK else 'error: '}{e}\n")
        code = int(e.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("imgq: interrupted\n")
        code = 130
    except BrokenPipeError:
        # the reader went away (imgq scan … | head): not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 0
    sys.exit(code)
