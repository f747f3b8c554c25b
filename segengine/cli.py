"""The `segengine` command line: parse options, call the library, print.

Every command that prints results takes ``--json`` for one JSON document on stdout.
Errors are one line on stderr; exit status 2 for bad input, 1 for other failures.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import sys
from pathlib import Path
from typing import Any

# Before numpy loads: its OpenBLAS starts a thread per core at import, ~60 ms of a
# one-shot command here, and segengine does no linear algebra. A user's own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import click

from .errors import SegengineError, os_error_line

# At exit the interpreter's last garbage collection walks every object the process
# made (numpy's, the index's, every module's): ~20 ms of a 200 ms count. The process
# ends right after, so its objects are frozen out of that walk (after every other exit
# handler has run: they run last registered, first) and the OS takes the memory back.
atexit.register(gc.freeze)


class Cli(click.Group):
    """A click group that turns segengine errors into one-line messages and exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SegengineError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except Exception as exc:
            # a full or read-only disk, a permission: one line naming the file and the fix
            line = os_error_line(exc)
            if line is None:
                raise
            click.echo(f"error: {line}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted: the workspace holds the last completed commit", err=True)
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
    """Print a table: fitted to a terminal; with whole values when piped or redirected.

    The first column and columns of text are left-aligned, columns of numbers right.
    """
    import io

    from rich.console import Console
    from rich.table import Table

    if title:
        # Above the table, not centred over it: a long file name stays on one line.
        click.echo(title)
    t = Table(show_edge=False, header_style="bold")
    for i, name in enumerate(columns):
        numbers = all(isinstance(r[i], int | float) or r[i] in ("-", None) for r in rows)
        t.add_column(name, justify="right" if i and numbers and rows else "left")
    for row in rows:
        t.add_row(*[f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v) for v in row])
    if sys.stdout.isatty():
        Console(soft_wrap=True).print(t)
        return
    # A program or file reading the output wants every value whole, never cut or
    # wrapped to an imagined 80-column screen.
    out = io.StringIO()
    Console(file=out, width=1_000_000, no_color=True, highlight=False).print(t)
    for line in out.getvalue().splitlines():
        click.echo(line.rstrip())


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
@json_option
def init(directory: str, as_json: bool) -> None:
    """Create an empty workspace in DIRECTORY (new or empty).

    Example: segengine init ./ws
    """
    from .api import Workspace

    ws = Workspace.init(directory)
    emit({"workspace": str(ws.path)}, as_json, f"initialised workspace {ws.path}")


@main.group(name="import", cls=Cli)
def import_() -> None:
    """Import contacts or events from CSV or Parquet (rules: docs/importing.md).

    Exit status: 0 when the import ran (rows it rejected, if any, are listed in the
    rejects report); 1 when every row of the file was rejected, so nothing was
    imported; 2 when the file cannot be read or, with --strict, has a bad row.
    """


def _print_import(summary, as_json: bool) -> None:
    data = summary.as_dict()

    def human() -> None:
        rows = [["rows read", summary.read], ["imported", summary.imported]]
        if summary.kind == "contacts":
            rows += [["updated", summary.updated], ["unchanged", summary.unchanged]]
        rows += [["rejected", summary.rejected], ["duplicates", summary.duplicates]]
        table(f"import {summary.kind}: {summary.file}", ["", "rows"], rows)
        if summary.new_fields:
            fields = ", ".join(f"{k} ({v})" for k, v in summary.new_fields.items())
            click.echo(f"new fields: {fields}")
        if summary.rejects_path:
            click.echo(f"rejected rows and reasons: {summary.rejects_path}")

    emit(data, as_json, human)
    if not summary.rejected:
        return
    first = summary.first_rejects[0] if summary.first_rejects else None
    why = f" (first: line {first['line']}: {first['reason']})" if first else ""
    where = f"; every reason is in {summary.rejects_path}" if summary.rejects_path else ""
    if summary.all_rejected:
        # A cron job must notice an import that did nothing: exit 1, loudly on stderr.
        rows = f"all {summary.rejected:,} rows" if summary.rejected > 1 else "the only row"
        click.echo(f"error: {rows} of {summary.file} rejected, nothing was imported{why}{where}",
                   err=True)
        sys.exit(1)
    click.echo(f"warning: {summary.rejected:,} of {summary.read:,} rows rejected{why}{where}", err=True)


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
    active again. The summary counts existing contacts whose values changed as
    updated, the others as unchanged. Column names email, status, date_added and
    lists match in any case (Email, STATUS); custom field names are exact.

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

    Columns: email, campaign, type, timestamp and optionally url, in any case.

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
@json_option
@click.pass_context
def reindex(ctx, as_json: bool) -> None:
    """Rebuild the engagement index from scratch (after an upgrade, or a damaged index).

    Every import, unsubscribe and send keeps the index current by itself; an index built
    by an older segengine keeps answering until the next of those rebuilds it, and this
    rebuilds it now. The workspace is locked while it runs.

    Example: segengine -w ws reindex
    """
    result = workspace(ctx).reindex(progress=progress())
    emit(result, as_json, lambda: click.echo(
        f"rebuilt the engagement index {result['path']} in {result['seconds']:.1f} s"))


