"""`segengine demo`: the main job end to end on the committed sample.

Creates a workspace, imports the sample contacts and events, saves the seed's example
segments, counts each of them and their union, and exports the "never opened" segment.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .api import Workspace
from .errors import InputError
from .store.workspace import MARKER

REPO_DATA = Path(__file__).resolve().parent.parent / "data"


def run_demo(directory: Path, say: Callable[[str], None], data: Path = REPO_DATA) -> dict[str, Any]:
    sample, segments = data / "sample", data / "segments"
    if not (sample / "contacts.csv").is_file() or not segments.is_dir():
        raise InputError(
            f"the sample data is not at {data}: run the demo from a checkout of the repository"
        )
    if directory.exists():
        if not (directory / MARKER).exists():
            raise InputError(f"{directory} exists and is not a workspace: choose another directory")
        shutil.rmtree(directory)  # a previous demo run
    ws = Workspace.init(directory)
    say(f"1. created workspace {ws.path}")
    c = ws.import_contacts(sample / "contacts.csv")
    e = ws.import_events(sample / "events.csv")
    say(f"2. imported {c.imported:,} contacts and {e.imported:,} events from {sample}")
    names = []
    for path in sorted(segments.glob("*.yaml")):
        names.append(ws.save_segment(path).name)
    say(f"3. saved segments: {', '.join(names)}")
    counts = {name: ws.count(name) for name in names}
    union = ws.count(*names)
    # beside the workspace, never in it: an output file inside could replace committed data
    export_path = directory.parent / f"{directory.name}-never-opened.csv"
    exported = ws.export("never-opened", output=export_path).as_dict()
    # The classic follow-up, shown as a dry run: unsubscribe who never opened anything.
    dry_run = ws.unsubscribe("never-opened", dry_run=True).as_dict()
    return {"workspace": str(ws.path), "counts": counts, "union": union, "export": exported,
            "unsubscribe_dry_run": dry_run}
