"""The sandbox layer: hardened containers, the framed stream to their kernels, images, gc."""

from .core import ExecResult, Sandbox
from .gc import GCReport, collect_garbage

__all__ = ["ExecResult", "GCReport", "Sandbox", "collect_garbage"]
