"""The sandbox layer: hardened containers, the framed stream to their kernels, images, gc.

Names are imported lazily, as the package's own: importing one small module of the layer
(``prestart``, which the CLI loads before anything else) must not load the sandbox itself.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "ExecResult": "rlm_sandbox.sandbox.cell_result",
    "Sandbox": "rlm_sandbox.sandbox.core",
    "GCReport": "rlm_sandbox.sandbox.gc",
    "collect_garbage": "rlm_sandbox.sandbox.gc",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rlm_sandbox.sandbox' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
