"""Who is asking: ``Authorization: Bearer TOKEN`` -> the tenant whose ``token_sha256`` it is.

The service holds only the SHA-256 of each token (a leaked settings file leaks no token).
The presented token is hashed, and the digest is compared with *every* tenant's in constant
time (``hmac.compare_digest``, no early exit), so neither the comparison nor the number of
tenants tried says anything about a token that is almost right. A token is never logged,
echoed or kept.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rlm_sandbox.serve.config import Tenant

#: A longer header is not a token of ours: refused before it is hashed.
MAX_TOKEN_CHARS = 4096


def token_sha256(token: str) -> str:
    """What goes in ``[tenants.NAME] token_sha256``: the hex SHA-256 of the token's UTF-8."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def bearer_token(header: str | None) -> str | None:
    if not header or len(header) > MAX_TOKEN_CHARS + 16:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def authenticate(header: str | None, tenants: Iterable[Tenant]) -> Tenant | None:
    """The tenant the header's token belongs to, or None (no header, another scheme, no match)."""
    token = bearer_token(header)
    if token is None:
        return None
    presented = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
    found: Tenant | None = None
    for tenant in tenants:
        if hmac.compare_digest(presented, tenant.digest):
            found = tenant
    return found
