"""Email addresses: the one rule that normalises and checks an address (docs/importing.md).

Every place an address enters (contact and event imports, ``--emails`` files of
unsubscribe and resubscribe, ``history``, the send) goes through this module, so one
mailbox is one contact however it was typed, and nothing a mail server would read
differently from us is ever stored or used as a recipient.

Normalising (`normalise`):

1. every Unicode White_Space character (tab, NEL U+0085, no-break and em spaces,
   U+2028, ...) and every format character (category Cf: ZWSP U+200B, BOM U+FEFF,
   soft hyphen, bidi marks, ...) is stripped from both ends;
2. an ASCII address is lower-cased, nothing more;
3. any other is NFKC-normalised and lower-cased (then NFKC again, as Unicode's
   NFKC_Casefold does): full-width ``ａ`` is ``a`` and ``＠`` is ``@``, so
   compatibility characters cannot make a second contact for one mailbox;
4. a domain with non-ASCII letters is converted to its ASCII form (IDNA 2003, Python's
   built-in codec): ``bücher.de`` is stored ``xn--bcher-kva.de``, the form every mail
   server accepts; ``xn--`` labels are kept as given.

Checking (`problem`, on a normalised address) refuses what SMTP would misread or
what cannot be one mailbox: a space, control or format character inside, not
exactly one ``@``, an empty part before it, one of ``"(),:;<>[\\]`` before it
(quoted local parts are refused: ``a,b@x`` would reach ``a``), a part before the
``@`` over 64 bytes or an address over 254 bytes (RFC 5321), and a domain that is
not dot-separated labels of letters, digits, ``-`` and ``_``.

Imports evaluate the same rule in DuckDB: ASCII values (almost all) by the SQL of
`sql_email` and `sql_problem`, which mirror the Python functions (a property test
checks they agree on random Unicode), and any other value by these Python
functions, registered on the connection with `register`.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

#: Unicode's White_Space property (PropList.txt)
WHITE_SPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
#: ASCII white space, all an ASCII address can have around it
ASCII_SPACE = " \t\n\r\x0b\x0c"
#: characters that end or separate an address in SMTP and RFC 5322 headers
SPECIALS = '"(),:;<>[\\]'
LOCAL_MAX = 64
TOTAL_MAX = 254
DOMAIN_RE = r"([a-z0-9_-]{1,63}\.)+[a-z0-9_-]{1,63}"
#: a valid ASCII address in one pattern (the fast path; lengths checked apart)
VALID_ASCII_RE = r"[a-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@" + DOMAIN_RE
_VALID = re.compile(VALID_ASCII_RE)
_DOMAIN = re.compile(DOMAIN_RE)


class InvalidAddress(ValueError):
    """An address the rule refuses; the message says why."""


def _invisible(ch: str) -> bool:
    return ch in WHITE_SPACE or unicodedata.category(ch) == "Cf"


def _strip(text: str) -> str:
    start, end = 0, len(text)
    while start < end and _invisible(text[start]):
        start += 1
    while end > start and _invisible(text[end - 1]):
        end -= 1
    return text[start:end]


def normalise(raw: str) -> str:
    """The stored form of an address as typed (see the module's rule); never raises."""
    text = raw.strip(ASCII_SPACE) if raw.isascii() else _strip(raw)
    if text.isascii():
        return text.lower()
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).lower())
    text = _strip(text)
    local, at, domain = text.rpartition("@")
    # IDNA's own mapping drops some invisible characters: they are refused, not dropped
    if at and domain and not domain.isascii() and _bad_char(domain) is None:
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            pass  # left as it is: `problem` names it
    return local + at + domain


def _bad_char(text: str) -> str | None:
    for ch in text:
        if _invisible(ch) or unicodedata.category(ch) in ("Cc", "Cs", "Co", "Cn"):
            return f"contains a space, control or invisible character (U+{ord(ch):04X})"
    return None


def problem(address: str) -> str | None:
    """Why a normalised address is refused, or None when it is valid."""
    if _VALID.fullmatch(address) and len(address) <= TOTAL_MAX:
        return None
    if address == "":
        return "is empty"
    found = _bad_char(address)
    if found:
        return found
    ats = address.count("@")
    if ats != 1:
        return f"needs exactly one @ (found {ats})"
    local, _, domain = address.partition("@")
    if local == "":
        return "has nothing before the @"
    for ch in local:
        if ch in SPECIALS:
            return f"has '{ch}' before the @, which mail servers read as a separator"
    if len(local.encode()) > LOCAL_MAX:
        return f"has more than {LOCAL_MAX} bytes before the @"
    if len(address.encode()) > TOTAL_MAX:
        return f"is longer than {TOTAL_MAX} bytes"
    if not _DOMAIN.fullmatch(domain):
        return f"has the domain '{domain}', which is not a host name"
    return None


