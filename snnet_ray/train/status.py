"""A run's status in the results service follows what happened to its driver.

`ray job stop` sends the job's driver SIGTERM (and SIGKILL a few seconds later); Ctrl-C raises
KeyboardInterrupt. Without a handler the run stayed `running` in the results service forever.

    with recorded_status(results, run):     # in the driver, around training
        trainer.fit()
    # raised -> "failed"; SIGTERM or Ctrl-C -> "stopped"; the caller marks "finished" itself

A Tune trial is stopped another way: ASHA's stop tears the trial's Train run down, and `fit()`
raises whatever that teardown looks like. The trial passes `stop_requested` (did Tune ask?) so an
early-stopped trial is recorded `stopped`, the same status the sweep driver records for it later;
a trial still tearing down must not overwrite that with `failed`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["RunStopped", "recorded_status"]


class RunStopped(SystemExit):
    """The driver was told to stop (SIGTERM: `ray job stop`, `kill`, a scheduler's preemption)."""


@contextlib.contextmanager
def recorded_status(results: Any, run: str, *, stop_requested: Callable[[], bool] | None = None) -> Iterator[None]:
    """Mark `run` stopped (SIGTERM, Ctrl-C, `stop_requested()`) or failed (any other exception)."""
    previous = None
    signalled: list[int] = []
    if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread

        def stop(signum: int, frame: Any) -> None:
            signalled.append(signum)
            raise RunStopped(128 + signum)

        previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except BaseException as err:
        # Ray may wrap the interruption in its own error: the signal, not the type, says "stopped".
        stopped = (
            bool(signalled)
            or isinstance(err, (RunStopped, KeyboardInterrupt))
            or (stop_requested is not None and stop_requested())
        )
        _mark(results, run, "stopped" if stopped else "failed")
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _mark(results: Any, run: str, status: str) -> None:
    try:
        results.register_run(run, status=status)
    except Exception as err:  # the service may be what went away; the original error matters more
        import logging

        logging.getLogger(__name__).warning("could not mark run %s %s: %s", run, status, err)
