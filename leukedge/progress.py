"""Progress reporting that long steps share: rich bars on a terminal, silence in tests.

Library code reports through a :class:`Reporter`; the CLI passes a
:class:`RichReporter`. Keeping rich out of the library functions lets tests and
the Python API run them quietly.
"""

from __future__ import annotations

import time
from typing import Any


class Reporter:
    """No-op base: subclasses show what they like."""

    def task(self, description: str, total: int | None) -> Any:
        return None

    def advance(self, task: Any, n: int = 1, **fields: Any) -> None:
        pass

    def finish(self, task: Any) -> None:
        pass

    def log(self, message: str, level: str = "info") -> None:
        """Plain text (never markup: messages carry paths and hints like ``leukedge[trt-cu12]``).

        ``level`` is ``info`` or ``note`` (something the user should read).
        """


class PrintReporter(Reporter):
    """Plain lines, for logs and non-interactive runs (e.g. DDP worker 0 under torchrun)."""

    def __init__(self) -> None:
        self._tasks: dict[int, tuple[str, float]] = {}

    def task(self, description: str, total: int | None) -> Any:
        key = len(self._tasks)
        self._tasks[key] = (description, time.perf_counter())
        return key

    def finish(self, task: Any) -> None:
        desc, t0 = self._tasks.pop(task, ("", time.perf_counter()))
        print(f"{desc}: done in {time.perf_counter() - t0:.1f}s", flush=True)

    def log(self, message: str, level: str = "info") -> None:
        print(message, flush=True)


class RichReporter(Reporter):
    """Rich progress bars with rate fields (images/s) and a log line above them."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = console or Console()
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def task(self, description: str, total: int | None) -> Any:
        return self.progress.add_task(description, total=total, info="")

    def advance(self, task: Any, n: int = 1, **fields: Any) -> None:
        info = "  ".join(f"{k}={v}" for k, v in fields.items())
        self.progress.update(task, advance=n, info=info)

    def finish(self, task: Any) -> None:
        total = next((t.total for t in self.progress.tasks if t.id == task), None)
        self.progress.update(task, completed=total or 0)

    def log(self, message: str, level: str = "info") -> None:
        style = "yellow" if level == "note" else None
        self.progress.console.print(message, markup=False, highlight=False, style=style)
