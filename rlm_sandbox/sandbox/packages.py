"""Debian package names for a derived sandbox image (``image_packages``), checked strictly.

The names end up as arguments of ``apt-get install`` in an image build, so nothing but a
plain package name is let through: Debian Policy 5.6.1 (lower-case letters, digits, ``+``,
``-`` and ``.``; at least two characters; starting with a letter or a digit). Versions
(``pkg=1.2``), architectures (``pkg:amd64``), releases (``pkg/bookworm``), globs, options
(``-o...``) and anything with a space or a shell character are refused before any build,
with a :class:`ConfigError` that says which name and why. The list is capped: a derived
image is for the few libraries a data question needs, not a distribution.

Standard library only (and the error tree): :mod:`rlm_sandbox.sandbox.config` validates
with it, and the unit tests need no Docker.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from rlm_sandbox.errors import ConfigError

#: At most this many packages in one derived image.
MAX_PACKAGES = 32
#: Longer than any package in Debian (the longest are around 70 characters).
MAX_NAME_LENGTH = 100
_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")
_HINT = "Debian package names, e.g. python3-pandas, python3-numpy, ripgrep (see packages.debian.org)"


def check_package_names(names: Iterable[str]) -> tuple[str, ...]:
    """The names sorted and without duplicates, or a :class:`ConfigError` naming the first
    one that is not a Debian package name (or saying the list is too long)."""
    if isinstance(names, str | bytes):
        raise ConfigError("image_packages must be a list of names, not one string", hint=_HINT)
    unique: set[str] = set()
    for name in names:
        if not isinstance(name, str):
            raise ConfigError(f"image package {name!r} is not a string", hint=_HINT)
        if len(name) > MAX_NAME_LENGTH:
            raise ConfigError(
                f"image package name {name[:40]!r}... is longer than {MAX_NAME_LENGTH} characters",
                hint=_HINT,
            )
        if not _NAME.fullmatch(name):
            raise ConfigError(f"{name!r} is not a Debian package name: {_why(name)}", hint=_HINT)
        unique.add(name)
    if len(unique) > MAX_PACKAGES:
        raise ConfigError(
            f"{len(unique)} image packages: at most {MAX_PACKAGES} are allowed",
            hint="list only what the code needs; dependencies are installed with them",
        )
    return tuple(sorted(unique))


def split_package_list(value: object) -> object:
    """``"a,b c"`` (a flag or an environment variable) or a list of such strings, as a flat
    list of names; anything else is returned as is, for validation to refuse."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list | tuple):
        out: list[object] = []
        for item in value:
            out.extend(re.split(r"[\s,]+", item.strip()) if isinstance(item, str) else [item])
        return [item for item in out if item != ""]
    return value


def _why(name: str) -> str:
    if len(name) < 2:
        return "names have at least two characters"
    if name != name.lower():
        return "names are lower case"
    if not re.fullmatch(r"[a-z0-9+.:=/-]+", name):
        return "only a-z, 0-9, '+', '-' and '.' are allowed"
    for mark, what in (("=", "a version"), (":", "an architecture"), ("/", "a release")):
        if mark in name:
            return f"give the name alone, without {what} ({mark!r})"
    return "names start with a letter or a digit"
