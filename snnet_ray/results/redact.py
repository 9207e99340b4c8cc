"""Secrets out of what the results service stores and serves.

A run's experiment config holds the results service's bearer token (`results.token`) and the
database URL (`results.db`, with a PostgreSQL password); reads are open, and the token authorises
writes. So every config and hyperparameter mapping is passed through `redact` before it is stored,
and again before it is served (rows stored by older versions). Removed: the value of any field
whose name says it is a secret (`token`, `password`, `secret`, `api_key`, `credentials`, ...) and
the password part of any URL (`postgresql://user:PASSWORD@host/db`) or `password=`/`token=` query
argument in a string anywhere in the tree.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["REDACTED", "is_secret_key", "redact", "redact_text"]

REDACTED = "<redacted>"

_SECRET_KEY = re.compile(
    r"(?i)(token|passw|pwd|secret|api[_-]?key|access[_-]?key|private[_-]?key|credential|auth|cookie|session[_-]?key)"
)
# scheme://user:password@host -> scheme://user:<redacted>@host
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)(?P<secret>[^@\s/]*)(?=@)")
# ...?password=x&token=y -> ...?password=<redacted>&token=<redacted>
_QUERY_SECRET = re.compile(
    r"(?i)(?P<head>[?&;](?:password|passwd|pwd|token|secret|api[_-]?key|access[_-]?key|sig|signature)=)"
    r"(?P<secret>[^&;#\s]*)"
)


def is_secret_key(key: object) -> bool:
    """Whether a mapping key names a secret (its value is never stored)."""
    return isinstance(key, str) and _SECRET_KEY.search(key) is not None


def redact_text(text: str) -> str:
    """`text` with URL passwords and secret query arguments replaced by `REDACTED`."""
    if "://" not in text and "=" not in text:
        return text
    text = _URL_PASSWORD.sub(lambda m: m["head"] + (REDACTED if m["secret"] else ""), text)
    return _QUERY_SECRET.sub(lambda m: m["head"] + (REDACTED if m["secret"] else ""), text)


def redact(value: Any) -> Any:
    """A copy of a JSON-like tree with every secret replaced by `REDACTED` (None and "" kept)."""
    if isinstance(value, dict):
        return {
            k: (REDACTED if is_secret_key(k) and v not in (None, "", False) else redact(v)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value