@main.command()
@click.option("--contacts", "n_contacts", type=click.IntRange(min=1), required=True, help="Number of contacts.")
@click.option("--events", "n_events", type=click.IntRange(min=0), required=True, help="Approximate number of events.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same data).")
@click.option("-o", "--output", type=click.Path(file_okay=False), required=True, help="Output directory.")
@click.option("--format", "fmt", type=click.Choice(["parquet", "csv"]), default="parquet", show_default=True)
@json_option
def generate(n_contacts, n_events, seed, output, fmt, as_json) -> None:
    """Write a realistic synthetic data set (contacts and events) in the import format.

    The data ends on a fixed date whatever the day you run it (the same seed gives
    the same data), so count it with the --as-of date it prints: rules such as
    "opened in the last 30 days" count back from --as-of, which defaults to today.

    Example: segengine generate --contacts 1000000 --events 20000000 --seed 1 -o data/1m
    """
    from .synth import generate as run

    bar = progress()
    with bar.task("generating events", total=n_events) as task:
        result = run(Path(output), contacts=n_contacts, events=n_events, seed=seed, fmt=fmt,
                     progress=lambda done, total: task.update(done))
    emit(result, as_json, lambda: click.echo(
        f"wrote {result['contacts']:,} contacts to {result['contacts_path']} and "
        f"{result['events']:,} events to {result['events_path']}\n"
        f"the data ends on {result['as_of']}: count it with --as-of {result['as_of']} "
        "(relative rules such as in_last_days count back from --as-of, default today)"))


@main.command()
@click.argument("directory", type=click.Path(file_okay=False), default="demo-workspace")
@json_option
def demo(directory: str, as_json: bool) -> None:
    """Run the main job on the bundled sample: import, save, count and export segments.

    Creates (or re-creates) the workspace DIRECTORY (default ./demo-workspace).
    """
    from .demo import run_demo

    result = run_demo(Path(directory), say=(lambda _msg: None) if as_json else click.echo)

    def human() -> None:
        rows = [[name, c["total"], *c["by_status"].values(), c["sendable"]]
                for name, c in result["counts"].items()]
        u = result["union"]
        rows.append(["union of all", u["total"], *u["by_status"].values(), u["sendable"]])
        table(f"4. counts (as of {u['as_of']})",
              ["segment", "total", "active", "unsubscribed", "bounced", "sendable"], rows)
        click.echo(f"5. exported {result['export']['rows']:,} active never-opened contacts "
                   f"to {result['export']['path']}")
        dry = result["unsubscribe_dry_run"]
        click.echo(f"6. unsubscribe --segment never-opened --dry-run: {dry['matched']:,} matched, "
                   f"{dry['changed']:,} would change (nothing written)")
        click.echo(f"try: segengine -w {result['workspace']} info")

    emit(result, as_json, human)


# --- segments ----------------------------------------------------------------------


@main.group(cls=Cli)
def segment() -> None:
    """Save, list, show and delete saved segments."""


@segment.command(name="save")
@click.argument("file", type=click.Path(dir_okay=False))
@json_option
@click.pass_context
def segment_save(ctx, file: str, as_json: bool) -> None:
    """Validate the definition in FILE (.json/.yaml) and save it under its name.

    Example: segengine segment save never-opened.yaml
    """
    seg = workspace(ctx).save_segment(file)
    emit({"saved": seg.name, "file": file}, as_json, f"saved segment {seg.name}")


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
@json_option
@click.pass_context
def segment_delete(ctx, name: str, as_json: bool) -> None:
    """Delete a saved segment (refused while another segment references it)."""
    workspace(ctx).delete_segment(name)
    emit({"deleted": name}, as_json, f"deleted segment {name}")


# --- evaluating --------------------------------------------------------------------


def print_count(result: dict[str, Any], as_json: bool, title: str) -> None:
    def human() -> None:
        rows = [[status, n] for status, n in result["by_status"].items()]
        rows += [["total", result["total"]], ["sendable", result["sendable"]]]
        table(f"{title} (as of {result['as_of']})", ["status", "contacts"], rows)
        if "elapsed_ms" in result:
            click.echo(f"counted in {result['elapsed_ms']:,.1f} ms")

    emit(result, as_json, human)


spark_master_option = click.option(
    "--spark-master", metavar="URL",
    help="With --engine spark: the cluster (spark://..., yarn, k8s://..., local[N]); "
    "default $SPARK_MASTER, else local[*].",
)


def start_spark(engine: str, master: str | None) -> None:
    """`--spark-master`: start the session that the spark engine then picks up."""
    if master is None:
        return
    from .errors import InputError

    if engine != "spark":
        raise InputError("--spark-master goes with --engine spark")
    from .api import spark_session

    spark_session(master)


def count_in_place(ctx, segments, as_of, engine, contacts, events, master) -> dict[str, Any]:
    """`count --contacts/--events`: data never imported; saved names only with -w."""
    from click.core import ParameterSource

    from .api import count_tables
    from .errors import InputError

    if not contacts:
        raise InputError("--events goes with --contacts (the contacts to count)")
    given = ctx.find_root().get_parameter_source("workspace_dir") is not ParameterSource.DEFAULT
    return count_tables(
        list(segments), contacts=contacts, events=events or (), engine=engine, as_of=as_of,
        workspace=ctx.obj["workspace"] if given else None, spark_master=master,
    )


