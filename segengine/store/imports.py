"""Importing contacts and events (docs/importing.md).

An import runs as one transaction: the input is staged (CSV) or read in place
(Parquet), every record is parsed and checked by DuckDB in SQL, bad records go to a
rejects report with their line number and reason, and the good ones are merged into
new immutable Parquet files that one manifest swap publishes. DuckDB streams the work
and spills to the transaction's staging directory, so memory stays bounded.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pyarrow.parquet as pq

from .. import addresses
from ..errors import ImportRejected, InputError
from ..fields import CUSTOM_TYPES, EVENT_TYPES, FIELD_NAME_RE, RESERVED_NAMES, STATUSES, FieldType
from ..progress import NullProgress, Progress
from .checksums import DamagedFile
from .duck import connect_writer as connect
from .duck import file_list, lit, q
from .staging import LINE, check_names, file_format, stage_csv
from .workspace import PRIVATE_DIR, REJECTS_DIR, Snapshot, Store, Transaction, make_private

if TYPE_CHECKING:
    from .index import IndexData

NUMBER_RE = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"
# Inference is stricter than parsing: a leading zero (a postal code) means text.
INFER_NUMBER_RE = r"^[+-]?((0|[1-9]\d*)(\.\d*)?|\.\d+)([eE][+-]?\d+)?$"
DATE_RE = r"^\d{4}-\d{2}-\d{2}$"
DATETIME_RE = r"^\d{4}-\d{2}-\d{2}([Tt ]\d{2}:\d{2}(:\d{2}([.,]\d{1,9})?)?)?\s*([Zz]|[+-]\d{2}(:?\d{2})?)?$"
#: what "white space around a value" means: ASCII white space and the no-break space
WS_CHARS = " \t\n\r\x0b\x0c\u00a0"
#: a value that starts or ends with such white space
EDGE_WS_RE = f"^[{WS_CHARS}]|[{WS_CHARS}]$"

REJECT_SAMPLE = 3
EPOCH = dt.datetime(1970, 1, 1)


@dataclass
class ImportSummary:
    kind: str
    file: str
    read: int = 0
    imported: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    duplicates: int = 0
    rejects_path: str | None = None
    new_fields: dict[str, str] | None = None
    version: int = 0
    #: the first rejected rows as {"line", "reason"}, to show without opening the report
    first_rejects: list[dict] = field(default_factory=list)

    @property
    def all_rejected(self) -> bool:
        """Every row read was rejected: the import did nothing it was run for."""
        return self.read > 0 and self.rejected == self.read

    def as_dict(self) -> dict:
        return asdict(self)


# --- reading the source -----------------------------------------------------------


@dataclass
class Source:
    """An input file as a DuckDB relation `src` with a `_line` column."""

    fmt: str
    columns: dict[str, str]  # column name -> DuckDB type of the source column
    rows: int
    csv_width: int | None  # number of header fields for CSV, to flag ragged rows


def open_source(
    con: duckdb.DuckDBPyConnection, path: Path, tx: Transaction, progress: Progress
) -> Source:
    fmt = file_format(path)
    if fmt == "csv":
        staged = tx.staging / "input.parquet"
        with progress.task(f"reading {path.name}") as task:
            header, rows = stage_csv(path, staged, progress=task.update)
            task.update(rows)  # the last batch, and files shorter than one batch
        con.execute(f"CREATE VIEW src AS SELECT * FROM read_parquet({lit(str(staged))})")
        columns = {name: "VARCHAR" for name in header}
        return Source("csv", columns, rows, len(header))
    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except Exception as exc:  # noqa: BLE001 - any parse failure means a broken file
        raise ImportRejected(f"{path}: not a readable Parquet file: {exc}") from None
    check_names(path, [row[0] for row in con.execute(
        f"DESCRIBE SELECT * FROM read_parquet({lit(str(path))})").fetchall()])
    con.execute(
        "CREATE VIEW src AS SELECT * EXCLUDE (file_row_number), "
        f"file_row_number + 1 AS {LINE}, NULL::INTEGER AS _width "
        f"FROM read_parquet({lit(str(path))}, file_row_number = true)"
    )
    described = con.execute(f"DESCRIBE SELECT * FROM read_parquet({lit(str(path))})").fetchall()
    columns = {row[0]: row[1] for row in described}
    return Source("parquet", columns, rows, None)


#: A contact's status after an import, from the stored one (``o.status``) and the
#: file's latest suppressing status (``i.suppressed``): an import may suppress, never
#: un-suppress, and a bounce stays a bounce.
IMPORTED_STATUS = (
    "CASE WHEN o.status = 'bounced' THEN 'bounced' "
    "ELSE coalesce(i.suppressed, o.status, 'active') END"
)
BUILTIN_CONTACT_COLUMNS = ("email", "status", "date_added", "lists")


def match_builtin_columns(
    con: duckdb.DuckDBPyConnection, path: Path, source: Source, builtins: tuple[str, ...]
) -> None:
    """Let `Email` or ` Status ` name the built-in columns, as spreadsheets write them.

    Built-in names match whatever their case and surrounding white space; custom
    fields keep their exact (case-sensitive) names. The view `src` is redefined with
    the built-in names spelt as the rest of the import expects them.
    """
    found: dict[str, list[str]] = {}
    for name in source.columns:
        if name in (LINE, "_width"):
            continue
        key = name.strip().lower()
        if key in builtins:
            found.setdefault(key, []).append(name)
    clashes = [names for names in found.values() if len(names) > 1]
    if clashes:
        shown = "; ".join(" and ".join(repr(n) for n in names) for names in clashes)
        raise ImportRejected(
            f"{path}: columns {shown} both name the built-in column {clashes[0][0].strip().lower()!r} "
            "(built-in names ignore case): drop or rename one"
        )
    renames = {names[0]: key for key, names in found.items() if names[0] != key}
    if not renames:
        return
    con.execute("ALTER VIEW src RENAME TO src_file")
    old = ", ".join(q(c) for c in renames)
    new = ", ".join(f"{q(c)} AS {q(key)}" for c, key in renames.items())
    con.execute(f"CREATE VIEW src AS SELECT * EXCLUDE ({old}), {new} FROM src_file")
    source.columns = {renames.get(c, c): t for c, t in source.columns.items()}


def found_columns(source: Source) -> str:
    """The file's columns, for an error message about a missing one."""
    names = [c for c in source.columns if c not in (LINE, "_width")]
    return ", ".join(repr(c) for c in names) if names else "none"


