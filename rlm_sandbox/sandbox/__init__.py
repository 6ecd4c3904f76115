"""The sandbox layer: hardened containers, the framed stream to their kernels, images, gc.

Names are imported lazily, as the package's own: importing one small module of the layer
(``prestart``, which the CLI loads before anything else) must not load the sandbox itself.
"""

from __future__ import annotations

from rlm_sandbox.lazy_names import lazy_getattr

_EXPORTS = {
    "ExecResult": "rlm_sandbox.sandbox.cell_result",
    "Sandbox": "rlm_sandbox.sandbox.core",
    "GCReport": "rlm_sandbox.sandbox.gc",
    "collect_garbage": "rlm_sandbox.sandbox.gc",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