@main.command()
@click.argument("segments", nargs=-1, required=True)
@as_of_option
@engine_option()
@click.option("--contacts", "contacts_at", metavar="PATH",
              help="With --engine spark: Parquet contacts never imported (file, folder or glob).")
@click.option("--events", "events_at", metavar="PATH",
              help="With --contacts: the Parquet events that go with them.")
@spark_master_option
@click.option("--priority", is_flag=True,
              help="Count SEGMENTS as a priority list: each contact for the first it matches.")
@json_option
@click.pass_context
def count(ctx, segments, as_of, engine, contacts_at, events_at, spark_master, priority,
          as_json) -> None:
    """Count the contacts of the union of SEGMENTS, by status.

    SEGMENTS are saved names or .json/.yaml definition files; several mean their
    union, each contact once. `sendable` is how many an export or send reaches.
    The time the count took ends the table (`elapsed_ms` with --json).
    With --contacts/--events (and --engine spark) the data is read where it lives
    and SEGMENTS are definition files, or saved names of the workspace given by -w.

    With --priority, each segment gets the contacts it matches that no earlier one
    does (docs/analytics.md): per segment what it gets and what it loses.

    \b
    Example: segengine count never-opened ca-ctos --as-of 2026-06-30
    Example: segengine count vip newsletter everyone --priority
    Example: segengine count never-opened.yaml --engine spark \\
               --contacts s3a://crm/contacts/ --events s3a://crm/events/
    """
    import time

    if priority:
        count_priority(ctx, segments, as_of, engine, bool(contacts_at or events_at), as_json)
        return

    if contacts_at or events_at:
        started = time.perf_counter()
        result = count_in_place(ctx, segments, as_of, engine, contacts_at, events_at, spark_master)
    else:
        start_spark(engine, spark_master)
        ws = workspace(ctx)
        started = time.perf_counter()
        result = ws.count(*segments, as_of=as_of, engine=engine)
    result = {**result, "elapsed_ms": round((time.perf_counter() - started) * 1000, 1)}
    print_count(result, as_json, " + ".join(segments))


@main.command()
@click.argument("segment_arg", metavar="SEGMENT")
@as_of_option
@engine_option()
@json_option
@click.pass_context
def explain(ctx, segment_arg, as_of, engine, as_json) -> None:
    """Show how many contacts each rule and group of SEGMENT matches on its own.

    Field rules also show how many contacts have no value for the field, so you see
    at once why a segment is small or large.

    Example: segengine explain inactive-newsletter
    """
    from .explain import render

    result = workspace(ctx).explain(segment_arg, as_of=as_of, engine=engine)
    tree = result.pop("_tree")

    def human() -> None:
        click.echo(f"segment {result['segment']} (as of {result['as_of']}, "
                   f"{result['contacts']:,} contacts in the workspace)")
        click.echo(f"{'matches':>12} {'share':>6}  rule")
        for line in render(tree, result["contacts"]):
            click.echo(line)

    emit(result, as_json, human)


@main.command()
@click.argument("segment_arg", metavar="SEGMENT")
@click.option("--dialect", default="duckdb", show_default=True,
              help="duckdb | spark | postgres | snowflake | bigquery.")
@as_of_option
@json_option
@click.pass_context
def sql(ctx, segment_arg, dialect, as_of, as_json) -> None:
    """Print one self-contained SELECT returning the segment's contact_id values.

    The query reads two tables, contacts and events, laid out as the workspace stores
    them (docs/architecture.md); relative dates are fixed at --as-of.

    Example: segengine sql never-opened --dialect spark
    """
    from .api import parse_as_of

    day = parse_as_of(as_of)
    text = workspace(ctx).sql(segment_arg, dialect=dialect, as_of=day)
    emit({"segment": segment_arg, "dialect": dialect, "as_of": day.isoformat(), "sql": text},
         as_json, text)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback needs a token.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--token-file", type=click.Path(dir_okay=False),
              help="File holding the access token (default: $SEGENGINE_TOKEN).")
@click.pass_context
def serve(ctx, host: str, port: int, token_file: str | None) -> None:
    """Serve the HTTP API and the web segment builder over the workspace.

    Answers every request from the newest commit; never blocks writers.

    \b
    Example: segengine -w ws serve --port 8000   (then open http://127.0.0.1:8000/)
    """
    from .server import read_token
    from .server import serve as run

    run(ctx.obj["workspace"], host=host, port=port, token=read_token(token_file),
        say=lambda text: click.echo(text, err=True))


# --- export, unsubscribe, resubscribe, history -------------------------------------


@main.command()
@click.argument("segments", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Path(), required=True,
              help="The file to write (with --partitioned: a new or empty directory, or a URI).")
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]),
              help="Default: from the file name, parquet for .parquet/.pq, csv for .csv "
              "or no extension; another extension needs --format.")
@click.option("--no-clobber", is_flag=True,
              help="Refuse (exit 2) if the output file exists, instead of replacing it.")
@click.option("--columns", metavar="A,B,...",
              help="Fields to write (default: email, then the custom fields).")
@click.option("--raw", is_flag=True,
              help="CSV: no leading ' on cells that look like formulas (for programs).")
@as_of_option
@engine_option()
@click.option("--partitioned", is_flag=True,
              help="With --engine spark: Spark writes a directory of part files in email order.")
