"""Chunked against unchunked `mgs` steps, timed side by side.

`mgs(chunk_size=c)` bounds memory by evaluating and summing c candidates at a time inside a loop
(with a fixed α, each chunk is folded into the weighted mean as it is evaluated; with
``temperature="auto"``, the chunks are drawn a second time for the sum, on CPU in cache-sized
chunks); this measures what that
costs against the unchunked step (``chunk_size=n``: all n candidates in one vmap), with a cheap
task loss, so that the candidates' drawing and summing dominate, for d float32 parameters shaped
as one vector (``vector``) or as the four leaves of ``speed.py``'s MLP (``mlp``: two weight
matrices and two biases; the candidates' noise is drawn flat and sliced into the leaves). The
implementations alternate within each repetition and the report is the median (and interquartile
range) of the per-repetition ratios chunked / unchunked, with the load average: on a busy machine
only such paired ratios carry over.

Usage::

    python benchmarks/chunked.py                     # d = 1e5 and 1e6, n = 16, c = 1 and n/2
    python benchmarks/chunked.py --shapes vector      # the one-vector rows only
    python benchmarks/chunked.py --dims 1e6 --num-candidates 32 --repeats 15
    python benchmarks/chunked.py --temperature auto  # α from the losses: two draws when chunked
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

SHAPES = ("vector", "mlp")


def _params(dim: int, shapes: str) -> dict[str, jax.Array]:
    """About ``dim`` float32 parameters, as one vector or shaped as `speed.mlp_workload`'s MLP."""
    if shapes == "vector":
        return {"w": jnp.full((dim,), 0.1)}
    inputs, classes = 64, 10
    hidden = max(1, round(dim / (inputs + classes + 1)))
    return {
        "w1": jnp.full((inputs, hidden), 0.1),
        "b1": jnp.full((hidden,), 0.1),
        "w2": jnp.full((hidden, classes), 0.1),
        "b2": jnp.full((classes,), 0.1),
    }


def _cheap_loss(params: dict[str, jax.Array]) -> jax.Array:
    return sum(jnp.mean(jnp.tanh(leaf)) for leaf in jax.tree.leaves(params))


def _step(
    dim: int,
    num_candidates: int,
    chunk_size: int | None,
    shapes: str = "vector",
    temperature: float | str = 1.0,
) -> Callable[[], None]:
    params = _params(dim, shapes)
    guide = jax.tree.map(lambda p: 0.1 * p, params)
    tx = mls.mgs(
        num_candidates=num_candidates,
        sigma=0.01,
        weighting="tilted",
        chunk_size=chunk_size,
        temperature=temperature,
        key=0,
    )
    state = tx.init(params)
    step = jax.jit(lambda u, s, p: tx.update(u, s, p, task_loss_fn=_cheap_loss))

    def run():
        return step(guide, state, params)

    warm_up(run)  # compile outside the timing
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", default="1e5,1e6", help="comma-separated parameter counts")
    parser.add_argument("--num-candidates", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument(
        "--shapes", nargs="+", choices=SHAPES, default=list(SHAPES), help="parameter layouts"
    )
    parser.add_argument(
        "--temperature",
        default="1.0",
        help='α: a number (default 1.0), or "auto" to choose it from the losses every step',
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 2 repeats")
    args = parser.parse_args()
    temperature = args.temperature if args.temperature == "auto" else float(args.temperature)
    dims = [1000] if args.smoke else [int(float(d)) for d in args.dims.split(",")]
    num_candidates = 4 if args.smoke else args.num_candidates
    repeats = 2 if args.smoke else args.repeats
    chunks = sorted({1, max(num_candidates // 2, 1)})
    print(
        f"mgs step, chunked / unchunked, n = {num_candidates}, temperature = {temperature}, "
        f"{repeats} interleaved repeats"
    )
    print("shapes  d          chunk  median ratio  IQR            unchunked ms  load start-end")
    for shapes in args.shapes:
        for dim in dims:
            # Unchunked: chunk_size=n, all n in one vmap (None may chunk on CPU, see mgs).
            steps = {
                str(chunk): _step(dim, num_candidates, chunk, shapes, temperature)
                for chunk in [num_candidates, *chunks]
            }
            load_start = load_average()
            times = interleaved(steps, repeats)
            load_end = load_average()
            base = statistics.median(times[str(num_candidates)]) * 1e3
            for chunk in chunks:
                r = paired_ratio(times, str(chunk), str(num_candidates))
                print(
                    f"{shapes:<7} {dim:<10d} {chunk:<6d} {r['median']:>12.2f}  "
                    f"{r['q1']:.2f}-{r['q3']:.2f}      {base:>10.1f}  "
                    f"{load_start:.2f}-{load_end:.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
