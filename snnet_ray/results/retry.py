"""One retry policy for the results service: HTTP calls, database set-up and Serve start-up.

    retry(call, on=(httpx.TransportError,), attempts=9, backoff=0.25)     # 0.25, 0.5, 1, ... s
    retry(poll, on=NotYet, timeout_s=60, backoff=0.5, factor=1)           # every 0.5 s for 60 s

`call` is tried until it returns, an exception that `on` does not cover is raised, `attempts` are
spent or `timeout_s` has passed; then the last exception is raised as it was, so the caller
decides what a final failure means (a `ConnectionError` naming the URL, a 5xx answer passed on).
Waits grow by `factor` up to `max_delay`, with a little jitter so that many workers retrying the
same service do not come back in lockstep. Only idempotent calls may be retried: every write of
the results service is an upsert by key.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["NotYet", "retry"]

T = TypeVar("T")


class NotYet(Exception):
    """Raised by a polled call whose condition does not hold yet (retry it)."""


def retry(
    call: Callable[[], T],
    *,
    on: type[BaseException] | tuple[type[BaseException], ...] = NotYet,
    attempts: int | None = None,
    timeout_s: float | None = None,
    backoff: float = 0.25,
    factor: float = 2.0,
    max_delay: float = 10.0,
    jitter: float = 0.1,
) -> T:
    """`call()`, retried on the exceptions `on` (see the module docstring)."""
    if attempts is None and timeout_s is None:
        raise ValueError("retry needs attempts or timeout_s (or both): it never retries forever")
    if attempts is not None and attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    delay = backoff
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except on:
            out_of_attempts = attempts is not None and attempt >= attempts
            out_of_time = deadline is not None and time.monotonic() + delay > deadline
            if out_of_attempts or out_of_time:
                raise
        time.sleep(delay * (1.0 + random.uniform(-jitter, jitter)))
        delay = min(max_delay, delay * factor)