# --- parsing values ---------------------------------------------------------------


def is_text_type(duck_type: str) -> bool:
    return duck_type == "VARCHAR"


def trim_ws(col: str) -> str:
    """`col` without white space around it.

    DuckDB's trim with a character set costs ~0.4 s per million values, a test of the
    first and last character a quarter of that: only values that need it are trimmed.
    """
    return f"CASE WHEN regexp_matches({col}, {lit(EDGE_WS_RE)}) THEN trim({col}, {lit(WS_CHARS)}) ELSE {col} END"


def blank_to_null(col: str) -> str:
    return f"NULLIF({trim_ws(col)}, '')"


def parse_value(col: str, source_type: str, ftype: FieldType) -> tuple[str, str]:
    """SQL for (typed value, is-invalid flag) of column `col` parsed as `ftype`.

    An empty cell is null and valid; a non-empty one that does not parse is invalid.
    """
    if ftype == FieldType.TEXT:
        if is_text_type(source_type):
            return f"NULLIF({col}, '')", "false"
        return f"CAST({col} AS VARCHAR)", "false"
    if is_text_type(source_type):
        s = blank_to_null(col)
        if ftype == FieldType.NUMBER:
            value = f"CASE WHEN regexp_matches({s}, {lit(NUMBER_RE)}) THEN TRY_CAST({s} AS DOUBLE) END"
        elif ftype == FieldType.DATE:
            value = f"CASE WHEN regexp_matches({s}, {lit(DATE_RE)}) THEN TRY_CAST({s} AS DATE) END"
        elif ftype == FieldType.DATETIME:
            value = (
                f"CASE WHEN regexp_matches({s}, {lit(DATETIME_RE)}) "
                f"THEN timezone('UTC', TRY_CAST(replace({s}, ',', '.') AS TIMESTAMPTZ)) END"
            )
        elif ftype == FieldType.BOOLEAN:
            value = f"CASE lower({s}) WHEN 'true' THEN true WHEN 'false' THEN false END"
        else:  # pragma: no cover - enum and set are built-ins, parsed elsewhere
            raise ValueError(ftype)
        return value, f"({s} IS NOT NULL AND ({value}) IS NULL)"
    # A typed Parquet column: accept the matching class of types only.
    t = source_type.upper()
    numeric = any(k in t for k in ("INT", "DOUBLE", "FLOAT", "DECIMAL", "REAL"))
    if ftype == FieldType.NUMBER and numeric:
        # NaN is not a number a segment can compare: store it as empty.
        return f"CASE WHEN isnan(CAST({col} AS DOUBLE)) THEN NULL ELSE CAST({col} AS DOUBLE) END", "false"
    if ftype == FieldType.DATE and t == "DATE":
        return col, "false"
    if ftype == FieldType.DATETIME and t.startswith("TIMESTAMP"):
        if "WITH TIME ZONE" in t:
            return f"timezone('UTC', {col})", "false"
        return f"CAST({col} AS TIMESTAMP)", "false"
    if ftype == FieldType.DATETIME and t == "DATE":
        return f"CAST({col} AS TIMESTAMP)", "false"
    if ftype == FieldType.BOOLEAN and t == "BOOLEAN":
        return col, "false"
    raise ImportRejected(
        f"column {col} holds {source_type} values but the field is {ftype.value}: "
        "convert the column or import it under another name"
    )


def check_builtin_shapes(path: Path, source: Source, builtins: tuple[str, ...]) -> None:
    """Refuse a Parquet built-in column holding lists or structs (`lists` excepted):
    cast to text it would import as a rendering of the structure, not a value."""
    for name, duck_type in source.columns.items():
        if name in builtins and name != "lists" and duck_type.upper().endswith(("[]", ")")):
            raise ImportRejected(
                f"{path}: column {name!r} holds {duck_type} values: it must hold one value "
                "per cell"
            )


def nul_checks(columns: dict[str, str]) -> list[tuple[str, str]]:
    """Reasons for text cells holding a NUL character (CSV refuses one while reading);
    `columns` maps a column's name to the SQL of its text."""
    return [(holds_nul(sql), nul_reason(name)) for name, sql in columns.items()]


def holds_nul(sql: str) -> str:
    return f"coalesce(contains({sql}, chr(0)), false)"


def nul_reason(name: str) -> str:
    return f"'{name}: the value holds a NUL character (byte 0x00)'"


def parquet_field_type(source_type: str, name: str = "") -> FieldType:
    t = source_type.upper()
    if t.endswith("]") or t.startswith(("STRUCT", "MAP", "UNION")):
        raise ImportRejected(
            f"column {name!r} holds {source_type} values (one structure per cell), which "
            "cannot be a field: flatten it into columns of text, numbers or dates, or drop it"
        )
    if t == "VARCHAR":
        return FieldType.TEXT
    if t == "BOOLEAN":
        return FieldType.BOOLEAN
    if t == "DATE":
        return FieldType.DATE
    if t.startswith("TIMESTAMP"):
        return FieldType.DATETIME
    if any(k in t for k in ("INT", "DOUBLE", "FLOAT", "DECIMAL", "REAL")):
        return FieldType.NUMBER
    raise ImportRejected(
        f"column {name!r} has the Parquet type {source_type}, which cannot be a field: "
        "use text, number, date, timestamp or boolean columns, or drop it"
    )


#: columns whose types one query infers
INFER_BATCH = 16
#: more custom columns than this make a "wide" file (see `_import_contacts`)
WIDE = 64
#: custom columns one contacts file may have: 256 import in seconds, 1,000 took minutes
MAX_CUSTOM_COLUMNS = 256


