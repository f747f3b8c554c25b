"""Every exception segengine raises.

The command line turns these into a one-line message on stderr and an exit status:
2 for bad input (the user can fix it), 1 for anything else.
"""

from __future__ import annotations

import re
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
class StorageError(SegengineError):
    """The disk refused a read or a write, or a workspace file is damaged."""

    exit_code = 1


#: what to do about an operating-system error, by errno name
OS_FIXES = {
    "ENOSPC": "no space left on the device: free some space and run the command again",
    "EDQUOT": "the disk quota is used up: free some space and run the command again",
    "EFBIG": "the file grew past a size limit (`ulimit -f`, or the file system's): "
             "raise the limit and run the command again",
    "EROFS": "the file system is read-only: remount it read-write, or copy the workspace "
             "somewhere writable",
    "EACCES": "permission denied: check the owner and modes (`ls -l`) and any immutable "
              "flag (`lsattr`)",
    "EPERM": "operation not permitted: check the owner and modes (`ls -l`) and any "
             "immutable flag (`lsattr`)",
    "EIO": "the device reported an I/O error: check the disk (`dmesg`)",
}
#: the same conditions as DuckDB and other libraries word them in their messages
OS_MESSAGES = {
    "No space left on device": "ENOSPC",
    "Disk quota exceeded": "EDQUOT",
    "File too large": "EFBIG",
    "Read-only file system": "EROFS",
    "Permission denied": "EACCES",
    "Operation not permitted": "EPERM",
    "Input/output error": "EIO",
}
UNCHANGED = "a workspace keeps its last completed commit"


def os_error_line(exc: BaseException) -> str | None:
    """One line for an operating-system failure (an OSError, or a library's error that
    quotes one), naming the file and the fix; None when `exc` is not one."""
    import errno

    if isinstance(exc, OSError):
        name = errno.errorcode.get(exc.errno or 0, "")
        where = exc.filename or ""
        fix = OS_FIXES.get(name) or (exc.strerror or str(exc))
        return f"{where}: {fix} ({UNCHANGED})" if where else f"{fix} ({UNCHANGED})"
    text = str(exc)
    for words, name in OS_MESSAGES.items():
        if words in text:
            where = ""
            for quote in ('"', "'"):
                start = text.find(quote)
                end = text.find(quote, start + 1)
                if start >= 0 and end > start:
                    where = text[start + 1:end]
                    break
            prefix = f"{where}: " if where else ""
            return f"{prefix}{OS_FIXES[name]} ({UNCHANGED})"
    # a reader (DuckDB, Polars, Arrow) failing on a workspace file: damage the manifest
    # has no checksum for (a workspace written before checksums existed)
    found = WORKSPACE_FILE_RE.search(text)
    if found and type(exc).__module__.split(".")[0].lstrip("_") in READERS:
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        return (f"{found.group(0)} cannot be read ({first[:200]}): run `segengine verify`; "
                "an index file is rebuilt by `segengine reindex`, a data file must come from a backup")
    return None


#: a committed file's workspace-relative path inside a library's message
WORKSPACE_FILE_RE = re.compile(r"(?:data|index)/[\w.-]+(?:/[\w.-]+)*\.(?:parquet|npy|bin|arrow|json)")
#: libraries whose errors on a workspace file are reported as damage
READERS = ("duckdb", "polars", "pyarrow", "numpy", "pyroaring")
