"""``imgq`` (the console script) and ``python -m imgq``.

The shell completions ask ``imgq complete-values …`` on every Tab: that is answered here,
before the command line is imported (typer, rich and the ledger take a quarter of a
second), by the same function as the hidden command in ``imgq.cli.complete_values``.
``imgq --version`` is answered here too, for the same reason.
"""

import sys


def main() -> None:
    argv = sys.argv[1:]
    if argv == ["--version"]:  # as `imgq --version` always answered, without building the CLI
        from imgq import __version__

        sys.stdout.write(f"imgq {__version__}\n")
        sys.exit(0)
    if argv[:1] == ["complete-values"]:
        from imgq import completion

        request = completion.parse(argv[1:])
        found = completion.values(request.kind, request.prefix, db=request.db, config=request.config) if request else []
        try:
            sys.stdout.write("".join(f"{value}\n" for value in found))
            sys.stdout.flush()
        except OSError:
            pass  # the shell stopped reading: nothing to say
        sys.exit(0)
    from imgq.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
