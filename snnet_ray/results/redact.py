"""Secrets out of what the results service stores and serves.

A run's experiment config holds the results service's bearer token (`results.token`) and the
database URL (`results.db`, with a PostgreSQL password); reads are open, and the token authorises
writes. So every config and hyperparameter mapping is passed through `redact` before it is stored,
and again before it is served (rows stored by older versions). Removed: the value of any field
whose name says it is a secret (`token`, `password`, `secret`, `api_key`, `credentials`, ...) and
the password part of any URL (`postgresql://user:PASSWORD@host/db`, up to the last `@`) and the
value of any secret `name=value` argument (`?token=`, `&sig=`, libpq's `host=h password=x`,
`PGPASSWORD=x`) in a string anywhere in the tree. The patterns are bounded and linear, so a hostile
megabyte string is redacted in one pass.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["REDACTED", "is_secret_key", "redact", "redact_text"]

REDACTED = "<redacted>"

_SECRET_KEY = re.compile(
    r"(?i:token|passw|passphrase|pgpass|pwd|secret|api[_-]?key|access[_-]?key|private[_-]?key|signing[_-]?key"
    r"|encryption[_-]?key|credential|auth|cookie|session[_-]?key)"
    # `db_pass`, `pass`, `key`: whole words only, so `bypass` and `layer_key` (a config knob) are kept.
    r"|(?i:(?:^|[_.-])pass$|^key$)|(?<=[a-z0-9])Pass$"
)
# The start of a URL. The scheme is bounded, so a long run of letters is not rescanned from each position.
_URL_HEAD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,31}://")
_SPACE = re.compile(r"\s")
# `name=value` after `?`, `&`, `;` (a URL query) or after a space, quote, comma or the start (libpq's
# `host=h password=x`, a command line's `--token=x`, an env line's `PGPASSWORD=x`). The name is bounded
# and judged by `_is_secret_param`; a quoted value (libpq's `password='a b'`) is taken whole.
_PARAM = re.compile(
    r"(?:^|(?<=[?&;\s,'\"(\[{]))(?P<head>(?P<name>[\w.-]{1,128})[ \t]{0,8}=[ \t]{0,8})"
    r"(?P<secret>'[^'\n]{0,1024}'|[^&;#\s]*)"
)


def is_secret_key(key: object) -> bool:
    """Whether a mapping key names a secret (its value is never stored)."""
    return isinstance(key, str) and _SECRET_KEY.search(key) is not None


def _is_secret_param(name: str) -> bool:
    name = name.lstrip("-.")
    return is_secret_key(name) or name.lower() in ("sig", "signature") or name.lower().endswith("-signature")


def _redact_url_passwords(text: str) -> str:
    # scheme://user:password@host -> scheme://user:<redacted>@host. The password may hold `/`, `:` or `@`
    # (unescaped, as people paste them), so the userinfo runs to the LAST `@` before the URL ends (at
    # whitespace or the next `scheme://`); an `@` later in the path or query hides more, never less.
    # Each URL's stretch is scanned once, so the work is linear in the text.
    heads = list(_URL_HEAD.finditer(text))
    if not heads:
        return text
    out: list[str] = []
    done = 0
    for i, head in enumerate(heads):
        start = head.end()
        limit = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        space = _SPACE.search(text, start, limit)
        end = space.start() if space else limit
        at = text.rfind("@", start, end)
        colon = text.find(":", start, at) if at > start else -1
        if colon < 0 or any(c in text[start:colon] for c in "/?#@"):
            continue  # no `user:password@` here (`user@host`, or a `:` in the path or query)
        stop = min((j for j in (text.find(c, colon, at) for c in "/?#") if j >= 0), default=at)
        if stop < at and text[colon + 1 : stop].isdigit():
            continue  # `host:8080/x?mail=a@b`: a port, and the `@` is the query's
        out += [text[done : colon + 1], REDACTED if at > colon + 1 else ""]
        done = at
    out.append(text[done:])
    return "".join(out)


def redact_text(text: str) -> str:
    """`text` with URL passwords and secret `name=value` arguments replaced by `REDACTED`."""
    if "://" not in text and "=" not in text:
        return text
    if "://" in text:
        text = _redact_url_passwords(text)
    if "=" not in text:
        return text
    return _PARAM.sub(
        lambda m: m["head"] + (REDACTED if m["secret"] and _is_secret_param(m["name"]) else m["secret"]), text
    )


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
