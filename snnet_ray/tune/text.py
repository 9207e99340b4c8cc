"""The sweep's table for the terminal: one line per trial, best first, then where everything went."""

from __future__ import annotations

from typing import Any

from snnet_ray.tune.sweep import SweepOutcome, TrialOutcome

__all__ = ["format_sweep"]


def format_sweep(outcome: SweepOutcome) -> str:
    """Trials (hyperparameters, objective, min/mean/max top-1, status), the best trial, and where results went."""
    lo, hi = outcome.gmacs_range
    head = (
        f"sweep {outcome.name} · {len(outcome.trials)} trials · objective: mean best top-1 within a GMACs budget, "
        f"budgets {lo:.4g}-{hi:.4g} GMACs"
    )
    trials = sorted(outcome.trials, key=lambda t: (t.objective is None, -(t.objective or 0.0), t.trial_id))
    header = ["trial", *outcome.params, "objective", "min top-1", "mean top-1", "max top-1", "status"]
    body = [
        [
            t.trial_id,
            *(_value(t.hyperparameters.get(p)) for p in outcome.params),
            _pct(t.objective),
            _pct(t.top1_min),
            _pct(t.top1_mean),
            _pct(t.top1_max),
            _status(t),
        ]
        for t in trials
    ]
    first_num = 1 + len(outcome.params)
    lines = [head, "", _grid(header, body, right=set(range(first_num, first_num + 4)))]
    best = outcome.best
    if best is not None:
        shown = ", ".join(f"{k}={_value(v)}" for k, v in best.hyperparameters.items())
        lines += ["", f"best trial: {best.trial_id} (run {best.run}) objective {_pct(best.objective)} with {shown}"]
    else:
        lines += ["", "best trial: none reported an objective"]
    lines += [
        f"results:    {outcome.results_url}  (snnet-ray results runs | show --run RUN | compare --run A --against B)",
        f"storage:    {outcome.storage_path}",
    ]
    return "\n".join(lines)


def _status(t: TrialOutcome) -> str:
    if t.status == "stopped":
        return f"stopped at step {t.step}" if t.step is not None else "stopped"
    if t.status == "failed" and t.error:
        return f"failed: {t.error[:60]}"
    return t.status


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}%"


def _grid(header: list[str], body: list[list[str]], right: set[int]) -> str:
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "  ".join("─" * w for w in widths)
    return "\n".join([line(header).rstrip(), rule, *(line(r).rstrip() for r in body)])