@click.option("--contacts", "contacts_at", metavar="PATH",
              help="With --engine spark --partitioned: Parquet contacts never imported.")
@click.option("--events", "events_at", metavar="PATH",
              help="With --contacts: the Parquet events that go with them.")
@spark_master_option
@click.option("--label-column", metavar="NAME",
              help="Add a column NAME holding the first of SEGMENTS each contact matches.")
@json_option
@click.pass_context
def export(ctx, segments, output, fmt, columns, raw, as_of, engine, partitioned, contacts_at,
           events_at, spark_master, no_clobber, label_column, as_json) -> None:
    """Write the active contacts of the union of SEGMENTS to a file, ordered by email.

    Each contact appears once. The file appears complete or not at all: an existing
    file is replaced atomically, as a nightly job that rewrites it expects
    (--no-clobber refuses instead). With --engine spark --partitioned, Spark writes a directory of
    part files instead (a new or empty one): in name order they hold the same rows in
    the same order (each CSV part starts with the header).

    With --label-column NAME, the last column says which audience each row belongs to:
    the first of SEGMENTS, in the order given, that the contact matches.

    \b
    Example: segengine export never-opened ca-ctos -o audience.csv --columns email,first_name
    Example: segengine export vip newsletter -o send.csv --label-column audience
    Example: segengine export never-opened -o audience/ --engine spark --partitioned
    """
    from .errors import InputError

    if partitioned and engine != "spark":
        from .api import PARTITIONED_NEEDS_SPARK

        raise InputError(PARTITIONED_NEEDS_SPARK)
    if not partitioned:
        fmt = export_format(output, fmt)
        if no_clobber and Path(output).expanduser().is_file():
            raise InputError(f"-o {output}: the file exists (--no-clobber): choose another "
                             "name, or drop --no-clobber to replace it")
    if label_column is not None and (contacts_at or events_at):
        raise InputError("--label-column exports from the workspace: leave out --contacts/--events")
    if contacts_at or events_at:
        result = export_in_place(ctx, segments, output, fmt, columns, raw, as_of, engine,
                                 partitioned, contacts_at, events_at, spark_master)
    else:
        start_spark(engine, spark_master)
        result = workspace(ctx).export(
            *segments, output=output, format=fmt, columns=columns, raw=raw, as_of=as_of,
            engine=engine, partitioned=partitioned, progress=progress(), label_column=label_column,
        )
    parts = f" in {result.files:,} part files" if result.files is not None else ""
    emit(result.as_dict(), as_json,
         lambda: click.echo(f"wrote {result.rows:,} contacts to {result.path}{parts}"))


#: file name extensions that say which format an export writes
EXPORT_EXTENSIONS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def export_format(output: str, fmt: str | None) -> str:
    """The format to write: --format, else the file name's; refuse names that contradict it.

    Writing CSV into `audience.xlsx` would give a file that says it is something else.
    """
    from .errors import InputError

    suffix = Path(output).suffix.lower()
    named = EXPORT_EXTENSIONS.get(suffix)
    if fmt is None:
        # `audience.2026-11-01` has no extension to contradict, `audience.xlsx` has.
        if named is None and suffix[1:2].isalpha():
            raise InputError(
                f"-o {output}: export writes csv or parquet, not {suffix}: name the file "
                ".csv or .parquet, or pass --format csv to write CSV under this name"
            )
        return named or "csv"
    if named is not None and named != fmt:
        raise InputError(f"-o {output} names a {named} file but --format is {fmt}: make them agree")
    return fmt


def export_in_place(ctx, segments, output, fmt, columns, raw, as_of, engine, partitioned,
                    contacts, events, master):
    """`export --contacts/--events`: data never imported, written by Spark as part files."""
    from click.core import ParameterSource

    from .api import export_tables
    from .errors import InputError

    if not contacts:
        raise InputError("--events goes with --contacts (the contacts to export)")
    if not partitioned or engine != "spark":
        raise InputError("--contacts/--events export needs --engine spark --partitioned")
    given = ctx.find_root().get_parameter_source("workspace_dir") is not ParameterSource.DEFAULT
    return export_tables(
        list(segments), output, contacts=contacts, events=events or (), fmt=fmt,
        columns=columns, raw=raw, as_of=as_of, engine=engine,
        workspace=ctx.obj["workspace"] if given else None, spark_master=master,
        progress=progress(),
    )


def _print_subscription(result, as_json: bool, command: str) -> None:
    def human() -> None:
        title = f"{command} (dry run: nothing changed)" if result.dry_run else command
        changed = "would change" if result.dry_run else "changed"
        table(title, ["", "contacts"], [["matched", result.matched], [changed, result.changed],
                                        ["unknown emails", result.unknown]])
        if result.report:
            click.echo(f"unknown emails listed in {result.report}")

    emit(result.as_dict(), as_json, human)


report_option = click.option(
    "--report", type=click.Path(dir_okay=False),
    help="Write the unknown emails (line, email) to this CSV file.",
)
dry_run_option = click.option("--dry-run", is_flag=True, help="Report what would change; change nothing.")


@main.command()
@click.option("--segment", "segments", multiple=True, metavar="SEG",
              help="A segment whose contacts to unsubscribe; repeat for several.")
