"""The `segengine` command line: parse options, call the library, print.

Every command that prints results takes ``--json`` for one JSON document on stdout.
Errors are one line on stderr; exit status 2 for bad input, 1 for other failures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from .errors import SegengineError


class Cli(click.Group):
    """A click group that turns segengine errors into one-line messages and exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SegengineError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: nothing was committed by the unfinished command", err=True)
            sys.exit(130)


def workspace(ctx: click.Context):
    from .api import Workspace

    return Workspace(ctx.obj["workspace"])


def emit(data: Any, as_json: bool, human: Any = None) -> None:
    """Print `data` as JSON, or call `human` (a function) / print it as text."""
    if as_json:
        click.echo(json.dumps(data, indent=1, default=str))
    elif callable(human):
        human()
    else:
        click.echo(human if human is not None else data)


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, show_edge=False, header_style="bold")
    for i, name in enumerate(columns):
        t.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        t.add_row(*[f"{v:,}" if isinstance(v, int) else str(v) for v in row])
    Console(soft_wrap=True).print(t)


def progress():
    from .progress import for_terminal

    return for_terminal()


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
as_of_option = click.option(
    "--as-of", "as_of", metavar="YYYY-MM-DD", help="Evaluation date (UTC); default today."
)


def engine_option(default: str = "auto"):
    return click.option(
        "--engine",
        default=default,
        show_default=True,
        metavar="NAME",
        help="duckdb | polars | index | auto | spark.",
    )


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-w",
    "--workspace",
    "workspace_dir",
    envvar="SEGENGINE_WORKSPACE",
    default=".",
    show_default="$SEGENGINE_WORKSPACE or .",
    type=click.Path(file_okay=False),
    help="The workspace directory.",
)
@click.version_option(package_name="segengine")
@click.pass_context
def main(ctx: click.Context, workspace_dir: str) -> None:
    """Count, export and send to email-marketing segments over large contact lists.

    \b
    Example:
      segengine init ws && cd ws
      segengine import contacts contacts.csv
      segengine count never-opened.yaml
    """
    ctx.obj = {"workspace": workspace_dir}


# --- workspace and imports ---------------------------------------------------------


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
def init(directory: str) -> None:
    """Create an empty workspace in DIRECTORY (new or empty).

    Example: segengine init ./ws
    """
    from .api import Workspace

    ws = Workspace.init(directory)
    click.echo(f"initialised workspace {ws.path}")


@main.group(name="import", cls=Cli)
def import_() -> None:
    """Import contacts or events from CSV or Parquet (SPEC section 3)."""


def _print_import(summary, as_json: bool) -> None:
    data = summary.as_dict()

    def human() -> None:
        rows = [["rows read", summary.read], ["imported", summary.imported]]
        if summary.kind == "contacts":
            rows.append(["updated", summary.updated])
        rows += [["rejected", summary.rejected], ["duplicates", summary.duplicates]]
        table(f"import {summary.kind}: {summary.file}", ["", "rows"], rows)
        if summary.new_fields:
            fields = ", ".join(f"{k} ({v})" for k, v in summary.new_fields.items())
            click.echo(f"new fields: {fields}")
        if summary.rejects_path:
            click.echo(f"rejected rows and reasons: {summary.rejects_path}")

    emit(data, as_json, human)


rejects_option = click.option(
    "--rejects",
    type=click.Path(dir_okay=False),
    help="Where to write the rejects report (default: the workspace's rejects/ folder).",
)
strict_option = click.option(
    "--strict", is_flag=True, help="Reject the whole file if any row is bad (exit 2, nothing written)."
)


@import_.command(name="contacts")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--types", metavar="NAME=TYPE,...", help="Types of new fields: text, number, date, datetime, boolean.")
@strict_option
@rejects_option
@json_option
@click.pass_context
def import_contacts(ctx, file, types, strict, rejects, as_json) -> None:
    """Import or update contacts from FILE (CSV or Parquet).

    Existing emails are updated: columns in the file overwrite, empty cells never
    erase, lists are merged, and an unsubscribed or bounced contact never becomes
    active again.

    Example: segengine import contacts contacts.csv --types zip=text
    """
    ws = workspace(ctx)
    summary = ws.import_contacts(file, types=types, strict=strict, rejects=rejects, progress=progress())
    _print_import(summary, as_json)


@import_.command(name="events")
@click.argument("file", type=click.Path(dir_okay=False))
@strict_option
@rejects_option
@json_option
@click.pass_context
def import_events(ctx, file, strict, rejects, as_json) -> None:
    """Import engagement events from FILE (CSV or Parquet); duplicates are stored once.

    Example: segengine import events events.parquet
    """
    ws = workspace(ctx)
    summary = ws.import_events(file, strict=strict, rejects=rejects, progress=progress())
    _print_import(summary, as_json)


@main.command()
@json_option
@click.pass_context
def info(ctx, as_json: bool) -> None:
    """Show what the workspace holds: contacts, events, fields, campaigns, segments."""
    data = workspace(ctx).info()

    def human() -> None:
        click.echo(f"workspace {data['workspace']} (version {data['version']})")
        by_status = data["contacts"]["by_status"]
        table("contacts", ["status", "contacts"], [[k, v] for k, v in by_status.items()]
              + [["total", data["contacts"]["total"]]])
        table("events", ["type", "events"], [[k, v] for k, v in data["events"]["by_type"].items()]
              + [["total", data["events"]["total"]]])
        table("fields", ["field", "type"], [[f["name"], f["type"]] for f in data["fields"]])
        if data["lists"]:
            table("lists", ["list", "contacts"], [[k, v] for k, v in data["lists"].items()])
        camps = data["campaigns"]
        if camps:
            shown = camps[:10]
            table(f"campaigns ({len(camps)}, latest first)", ["campaign", "send time", "sent", "opens", "clicks"],
                  [[c["campaign"], c["send_time"] or "-", c["sent"], c["opens"], c["clicks"]] for c in shown])
        click.echo("saved segments: " + (", ".join(data["segments"]) or "none"))

    emit(data, as_json, human)