def parse(raw: str) -> str:
    """`raw` normalised, or `InvalidAddress` saying what is wrong with it."""
    address = normalise(raw)
    why = problem(address)
    if why is not None:
        raise InvalidAddress(f"{raw!r} is not a valid email address: it {why}")
    return address


def stored_problem(address: str) -> str | None:
    """Why a stored address must not be a recipient: refused by the rule, or not in the
    form the rule stores (both possible for data imported before the rule was strict)."""
    why = problem(address)
    if why is None and normalise(address) != address:
        why = (f"is not in normal form (the rule stores it as {normalise(address)!r}); it was "
               "imported by an older segengine")
    return why


# --- the same rule in DuckDB SQL -------------------------------------------------------

PY_NORMALISE = "segengine_email"
PY_PROBLEM = "segengine_email_problem"
_NON_ASCII = r"'[^\x00-\x7f]'"


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def register(con: Any) -> Any:
    """Make the Python half of the rule callable from `con`'s SQL (`sql_email`, `sql_problem`)."""
    names = {row[0] for row in con.execute(
        "SELECT function_name FROM duckdb_functions() WHERE function_name LIKE 'segengine_email%'"
    ).fetchall()}
    if PY_NORMALISE not in names:
        con.create_function(PY_NORMALISE, normalise, ["VARCHAR"], "VARCHAR")
        con.create_function(PY_PROBLEM, _sql_problem, ["VARCHAR"], "VARCHAR", null_handling="special")
    return con


def _sql_problem(address: str | None) -> str | None:
    return None if address is None else problem(address)


def sql_email(col: str) -> str:
    """SQL of `normalise` for a text column (ASCII in SQL, the rest in Python)."""
    trimmed = (
        f"CASE WHEN regexp_matches({col}, {_lit(f'^[{ASCII_SPACE}]|[{ASCII_SPACE}]$')}) "
        f"THEN trim({col}, {_lit(ASCII_SPACE)}) ELSE {col} END"
    )
    return (
        f"CASE WHEN regexp_matches({col}, {_NON_ASCII}) THEN {PY_NORMALISE}({col}) "
        f"ELSE lower({trimmed}) END"
    )


def sql_problem(col: str) -> str:
    """SQL of `problem` for a column of normalised addresses (null when valid)."""
    local = f"split_part({col}, '@', 1)"
    domain = f"split_part({col}, '@', 2)"
    bad = f"regexp_extract({col}, '[\\x00-\\x20\\x7f]')"
    special = f"regexp_extract({local}, {_lit('[' + re.escape(SPECIALS) + ']')})"
    ats = f"(strlen({col}) - strlen(replace({col}, '@', '')))"
    return (
        f"CASE WHEN regexp_full_match({col}, {_lit(VALID_ASCII_RE)}) AND strlen({col}) <= {TOTAL_MAX} "
        "THEN NULL "
        f"WHEN regexp_matches({col}, {_NON_ASCII}) THEN {PY_PROBLEM}({col}) "
        f"WHEN {col} = '' THEN 'is empty' "
        f"WHEN {bad} <> '' THEN "
        f"'contains a space, control or invisible character (' || printf('U+%04X', unicode({bad})) || ')' "
        f"WHEN {ats} <> 1 THEN 'needs exactly one @ (found ' || CAST({ats} AS VARCHAR) || ')' "
        f"WHEN {local} = '' THEN 'has nothing before the @' "
        f"WHEN {special} <> '' THEN "
        f"'has ''' || {special} || ''' before the @, which mail servers read as a separator' "
        f"WHEN strlen({local}) > {LOCAL_MAX} THEN 'has more than {LOCAL_MAX} bytes before the @' "
        f"WHEN strlen({col}) > {TOTAL_MAX} THEN 'is longer than {TOTAL_MAX} bytes' "
        f"WHEN NOT regexp_full_match({domain}, {_lit(DOMAIN_RE)}) "
        f"THEN 'has the domain ''' || {domain} || ''', which is not a host name' "
        "END"
    )
