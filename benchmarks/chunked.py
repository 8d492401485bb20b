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
import statistics
from collections.abc import Callable

import jax
import jax.numpy as jnp
from _timing import interleaved, load_average, paired_ratio, warm_up

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

    def run():
        return step(guide, state, params)

    warm_up(run)  # compile outside the timing
    return run


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
    print("d          chunk  median ratio  IQR            unchunked ms  load start-end")
    for dim in dims:
        steps = {str(chunk): _step(dim, num_candidates, chunk) for chunk in [None, *chunks]}
        load_start = load_average()
        times = interleaved(steps, repeats)
        load_end = load_average()
        base = statistics.median(times["None"]) * 1e3
        for chunk in chunks:
            r = paired_ratio(times, str(chunk), "None")
            print(
                f"{dim:<10d} {chunk:<6d} {r['median']:>12.2f}  {r['q1']:.2f}-{r['q3']:.2f}"
                f"      {base:>10.1f}  {load_start:.2f}-{load_end:.2f}"
            )


if __name__ == "__main__":
    main()
