"""Progress of long steps on stderr: a bar with rate and ETA on a terminal, plain lines
(every 10% or 30 s) otherwise, so that logs of CI jobs and ``nohup`` runs stay readable."""

from __future__ import annotations

import sys
import time
from typing import IO, Any

_LINE_EVERY_S = 30.0


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """``Progress(total, "fine-tune")``; ``update(done, note=...)`` with the count done so far."""

    def __init__(self, total: int, what: str, stream: IO[str] | None = None) -> None:
        self.total, self.what = max(1, int(total)), what
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self.last_line, self.last_decile, self.last_draw = self.start, -1, 0.0
        self.done = 0

    def text(self, done: int, note: str = "") -> str:
        elapsed = time.perf_counter() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else 0.0
        share = min(1.0, done / self.total)
        tail = f" {note}" if note else ""
        return (f"{self.what} {share:4.0%} {done}/{self.total} {rate:.3g}/s "
                f"elapsed {_clock(elapsed)} ETA {_clock(eta)}{tail}")  # fmt: skip

    def update(self, done: int, note: str = "") -> None:
        self.done = done
        now = time.perf_counter()
        if self.tty:
            if now - self.last_draw < 0.1 and done < self.total:
                return
            self.last_draw = now
            width = 24
            filled = int(width * min(1.0, done / self.total))
            bar = "#" * filled + "." * (width - filled)
            self.stream.write(f"\r[{bar}] {self.text(done, note)}\x1b[K")
            self.stream.flush()
            return
        decile = int(10 * min(1.0, done / self.total))
        if decile > self.last_decile or now - self.last_line >= _LINE_EVERY_S:
            self.last_decile, self.last_line = decile, now
            print(self.text(done, note), file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class EpochProgress:
    """The recovery engine's ``on_step(epoch, step, loss)``: one ``Progress`` per epoch of
    ``steps_per_epoch`` steps; ``close()`` ends the last one."""

    def __init__(self, steps_per_epoch: int, stream: IO[str] | None = None) -> None:
        self.steps_per_epoch, self.stream = max(1, int(steps_per_epoch)), stream
        self.bar: Progress | None = None

    def __call__(self, epoch: int, step: int, loss: float) -> None:
        if self.bar is None or self.bar.what != f"epoch {epoch}":
            self.close()
            self.bar = Progress(self.steps_per_epoch, f"epoch {epoch}", self.stream)
        self.bar.update(step + 1, f"loss {loss:.4f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
