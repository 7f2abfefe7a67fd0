"""What the tools show on stderr while they work: a progress line, log lines, dimmed notes.

Output (replies, tables, paths) goes to stdout; these go to stderr so that output can be
piped. The download, conversion and quantization code takes a :class:`Progress` too.
"""
from __future__ import annotations

import sys
import time


class Progress:
    """A one-line progress display on stderr: ``label  12.3/98.4 MiB  12%``.

    On a terminal the line is redrawn in place (at most ~10 times a second); otherwise a
    line is printed every 25%, so logs stay short.
    """

    def __init__(self, label: str, total: int | None, unit: str = "MiB", stream=None, enabled: bool = True):
        self.label = label
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.scale = 1 << 20 if unit == "MiB" else 1
        self.unit = unit
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.last_draw = 0.0
        self.last_quarter = -1
        self.start = time.monotonic()

    def _text(self) -> str:
        if self.unit == "MiB":
            amount = f"{self.done / self.scale:.1f}"
            total = f"{self.total / self.scale:.1f}" if self.total else "?"
        else:
            amount, total = str(self.done), str(self.total or "?")
        pct = f"{100 * self.done // self.total:3d}%" if self.total else ""
        return f"{self.label}  {amount}/{total} {self.unit}  {pct}"

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.tty:
            now = time.monotonic()
            if now - self.last_draw >= 0.1:
                self.last_draw = now
                self.stream.write("\r" + self._text())
                self.stream.flush()
        elif self.total:
            quarter = 4 * self.done // self.total
            if quarter > self.last_quarter and quarter < 4:
                self.last_quarter = quarter
                self.stream.write(self._text() + "\n")
                self.stream.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        secs = time.monotonic() - self.start
        self.stream.write(("\r" if self.tty else "") + self._text() + f"  done in {secs:.1f} s\n")
        self.stream.flush()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def dim(text: str, stream) -> str:
    """`text` in the terminal's dim style when `stream` is a terminal, else unchanged."""
    if getattr(stream, "isatty", lambda: False)():
        return f"\x1b[2m{text}\x1b[0m"
    return text