def infer_types(con: duckdb.DuckDBPyConnection, columns: list[str]) -> dict[str, FieldType]:
    """Infer the type of CSV columns from all their non-empty values (docs/importing.md)."""
    if len(columns) > INFER_BATCH:
        # DuckDB plans one query's aggregates in super-linear time (1,000 columns, i.e.
        # 5,000 aggregates, took minutes): a few columns per query, each query reading
        # only its own columns of the staged Parquet file
        inferred: dict[str, FieldType] = {}
        for i in range(0, len(columns), INFER_BATCH):
            inferred.update(infer_types(con, columns[i:i + INFER_BATCH]))
        return inferred
    if not columns:
        return {}
    checks = []
    for c in columns:
        s = blank_to_null(q(c))
        checks += [
            f"count({s})",
            f"count({s}) FILTER (WHERE NOT regexp_matches({s}, {lit(INFER_NUMBER_RE)}))",
            f"count({s}) FILTER (WHERE NOT regexp_matches({s}, {lit(DATE_RE)}) "
            f"OR TRY_CAST({s} AS DATE) IS NULL)",
            f"count({s}) FILTER (WHERE NOT regexp_matches({s}, {lit(DATETIME_RE)}) "
            f"OR TRY_CAST(replace({s}, ',', '.') AS TIMESTAMPTZ) IS NULL)",
            f"count({s}) FILTER (WHERE lower({s}) NOT IN ('true', 'false'))",
        ]
    row = con.execute(f"SELECT {', '.join(checks)} FROM src").fetchone()
    inferred = {}
    for i, c in enumerate(columns):
        total, not_num, not_date, not_dt, not_bool = row[i * 5 : i * 5 + 5]
        if total == 0:
            inferred[c] = FieldType.TEXT
        elif not_num == 0:
            inferred[c] = FieldType.NUMBER
        elif not_date == 0:
            inferred[c] = FieldType.DATE
        elif not_dt == 0:
            inferred[c] = FieldType.DATETIME
        elif not_bool == 0:
            inferred[c] = FieldType.BOOLEAN
        else:
            inferred[c] = FieldType.TEXT
    return inferred


def parse_types_option(spec: str | None) -> dict[str, FieldType]:
    """``--types name=type,...`` -> {name: FieldType}."""
    if not spec:
        return {}
    out: dict[str, FieldType] = {}
    for part in spec.split(","):
        name, sep, tname = part.partition("=")
        name, tname = name.strip(), tname.strip().lower()
        valid = ", ".join(t.value for t in CUSTOM_TYPES)
        if not sep or not name:
            raise InputError(f"--types: {part!r} is not name=type (types: {valid})")
        try:
            ftype = FieldType(tname)
        except ValueError:
            raise InputError(f"--types: unknown type {tname!r} for {name!r}; use one of {valid}") from None
        if ftype not in CUSTOM_TYPES:
            raise InputError(f"--types: {name!r} cannot be {tname}; use one of {valid}")
        out[name] = ftype
    return out


#: the normalised address of a source row (a name no field can take: it has a space)
EMAIL_KEY = "email key"


def email_expr(col: str) -> str:
    """SQL of the address rule (segengine.addresses) for a source column; needs
    `addresses.register` on the connection."""
    return addresses.sql_email(f"CAST({col} AS VARCHAR)")


def invalid_email(raw: str, normalised: str) -> tuple[str, str]:
    """(condition, reason) of a row whose non-empty address the rule refuses."""
    why = addresses.sql_problem(normalised)
    return (
        f"{normalised} <> '' AND ({why}) IS NOT NULL",
        f"'invalid email ' || {quoted_value(raw)} || ': it ' || ({why})",
    )


def reason_sql(parts: list[tuple[str, str]]) -> str:
    """concat_ws of the messages whose condition holds ('' when none)."""
    cases = [f"CASE WHEN {cond} THEN {msg} END" for cond, msg in parts]
    return f"concat_ws('; ', {', '.join(cases)})"


def lazy_reason_sql(parts: list[tuple[str, str]]) -> str:
    """`reason_sql` building the text only for rows with a problem: most rows of a big
    file have none, and concatenating '' per row costs more than testing the conditions."""
    any_problem = " OR ".join(f"({cond})" for cond, _ in parts)
    return f"CASE WHEN {any_problem} THEN {reason_sql(parts)} ELSE '' END"


def quoted_value(col: str) -> str:
    """SQL producing a short, quoted rendering of a bad value for a reject reason."""
    return f"'''' || left(CAST({col} AS VARCHAR), 80) || ''''"


def width_check(source: Source) -> list[tuple[str, str]]:
    if source.csv_width is None:
        return []
    n = source.csv_width
    return [
        (
            f"_width <> {n}",
            f"'expected {n} fields, found ' || CAST(_width AS VARCHAR)",
        )
    ]


