"""The imgq command line: one thin module per command around one library call.

``main()`` is the one place that turns errors into exit codes: ``imgq: error: …`` on
stderr and a code from ``errors.Exit`` (0 ok, 1 some items failed, 2 usage, 130
interrupted). Tracebacks only with --debug or IMGQ_DEBUG=1.

Each command module parses its options (declared once in ``options``), goes through the
one ritual of ``common.Invocation`` (settings, database, step lock, run record, exit
code) around one library call, and renders what it returns. Command modules import
``common`` and ``options`` and the library, never each other; nothing imports the CLI.
"""

from __future__ import annotations

import importlib
import os
import sqlite3
import sys
from typing import Annotated

import typer

from imgq import __version__
from imgq.cli import common, helptext
from imgq.errors import Exit, ImgqError

# name -> (module, hidden). Command modules are imported only when needed: `imgq scan`
# should not pay for importing the SSH stack (fabric, paramiko) the fleet needs.
COMMANDS: dict[str, tuple[str, bool]] = {
    "scan": ("scan", False),
    "enqueue": ("enqueue", False),
    "work": ("work", False),
    "status": ("status", False),
    "log": ("log", False),
    "retry": ("retry", False),
    "publish": ("publish", False),
    "report": ("report", False),
    "archive": ("archive", False),
    "collect": ("collect", False),
    "run": ("run", False),
    "recipes": ("recipes", False),
    "agent": ("agent", True),  # started by `work --hosts` on each host
}
GROUPS = {"hosts": "hosts"}  # name -> module with a Typer `app`


def _version(value: bool) -> None:
    if value:
        print(f"imgq {__version__}")
        raise typer.Exit()


def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", callback=_version, is_eager=True)] = False,
) -> None:
    common.state["debug"] = debug or os.environ.get("IMGQ_DEBUG") == "1"


def build_app(only: str | None = None) -> typer.Typer:
    """The Typer app with every command, or only the one named ``only`` (same options,
    same help): what main() runs when the command is known from argv."""
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
    app.callback()(_root)
    for name, (module_name, hidden) in COMMANDS.items():
        if only is None or only == name:
            module = importlib.import_module(f"imgq.cli.{module_name}")
            # helptext.Command: help that names values as a manual does, summaries whole
            app.command(name, epilog=module.EPILOG, hidden=hidden, cls=helptext.Command, short_help=getattr(module, "SUMMARY", None))(getattr(module, name))
    for name, module_name in GROUPS.items():
        if only is None or only == name:
            app.add_typer(importlib.import_module(f"imgq.cli.{module_name}").app, name=name)
    return app


def __getattr__(name: str):
    if name == "app":  # the whole CLI, for bin/gen-docs and the docs test
        return build_app()
    raise AttributeError(name)


def _command_in(argv: list[str]) -> str | None:
    """The subcommand argv names when it is unambiguous: the first word that is not an
    option of the root (--debug is the only root option that precedes it)."""
    if argv == ["--version"]:
        return "--version"  # no command needed to print the version: build none
    for word in argv:
        if word == "--debug":
            continue
        if word in COMMANDS or word in GROUPS:
            return word
        return None
    return None


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``imgq`` console script and ``python -m imgq``.

    Click handles its own usage errors (exit 2) and typer.Exit; everything imgq raises
    on purpose is turned into one line on stderr and the error's exit code here.
    """
    args = sys.argv[1:] if argv is None else argv
    command = typer.main.get_command(build_app(_command_in(args)))
    try:
        command.main(args=args, prog_name="imgq", standalone_mode=True)
        code = 0
    except ImgqError as e:
        if common.state["debug"]:
            import traceback

            traceback.print_exc()
        sys.stderr.write(f"imgq: {'' if e.exit_code == Exit.OK else 'error: '}{e}\n")
        code = int(e.exit_code)
    except sqlite3.Error as e:
        # the database or the disk under it failed (full, locked, damaged): one line
        # naming the file, never a traceback (unless --debug)
        if common.state["debug"]:
            import traceback

            traceback.print_exc()
        sys.stderr.write(f"imgq: error: {common.database_error(e)}\n")
        code = int(Exit.SOME_FAILED)
    except KeyboardInterrupt:
        sys.stderr.write("imgq: interrupted\n")
        code = int(Exit.INTERRUPTED)
    except BrokenPipeError:
        # the reader went away (imgq scan … | head): not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 0
    sys.exit(code)
