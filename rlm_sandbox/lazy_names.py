"""Names a package exports without importing them until first used (PEP 562).

Why it is its own module: ``import rlm_sandbox`` (the CLI's ``--help``) and the sandbox
layer's package (which the CLI's prestart imports before anything else) must stay cheap;
both say which name lives where, and this one function loads it on first access.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, exports: dict[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """The package's ``__getattr__``: ``exports`` maps a name to its module; a name loaded
    once is kept in ``namespace`` (the package's globals), so it is looked up only once."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__
