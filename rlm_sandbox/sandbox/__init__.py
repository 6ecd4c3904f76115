"""The sandbox layer: hardened containers, the framed stream to their kernels, images, gc."""

from .cell_result import ExecResult
from .core import Sandbox
from .gc import GCReport, collect_garbage

__all__ = ["ExecResult", "GCReport", "Sandbox", "collect_garbage"]