@click.option("--emails", type=click.Path(dir_okay=False),
              help="CSV with an email column (or a single column) of addresses.")
@dry_run_option
@as_of_option
@report_option
@engine_option()
@json_option
@click.pass_context
def unsubscribe(ctx, segments, emails, dry_run, as_of, report, engine, as_json) -> None:
    """Unsubscribe the active contacts of segments or of an emails file.

    Bounced contacts stay bounced; each changed contact gets an `unsubscribe` event
    (campaign bulk-unsubscribe). Unknown emails are reported, never created. Running
    it again changes nothing.

    Example: segengine unsubscribe --emails complaints.csv --report unknown.csv
    """
    result = workspace(ctx).unsubscribe(
        *segments, emails=emails, dry_run=dry_run, as_of=as_of, report=report, engine=engine,
        progress=progress(),
    )
    _print_subscription(result, as_json, "unsubscribe")


@main.command()
@click.option("--emails", type=click.Path(dir_okay=False), required=True,
              help="CSV with an email column (or a single column) of addresses.")
@click.option("--reason", help="Why these contacts may be emailed again (kept in the status log).")
@click.option("--include-bounced", is_flag=True, help="Also make bounced contacts active.")
@dry_run_option
@report_option
@json_option
@click.pass_context
def resubscribe(ctx, emails, reason, include_bounced, dry_run, report, as_json) -> None:
    """Make unsubscribed contacts of an emails file active again (the only way back).

    A reason is required; it is recorded with each change in the status log, which
    `segengine history EMAIL` shows.

    Example: segengine resubscribe --emails optins.csv --reason "opted in again via form"
    """
    result = workspace(ctx).resubscribe(
        emails, reason=reason, include_bounced=include_bounced, dry_run=dry_run, report=report,
        progress=progress(),
    )
    _print_subscription(result, as_json, "resubscribe")


@main.command()
@click.argument("email")
@json_option
@click.pass_context
def history(ctx, email, as_json) -> None:
    """Show a contact's fields, status changes and events, oldest first.

    Example: segengine history jane@example.com
    """
    found = workspace(ctx).history(email)

    def text(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, list):
            return "; ".join(value)
        return "" if value is None else str(value)

    def human() -> None:
        table(f"contact {found.email}", ["field", "value"],
              [[name, text(value)] for name, value in found.as_dict()["fields"].items()])
        rows = [[row["timestamp"],
                 f"{row['from_status']} -> {row['to_status']}" if row["kind"] == "status" else row["type"],
                 row.get("command") or row.get("campaign") or "",
                 row.get("reason") or row.get("url") or ""]
                for row in found.timeline()]
        if rows:
            table("history", ["time (UTC)", "what", "command / campaign", "reason / url"], rows)
        else:
            click.echo("no status changes or events")

    emit(found.as_dict(), as_json, human)


# --- sending -----------------------------------------------------------------------


def _read_template(path: str | None, option: str) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        from .errors import InputError

        raise InputError(f"{option}: cannot read {path}: {exc}") from None


def _print_send(result, as_json: bool) -> None:
    data = result.as_dict()

    def human() -> None:
        if data.get("dry_run"):
            click.echo(f"dry run of campaign {result.campaign}: {result.audience:,} active contacts, "
                       f"{result.to_send:,} would get the message, {result.skipped:,} already have it")
            if result.sample is not None:
                click.echo(f"\nsample message to {result.sample_to}:\n\n{result.sample}")
        else:
            table(f"send {result.campaign}", ["", "contacts"],
                  [["audience", result.audience], ["sent", result.sent], ["failed", result.failed],
                   ["bounced", result.bounced], ["skipped", result.skipped],
                   ["uncertain", len(result.uncertain)]])
            for email, why in result.failures[:10]:
                click.echo(f"failed: {email}: {why}", err=True)
        if result.uncertain:
            click.echo("uncertain (maybe delivered by an interrupted run; resent only with "
                       "--retry-uncertain): " + ", ".join(sorted(result.uncertain)[:20]), err=True)

    emit(data, as_json, human)


@main.command()
@click.argument("campaign")
@click.option("--segment", "segments", multiple=True, required=True, metavar="SEG",
              help="A segment to send to; repeat for several (their union, each contact once).")
@click.option("--subject", required=True, help="Subject template; {{field}} merge tags allowed.")
@click.option("--html", "html_file", required=True, type=click.Path(dir_okay=False),
              help="HTML body template file.")
@click.option("--text", "text_file", type=click.Path(dir_okay=False),
              help="Text body template file (default: derived from the HTML).")
@click.option("--from", "from_addr", required=True, metavar="ADDR", help="Sender address.")
@click.option("--smtp", required=True, metavar="HOST:PORT", help="SMTP server.")
@click.option("--tls", type=click.Choice(["starttls", "ssl", "none"]), default="starttls",
              show_default=True,
              help="starttls: upgrade the connection (refused if the server cannot); ssl: "
                   "implicit TLS (port 465); none: unencrypted, only when you ask for it.")
@click.option("--ca-file", type=click.Path(dir_okay=False), metavar="PEM",
              help="Trust this CA (PEM) for the server's certificate instead of the system's.")
@click.option("--user", metavar="NAME",
              help="Log in as NAME (AUTH PLAIN/LOGIN); the password comes from "
                   "$SEGENGINE_SMTP_PASSWORD only.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True),
              help="At most this many messages per second (whole send).")
