"""Progress reporting for long work: a rich bar on a terminal, silence elsewhere."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Protocol


class Task(Protocol):
    def advance(self, n: int = 1) -> None: ...
    def update(self, completed: int) -> None: ...


class Progress(Protocol):
    def task(self, description: str, total: int | None = None) -> contextlib.AbstractContextManager[Task]: ...


class _NullTask:
    def advance(self, n: int = 1) -> None:
        pass

    def update(self, completed: int) -> None:
        pass


class NullProgress:
    """Reports nothing: for libraries, pipes and tests."""

    @contextlib.contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Task]:
        yield _NullTask()


class _RichTask:
    def __init__(self, bar, task_id):
        self._bar, self._id = bar, task_id

    def advance(self, n: int = 1) -> None:
        self._bar.advance(self._id, n)

    def update(self, completed: int) -> None:
        self._bar.update(self._id, completed=completed)


class RichProgress:
    """A progress bar on stderr, one line per step (phase).

    A step that counts rows without knowing how many there will be shows the rows so
    far and rows per second; a step with a known total shows a bar, its share done,
    done/total and the rate; every step shows its time.
    """

    def __init__(self, console=None):
        self._console = console

    @contextlib.contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Task]:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            ProgressColumn,
            SpinnerColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as Bar
        from rich.text import Text

        class Count(ProgressColumn):
            def render(self, task) -> Text:
                if task.total is not None:
                    return Text(f"{int(task.completed):,}/{int(task.total):,}")
                return Text(f"{int(task.completed):,} rows" if task.completed else "")

        class Rate(ProgressColumn):
            def render(self, task) -> Text:
                elapsed = task.finished_time if task.finished else task.elapsed
                if not task.completed or not elapsed:
                    return Text("")
                unit = " rows" if task.total is None else ""
                return Text(f"{task.completed / elapsed:,.0f}{unit}/s")

        columns: list = [SpinnerColumn(), TextColumn("{task.description}")]
        if total is not None:
            columns += [BarColumn(bar_width=20), TaskProgressColumn()]
        columns += [Count(), Rate(), TimeElapsedColumn()]
        console = self._console or Console(stderr=True)
        with Bar(*columns, console=console, transient=False) as bar:
            task_id = bar.add_task(description, total=total)
            yield _RichTask(bar, task_id)
            if total is not None:
                bar.update(task_id, completed=total)


def for_terminal() -> Progress:
    """A rich bar when stderr is a terminal, else nothing."""
    return RichProgress() if sys.stderr.isatty() else NullProgress()
