"""Chunked against unchunked `mgs` steps, timed side by side.

`mgs(chunk_size=c)` bounds memory by evaluating and summing c candidates at a time inside a loop;
this measures what that costs against the unchunked step (all n candidates in one vmap), for one
parameter vector of d float32 entries and a cheap task loss, so that the candidates' drawing and
summing dominate. The implementations alternate within each repetition and the report is the
median (and interquartile range) of the per-repetition ratios chunked / unchunked, with the load
average: on a busy machine only such paired ratios carry over.

Usage::

    python benchmarks/chunked.py                     # d = 1e5 and 1e6, n = 16, c = 1 and n/2
    python benchmarks/chunked.py --dims 1e6 --num-candidates 32 --repeats 15
    python benchmarks/chunked.py --smoke             # tiny, for the test suite
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

import mlesearch as mls


def _step(dim: int, num_candidates: int, chunk_size: int | None) -> Callable[[], None]:
    params = {"w": jnp.full((dim,), 0.1)}
    guide = {"w": jnp.full((dim,), 0.01)}
    tx = mls.mgs(
        num_candidates=num_candidates,
        sigma=0.01,
        weighting="tilted",
        chunk_size=chunk_size,
        key=0,
    )
    state = tx.init(params)
    step = jax.jit(
        lambda u, s, p: tx.update(u, s, p, task_loss_fn=lambda q: jnp.mean(jnp.tanh(q["w"])))
    )
    jax.block_until_ready(step(guide, state, params))  # compile outside the timing
    return lambda: jax.block_until_ready(step(guide, state, params))


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    q1, median, q3 = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else ordered * 3
    return q1, median, q3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", default="1e5,1e6", help="comma-separated parameter counts")
    parser.add_argument("--num-candidates", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 2 repeats")
    args = parser.parse_args()
    dims = [1000] if args.smoke else [int(float(d)) for d in args.dims.split(",")]
    num_candidates = 4 if args.smoke else args.num_candidates
    repeats = 2 if args.smoke else args.repeats
    chunks = sorted({1, max(num_candidates // 2, 1)})
    print(f"mgs step, chunked / unchunked, n = {num_candidates}, {repeats} interleaved repeats")
    print("d          chunk  median ratio  IQR            unchunked ms")
    for dim in dims:
        steps = {chunk: _step(dim, num_candidates, chunk) for chunk in [None, *chunks]}
        ratios: dict[int, list[float]] = {chunk: [] for chunk in chunks}
        base_times = []
        for _ in range(repeats):
            times = {}
            for chunk, step in steps.items():
                start = time.perf_counter()
                step()
                times[chunk] = time.perf_counter() - start
            base_times.append(times[None])
            for chunk in chunks:
                ratios[chunk].append(times[chunk] / times[None])
        base = statistics.median(base_times) * 1e3
        for chunk in chunks:
            q1, median, q3 = _quartiles(ratios[chunk])
            print(f"{dim:<10d} {chunk:<6d} {median:>12.2f}  {q1:.2f}-{q3:.2f}      {base:>10.1f}")
    print("load average (1, 5, 15 min):", " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
