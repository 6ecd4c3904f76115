"""Prompt templates, kept as package data (``*.md``) so they read as text, not code strings."""

from __future__ import annotations

from functools import cache
from importlib import resources
from string import Template


@cache
def _template(name: str) -> Template:
    return Template((resources.files(__package__) / f"{name}.md").read_text(encoding="utf-8"))


def render(name: str, **values: object) -> str:
    """Fill a template; ``$name`` placeholders, so code braces in the text need no escaping."""
    return _template(name).substitute({k: str(v) for k, v in values.items()})
