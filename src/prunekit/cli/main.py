"""Entry point of the ``prunekit`` command.

Data goes to stdout, diagnostics to stderr. Bad input ends with one line on stderr and exit
status 1; ``--debug`` shows the full traceback instead. Only argparse is imported before a
command runs, so ``prunekit --help`` answers instantly.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from prunekit import __version__
from prunekit.cli import analyze, bench, demo, mcu, models, plan, profile, prune, sensitivity

COMMANDS = (demo, analyze, bench, sensitivity, profile, plan, prune, mcu, models)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 1 like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="prunekit",
        description="Compress PyTorch models until they fit a deployment budget, and measure "
        "what really got faster.",
    )
    parser.add_argument("--version", action="version", version=f"prunekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS:
        command.register(sub)
    return parser


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 1
    from prunekit.errors import PrunekitError

    try:
        return int(args.handler(args) or 0)
    except PrunekitError as exc:
        if args.debug:
            raise
        print(f"prunekit {args.command}: error: {_one_line(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"prunekit {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"prunekit {args.command}: internal error: {type(exc).__name__}: "
            f"{_one_line(str(exc))} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
