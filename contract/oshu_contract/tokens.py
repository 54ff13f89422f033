"""The sealed-token format: the one definition of what a sealed token looks like and how it is made.

A sealed token stands in for a real secret in the agent's environment. It is worthless on
its own (random, no relation to the value) and unguessable (160 random bits). The operator
mints them, the session file carries them, the sidecar recognizes them in requests.
"""

from __future__ import annotations

import re
import secrets

SEALED_PREFIX = "SEALED_"
#: Random bytes behind each minted token (160 bits, hex-encoded).
SEALED_RANDOM_BYTES = 20
#: A sealed token's shape, unanchored: the prefix and 22-128 URL-safe characters (minted ones are 40 hex).
SEALED_PATTERN = SEALED_PREFIX + r"[A-Za-z0-9_-]{22,128}"
#: What the session file accepts: exactly one token.
SEALED_RE = re.compile(f"^{SEALED_PATTERN}$")
#: Finds sealed tokens inside bytes (a header, a body): the proxy's view of a request or response.
SEALED_IN_BYTES_RE = re.compile(SEALED_PATTERN.encode())


def new_sealed_token() -> str:
    """Mint a sealed token: worthless on its own, unguessable, fixed format."""
    return SEALED_PREFIX + secrets.token_hex(SEALED_RANDOM_BYTES)


def is_sealed_token(value: object) -> bool:
    """Whether `value` is a well-formed sealed token (as the session file requires)."""
    return isinstance(value, str) and SEALED_RE.match(value) is not None
