"""Byte sizes as people write them (``8g``, ``512MiB``, ``1048576``): one parser for the
settings, the tenants' limits, the project-file rules and the CLI's flags, so that ``4m``
means the same bytes everywhere."""

from __future__ import annotations

import re
from typing import Any

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: Any) -> Any:
    """``8g``, ``8GiB``, ``512m``, ``1048576``: a byte count (binary units); other values pass
    through for the field's own validation to judge."""
    if isinstance(value, str):
        m = _SIZE.match(value)
        if not m:
            raise ValueError(f"{value!r} is not a size: give bytes, or a number with k, m, g or t (e.g. 8g)")
        return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    return value
