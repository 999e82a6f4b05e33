"""Helpers shared by the benchmarks."""

from __future__ import annotations

from collections.abc import Iterable


def step_weighted_rate(windows: Iterable[tuple[int, float]], after_step: int = 0) -> float | None:
    """Images/s over the trainer's StepMetrics windows ending after ``after_step``: total images /
    total time, each window weighted by its own number of steps (epoch ends and the last step
    close short windows; an unweighted mean would count a 2-step window as much as a 20-step one).

    windows: (step at the window's end, images/s over the window), in step order.
    """
    prev, steps_sum, time_sum = None, 0.0, 0.0
    for step, ips in windows:
        n = step - prev if prev is not None else None
        prev = step
        if n is None or step <= after_step or not ips > 0:
            continue  # the first window's length is unknown: it is part of the warm-up anyway
        steps_sum += n
        time_sum += n / ips
    return steps_sum / time_sum if time_sum > 0 else None
