"""A run's status follows its driver: SIGTERM (what `ray job stop` sends) or Ctrl-C -> stopped,
an exception -> failed. Against a real results database."""

from __future__ import annotations

import os
import signal

import pytest

from snnet_ray.results import LocalResults
from snnet_ray.train.status import RunStopped, recorded_status


def test_sigterm_marks_the_run_stopped_and_errors_mark_it_failed(tmp_path):
    results = LocalResults(f"sqlite:///{tmp_path / 'results.db'}")
    for run in ("stopped", "failed"):
        results.register_run(run, status="running")
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunStopped), recorded_status(results, "stopped"):
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pause()  # the handler raises before this returns
    with pytest.raises(ValueError), recorded_status(results, "failed"):
        raise ValueError("a worker failed")
    assert results.get_run("stopped").status == "stopped"
    assert results.get_run("failed").status == "failed"
    assert signal.getsignal(signal.SIGTERM) is before  # the driver's own handler is back
