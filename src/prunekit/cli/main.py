"""Entry point of the ``prunekit`` command.

Data goes to stdout, diagnostics to stderr. Bad input ends with one line on stderr and exit
status 1; ``--debug`` shows the full traceback instead. Only argparse is imported before a
command runs, so ``prunekit --help`` answers instantly.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

from prunekit import __version__
from prunekit.cli import (
    advise,
    analyze,
    bench,
    demo,
    evaluate,
    export,
    finetune,
    mcu,
    models,
    pipeline,
    plan,
    profile,
    prune,
    recipe,
    report,
    sensitivity,
    sparsify,
)

COMMANDS = (
    demo, recipe, analyze, bench, advise, sensitivity, profile, plan, prune, finetune, evaluate,
    export, sparsify, pipeline, mcu, report, models,
)  # fmt: skip


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


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, a CI cancel, ``docker stop``), handled like Ctrl-C: every writer
    removes its staging output on the way out."""


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends us at once
        raise Terminated

    def redeliver(unraisable: Any) -> None:
        # Python runs a signal handler wherever the main thread is; inside a weakref callback
        # (importlib's module locks have one) or a __del__ the exception cannot propagate and
        # is only printed as "Exception ignored". The signal would be lost: send it again, to
        # be raised once that callback has returned.
        if not isinstance(unraisable.exc_value, Terminated):
            previous_hook(unraisable)
            return
        signal.signal(signal.SIGTERM, handler)
        again = threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGTERM))
        again.daemon = True
        again.start()

    previous = signal.signal(signal.SIGTERM, handler)
    previous_hook = sys.unraisablehook
    sys.unraisablehook = redeliver
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        signal.signal(signal.SIGTERM, previous)


class _StderrHandler(logging.Handler):
    """prunekit's warnings (what trusted code runs, groups left alone...) as plain lines on
    the current stderr (looked up at each record, so a redirected stderr is honoured)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:
            self.handleError(record)


@contextmanager
def _warnings_on_stderr() -> Iterator[None]:
    logger = logging.getLogger("prunekit")
    handler = _StderrHandler(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 1
    from prunekit.errors import PrunekitError

    try:
        with _sigterm_as_interrupt(), _warnings_on_stderr():
            return int(args.handler(args) or 0)
    except PrunekitError as exc:
        if args.debug:
            raise
        print(f"prunekit {args.command}: error: {_one_line(str(exc))}", file=sys.stderr)
        return 1
    except Terminated:
        print(f"prunekit {args.command}: terminated (SIGTERM); nothing half-written was left",
              file=sys.stderr)  # fmt: skip
        return 143
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