def write_rejects(
    con: duckdb.DuckDBPyConnection, ws_root: Path, input_path: Path, rejects_path: Path | None
) -> tuple[int, str | None, list[tuple[int, str]]]:
    """Write the table `rejects` (line, email, reason) as CSV; return count, path and a sample."""
    total = con.execute("SELECT count(*) FROM rejects").fetchone()[0]
    if total == 0:
        return 0, None, []
    sample = con.execute(
        f"SELECT line, reason FROM rejects ORDER BY line LIMIT {REJECT_SAMPLE}"
    ).fetchall()
    if rejects_path is None:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        rejects_path = ws_root / REJECTS_DIR / f"{stamp}-{input_path.stem}.rejects.csv"
    rejects_path.parent.mkdir(PRIVATE_DIR, parents=True, exist_ok=True)
    tmp = rejects_path.with_name(f".{rejects_path.name}.tmp")
    try:
        con.execute(
            f"COPY (SELECT line, email, reason FROM rejects ORDER BY line) "
            f"TO {lit(str(tmp))} (FORMAT csv, HEADER true)"
        )
        make_private(tmp)  # it holds emails
        os.replace(tmp, rejects_path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half-written report
        raise
    return total, str(rejects_path), sample


def strict_failure(path: Path, total: int, sample: list[tuple[int, str]]) -> ImportRejected:
    first = "; ".join(f"line {line}: {reason}" for line, reason in sample)
    return ImportRejected(
        f"{path}: {total} bad row(s), nothing imported (--strict): {first}"
        + (" ..." if total > len(sample) else "")
    )


# --- contacts ---------------------------------------------------------------------


def import_contacts(
    ws: Store,
    path: str | os.PathLike[str],
    *,
    types: Mapping[str, FieldType] | None = None,
    strict: bool = False,
    rejects_path: Path | None = None,
    progress: Progress | None = None,
) -> ImportSummary:
    path = Path(path)
    progress = progress or NullProgress()
    types = dict(types or {})
    with ws.transaction() as tx:
        con = addresses.register(connect(tx.staging))
        try:
            summary = _import_contacts(con, ws, tx, path, types, strict, rejects_path, progress)
        finally:
            con.close()
        tx.commit(progress)  # the index refresh shows its own bar
        summary.version = tx.manifest["version"]
        return summary


def _import_contacts(con, ws, tx, path, types, strict, rejects_path, progress) -> ImportSummary:
    source = open_source(con, path, tx, progress)
    schema = tx.base.schema
    match_builtin_columns(con, path, source, BUILTIN_CONTACT_COLUMNS)
    cols = source.columns
    if "email" not in cols:
        raise ImportRejected(
            f"{path}: no 'email' column (found {found_columns(source)}): "
            "name the column of addresses email"
        )
    customs = [c for c in cols if c not in ("email", "status", "date_added", "lists", LINE, "_width")]
    if len(customs) > MAX_CUSTOM_COLUMNS:
        raise ImportRejected(
            f"{path}: {len(customs)} custom columns; an import takes at most "
            f"{MAX_CUSTOM_COLUMNS} (checking every value of a wider file grows faster than "
            "its size): split the columns over several files, each with the email column"
        )
    for c in customs:
        if c in RESERVED_NAMES:
            raise ImportRejected(f"{path}: column {c!r} is reserved: rename or drop it")
        if not FIELD_NAME_RE.match(c):
            raise ImportRejected(
                f"{path}: column {c!r} is not a valid field name "
                "(letters, digits and _, not starting with a digit): rename it"
            )
    for name in types:
        if name not in customs:
            raise InputError(f"--types names {name!r}, which is not a column of {path}")
    existing = dict(schema.custom)
    field_types: dict[str, FieldType] = {}
    new_fields: dict[str, FieldType] = {}
    to_infer = []
    for c in customs:
        if c in existing:
            if c in types and types[c] != existing[c]:
                raise ImportRejected(
                    f"--types {c}={types[c].value}: field {c!r} already exists as "
                    f"{existing[c].value}; a field keeps its type"
                )
            field_types[c] = existing[c]
        elif c in types:
            field_types[c] = new_fields[c] = types[c]
        elif source.fmt == "parquet":
            field_types[c] = new_fields[c] = parquet_field_type(cols[c], c)
        else:
            to_infer.append(c)
    if len(customs) > WIDE:
        # DuckDB's common-subexpression pass takes super-linear time in the number of
        # expressions of one query: 400 columns spent 8 of 9 s there. A wide file's
        # queries run without it (a narrow file keeps the pass and its speed-up).
        con.execute("SET disabled_optimizers = 'common_subexpressions'")
    with progress.task("checking values"):
        inferred = infer_types(con, to_infer)
    field_types.update(inferred)
    new_fields.update(inferred)

    # Parse every record once into a temporary table with its reasons for rejection.
    email = q(EMAIL_KEY)
    select = [f"{LINE} AS line", f"{email} AS email"]
    reasons: list[tuple[str, str]] = width_check(source)
    if source.fmt == "parquet":
        check_builtin_shapes(path, source, BUILTIN_CONTACT_COLUMNS)
        reasons += nul_checks({c: q(c) for c, t in cols.items() if is_text_type(t)})
    reasons.append((f"{email} IS NULL OR {email} = ''", "'missing email'"))
    reasons.append(invalid_email(q("email"), email))
    if "status" in cols:
        s = f"lower({blank_to_null('CAST(' + q('status') + ' AS VARCHAR)')})"
        select.append(f"{s} AS status")
        allowed = ", ".join(lit(x) for x in STATUSES)
        reasons.append(
            (f"{s} IS NOT NULL AND {s} NOT IN ({allowed})",
             f"'unknown status ' || {quoted_value(q('status'))} || ' (use active, unsubscribed or bounced)'")
        )
    else:
        select.append("NULL::VARCHAR AS status")
    if "date_added" in cols:
        value, bad = parse_value(q("date_added"), cols["date_added"], FieldType.DATETIME)
        select.append(f"{value} AS date_added")
        reasons.append((bad, f"'invalid date_added ' || {quoted_value(q('date_added'))}"))
    else:
        select.append("NULL::TIMESTAMP AS date_added")
    if "lists" in cols:
        if cols["lists"].endswith("[]"):
            raw = f"list_transform({q('lists')}, lambda x: trim(CAST(x AS VARCHAR)))"
        else:
            raw = f"list_transform(string_split(CAST({q('lists')} AS VARCHAR), ';'), lambda x: trim(x))"
        select.append(f"list_filter({raw}, lambda x: x IS NOT NULL AND x <> '') AS lists")
    else:
        select.append("[]::VARCHAR[] AS lists")
    for c in customs:
        value, bad = parse_value(q(c), cols[c], field_types[c])
        select.append(f"{value} AS {q(c)}")
        reasons.append(
            (bad, f"'{c}: ' || {quoted_value(q(c))} || ' is not a {field_types[c].value}'")
        )
    select.append(f"{reason_sql(reasons)} AS reason")
    with progress.task("parsing rows"):
        con.execute(
            f"CREATE TEMP TABLE parsed AS SELECT {', '.join(select)} "
            f"FROM (SELECT *, {email_expr(q('email'))} AS {email} FROM src)"
        )
    con.execute("CREATE TEMP VIEW rejects AS SELECT line, email, reason FROM parsed WHERE reason <> ''")
    rejected, report, sample = (0, None, [])
    if strict:
        total = con.execute("SELECT count(*) FROM rejects").fetchone()[0]
        if total:
            sample = con.execute(
                f"SELECT line, reason FROM rejects ORDER BY line LIMIT {REJECT_SAMPLE}"
            ).fetchall()
            raise strict_failure(path, total, sample)
    else:
        rejected, report, sample = write_rejects(con, ws.root, path, rejects_path)

    # One row per email: later rows win field by field; empty cells never erase.
    agg = [
        "email",
        "min(line) AS first_line",
        "count(*) AS n_rows",
        "arg_min(date_added, line) FILTER (WHERE date_added IS NOT NULL) AS date_added",
        "arg_max(status, line) FILTER (WHERE status IN ('unsubscribed', 'bounced')) AS suppressed",
        "bool_or(status = 'active') AS said_active",
        "list_distinct(flatten(list(lists))) AS lists",
    ]
    agg += [f"arg_max({q(c)}, line) FILTER (WHERE {q(c)} IS NOT NULL) AS {q(c)}" for c in customs]
    con.execute(
        f"CREATE TEMP TABLE incoming AS SELECT {', '.join(agg)} FROM parsed "
        "WHERE reason = '' GROUP BY email"
    )

    new_schema = schema
    for name, ftype in new_fields.items():
        new_schema = new_schema.with_field(name, ftype)
    all_customs = new_schema.custom_fields
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    next_id = int(tx.manifest["next_contact_id"])
    old_files = tx.base.files("contacts")
    if old_files:
        # Stored addresses are matched by the rule too: one written by an older rule
        # (full-width letters, a zero-width space) is the contact its mailbox already is.
        con.execute(
            f"CREATE TEMP VIEW old AS SELECT *, {email_expr('email')} AS {q(EMAIL_KEY)} "
            f"FROM read_parquet({file_list(old_files)})"
        )
    else:
        old_cols = ", ".join(
            ["NULL::BIGINT AS contact_id", "NULL::VARCHAR AS email", "NULL::VARCHAR AS status",
             "NULL::TIMESTAMP AS date_added", "NULL::VARCHAR[] AS lists",
             f"NULL::VARCHAR AS {q(EMAIL_KEY)}"]
        )
        con.execute(f"CREATE TEMP VIEW old AS SELECT {old_cols} WHERE false")
    duck_types = {FieldType.TEXT: "VARCHAR", FieldType.NUMBER: "DOUBLE", FieldType.DATE: "DATE",
                  FieldType.DATETIME: "TIMESTAMP", FieldType.BOOLEAN: "BOOLEAN"}
    merged = [
        f"coalesce(o.contact_id, {next_id - 1} + row_number() OVER "
        "(PARTITION BY o.contact_id IS NULL ORDER BY i.first_line)) AS contact_id",
        "coalesce(o.email, i.email) AS email",
        # Suppression is permanent: an import moves a contact to unsubscribed or
        # bounced, never back to active; and never from bounced to unsubscribed, which
        # `resubscribe` (without --include-bounced) would then make active.
        f"{IMPORTED_STATUS} AS status",
        f"coalesce(o.date_added, i.date_added, TIMESTAMP {lit(now.isoformat(sep=' '))}) AS date_added",
        "CASE WHEN i.email IS NULL THEN o.lists "
        "ELSE list_sort(list_distinct(list_concat(coalesce(o.lists, []), coalesce(i.lists, [])))) "
        "END AS lists",
    ]
    for c in all_customs:
        ftype = new_schema[c]
        old_col = f"o.{q(c)}" if c not in new_fields else f"NULL::{duck_types[ftype]}"
        new_col = f"i.{q(c)}" if c in customs else f"NULL::{duck_types[ftype]}"
        merged.append(f"CAST(coalesce({new_col}, {old_col}) AS {duck_types[ftype]}) AS {q(c)}")
    out = tx.new_file("contacts")
    with progress.task("writing contacts"):
        con.execute(
            f"COPY (SELECT {', '.join(merged)} FROM old o FULL OUTER JOIN incoming i "
            f"ON o.{q(EMAIL_KEY)} = i.email ORDER BY contact_id) TO {lit(str(out))} "
            "(FORMAT parquet, COMPRESSION zstd)"
        )
    log_status_changes(con, tx, path, now, out)
    # An existing contact counts as updated only when one of its values changed:
    # re-importing an unchanged file reports every row unchanged.
    changed = [
        "n.status IS DISTINCT FROM o.status",
        "n.date_added IS DISTINCT FROM o.date_added",
        "n.lists IS DISTINCT FROM list_sort(list_distinct(coalesce(o.lists, [])))",
    ]
    changed += [
        f"n.{q(c)} IS NOT NULL" if c in new_fields else f"n.{q(c)} IS DISTINCT FROM o.{q(c)}"
        for c in customs
    ]
    created, updated, distinct, good = con.execute(
        "SELECT count(*) FILTER (WHERE o.email IS NULL), "
        f"count(*) FILTER (WHERE o.email IS NOT NULL AND ({' OR '.join(changed)})), "
        "count(*), (SELECT sum(n_rows) FROM incoming) "
        f"FROM incoming i LEFT JOIN old o ON o.{q(EMAIL_KEY)} = i.email "
        f"LEFT JOIN read_parquet({lit(str(out))}) n ON n.email = coalesce(o.email, i.email)"
    ).fetchone()
    existing_rows = con.execute(
        f"SELECT count(*) FROM incoming i JOIN old o ON o.{q(EMAIL_KEY)} = i.email"
    ).fetchone()[0]
    total = con.execute(f"SELECT count(*) FROM read_parquet({lit(str(out))})").fetchone()[0]
    tx.manifest["contacts"] = [tx.relative(out)]
    tx.manifest["fields"] = [[n, t.value] for n, t in new_schema.custom]
    tx.manifest["next_contact_id"] = next_id + int(created)
    tx.manifest["counts"]["contacts"] = int(total)
    return ImportSummary(
        kind="contacts",
        file=str(path),
        read=source.rows,
        imported=int(created),
        updated=int(updated),
        unchanged=int(existing_rows) - int(updated),
        rejected=int(rejected),
        duplicates=int(good or 0) - int(distinct),
        rejects_path=report,
        new_fields={n: t.value for n, t in new_fields.items()} or None,
        first_rejects=[{"line": line, "reason": reason} for line, reason in sample],
    )


def log_status_changes(con, tx: Transaction, path: Path, at: dt.datetime, written: Path) -> None:
    """Append the statuses this import sets to the audit trail read by `history`.

    A new contact's first status is logged when it is not the default (active); an
    existing contact's when the file moved it to unsubscribed or bounced.
    """
    from .status import STATUS_LOG

    changes = (
        "SELECT coalesce(o.contact_id, n.contact_id) AS contact_id, "
        f"TIMESTAMP {lit(at.isoformat(sep=' '))} AS timestamp, o.status AS from_status, "
        f"{IMPORTED_STATUS} AS to_status, 'import contacts' AS command, "
        f"{lit(path.name)} AS reason "
        f"FROM incoming i LEFT JOIN old o ON o.{q(EMAIL_KEY)} = i.email "
        f"LEFT JOIN read_parquet({lit(str(written))}) n "
        "ON n.email = coalesce(o.email, i.email) "
        f"WHERE i.suppressed IS NOT NULL AND {IMPORTED_STATUS} IS DISTINCT FROM o.status"
    )
    if con.execute(f"SELECT count(*) FROM ({changes})").fetchone()[0] == 0:
        return
    out = tx.new_file(STATUS_LOG)
    con.execute(f"COPY ({changes} ORDER BY 1) TO {lit(str(out))} (FORMAT parquet, COMPRESSION zstd)")
    tx.manifest[STATUS_LOG] = [*tx.manifest.get(STATUS_LOG, []), tx.relative(out)]


# --- events -----------------------------------------------------------------------

EVENT_COLUMNS = ("email", "campaign", "type", "timestamp", "url")


#: Events de-duplicated, sorted and written together: the good rows of one time range.
#: Duplicates share their timestamp, so de-duplicating each range on its own is exact,
#: and the sort and the hash table stay bounded (~1.5 GB) whatever the file's size.
CHUNK_ROWS = 10_000_000
#: rows of a large file sampled to place the time ranges' bounds
QUANTILE_SAMPLE = 1_000_000
#: distinct addresses looked up in the index at a time (`known_from_index`)
LOOKUP_BATCH = 1_000_000


def import_events(
    ws: Store,
    path: str | os.PathLike[str],
    *,
    strict: bool = False,
    rejects_path: Path | None = None,
    progress: Progress | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> ImportSummary:
    path = Path(path)
    progress = progress or NullProgress()
    with ws.transaction() as tx:
        con = addresses.register(connect(tx.staging))
        # the SQL names no Python objects; looking for them in statements that create
        # tables makes DuckDB import pandas (~1 s of a small import)
        con.execute("SET python_enable_replacements = false")
        try:
            summary = _import_events(con, ws, tx, path, strict, rejects_path, progress, chunk_rows)
        finally:
            con.close()
        if summary.imported:
            tx.commit(progress)  # the index refresh shows its own bar
            summary.version = tx.manifest["version"]
        else:
            summary.version = tx.base.version
        return summary


def _import_events(con, ws, tx, path, strict, rejects_path, progress, chunk_rows) -> ImportSummary:
    source = open_source(con, path, tx, progress)
    match_builtin_columns(con, path, source, EVENT_COLUMNS)
    cols = source.columns
    missing = [c for c in ("email", "campaign", "type", "timestamp") if c not in cols]
    if missing:
        raise ImportRejected(
            f"{path}: missing column(s) {', '.join(missing)} (found {found_columns(source)}): "
            "events need email, campaign, type, timestamp and optionally url"
        )
    extra = [c for c in cols if c not in EVENT_COLUMNS and c not in (LINE, "_width")]
    if extra:
        raise ImportRejected(
            f"{path}: unknown event column(s) {', '.join(extra)}: drop them "
            "(events have email, campaign, type, timestamp and url)"
        )
    if not tx.base.manifest["contacts"]:
        raise ImportRejected("the workspace has no contacts yet: import contacts before events")
    if source.fmt == "parquet":
        check_builtin_shapes(path, source, EVENT_COLUMNS)
    index = current_index(tx.base)
    stored_end = stored_days_end(index)
    with progress.task(f"checking {source.rows:,} events"):
        key = match_addresses(con, tx, index)
        # the email lookup's arrays (the 10M addresses of a big workspace) are not
        # needed again: unmapped before DuckDB stages the events
        del index
        checked = stage_checked_events(con, tx, source, key, chunk_rows)
    staged = sorted(str(f) for f in Path(checked).parent.parent.glob("chunk=*/*.parquet"))
    rows = f"read_parquet({file_list(staged)})" if staged else (
        "(SELECT NULL::BIGINT AS line, NULL::VARCHAR AS raw_email, '' AS reason WHERE false)")
    con.execute(
        f"CREATE TEMP TABLE rejects AS SELECT line, {email_expr('raw_email')} AS email, reason "
        f"FROM {rows} WHERE reason <> ''"
    )
    if strict:
        total = con.execute("SELECT count(*) FROM rejects").fetchone()[0]
        if total:
            sample = con.execute(
                f"SELECT line, reason FROM rejects ORDER BY line LIMIT {REJECT_SAMPLE}"
            ).fetchall()
            raise strict_failure(path, total, sample)
        rejected, report, sample = 0, None, []
    else:
        rejected, report, sample = write_rejects(con, ws.root, path, rejects_path)
    good = source.rows - rejected
    written = write_event_chunks(con, tx, checked, good, progress, stored_end)
    imported = sum(rows for _, rows in written)
    if imported:
        tx.manifest["events"] = [*tx.manifest["events"], *(tx.relative(f) for f, _ in written)]
        tx.manifest["counts"]["events"] = int(tx.manifest["counts"]["events"]) + imported
    return ImportSummary(
        kind="events",
        file=str(path),
        read=source.rows,
        imported=int(imported),
        updated=0,
        rejected=int(rejected),
        duplicates=int(good - imported),
        rejects_path=report,
        first_rejects=[{"line": line, "reason": reason} for line, reason in sample],
    )


def current_index(snapshot: Snapshot) -> IndexData | None:
    """The snapshot's engagement index, or None when it has none covering its files."""
    from .index import IndexUnavailable, load_index

    try:
        return load_index(snapshot)
    except (IndexUnavailable, DamagedFile):
        return None  # the import reads the data files, and the commit rebuilds the index


def stored_days_end(index: IndexData | None) -> int | None:
    """The day after the last stored event, when the index knows it of every stored
    event (None: it may not: an event of a removed contact is in no aggregate)."""
    if index is None or index.meta["events"]["orphans"]:
        return None
    last = [hi for _, hi in index.day_range if hi is not None]
    return max(last) + 1 if last else 0


def match_addresses(con: duckdb.DuckDBPyConnection, tx: Transaction, index: IndexData | None) -> str:
    """Normalise, check and look up each distinct address of the file once: the table
    `addresses` (key, contact_id, reason, has_nul: whether the text as written holds a
    NUL character). Returns the SQL of a source row's key.

    A file repeats each contact's address in many events (200M events name 10M
    addresses): the rule's regular expressions and the join with the contacts run per
    address, not per event. The key is a 64-bit hash of the text as written, so the
    per-event join is on integers; when two of the file's addresses share a hash
    (about one file in a million at 10M addresses) the key is the text itself.

    The contacts of the file's addresses are found by the index's email lookup when it
    has one: a batch of a million events then reads the contacts it names, not the
    10M stored addresses, each normalised again.
    """
    con.execute(
        "CREATE TEMP TABLE raw_addresses AS "
        f"SELECT DISTINCT CAST({q('email')} AS VARCHAR) AS raw FROM src"
    )
    unique_hashes = con.execute(
        "SELECT count(DISTINCT hash(raw)) = count(*) FROM raw_addresses"
    ).fetchone()[0]
    key = "hash({})" if unique_hashes else "{}"
    con.execute(
        "CREATE TEMP TABLE checked_addresses AS "
        "SELECT *, coalesce(email <> '' AND problem IS NULL, false) AS valid FROM ("
        f"SELECT *, {addresses.sql_problem('email')} AS problem FROM ("
        f"SELECT raw, {email_expr('raw')} AS email FROM raw_addresses))"
    )
    con.execute("DROP TABLE raw_addresses")
    if not known_from_index(con, tx, index):
        con.execute(
            f"CREATE TEMP VIEW known AS SELECT {email_expr('email')} AS known_email, contact_id "
            f"FROM read_parquet({file_list(tx.base.files('contacts'))})"
        )
    reasons = [
        ("email IS NULL OR email = ''", "'missing email'"),
        ("email <> '' AND NOT valid",
         f"'invalid email ' || {quoted_value('raw')} || ': it ' || problem"),
        ("valid AND contact_id IS NULL",
         f"'unknown email ' || {quoted_value('email')} || ' (import the contact first)'"),
    ]
    con.execute(
        f"CREATE TEMP TABLE addresses AS SELECT {key.format('raw')} AS key, contact_id, "
        f"NULLIF({reason_sql(reasons)}, '') AS reason, {holds_nul('raw')} AS has_nul "
        "FROM checked_addresses a LEFT JOIN known k ON k.known_email = a.email"
    )
    con.execute("DROP TABLE checked_addresses")
    return key.format(f"CAST({q('email')} AS VARCHAR)")


def known_from_index(con: duckdb.DuckDBPyConnection, tx: Transaction, index: IndexData | None) -> bool:
    """Define the table `known` (known_email, contact_id) of the stored contacts of the
    file's valid addresses from the index's email lookup; False when the index cannot
    (none, one that does not list its odd addresses, or a damaged file: the contacts'
    own file is then read, and checked).

    The addresses are looked up LOOKUP_BATCH at a time, each batch's contacts written
    to the staged file before the next is read: the lookup's arrays of all 10M
    addresses of a big first import at once were the import's peak (~3 GB beside
    DuckDB's tables).
    """
    if index is None:
        return False
    import pyarrow as pa

    # handed to DuckDB as a staged file: any Arrow hand-over makes it import pandas
    staged = tx.staging / "known.parquet"
    schema = pa.schema([("known_email", pa.string()), ("contact_id", pa.int64())])
    reader = con.sql("SELECT DISTINCT email FROM checked_addresses WHERE valid").to_arrow_reader(
        LOOKUP_BATCH)
    try:
        with pq.ParquetWriter(staged, schema, compression="none") as writer:
            for batch in reader:
                wanted = batch.column(0).cast(pa.string())
                found = index.contacts_of(wanted)
                if found is None:
                    return False
                which, rows = found
                writer.write_table(pa.table({
                    "known_email": wanted.take(pa.array(which)),
                    "contact_id": pa.array(np.asarray(index.ids)[rows], pa.int64()),
                }, schema=schema))
    except DamagedFile:
        return False
    finally:
        reader.close()
    con.execute(f"CREATE TEMP VIEW known AS SELECT * FROM read_parquet({lit(str(staged))})")
    return True


def chunk_bounds(con: duckdb.DuckDBPyConnection, timestamp: str, rows: int, chunk_rows: int) -> list[str]:
    """Timestamps cutting the file's events into time ranges of about `chunk_rows` rows
    (approximate quantiles: a range may hold more, never is one event split)."""
    k = -(-rows // max(chunk_rows, 1))
    if k <= 1:
        return []
    cuts = [i / k for i in range(1, k)]
    # about QUANTILE_SAMPLE rows place the cuts as well as all of them, at a tenth of
    # the cost of parsing every timestamp (a seeded sample: the same file, the same cuts)
    sample = ""
    if rows > QUANTILE_SAMPLE:
        sample = f" USING SAMPLE {100 * QUANTILE_SAMPLE / rows:.6f}% (bernoulli, 1)"
    found = con.execute(
        f"SELECT approx_quantile({timestamp}, {cuts}) FROM (SELECT * FROM src{sample}) "
        f"WHERE {timestamp} IS NOT NULL"
    ).fetchone()[0] or []
    return sorted({str(t) for t in found if t is not None})


def stage_checked_events(
    con: duckdb.DuckDBPyConnection, tx: Transaction, source: Source, key: str, chunk_rows: int
) -> str:
    """Parse and check every row once, writing them to staged Parquet files, one
    directory per time range (`chunk=N`). Returns the glob of all staged files.

    Good rows keep the stored columns; rejected ones their line, address as written and
    reason. Nothing wide is held in memory: DuckDB streams rows from the file to the
    staged parts.
    """
    cols = source.columns
    campaign = f"NULLIF(CAST({q('campaign')} AS VARCHAR), '')"
    allowed = ", ".join(lit(t) for t in EVENT_TYPES)
    raw_type = f"CAST({q('type')} AS VARCHAR)"
    # most files spell the types as stored: only the others are trimmed and lower-cased
    etype = (f"CASE WHEN {raw_type} IN ({allowed}) THEN {raw_type} "
             f"ELSE lower({blank_to_null(raw_type)}) END")
    ts, _ = parse_value(q("timestamp"), cols["timestamp"], FieldType.DATETIME)
    ts = f"CAST({ts} AS TIMESTAMP)"
    url = f"NULLIF(CAST({q('url')} AS VARCHAR), '')" if "url" in cols else "NULL::VARCHAR"
    bounds = chunk_bounds(con, ts, source.rows, chunk_rows)
    chunk = "0"
    if bounds:
        cases = " ".join(f"WHEN timestamp < TIMESTAMP {lit(b)} THEN {i}" for i, b in enumerate(bounds))
        chunk = f"CASE WHEN timestamp IS NULL THEN 0 {cases} ELSE {len(bounds)} END"
    # Each value is normalised once in the inner query; the outer one names the
    # problems of each record.
    normalised = ", ".join([
        f"{LINE} AS line", "_width", f"{key} AS key", f"{q('email')} AS raw_email",
        f"{campaign} AS campaign", f"{etype} AS type", f"{q('type')} AS raw_type",
        f"{ts} AS timestamp", f"{q('timestamp')} AS raw_timestamp", f"{url} AS url",
    ])
    nul = []
    if source.fmt == "parquet":
        # the address's own check was made once per distinct address (`match_addresses`)
        nul = [("a.has_nul", nul_reason("email")), *nul_checks({
            name: f"CAST(n.{column} AS VARCHAR)"
            for name, column in (("campaign", "campaign"), ("type", "raw_type"), ("url", "url"))})]
    reasons = width_check(source) + nul + [
        ("a.reason IS NOT NULL", "a.reason"),
        ("campaign IS NULL", "'missing campaign'"),
        (f"type IS NULL OR type NOT IN ({allowed})",
         f"'unknown event type ' || coalesce({quoted_value('raw_type')}, 'empty') || "
         "' (use sent, open, click, bounce or unsubscribe)'"),
        ("timestamp IS NULL", f"'invalid timestamp ' || coalesce({quoted_value('raw_timestamp')}, 'empty')"),
    ]
    staged = tx.staging / "checked"
    con.execute(
        f"COPY (SELECT *, {chunk} AS chunk FROM ("
        "SELECT CASE WHEN reason <> '' THEN line END AS line, "
        "CASE WHEN reason <> '' THEN CAST(raw_email AS VARCHAR) END AS raw_email, "
        "contact_id, campaign, type, timestamp, url, reason FROM ("
        f"SELECT line, raw_email, a.contact_id, campaign, type, timestamp, url, "
        f"{lazy_reason_sql(reasons)} AS reason "
        f"FROM (SELECT {normalised} FROM src) n JOIN addresses a ON a.key IS NOT DISTINCT FROM n.key)))"
        # read back once, soon: compressing harder than snappy costs more than it saves
        f" TO {lit(str(staged))} (FORMAT parquet, PARTITION_BY (chunk), COMPRESSION snappy)"
    )
    return str(staged / "*" / "*.parquet")


def write_event_chunks(
    con: duckdb.DuckDBPyConnection, tx: Transaction, checked: str, good: int, progress: Progress,
    stored_end: int | None = None,
) -> list[tuple[Path, int]]:
    """De-duplicate and sort each time range's good rows into an events file of its own,
    in time order; returns the files written that hold events, with their row counts.

    An event is identified by all of its columns: what is stored already is not stored
    again, and only stored events in a range's own time span can match its rows. A
    range that starts on or after `stored_end` (the day after the last stored event,
    when known) matches none: the stored files are not read.
    """
    staged = Path(checked).parent.parent
    chunks = sorted(int(d.name.partition("=")[2]) for d in staged.glob("chunk=*"))
    old_files: tuple[str, ...] | None = None
    written: list[tuple[Path, int]] = []
    with progress.task(f"writing events ({good:,} good rows)", total=good) as task:
        for n in chunks:
            rows = f"read_parquet({lit(str(staged / f'chunk={n}' / '*.parquet'))})"
            new_rows = f"SELECT contact_id, campaign, type, timestamp, url FROM {rows} WHERE reason = ''"
            # Without stored events, rows of distinct hashes are distinct rows: counting
            # 64-bit hashes costs about half of a DISTINCT over the five columns, which
            # is then needed only when the range repeats a row (or two hashes collide).
            distinct = "count(DISTINCT hash(contact_id, campaign, type, timestamp, url))"
            count, lo, hi, hashes = con.execute(
                f"SELECT count(*), min(timestamp), max(timestamp), "
                f"{'NULL' if old_files else distinct} FROM ({new_rows})"
            ).fetchone()
            if not count:
                continue
            later = stored_end is not None and lo >= EPOCH + dt.timedelta(days=stored_end)
            if old_files is None and tx.base.manifest["events"] and not later:
                old_files = tx.base.files("events")
            if old_files and not later:
                new_rows = (
                    f"{new_rows} EXCEPT SELECT contact_id, campaign, type, timestamp, url "
                    f"FROM read_parquet({file_list(old_files)}) "
                    f"WHERE timestamp BETWEEN TIMESTAMP {lit(str(lo))} AND TIMESTAMP {lit(str(hi))}"
                )
            elif hashes != count:
                new_rows = f"SELECT DISTINCT * FROM ({new_rows})"
            out = tx.new_file("events")
            # In time order, each row group covers a short span: a scan for a window or a
            # campaign skips the others by their statistics, and the file compresses ~2x
            # better than in the de-duplication's hash order.
            con.execute(
                f"COPY (SELECT * FROM ({new_rows}) ORDER BY timestamp) TO {lit(str(out))} "
                "(FORMAT parquet, COMPRESSION zstd)"
            )
            imported = pq.ParquetFile(out).metadata.num_rows
            if imported:
                written.append((out, imported))
            else:
                out.unlink()
            task.advance(count)
    return written
