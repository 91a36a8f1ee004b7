"""Plain values without pydantic: the start-up of every command.

Typer (0.29 and later) turns each option's value into its Python type through a pydantic
``TypeAdapter``, built the first time the option has a value, its default included:
importing pydantic and building the adapters costs about 0.1 s, more than most commands
then take to do their work (``imgq status``, a cron ``imgq scan`` with nothing new).

``lean(command)`` gives each parameter of a built Click command a coercion that answers
the values imgq's options take in the common case itself (a ``str``; an ``int`` or
``float`` written in plain digits and within the option's bounds; a ``Path`` without
Typer's path options; lists of those; the declared default) with the same result Typer
gives, and hands every other value to Typer's own coercion, so that its error messages
(``'x' is not a valid integer``, a value out of range) stay word for word.

It relies on two attributes of Typer's parameters (``get_runtime_param``,
``type_descriptor``); with a Typer without them (before 0.29, which used Click's types
and no pydantic) it changes nothing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args, get_origin

# Answered here, or _TYPER: Typer's own coercion (pydantic) decides
_TYPER = object()
_INT = re.compile(r"-?[0-9]{1,18}")
_FLOAT = re.compile(r"-?[0-9]{1,15}(\.[0-9]{1,15})?")


def lean(command, parent=None) -> None:
    """Give every parameter of ``command`` (a Click command or group built by Typer, and
    its subcommands) the plain coercion above, falling back to Typer's; ``parent`` is the
    context of the group above, whose help option names the subcommands inherit."""
    # The help option is made when a command line is parsed, then kept: make it now
    ctx = command.context_class(command, parent=parent, **command.context_settings)
    for param in [*command.params, command.get_help_option(ctx)]:
        if hasattr(param, "get_runtime_param") and hasattr(param, "type_descriptor"):
            param.get_runtime_param = _Plain(param, param.get_runtime_param)
    for sub in (getattr(command, "commands", None) or {}).values():
        lean(sub, ctx)


class _Plain:
    """Stands in for Typer's ``RuntimeParam`` of one parameter (``param.get_runtime_param()``
    returns it); builds Typer's only for a value it does not answer itself."""

    def __init__(self, param, typer_runtime_param) -> None:
        self.param = param
        self.typer_runtime_param = typer_runtime_param

    def __call__(self) -> _Plain:
        return self

    def coerce(self, value: Any, param, ctx) -> Any:
        is_multi_value = param.multiple or param.nargs == -1
        if value is None:  # as Typer: no value is None, or () for a list
            return () if is_multi_value else None
        descriptor = param.type_descriptor
        if not isinstance(value, str) or not is_multi_value:
            plain = _value(value, descriptor.annotation, descriptor.parameter_info, param, ctx)
            if plain is not _TYPER:
                return plain
        return self.typer_runtime_param().coerce(value, param=param, ctx=ctx)


def _value(value: Any, annotation: Any, info, param, ctx) -> Any:
    if getattr(info, "parser", None) is not None or getattr(info, "path_type", None) is not None:
        return _TYPER
    if get_origin(annotation) is list:
        (item_type,) = get_args(annotation) or (Any,)
        if not isinstance(value, (list, tuple)):
            return _TYPER
        items = [_value(item, item_type, info, param, ctx) for item in value]
        return _TYPER if any(item is _TYPER for item in items) else items
    if annotation is str:
        return value if isinstance(value, str) else _TYPER
    if annotation is int or annotation is float:
        return _number(value, annotation, info)
    if annotation is Path:
        return _path(value, info, param, ctx)
    return _TYPER


def _number(value: Any, kind: type, info) -> Any:
    if isinstance(value, bool) or getattr(info, "clamp", False):
        return _TYPER
    if isinstance(value, str):
        if not (_INT if kind is int else _FLOAT).fullmatch(value):
            return _TYPER
        number = kind(value)
    elif isinstance(value, int) or (kind is float and isinstance(value, float)):
        number = kind(value)
    else:
        return _TYPER
    low, high = getattr(info, "min", None), getattr(info, "max", None)
    if (low is not None and number < low) or (high is not None and number > high):
        return _TYPER  # Typer says what is wrong, in its words
    return number


def _path(value: Any, info, param, ctx) -> Any:
    if isinstance(value, str) and value and not getattr(info, "allow_dash", False) and not getattr(info, "resolve_path", False):
        value = Path(value)
    if not isinstance(value, Path):
        return _TYPER
    try:  # Typer's checks (exists, a file, a directory, readable), now that no pydantic is needed
        from typer._param_types import coerce_cli_path
    except ImportError:
        return _TYPER
    return coerce_cli_path(value, info, path_type=Path, param=param, ctx=ctx)
