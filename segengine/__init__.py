"""segengine: a columnar analytics engine for email-marketing segments.

    import segengine
    ws = segengine.open("path/to/workspace")
    ws.count("never-opened", as_of="2026-06-30")
"""

from .api import Workspace, open
from .errors import DefinitionError, InputError, SegengineError

__all__ = ["DefinitionError", "InputError", "SegengineError", "Workspace", "load_segment", "open"]
__version__ = "0.1.0"


def load_segment(source, schema=None):
    """Parse and validate a definition (dict, JSON/YAML text or file) into a `Segment`."""
    from .definition.parse import load_definition
    from .fields import Schema

    return load_definition(source, schema or Schema())