@click.option("--connections", type=click.IntRange(min=1), default=4, show_default=True,
              help="SMTP connections delivering in parallel.")
@click.option("--unsubscribe-url", metavar="TEMPLATE",
              help="List-Unsubscribe URL with {{token}} (default: mailto: the sender).")
@click.option("--dry-run", is_flag=True, help="Show the audience and one sample; connect to nothing.")
@click.option("--retry-uncertain", is_flag=True,
              help="Also resend deliveries an interrupted run left uncertain.")
@as_of_option
@json_option
@click.pass_context
def send(ctx, campaign, segments, subject, html_file, text_file, from_addr, smtp, tls, ca_file, user,
         rate, connections, unsubscribe_url, dry_run, retry_uncertain, as_of, as_json) -> None:
    """Send CAMPAIGN to the active contacts of the segments over SMTP.

    Interrupted (Ctrl-C, crash, kill)? Run the same command again: it sends only to
    contacts who have not got the message. See docs/sending.md.

    Example: segengine send spring-sale --segment newsletter --subject "Hi {{first_name}}"
    --html sale.html --from news@example.com --smtp localhost:8025 --rate 200
    """
    result = workspace(ctx).send(
        campaign, *segments, subject=subject, html=_read_template(html_file, "--html"),
        text=_read_template(text_file, "--text"), from_addr=from_addr, smtp=smtp, rate=rate,
        connections=connections, unsubscribe_url=unsubscribe_url, dry_run=dry_run,
        retry_uncertain=retry_uncertain, as_of=as_of, progress=progress(), tls=tls,
        ca_file=ca_file, user=user,
    )
    _print_send(result, as_json)



# --- splits and priorities -----------------------------------------------------------


def count_priority(ctx, segments, as_of, engine, in_place: bool, as_json: bool) -> None:
    """`count --priority`: each contact counted for the first of SEGMENTS it matches."""
    from .errors import InputError

    if in_place:
        raise InputError("--priority counts the workspace's segments: leave out --contacts/--events")
    result = workspace(ctx).priority(*segments, as_of=as_of, engine=engine)

    def human() -> None:
        rows = [[r["segment"], r["matched"], r["total"], r["sendable"], r["lost"]]
                for r in result["segments"]]
        rows.append(["union", result["union"]["total"], result["union"]["total"],
                     result["union"]["sendable"], "-"])
        table(f"priority {' > '.join(r['segment'] for r in result['segments'])} "
              f"(as of {result['as_of']})",
              ["segment", "matches", "gets", "sendable", "lost to earlier"], rows)

    emit(result, as_json, human)


@main.command()
@click.argument("segments", nargs=-1, required=True)
@click.option("--groups", required=True, metavar="NAME=PCT,...",
              help="Groups in order with their percentages (at most two decimals, sum 100).")
@click.option("--seed", help="Seed of the bucket numbers (default: the SEGMENTS' names joined with +).")
@click.option("--save", "prefix", metavar="PREFIX",
              help="Save one segment per group, named PREFIX-NAME.")
@as_of_option
@engine_option()
@json_option
@click.pass_context
def split(ctx, segments, groups, seed, prefix, as_of, engine, as_json) -> None:
    """Cut the union of SEGMENTS into groups by bucket number: A/B tests and holdouts.

    Groups take consecutive bucket ranges in the order given: a=45,b=45,holdout=10 gives
    a the buckets [0, 4500), b [4500, 9000) and holdout [9000, 10000). A contact's bucket
    depends only on the seed and its email, so it stays in its group however the
    audience changes. With --save PREFIX each group becomes a segment PREFIX-NAME
    (the SEGMENTS plus the group's bucket rule) to count, export or send to.

    \b
    Example: segengine split newsletter --groups a=45,b=45,holdout=10 --save spring
    Example: segengine send spring-a --segment spring-a ...
    """
    result = workspace(ctx).split(*segments, groups=groups, seed=seed, save=prefix, as_of=as_of,
                                  engine=engine)

    def human() -> None:
        rows = [[g["name"], f"{g['percent']:g} %", f"[{g['from']}, {g['to']})", g["total"],
                 g["sendable"]] for g in result["groups"]]
        table(f"split of {' + '.join(segments)} by seed {result['seed']!r} "
              f"(as of {result['as_of']})", ["group", "share", "buckets", "total", "sendable"], rows)
        if result.get("saved"):
            click.echo("saved segments: " + ", ".join(result["saved"]))

    emit(result, as_json, human)
# --- sync jobs (docs/sync.md) ------------------------------------------------------


@main.group(cls=Cli)
def sync() -> None:
    """Sync jobs: export the changes of segments since the previous run (docs/sync.md).

    A run writes JOB.NNNNNN.added.csv (or .parquet) and JOB.NNNNNN.removed.csv in the
    job's directory, then commits; after a crash the next run repeats or goes on from
    the interrupted one, so every change is in exactly one committed run.

    Example: segengine sync create crm --segment newsletter --to /srv/exports
    """


@sync.command(name="create")
@click.argument("job")
@click.option("--segment", "segments", multiple=True, required=True, metavar="SEG",
              help="A saved segment (or definition file) to sync; repeat for several (their union).")