@main.command()
@click.option("--contacts", "n_contacts", type=click.IntRange(min=1), required=True, help="Number of contacts.")
@click.option("--events", "n_events", type=click.IntRange(min=0), required=True, help="Approximate number of events.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same data).")
@click.option("-o", "--output", type=click.Path(file_okay=False), required=True, help="Output directory.")
@click.option("--format", "fmt", type=click.Choice(["parquet", "csv"]), default="parquet", show_default=True)
@json_option
def generate(n_contacts, n_events, seed, output, fmt, as_json) -> None:
    """Write a realistic synthetic data set (contacts and events) in the import format.

    Example: segengine generate --contacts 1000000 --events 20000000 --seed 1 -o data/1m
    """
    from .synth import generate as run

    bar = progress()
    with bar.task("generating events", total=n_events) as task:
        result = run(Path(output), contacts=n_contacts, events=n_events, seed=seed, fmt=fmt,
                     progress=lambda done, total: task.update(done))
    emit(result, as_json, lambda: click.echo(
        f"wrote {result['contacts_rows']:,} contacts to {result['contacts_path']} and "
        f"{result['events_rows']:,} events to {result['events_path']}"))


# --- segments ----------------------------------------------------------------------


@main.group(cls=Cli)
def segment() -> None:
    """Save, list, show and delete saved segments."""


@segment.command(name="save")
@click.argument("file", type=click.Path(dir_okay=False))
@click.pass_context
def segment_save(ctx, file: str) -> None:
    """Validate the definition in FILE (.json/.yaml) and save it under its name.

    Example: segengine segment save never-opened.yaml
    """
    seg = workspace(ctx).save_segment(file)
    click.echo(f"saved segment {seg.name}")


@segment.command(name="list")
@click.option("--counts", is_flag=True, help="Also count each segment now.")
@as_of_option
@engine_option()
@json_option
@click.pass_context
def segment_list(ctx, counts: bool, as_of, engine, as_json) -> None:
    """List saved segments (with --counts, their current counts)."""
    ws = workspace(ctx)
    segments = ws.segments()
    rows = []
    for name, seg in segments.items():
        row: dict[str, Any] = {"name": name, "description": seg.description}
        if counts:
            row["count"] = ws.count(name, as_of=as_of, engine=engine)
        rows.append(row)

    def human() -> None:
        if not rows:
            click.echo("no saved segments")
            return
        if counts:
            table(None, ["segment", "total", "active", "unsubscribed", "bounced", "description"],
                  [[r["name"], r["count"]["total"], *r["count"]["by_status"].values(), r["description"]]
                   for r in rows])
        else:
            table(None, ["segment", "description"], [[r["name"], r["description"]] for r in rows])

    emit(rows, as_json, human)


@segment.command(name="show")
@click.argument("name")
@json_option
@click.pass_context
def segment_show(ctx, name: str, as_json: bool) -> None:
    """Print a saved segment's definition (YAML, or JSON with --json)."""
    from .definition.rewrite import to_dict
    from .definition.yaml12 import dump_yaml

    ws = workspace(ctx)
    if name not in ws.snapshot().segments:
        ws.load_segment(name)  # raises a not-found error with a suggestion
    doc = to_dict(ws.load_segment(name))
    emit(doc, as_json, lambda: click.echo(dump_yaml(doc), nl=False))


@segment.command(name="delete")
@click.argument("name")
@click.pass_context
def segment_delete(ctx, name: str) -> None:
    """Delete a saved segment (refused while another segment references it)."""
    workspace(ctx).delete_segment(name)
    click.echo(f"deleted segment {name}")


# --- evaluating --------------------------------------------------------------------


def print_count(result: dict[str, Any], as_json: bool, title: str) -> None:
    def human() -> None:
        rows = [[status, n] for status, n in result["by_status"].items()]
        rows += [["total", result["total"]], ["sendable", result["sendable"]]]
        table(f"{title} (as of {result['as_of']})", ["status", "contacts"], rows)

    emit(result, as_json, human)


@main.command()
@click.argument("segments", nargs=-1, required=True)
@as_of_option
@engine_option()
@json_option
@click.pass_context
def count(ctx, segments, as_of, engine, as_json) -> None:
    """Count the contacts of the union of SEGMENTS, by status.

    SEGMENTS are saved names or .json/.yaml definition files; several mean their
    union, each contact once. `sendable` is how many an export or send reaches.

    Example: segengine count never-opened ca-ctos --as-of 2026-06-30
    """
    result = workspace(ctx).count(*segments, as_of=as_of, engine=engine)
    print_count(result, as_json, " + ".join(segments))


@main.command()
@click.argument("segment_arg", metavar="SEGMENT")
@click.option("--dialect", default="duckdb", show_default=True,
              help="duckdb | spark | postgres | snowflake | bigquery.")
@as_of_option
@click.pass_context
def sql(ctx, segment_arg, dialect, as_of) -> None:
    """Print one self-contained SELECT returning the segment's contact_id values.

    Example: segengine sql never-opened --dialect spark
    """
    click.echo(workspace(ctx).sql(segment_arg, dialect=dialect, as_of=as_of))


if __name__ == "__main__":  # pragma: no cover
    main()
