"""How a command's --help reads: like a manual, not like its Python signature.

Typer (0.29) writes an argument's Python type beside its name (``INBOX... <list[Path]>``),
wraps a required repeated argument in braces (``{INBOX...}...``), shows an option without
a metavar as ``<int range>``, and click cuts a summary in ``imgq --help`` at 45 columns
with "...". ``Command`` (every command's class) shows each argument by its metavar alone,
gives an option without one a plain word (``N``, ``NUMBER``, ``TEXT``), and lists each
command with its whole first sentence.

Every command also takes -v/--verbose and -q/--quiet after its name (as well as before
it, on the root): ``Command`` adds them, so no command module declares them.
"""

from __future__ import annotations

import re

from typing import TYPE_CHECKING, Annotated

import typer
from typer.core import TyperCommand

if TYPE_CHECKING:
    import click


def first_sentence(text: str | None) -> str:
    """The first sentence of a help text (its summary), whole."""
    paragraph = (text or "").strip().split("\n\n")[0]
    paragraph = " ".join(line for line in paragraph.split() if line != "\b")
    # a sentence ends at . ! or ? before a capital letter or the end ("e.g. fit:..." does not)
    match = re.match(r"(.+?[.!?])(?=\s+[A-Z(\[`]|$)", paragraph)
    return match.group(1) if match else paragraph


def _word_for(param: click.Parameter) -> str:
    desc = getattr(param, "type_descriptor", None)
    annotation = getattr(desc, "annotation", None)
    if annotation is int:
        return "N"
    if annotation is float:
        return "NUMBER"
    if desc is None:  # a Typer before 0.29 gives its options Click's types
        import click  # only for --help: click costs a start 10 ms

        if param.type is click.INT or isinstance(param.type, click.IntRange):
            return "N"
        if param.type is click.FLOAT or isinstance(param.type, click.FloatRange):
            return "NUMBER"
    if getattr(desc, "is_path", False):
        return "PATH"
    return "TEXT"


VERBOSE_HELP = "Say more on stderr: a line per item, where the settings and the database came from, the summary even off a terminal."
QUIET_HELP = "Say only what went wrong: no notes, summaries or progress on stderr (stdout is unchanged)."


def _set_verbosity(ctx, param, value: bool) -> None:
    """-v or -q after the command: wins over the root's (set before this is parsed)."""
    if not value:
        return
    from imgq.cli import common
    from imgq.errors import UsageError

    level = 1 if param.name == "verbose" else -1
    key = ("imgq.verbosity", id(ctx))  # ctx.meta is shared with the root's context
    if ctx.meta.get(key, level) != level:
        raise UsageError("-v/--verbose and -q/--quiet cannot be used together")
    ctx.meta[key] = level
    common.state["verbosity"] = level


def _verbosity_template(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help=VERBOSE_HELP, callback=_set_verbosity, expose_value=False)] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP, callback=_set_verbosity, expose_value=False)] = False,
) -> None:
    """Only its options are used (declared through typer, so they are typer's own)."""


def verbosity_options() -> list:
    """-v/--verbose and -q/--quiet, fresh for one command's own options."""
    app = typer.Typer(add_completion=False)
    app.command()(_verbosity_template)
    return [p for p in typer.main.get_command(app).params if p.name in ("verbose", "quiet")]


class Command(TyperCommand):
    """A typer command whose help names arguments and values as a manual does, and
    which takes -v/--verbose and -q/--quiet."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.params.extend(verbosity_options())
        for p in self.params:
            if p.param_type_name == "option" and p.metavar is None and not getattr(p, "is_flag", False) and not getattr(p, "count", False):
                p.metavar = _word_for(p)
            elif p.param_type_name == "argument" and p.metavar is None:
                p.metavar = (p.name or "ARG").upper()

    def get_short_help_str(self, limit: int = 45) -> str:
        return self.short_help or first_sentence(self.help)

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if p.param_type_name != "argument":
                pieces.extend(p.get_usage_pieces(ctx))
                continue
            word = p.metavar
            if p.nargs != 1 and not word.endswith("...") and not word.endswith("]"):
                word += "..."
            if not p.required and not word.startswith("["):
                word = f"[{word}]"
            pieces.append(word)
        return pieces

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        arguments, options = [], []
        for p in self.get_params(ctx):
            record = p.get_help_record(ctx)
            if record is None:
                continue
            if p.param_type_name == "argument":
                arguments.append((p.metavar, record[1]))  # not "INBOX... <list[Path]>"
            else:
                options.append(record)
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
        if options:
            with formatter.section("Options"):
                formatter.write_dl(options)
