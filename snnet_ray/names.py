"""The one rule for names a user or a worker chooses: runs, checkpoints, shards, devices.

A name ends up in URL paths (`/api/runs/{run}`), file and folder names (Ray Train's run folder,
`{run}-{checkpoint}.parquet`), SQL keys and terminal tables. So every path that names one of
these (config files, command lines, HTTP bodies and path parameters, `_info.json`) applies this
rule, and only this rule:

    1-128 characters of letters, digits and `_ . , : = + @ -`, starting with a letter, digit or `_`

No slash or backslash (no path can climb out of its folder), no whitespace, no control or escape
character (nothing reaches a terminal as a command), no leading dot or dash (no hidden file, no
command-line flag). `step-000200`, `final`, `val-000003.tar`, `tiny-digits-sweep-1a2b_00001`,
`h200-bf16-b128` and `lr=1e-4,bs=64` are names; `../etc`, `a b`, `-rf` and `x\\x1b[2J` are not.

Free text that is only displayed (a config's label such as `deit_tiny[0..3] -> L2 -> ...`, a
trial id, a worker's host name) follows the looser `check_label`: printable, bounded, no control
characters.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["MAX_LABEL", "MAX_NAME", "NAME_PATTERN", "check_label", "check_name", "is_name"]

MAX_NAME = 128
MAX_LABEL = 200
NAME_PATTERN = rf"^[A-Za-z0-9_][A-Za-z0-9_.,:=+@-]{{0,{MAX_NAME - 1}}}$"
_NAME_RE = re.compile(NAME_PATTERN)


def is_name(value: object) -> bool:
    """Whether `value` is a string that follows the name rule."""
    # fullmatch: "$" alone would also match before a trailing newline.
    return isinstance(value, str) and _NAME_RE.fullmatch(value) is not None


def check_name(value: object, what: str = "name") -> str:
    """`value` if it follows the name rule; ValueError naming `what` and the rule otherwise."""
    if is_name(value):
        return value  # type: ignore[return-value]
    shown = repr(value) if not isinstance(value, str) or len(value) <= 60 else repr(value[:57] + "...")
    raise ValueError(
        f"{what} {shown} is not a valid name: use 1-{MAX_NAME} letters, digits and _ . , : = + @ -, "
        "starting with a letter, digit or _ (no slashes, spaces or control characters)"
    )


def check_label(value: str, what: str = "label", max_length: int = MAX_LABEL) -> str:
    """`value` if it is displayable text: at most `max_length` characters, none of them control ones."""
    if len(value) > max_length:
        raise ValueError(f"{what} is {len(value)} characters long; at most {max_length} are allowed")
    bad = next((c for c in value if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")), None)
    if bad is not None:
        raise ValueError(f"{what} {value[:60]!r} holds the control character {bad!r}; use printable text")
    return value
