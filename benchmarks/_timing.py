"""Interleaved timing shared by the benchmarks: paired ratios that hold on a busy machine.

Timing each implementation in its own block of repetitions lets a burst of load from elsewhere
fall on one side of a ratio. Here every repetition runs every implementation once, in an order
shuffled with a fixed seed, so that each repetition gives one paired ratio per pair; the report is
the median of those ratios with their interquartile range, and the 1-minute load average at the
start and the end.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any


def load_average() -> float:
    """The 1-minute load average of the machine."""
    return float(os.getloadavg()[0])


def warm_up(fn: Callable[[], Any], calls: int = 2) -> None:
    """Calls ``fn`` (compiling it on the first call) and waits for its results."""
    import jax

    for _ in range(calls):
        jax.block_until_ready(fn())


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    """The median seconds of ``repeats`` calls of ``fn`` in one block, after two warm-up calls.

    Only for what cannot share a process (``devices.py``: one device count per process); where
    implementations can run side by side, use `interleaved` and paired ratios.
    """
    import jax

    warm_up(fn)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, seed: int = 0
) -> dict[str, list[float]]:
    """Seconds per call of each of ``fns``, all run once per repetition in a shuffled order.

    The callables should be warmed up (compiled) already; each call is waited for with
    ``jax.block_until_ready``. Returns, per name, one time per repetition, in repetition order.
    """
    import jax

    names = list(fns)
    order = random.Random(seed)
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        order.shuffle(names)
        for name in names:
            start = time.perf_counter()
            jax.block_until_ready(fns[name]())
            times[name].append(time.perf_counter() - start)
    return times


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """The first quartile, the median and the third quartile of ``values``."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0], ordered[0], ordered[0]
    q1, median, q3 = statistics.quantiles(ordered, n=4)
    return q1, median, q3


def paired_ratio(
    times: dict[str, list[float]], numerator: str, denominator: str | Sequence[str]
) -> dict[str, Any]:
    """The median and interquartile range of the per-repetition ratios numerator / denominator.

    A ``denominator`` that names several entries stands for the sum of their times in each
    repetition.
    """
    names = [denominator] if isinstance(denominator, str) else list(denominator)
    totals = [sum(t) for t in zip(*(times[name] for name in names), strict=True)]
    ratios = [a / b for a, b in zip(times[numerator], totals, strict=True)]
    q1, median, q3 = quartiles(ratios)
    return dict(median=median, q1=q1, q3=q3, values=ratios)
