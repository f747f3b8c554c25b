"""Regenerate docs/commands.md from the commands' own --help:

    .venv/bin/python docs/generate_commands.py > docs/commands.md
"""

import click

from segengine.cli import main

HEADER = """# Command reference

Every command that prints results takes `--json` for one JSON document on stdout;
errors are one line on stderr with exit status 2 for bad input and 1 otherwise.
An import whose every row was rejected exits 1 as well ([importing.md](importing.md)).
`-w/--workspace DIR` (default `$SEGENGINE_WORKSPACE`, else `.`) picks the workspace.

Tables fit the terminal; piped or redirected (`| cat`, `> file`) they print every
value whole on one line, for `grep`, `cut` and `less -S`. Progress goes to stderr,
and only on a terminal.

`export` replaces an existing file whole and atomically, as a job that rewrites the
same file every night expects; `--no-clobber` refuses (exit 2) instead. The format comes
from `--format`, else from the name (`.csv`, `.parquet`, `.pq`; no extension means
CSV); a name whose extension says another format (`-o audience.xlsx`, or `-o a.csv
--format parquet`) is refused rather than written as something it is not.

This page is the `--help` of each command, made by `docs/generate_commands.py`.
"""


def walk(cmd: click.Command, path: list[str]) -> None:
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.commands):
            walk(cmd.commands[name], [*path, name])
        return
    ctx = click.Context(cmd, info_name=" ".join(path))
    print(f"## `{' '.join(path)}`\n\n```\n{cmd.get_help(ctx).rstrip()}\n```\n")


if __name__ == "__main__":
    print(HEADER)
    walk(main, ["segengine"])
