"""Reading and writing segment definitions as YAML 1.2 (core schema).

ruamel.yaml already reads `on`, `off`, `yes` and `no` as text in YAML 1.2 mode, but it
still turns an unquoted ``2026-01-01`` into a `datetime.date`, reads ``1_000`` as a
number and switches to YAML 1.1 rules when a document starts with ``%YAML 1.1``. A
definition must mean the same thing whoever wrote it, so the loader here resolves
plain scalars with exactly the YAML 1.2 core schema (spec section 10.3.2) and nothing
else: null, booleans, integers (decimal, ``0o`` octal, ``0x`` hex) and floats. Every
other plain scalar, dates included, is text; the parser checks dates itself.
"""

from __future__ import annotations

import io
import re
import warnings
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.resolver import BaseResolver
from ruamel.yaml.resolver import implicit_resolvers as RUAMEL_RESOLVERS

from ..errors import DefinitionError, Problem

#: (tag, pattern, possible first characters) of the YAML 1.2 core schema.
CORE_SCHEMA = (
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    (
        "tag:yaml.org,2002:int",
        r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$",
        list("-+0123456789"),
    ),
    (
        "tag:yaml.org,2002:float",
        r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
            |[-+]?\.(?:inf|Inf|INF)
            |\.(?:nan|NaN|NAN))$""",
        list("-+0123456789."),
    ),
)


class CoreSchemaResolver(BaseResolver):
    """Resolves plain scalars by the YAML 1.2 core schema, whatever `%YAML` says."""

    def __init__(self, version: Any = None, loader: Any = None, loadumper: Any = None):
        super().__init__(loadumper if loadumper is not None else loader)

    @property
    def processing_version(self) -> tuple[int, int]:
        # ruamel's constructors ask for the version to pick 1.1 quirks (octal 017,
        # sexagesimals); the answer is always 1.2.
        return (1, 2)


for _tag, _pattern, _first in CORE_SCHEMA:
    CoreSchemaResolver.add_implicit_resolver_base(_tag, re.compile(_pattern, re.X), _first)


class QuotingResolver(CoreSchemaResolver):
    """For writing: a string that YAML 1.1 *or* 1.2 would read as non-text gets quoted."""


for _versions, _tag, _regexp, _first in RUAMEL_RESOLVERS:
    QuotingResolver.add_implicit_resolver_base(_tag, _regexp, _first)


def _loader() -> YAML:
    yaml = YAML(typ="safe", pure=True)
    yaml.Resolver = CoreSchemaResolver
    return yaml


def load_yaml(text: str, *, origin: str | None = None) -> Any:
    """Parse one YAML 1.2 document; a syntax error becomes a `DefinitionError` with its line.

    Duplicate keys are an error (ruamel refuses them), so a rule cannot silently lose
    one of two ``op`` keys.
    """
    try:
        with warnings.catch_warnings():
            # ruamel warns on stderr about a reused anchor; the document still loads
            warnings.simplefilter("ignore")
            return _loader().load(text)
    except TypeError as err:  # a complex key (`? [a, b]`) cannot be a dict key
        raise DefinitionError(Problem("", f"invalid YAML: a mapping key must be text ({err})"),
                              source=origin) from None
    except MarkedYAMLError as err:
        raise DefinitionError(Problem("", _describe(err)), source=origin) from None
    except YAMLError as err:
        raise DefinitionError(Problem("", f"invalid YAML: {err}"), source=origin) from None
    except RecursionError:
        raise DefinitionError(Problem("", "nests too deeply to read: flatten the definition"),
                              source=origin) from None


def _describe(err: MarkedYAMLError) -> str:
    mark = err.problem_mark or err.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    reason = " ".join(part for part in (err.context, err.problem) if part)
    reason = reason.split("\n", 1)[0]
    return f"invalid YAML{where}: {reason}"


def dump_yaml(data: Any) -> str:
    """Write `data` (e.g. `to_dict` of a segment) as block-style YAML.

    The writer quotes every string that a YAML reader could take for something else
    (``'2026-01-01'``, ``'true'``, ``'on'``, ``'5'``), so the text reads back the same
    with this module and with YAML 1.1 readers alike.
    """
    yaml = YAML(typ="safe", pure=True)
    yaml.Resolver = QuotingResolver
    yaml.default_flow_style = False
    yaml.sort_base_mapping_type_on_output = False
    yaml.allow_unicode = True
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()
