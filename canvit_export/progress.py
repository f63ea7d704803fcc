"""Progress for long work: numbered stages with a live spinner and their durations, on stderr."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator

from rich.console import Console

# Wide enough for the parity table when stderr is a pipe or a CI log.
console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 140)


class Stages:
    """`with stages.stage("exporting"):` prints `[2/5] exporting ... 21.3 s`, spinning while it runs."""

    def __init__(self, total: int, *, quiet: bool = False) -> None:
        self.total, self.done, self.quiet = total, 0, quiet
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, label: str) -> Iterator[None]:
        self.done += 1
        prefix = f"[{self.done}/{self.total}] {label}"
        start = time.perf_counter()
        if self.quiet:
            yield
        else:
            with console.status(f"{prefix} ..."):
                yield
        self.seconds[label] = time.perf_counter() - start
        if not self.quiet:
            console.print(f"{prefix} [dim]{self.seconds[label]:.1f} s[/dim]")
