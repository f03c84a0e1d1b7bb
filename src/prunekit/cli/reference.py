"""Generate docs/reference.md: the ``--help`` text of ``prunekit`` and of every command.

    python -m prunekit.cli.reference > docs/reference.md

The text is formatted at a fixed width (``WIDTH`` columns, no colour), so it does not depend
on the terminal that runs the generator; ``tests/test_docs.py`` checks the file is current.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

WIDTH = 100
REGENERATE = "python -m prunekit.cli.reference > docs/reference.md"


@contextmanager
def _fixed_terminal() -> Iterator[None]:
    """argparse wraps to $COLUMNS (read when each help text is formatted) and colours help
    on terminals (Python >= 3.14) unless NO_COLOR is set."""
    saved = {key: os.environ.get(key) for key in ("COLUMNS", "NO_COLOR")}
    os.environ["COLUMNS"] = str(WIDTH)
    os.environ["NO_COLOR"] = "1"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _help(parser: argparse.ArgumentParser) -> str:
    # Python 3.10 heads the options "optional arguments:"; later versions "options:"
    return parser.format_help().replace("\noptional arguments:\n", "\noptions:\n").rstrip()


def commands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """(name, parser) of every command, in the order ``prunekit --help`` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def generate() -> str:
    """The whole of docs/reference.md."""
    from prunekit.cli.main import build_parser

    parser = build_parser()
    with _fixed_terminal():
        sections = [(name, _help(sub)) for name, sub in commands(parser)]
        top = _help(parser)
    lines = [
        "# Command reference",
        "",
        "The `--help` text of every command, generated from the code by",
        f"`{REGENERATE}` (a test checks that this file is current).",
        "Every command also follows the conventions of the README's",
        "[Commands](../README.md#commands) section: data on stdout, diagnostics on stderr, one",
        "line and exit status 1 for bad input.",
        "",
        "Commands: " + ", ".join(f"[`{name}`](#prunekit-{name})" for name, _ in sections) + ".",
        "",
        "## prunekit",
        "",
        "```text",
        top,
        "```",
    ]
    for name, text in sections:
        lines += ["", f"## prunekit {name}", "", "```text", text, "```"]
    return "\n".join(lines) + "\n"


def main() -> int:
    sys.stdout.write(generate())
    return 0


if __name__ == "__main__":
    sys.exit(main())
