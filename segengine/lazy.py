"""numpy, imported by the first function that uses it rather than at start-up.

Importing numpy is a quarter of a one-shot `segengine count` (~50 ms), and a count the
index answers with bitmaps alone (behaviour in a window, statuses, lists) never needs
it. A module on that path names numpy through `numpy_on_first_use`:

    if TYPE_CHECKING:
        import numpy as np
    else:
        np = numpy_on_first_use(globals())

The first attribute read (``np.zeros``) imports numpy and puts the real module in the
module's global ``np``, so every later use is a plain global look-up, as fast as a
top-level import. `sys.modules` holds numpy only once it is really imported, which is
what tests/test_cold_start.py checks.
"""

from __future__ import annotations

import importlib
from typing import Any


class OnFirstUse:
    """Stands for a module in a namespace until its first attribute read imports it."""

    __slots__ = ("_module", "_namespace", "_alias")

    def __init__(self, module: str, namespace: dict[str, Any], alias: str):
        self._module, self._namespace, self._alias = module, namespace, alias

    def __getattr__(self, name: str) -> Any:
        module = importlib.import_module(self._module)
        if self._namespace.get(self._alias) is self:
            self._namespace[self._alias] = module
        return getattr(module, name)

    def __repr__(self) -> str:
        return f"<{self._module}, imported on first use>"


def numpy_on_first_use(namespace: dict[str, Any], alias: str = "np") -> Any:
    """numpy for the module whose globals are `namespace`, imported when first used."""
    return OnFirstUse("numpy", namespace, alias)
