"""Every exception segengine raises.

The command line turns these into a one-line message on stderr and an exit status:
2 for bad input (the user can fix it), 1 for anything else.
"""

from __future__ import annotations

from dataclasses import dataclass


class SegengineError(Exception):
    """Base class of all segengine errors."""

    exit_code = 1


class InputError(SegengineError, ValueError):
    """Bad input: a wrong option, file, value or definition. Nothing was changed."""

    exit_code = 2


class WorkspaceError(InputError):
    """The path is not a usable workspace (missing, not initialised, wrong format)."""


class WorkspaceBusy(SegengineError):
    """Another process holds the workspace's write lock."""

    exit_code = 1


class ImportRejected(InputError):
    """An import was refused as a whole (`--strict`, a type conflict, a broken file)."""


class EngineError(InputError):
    """The chosen engine cannot answer this request (e.g. `--engine index` on a rule it lacks)."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem found in a segment definition, at `path` (e.g. ``rules[2].op``)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class DefinitionError(InputError):
    """A segment definition is invalid; `problems` lists every problem found at once."""

    def __init__(self, problems: list[Problem] | Problem | str, source: str | None = None):
        if isinstance(problems, str):
            problems = [Problem("", problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems = list(problems)
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__(prefix + "; ".join(str(p) for p in self.problems))


class SegmentNotFound(DefinitionError):
    """A segment name that is neither saved nor a definition file."""


class ReferenceCycle(DefinitionError):
    """Saved segments that reference each other in a loop."""


class JobNotFound(InputError):
    """A sync job name that is not saved (docs/sync.md)."""


class JobExists(InputError):
    """Creating a sync job under a name that is taken."""