@click.option("--to", "to", required=True, type=click.Path(file_okay=False),
              help="The existing directory, outside the workspace, that runs write to.")
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default="csv",
              show_default=True, help="The added file's format (the removed file is CSV).")
@click.option("--columns", metavar="A,B,...",
              help="Fields of the added file (default: email, then the custom fields now).")
@click.option("--raw", is_flag=True,
              help="CSV: no leading ' on cells that look like formulas (for programs).")
@json_option
@click.pass_context
def sync_create(ctx, job, segments, to, fmt, columns, raw, as_json) -> None:
    """Save sync job JOB over the active contacts of the segments.

    The columns are fixed now, so every run's added file has the same ones. The
    first run exports every member; `sync reset` makes the next run do so again.

    Example: segengine sync create crm --segment newsletter --segment ca-ctos --to /srv/exports --format parquet
    """
    result = workspace(ctx).sync_create(job, *segments, to=to, format=fmt, columns=columns, raw=raw)
    emit(result, as_json, lambda: click.echo(
        f"created sync job {job}: {', '.join(result['segments'])} -> {result['to']} "
        f"({result['format']}, columns {','.join(result['columns'])})"))


@sync.command(name="run")
@click.argument("job")
@as_of_option
@json_option
@click.pass_context
def sync_run(ctx, job, as_of, as_json) -> None:
    """Write the changes since JOB's previous run, then commit the run.

    Writes JOB.NNNNNN.added.csv (or .parquet: who became a member) and
    JOB.NNNNNN.removed.csv (email, reason: who stopped being one), both ordered by
    email, both even when empty. Exit 2, changing nothing, when a segment or the
    directory of the job no longer exists.

    Example: segengine sync run crm --json
    """
    result = workspace(ctx).sync_run(job, as_of=as_of, progress=progress())

    def human() -> None:
        kind = " (full: from nothing)" if result.full else ""
        click.echo(f"sync {job} run {result.run}{kind}: {result.added:,} added, "
                   f"{result.removed:,} removed, {result.members:,} members")
        for path in result.files:
            click.echo(f"  {path}")

    emit(result.as_dict(), as_json, human)


@sync.command(name="list")
@json_option
@click.pass_context
def sync_list(ctx, as_json) -> None:
    """List the sync jobs with their last committed run and members.

    Example: segengine sync list --json
    """
    jobs = workspace(ctx).sync_jobs()

    def human() -> None:
        if not jobs:
            click.echo("no sync jobs")
            return
        table(None, ["job", "segments", "to", "format", "run", "last run (UTC)", "members"],
              [[j["job"], ", ".join(j["segments"]), j["to"], j["format"], j["run"],
                j["last_run_at"] or "-", "-" if j["members"] is None else j["members"]]
               for j in jobs])

    emit({"jobs": jobs}, as_json, human)


@sync.command(name="show")
@click.argument("job")
@json_option
@click.pass_context
def sync_show(ctx, job, as_json) -> None:
    """Show sync job JOB and its latest committed runs.

    Example: segengine sync show crm
    """
    data = workspace(ctx).sync_show(job)

    def human() -> None:
        click.echo(f"sync job {job}: {', '.join(data['segments'])} -> {data['to']} "
                   f"({data['format']}, columns {','.join(data['columns'])})")
        click.echo(f"committed run: {data['run'] or 'none yet'}"
                   + ("; the next run starts from nothing" if data["next_run_full"] else ""))
        if data["runs"]:
            table("runs", ["run", "committed (UTC)", "as of", "full", "added", "removed", "members"],
                  [[r["run"], r["committed_at"], r["as_of"], "yes" if r["full"] else "",
                    r["added"], r["removed"], r["members"]] for r in data["runs"]])

    emit(data, as_json, human)


@sync.command(name="reset")
@click.argument("job")
@json_option
@click.pass_context
def sync_reset(ctx, job, as_json) -> None:
    """Make JOB's next run start from nothing: it exports every member again.

    Run numbers go on; the next run's added file holds every member and its removed
    file is empty, so a consumer rebuilds its copy from that run.

    Example: segengine sync reset crm
    """
    result = workspace(ctx).sync_reset(job)
    emit(result, as_json, f"sync job {job}: the next run (run {result['run'] + 1}) starts from nothing")


@sync.command(name="delete")
@click.argument("job")
@json_option
@click.pass_context
def sync_delete(ctx, job, as_json) -> None:
    """Delete sync job JOB; the files its runs wrote stay in its directory.

    Example: segengine sync delete crm
    """
    result = workspace(ctx).sync_delete(job)
    emit(result, as_json, f"deleted sync job {job} ({result['runs']} runs; its files stay in {result['to']})")
