"""Sync jobs: incremental exports for batch pipelines, exactly once (docs/sync.md).

A job exports the active contacts of its segments like `segengine export`, and after
its first run only the changes since its previous run: who joined (with the job's
columns) and who left (with the reason).

- `jobs.py`: a job's definition and committed state in the manifest, the member set
  as a Roaring bitmap of contact ids;
- `run.py`: one run: the changes, the two files written atomically, then the commit.

This layer builds on the export package (its cell rules and COPY options) and the
session; `segengine.api.Workspace.sync_*` is the public entry.
"""

from __future__ import annotations

from ..errors import JobExists, JobNotFound
from .jobs import create_job, delete_job, list_jobs, reset_job, show_job
from .run import SyncRunResult, SyncWriteError, run_job

__all__ = [
    "JobExists",
    "JobNotFound",
    "SyncRunResult",
    "SyncWriteError",
    "create_job",
    "delete_job",
    "list_jobs",
    "reset_job",
    "run_job",
    "show_job",
]
