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


def test_a_scheduler_stop_marks_the_torn_down_run_stopped_not_failed(tmp_path):
    # ASHA stopping a Tune trial tears its Train run down: `fit()` raises, but the run did not fail.
    import threading

    results = LocalResults(f"sqlite:///{tmp_path / 'results.db'}")
    results.register_run("early-stopped", status="running")
    results.register_run("crashed", status="running")
    tune_stop = threading.Event()
    with pytest.raises(RuntimeError), recorded_status(results, "early-stopped", stop_requested=tune_stop.is_set):
        tune_stop.set()
        raise RuntimeError("the report queue actor died")
    with pytest.raises(RuntimeError), recorded_status(results, "crashed", stop_requested=threading.Event().is_set):
        raise RuntimeError("a worker failed")
    assert results.get_run("early-stopped").status == "stopped"
    assert results.get_run("crashed").status == "failed"