@main.command()
@json_option
@click.pass_context
def verify(ctx, as_json: bool) -> None:
    """Check every committed file against the checksum recorded at its commit.

    Lists damaged and missing files and exits 1 if there is one: an index file is
    rebuilt by `segengine reindex`, a data file must come from a backup. Files of a
    workspace written before checksums existed show as "no checksum recorded".

    Example: segengine -w ws verify
    """
    result = workspace(ctx).verify()

    def human() -> None:
        words = {"damaged": "DAMAGED", "missing": "MISSING", "unchecked": "no checksum recorded"}
        for f in result["files"]:
            if f["state"] != "ok":
                click.echo(f"{words[f['state']]}: {f['path']}")
        click.echo(f"{result['ok']} ok, {result['damaged']} damaged, {result['missing']} missing, "
                   f"{result['unchecked']} without a checksum")

    emit(result, as_json, human)
    if not result["healthy"]:
        index = any(f["path"].startswith("index/") for f in result["files"]
                    if f["state"] in ("damaged", "missing"))
        data = any(not f["path"].startswith("index/") for f in result["files"]
                   if f["state"] in ("damaged", "missing"))
        fixes = (["run `segengine reindex` for the index files"] if index else []) + (
            ["restore the data files from a backup"] if data else [])
        click.echo(f"error: the workspace has damaged or missing files: {'; '.join(fixes)}", err=True)
        sys.exit(1)


# --- analytics: overlap, trend, why ------------------------------------------------------


@main.command()
@click.argument("segments", nargs=-1, required=True)
@as_of_option
@engine_option()
@json_option
@click.pass_context
def overlap(ctx, segments, as_of, engine, as_json) -> None:
    """Show how two or more SEGMENTS share contacts.

    A cell counts the contacts in both its row's and its column's segment (the
    diagonal: each segment's own total); `exclusive` counts a segment's contacts in
    none of the others; `sendable` counts the active ones. See docs/analytics.md.

    Example: segengine overlap newsletter customers trial --as-of 2026-06-30
    """
    result = workspace(ctx).overlap(*segments, as_of=as_of, engine=engine)

    def human() -> None:
        names = result["segments"]
        for key in ("total", "sendable"):
            rows = [
                [name, *result[key][i], *([result["exclusive"][i]] if key == "total" else [])]
                for i, name in enumerate(names)
            ]
            extra = ["exclusive"] if key == "total" else []
            table(f"{key} contacts in both (as of {result['as_of']})", ["", *names, *extra], rows)
            click.echo("")
        union = result["union"]
        click.echo(f"union: {union['total']:,} contacts, {union['sendable']:,} sendable")

    emit(result, as_json, human)


@main.command()
@click.argument("segments", nargs=-1, required=True)
@click.option("--from", "start", required=True, metavar="YYYY-MM-DD", help="The first point.")
@click.option("--to", "end", required=True, metavar="YYYY-MM-DD", help="The last point (at most).")
@click.option("--every", default="day", show_default=True, metavar="STEP",
              help="day | week | month (a month step keeps --from's day of the month).")
@engine_option()
@json_option
@click.pass_context
def trend(ctx, segments, start, end, every, engine, as_json) -> None:
    """Show how the union of SEGMENTS grew from --from to --to.

    Each point D counts the union over the data as it stood at the end of day D:
    contacts added and events on or before D, with as-of D. Field values and
    statuses are today's (the workspace keeps no history of them). `joined` and
    `left` count the contacts that entered or left since the previous point.

    Example: segengine trend engaged --from 2026-01-01 --to 2026-06-30 --every week
    """
    result = workspace(ctx).trend(*segments, start=start, end=end, every=every, engine=engine)

    def human() -> None:
        rows = [
            [p["as_of"], p["total"], p["sendable"],
             "-" if p["joined"] is None else p["joined"], "-" if p["left"] is None else p["left"]]
            for p in result["points"]
        ]
        title = f"{' + '.join(result['segments'])} by {result['every']}"
        table(title, ["as of", "total", "sendable", "joined", "left"], rows)

    emit(result, as_json, human)


@main.command()
@click.argument("email")
@click.argument("segment_arg", metavar="SEGMENT")
@as_of_option
@engine_option()
@json_option
@click.pass_context
def why(ctx, email, segment_arg, as_of, engine, as_json) -> None:
    """Show whether the contact EMAIL is in SEGMENT, and why, rule by rule.

    Each rule and group shows whether it matched for this contact and what it saw:
    a field rule the stored value, an activity rule how many of the contact's events
    are in its scope (type, campaigns, URL) and in its window.

    Example: segengine why ann@example.com never-opened --as-of 2026-06-30
    """
    result = workspace(ctx).why(email, segment_arg, as_of=as_of, engine=engine)

    def human() -> None:
        verdict = "is in" if result["member"] else "is NOT in"
        click.echo(f"{result['email']} {verdict} {result['segment']} (as of {result['as_of']})")
        top = "NOT " if result.get("negate") else ""
        click.echo(f"  {top}{result['match'].upper()} of {len(result['rules'])} rule(s)")
        for node in result["rules"]:
            _print_why(node, 2)

    emit(result, as_json, human)


def _print_why(node: dict[str, Any], depth: int) -> None:
    from .explain import yaml_value

    mark = "yes" if node["matched"] else "no "
    rule = {k: v for k, v in node["rule"].items() if k != "rules"}
    line = f"{mark} {'  ' * depth}{node['kind']} {yaml_value(rule)}"
    if "value" in node:
        line += f"  -> value {yaml_value(node['value'])}"
    if "events" in node:
        seen = node["events"]
        line += f"  -> {seen['in_scope']} event(s) in scope, {seen['in_window']} in window"
    click.echo(line)
    for child in node.get("rules", []):
        _print_why(child, depth + 1)


if __name__ == "__main__":  # pragma: no cover
    main()
