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
    """A progress bar on stderr, one line per step."""

    @contextlib.contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Task]:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as Bar

        columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn()]
        columns += [MofNCompleteColumn(), TimeElapsedColumn()]
        with Bar(*columns, console=Console(stderr=True), transient=False) as bar:
            task_id = bar.add_task(description, total=total)
            yield _RichTask(bar, task_id)
            if total is not None:
                bar.update(task_id, completed=total)


def for_terminal() -> Progress:
    """A rich bar when stderr is a terminal, else nothing."""
    return RichProgress() if sys.stderr.isatty() else NullProgress()
