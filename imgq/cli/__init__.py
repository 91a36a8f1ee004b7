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

from typing import Optional

import typer

from imgq import __version__
from imgq.cli import coercion, common, helptext
from imgq.errors import Exit, ImgqError, UsageError

# name -> (module, hidden); the module's function is the name with _ for -. Command
# modules are imported only when needed: `imgq scan` should not pay for importing the SSH
# stack (fabric, paramiko) the fleet needs.
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
    "backup": ("backup", False),
    "restore": ("restore", False),
    "export": ("export", False),
    "run": ("run", False),
    "recipes": ("recipes", False),
    "config": ("config", False),
    "datasette-metadata": ("datasette_metadata", False),
    "agent": ("agent", True),  # started by `work --hosts` on each host
    "complete-values": ("complete_values", True),  # asked by the shell completions
}
GROUPS = {"hosts": "hosts"}  # name -> module with a Typer `app`


def _version(value: bool) -> None:
    if value:
        print(f"imgq {__version__}")
        raise typer.Exit()


def _root(
    db: Annotated[Optional[str], typer.Option("--db", help="Database file for the command (default: $IMGQ_DB, else ./imgq.db); a --db after the command wins.", metavar="PATH", show_default=False)] = None,
    config: Annotated[Optional[str], typer.Option("--config", help="Settings file for the command (default: the first of $IMGQ_CONFIG, ./imgq.toml, ~/.config/imgq/imgq.toml, /etc/imgq/imgq.toml); a --config after the command wins.", metavar="PATH", show_default=False)] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help=helptext.VERBOSE_HELP)] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=helptext.QUIET_HELP)] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", callback=_version, is_eager=True)] = False,
) -> None:
    if verbose and quiet:
        raise UsageError("-v/--verbose and -q/--quiet cannot be used together")
    common.state.update(
        debug=debug or os.environ.get("IMGQ_DEBUG") == "1",
        verbosity=1 if verbose else -1 if quiet else 0,
        global_db=db,
        global_config=config,
    )


# The root's options, as _command_in skips them to find the command (a test checks these
# against _root): flags, and options that take a value (--db PATH or --db=PATH).
ROOT_FLAGS = frozenset({"--debug", "--verbose", "-v", "--quiet", "-q"})
ROOT_VALUED = frozenset({"--db", "--config"})


def build_app(only: str | None = None) -> typer.Typer:
    """The Typer app with every command, or only the one named ``only`` (same options,
    same help): what main() runs when the command is known from argv."""
    app = typer.Typer(
        name="imgq",
        help=(
            "Turn a folder where photos arrive into a processed, replicated, browsable archive.\n\n"
            "Steps share one SQLite database (./imgq.db, --db, $IMGQ_DB) that is both the job queue "
            "and the journal. Each step prints ids on stdout, so steps compose in pipes and run from cron.\n\n"
            "The options below go before the command (imgq --db x.db status); --db, --config, -v and -q "
            "also work after it, and there the one after the command wins. `imgq config` "
            "shows the settings in force and where each came from."
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
            app.command(name, epilog=module.EPILOG, hidden=hidden, cls=helptext.Command, short_help=getattr(module, "SUMMARY", None))(getattr(module, name.replace("-", "_")))
    for name, module_name in GROUPS.items():
        if only is None or only == name:
            app.add_typer(importlib.import_module(f"imgq.cli.{module_name}").app, name=name)
    return app


def __getattr__(name: str):
    if name == "app":  # the whole CLI, for bin/gen-docs and the docs test
        return build_app()
    raise AttributeError(name)


def _command_in(argv: list[str]) -> str | None:
    """The subcommand argv names when it is unambiguous: the first word that is not one
    of the root's options (``ROOT_FLAGS``, ``ROOT_VALUED`` with their value) before it.
    None when in doubt: then every command is built, slower but never wrong."""
    if argv == ["--version"]:
        return "--version"  # no command needed to print the version: build none
    words = iter(argv)
    for word in words:
        if word in ROOT_FLAGS:
            continue
        if word in ROOT_VALUED:
            next(words, None)  # its value, whatever it looks like (--db status is a file)
            continue
        if word.split("=", 1)[0] in ROOT_VALUED:
            continue
        if word in COMMANDS or word in GROUPS:
            return word
        return None
    return None


def _click_exceptions():
    """Click's exceptions module as typer uses it (recent typer vendors its own click)."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


def _usage_line(e) -> str:
    """A usage error of Click's (bad option value, unknown option, missing argument) as one
    line that says where the help is, like the errors imgq raises itself."""
    message = " ".join(e.format_message().split())
    ctx = getattr(e, "ctx", None)
    where = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
    return f"imgq: error: {message}{where}\n"


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``imgq`` console script and ``python -m imgq``.

    The one place errors become exit codes: Click's usage errors (exit 2) and everything
    imgq raises on purpose become one line on stderr, ``imgq: error: …``, and the
    error's exit code; an unforeseen OSError one line naming the file (exit 1).
    """
    args = sys.argv[1:] if argv is None else argv
    command = typer.main.get_command(build_app(_command_in(args)))
    coercion.lean(command)  # values without importing pydantic (0.1 s of every start)
    click_errors = _click_exceptions()
    try:
        code = command.main(args=args, prog_name="imgq", standalone_mode=False)
        code = code if isinstance(code, int) else 0  # typer.Exit's code, or the command's None
    except getattr(click_errors, "NoArgsIsHelpError", ()) as e:  # Click >= 8.2
        e.show()  # `imgq`, `imgq hosts`: the help, as before
        code = int(Exit.USAGE)
    except click_errors.ClickException as e:
        sys.stderr.write(_usage_line(e) if isinstance(e, click_errors.UsageError) else f"imgq: error: {' '.join(e.format_message().split())}\n")
        code = e.exit_code if isinstance(e, click_errors.UsageError) else int(Exit.USAGE)
    except typer.Abort:
        sys.stderr.write("imgq: interrupted\n")  # end of input at a prompt
        code = int(Exit.INTERRUPTED)
    except ImgqError as e:
        if common.state["debug"]:
            import traceback

            traceback.print_exc()
        if e.exit_code != Exit.OK or not common.quiet():  # a note (another run holds the lock): not with -q
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
    except (BrokenPipeError, common.ReaderGone):
        # the reader went away (imgq scan … | head): not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 0
    except OSError as e:
        # a file or folder the step needed failed in a way no code foresaw: name it, no traceback
        if common.state["debug"]:
            import traceback

            traceback.print_exc()
        where = f"{e.filename}: " if e.filename else ""
        sys.stderr.write(f"imgq: error: {where}{e.strerror or e}\n")
        code = int(Exit.SOME_FAILED)
    except KeyboardInterrupt:
        sys.stderr.write("imgq: interrupted\n")
        code = int(Exit.INTERRUPTED)
    sys.exit(code)
