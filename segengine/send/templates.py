"""Merge tags: `{{field}}` and `{{field|fallback}}` in the subject, the bodies and the URL.

A template is split once into literal text and tag names by a regular expression;
nothing in it is ever evaluated, so a template cannot run code (no Jinja, no format
strings). Every tag is checked against the workspace's fields before anything is
sent. Rendering is vectorised: a batch of contacts becomes Polars string columns and
each template one `concat_str` over literals and (escaped) value columns.

Values render as text: an empty value as nothing, numbers without a needless
``.0``, dates as ``YYYY-MM-DD``, datetimes as ``YYYY-MM-DDTHH:MM:SSZ``, booleans as
``true``/``false``, lists joined by ``, ``. ``{{field|fallback}}`` renders the
fallback, literal template text, where the value is empty. Two tags are not fields: ``{{token}}``
(the contact's unsubscribe token) and ``{{unsubscribe_url}}`` (the contact's
unsubscribe link); they shadow custom fields of the same name.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from html.parser import HTMLParser

import polars as pl

from ..errors import InputError
from ..fields import EMAIL_DOMAIN_PATTERN, FieldType, Schema

TAG_RE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
NAME_RE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*\Z")

TOKEN = "token"
UNSUBSCRIBE_URL = "unsubscribe_url"
#: tags that are not contact fields, by the template kinds that may use them
SPECIAL_TAGS = {
    TOKEN: ("subject", "html", "text", "url"),
    UNSUBSCRIBE_URL: ("subject", "html", "text"),
}

#: HTML escaping as `html.escape(value, quote=True)`, as literal replacements (order matters)
HTML_ESCAPES = (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;"), ("'", "&#x27;"))


@dataclass(frozen=True, slots=True)
class Template:
    """A template split into literals and tags: ``parts[0] {tags[0]} parts[1] ...``.

    ``fallbacks[i]`` is the text rendered where the value of ``tags[i]`` is empty
    ("" without one, which renders an empty value as nothing).
    """

    where: str  # the option it came from, for error messages (e.g. "--subject")
    kind: str  # subject | html | text | url
    parts: tuple[str, ...]
    tags: tuple[str, ...]
    fallbacks: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str, where: str, kind: str) -> Template:
        parts: list[str] = []
        tags: list[str] = []
        fallbacks: list[str] = []
        pos = 0
        for match in TAG_RE.finditer(text):
            inner, bar, fallback = match.group(1).partition("|")
            name = NAME_RE.match(inner)
            if name is None or "{{" in fallback:
                raise InputError(
                    f"{where}: malformed merge tag {match.group(0)!r}: a tag is "
                    "{{field}} or {{field|fallback}} with a field name (letters, digits, _)"
                )
            parts.append(text[pos : match.start()])
            tags.append(name.group(1))
            fallbacks.append(fallback.strip())
            pos = match.end()
        parts.append(text[pos:])
        return cls(where, kind, tuple(parts), tuple(tags), tuple(fallbacks))

    def fallback(self, i: int) -> str:
        return self.fallbacks[i] if i < len(self.fallbacks) else ""

    def check(self, schema: Schema) -> None:
        """Refuse unknown tags, naming the tag and the closest field."""
        known = [*schema, *(t for t, kinds in SPECIAL_TAGS.items() if self.kind in kinds)]
        for tag in self.tags:
            if tag in known:
                continue
            close = difflib.get_close_matches(tag, known, n=1, cutoff=0.5)
            hint = f" (did you mean {{{{{close[0]}}}}}?)" if close else ""
            raise InputError(
                f"{self.where}: unknown merge tag {{{{{tag}}}}}{hint}; "
                f"fields: {', '.join(known)}"
            )

    def expr(self) -> pl.Expr:
        """One string column: the template rendered over a frame of value columns."""
        guard = VALUE_FILTERS[self.kind]
        pieces: list[pl.Expr] = []
        for i, tag in enumerate(self.tags):
            if self.parts[i]:
                pieces.append(pl.lit(self.parts[i]))
            value = guard(pl.col(tag))
            if self.fallback(i):
                # Template text, like the literals around it: not escaped again.
                value = pl.when(pl.col(tag) == "").then(pl.lit(self.fallback(i))).otherwise(value)
            pieces.append(value)
        if self.parts[-1] or not pieces:
            pieces.append(pl.lit(self.parts[-1]))
        return pl.concat_str(pieces)


def html_escape(value: pl.Expr) -> pl.Expr:
    for raw, escaped in HTML_ESCAPES:
        value = value.str.replace_all(raw, escaped, literal=True)
    return value


def one_line(value: pl.Expr) -> pl.Expr:
    """A value in a header: line breaks would start a new header (header injection)."""
    return value.str.replace_all(r"[\r\n]+", " ")


#: how a value is made safe for each kind of template: HTML escapes, the subject stays
#: on one line, text bodies take values as they are
VALUE_FILTERS = {
    "html": html_escape,
    "subject": one_line,
    "text": lambda value: value,
}


def fields_used(templates: Iterable[Template]) -> list[str]:
    """Contact fields the templates need, in first-use order (special tags excluded)."""
    names = (tag for t in templates for tag in t.tags if tag not in SPECIAL_TAGS)
    return list(dict.fromkeys(names))


# --- values as text ------------------------------------------------------------------


def _number(col: pl.Expr) -> pl.Expr:
    whole = col.is_finite() & (col == col.round()) & (col.abs() < 1e15)
    return pl.when(whole).then(col.cast(pl.Int64, strict=False).cast(pl.String)).otherwise(
        col.cast(pl.String)
    )


#: field type -> how a column of that type renders as text
TEXT_OF: dict[FieldType, object] = {
    FieldType.TEXT: lambda c: c,
    FieldType.ENUM: lambda c: c,
    FieldType.NUMBER: _number,
    FieldType.DATE: lambda c: c.cast(pl.String),
    FieldType.DATETIME: lambda c: c.dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
    FieldType.BOOLEAN: lambda c: c.cast(pl.String),
    FieldType.SET: lambda c: c.list.join(", "),
}


def value_columns(fields: Iterable[str], schema: Schema) -> list[pl.Expr]:
    """Expressions turning contact columns into text (empty -> "") under their own names."""
    exprs = []
    for name in fields:
        if name == "email_domain":
            col = pl.col("email").str.extract(EMAIL_DOMAIN_PATTERN, 1)
        else:
            col = pl.col(name)
        exprs.append(TEXT_OF[schema[name]](col).fill_null("").alias(name))
    return exprs


# --- a text body from an HTML body -------------------------------------------------------

BLOCK_TAGS = frozenset(
    "p div br tr li h1 h2 h3 h4 h5 h6 table ul ol blockquote pre hr section article header "
    "footer".split()
)
SKIP_TAGS = frozenset({"script", "style", "head", "title"})


class _TextOfHtml(HTMLParser):
    """Readable plain text of an HTML body: tags dropped, blocks on new lines, links kept."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skipping = 0
        self.links: list[str | None] = []

    def handle_starttag(self, tag, attrs):
        if tag in SKIP_TAGS:
            self.skipping += 1
        elif tag in BLOCK_TAGS:
            self.out.append("\n")
        if tag == "li":
            self.out.append("- ")
        if tag == "a":
            self.links.append(dict(attrs).get("href"))

    def handle_endtag(self, tag):
        if tag in SKIP_TAGS:
            self.skipping = max(0, self.skipping - 1)
        elif tag in BLOCK_TAGS:
            self.out.append("\n")
        if tag == "a" and self.links:
            href = self.links.pop()
            if href and not href.startswith("#"):
                self.out.append(f" ({href})")

    def handle_data(self, data):
        if not self.skipping:
            self.out.append(re.sub(r"\s+", " ", data))


def text_of_html(html: str) -> str:
    """The text template derived from an HTML template (merge tags survive as text)."""
    parser = _TextOfHtml()
    parser.feed(html)
    parser.close()
    lines = (line.strip() for line in "".join(parser.out).splitlines())
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return text + "\n"
