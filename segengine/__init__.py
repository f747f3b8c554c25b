"""segengine: a columnar analytics engine for email-marketing segments.

    import segengine
    ws = segengine.open("path/to/workspace")
    ws.count("never-opened", as_of="2026-06-30")
"""

from typing import TYPE_CHECKING, Any

from .errors import DefinitionError, InputError, SegengineError

if TYPE_CHECKING:
    from .api import Workspace, open

__all__ = ["DefinitionError", "InputError", "SegengineError", "Workspace", "load_segment", "open"]
__version__ = "0.1.0"


def load_segment(source, schema=None):
    """Parse and validate a definition (dict, JSON/YAML text or file) into a `Segment`."""
    from .definition.parse import load_definition
    from .fields import Schema

    return load_definition(source, schema or Schema())


def __getattr__(name: str) -> Any:
    # The API is imported on first use, not with the package: `segengine count`
    # imports `segengine.cli`, and a count answered from the index must not pay for
    # the engines and the import machinery the API names.
    if name in ("Workspace", "open"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'segengine' has no attribute {name!r}")
