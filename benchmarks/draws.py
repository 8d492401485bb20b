"""The noise draw on CPU: the written-out threefry against jax's, side by side.

On CPU, `mlesearch._threefry.standard_normal` draws normals from threefry keys (one key's, or
all the keys' of a vmap at once) with the hash written out (`_threefry.threefry_words`) and
stores them once for all their consumers, where jax's lowering of the hash is a rolled loop of
five passes and XLA:CPU recomputes part of erf⁻¹ in each consumer; the normals are the same, bit
for bit. This times, interleaved, median of the paired per-repetition ratios (written out /
jax's) with their interquartile range and the load average:

  - ``bits`` and ``normals``: one draw of n x d words or normals, alone; ``normals, n keys``:
    n draws of d normals, one per key, under one vmap (as a step draws its candidates);
  - ``mgs``, ``mgs_all_at_once``, ``mgs_antithetic`` and ``with_mgs``: the steps of
    ``speed.py`` on its MLP, each compiled twice, with the written-out draw and with jax's
    (``written_out_draw`` of ``mlesearch.transform._mgs_with``'s plan). Each pair must give the
    same update up to the order of floating-point sums, which the script checks.

Usage::

    python benchmarks/draws.py                        # d = 1e5 and 1e6, n = 16
    python benchmarks/draws.py --d 1e4 1e6 --n 4 32 --repeats 15
    python benchmarks/draws.py --smoke                # tiny, for the test suite
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _timing import interleaved, load_average, paired_ratio, warm_up
from speed import mlp_workload

import mlesearch as mls
from mlesearch import _threefry


def _draws(n: int, d: int) -> dict[str, Callable[[], Any]]:
    """The bits and the normals of one n x d draw, and n draws of d under a vmap over n keys;
    written out and jax's."""
    key = jax.random.key(0)
    length = n * d + (n * d) % 2
    words = jax.jit(lambda k: _threefry.threefry_words(jax.random.key_data(k), length))
    bits = jax.jit(lambda k: jax.random.bits(k, (length,)))
    normals = jax.jit(lambda k: _threefry.standard_normal(k, length, written_out=True))
    jax_normals = jax.jit(lambda k: jax.random.normal(k, (length,)))
    keys = jax.random.split(key, n)
    row = d + d % 2
    rows = jax.jit(jax.vmap(lambda k: _threefry.standard_normal(k, row, written_out=True)))
    jax_rows = jax.jit(jax.vmap(lambda k: jax.random.normal(k, (row,))))
    if not bool(jnp.all(words(key) == bits(key))):
        raise AssertionError("the written-out threefry gave other bits than jax.random.bits")
    return {
        "bits": lambda: words(key),
        "bits jax": lambda: bits(key),
        "normals": lambda: normals(key),
        "normals jax": lambda: jax_normals(key),
        "normals, n keys": lambda: rows(keys),
        "normals, n keys jax": lambda: jax_rows(keys),
    }


def _steps(n: int, d: int) -> dict[str, Callable[[], Any]]:
    """Each of the four steps, compiled with the written-out draw and with jax's."""
    params, surrogate, task_loss, data = mlp_workload(d)
    grad_fn = jax.grad(surrogate)

    def routed(p, data):
        return task_loss(p, *data)

    def transforms(written_out: bool) -> dict[str, optax.GradientTransformation]:
        sgd = optax.sgd(1e-3)

        def search(**kwargs: Any) -> optax.GradientTransformation:
            plan = {"written_out_draw": written_out}
            return mls.transform._mgs_with(plan, num_candidates=n, key=0, **kwargs)

        # with_mgs's chain (mlesearch/recipes.py) at its defaults, around a search whose draw
        # is chosen here.
        with_mgs = optax.chain(
            optax.clip_by_global_norm(1.0),
            optax.scale(-0.1),
            search(temperature="auto", weighting="tilted", noise="relative"),
            optax.scale(-1.0 / 0.1),
            optax.clip_by_global_norm(1.0),
            optax.adam(1e-3),
        )
        return {
            "mgs": optax.chain(sgd, search(sigma=1e-2)),
            "mgs_all_at_once": optax.chain(sgd, search(sigma=1e-2, chunk_size=n)),
            "mgs_antithetic": optax.chain(sgd, search(sigma=1e-2, antithetic=True)),
            "with_mgs": with_mgs,
        }

    steps, updates = {}, {}
    for suffix, written_out in (("", True), (" jax", False)):
        for name, tx in transforms(written_out).items():

            @jax.jit
            def step(p, state, data, tx=tx):
                g = grad_fn(p, *data)
                u, state = tx.update(g, state, p, task_loss_fn=routed, data=data)
                return optax.apply_updates(p, u), state

            state = tx.init(params)
            run = lambda step=step, state=state: step(params, state, data)  # noqa: E731
            warm_up(run)  # compiles, with this draw
            steps[name + suffix] = run
            updates[name + suffix] = run()[0]
    for name in transforms(True):
        for ours, theirs in zip(
            jax.tree.leaves(updates[name]), jax.tree.leaves(updates[name + " jax"]), strict=True
        ):
            np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6, err_msg=name)
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d", type=float, nargs="+", default=[1e5, 1e6])
    parser.add_argument("--n", type=int, nargs="+", default=[16])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 2 repeats")
    args = parser.parse_args()
    if args.smoke:
        args.d, args.n, args.repeats = [1e3], [4], 2
    print(
        f"backend={jax.default_backend()} jax={jax.__version__} "
        f"written out / jax's, median of {args.repeats} paired ratios (IQR)"
    )
    print(f"{'d':>9} {'n':>4}  {'what':<16} {'ratio':>6}  {'IQR':<11} {'jax ms':>9}  load")
    for d in args.d:
        for n in args.n:
            num_params = sum(x.size for x in jax.tree.leaves(mlp_workload(int(d))[0]))
            fns = {**_draws(n, num_params), **_steps(n, int(d))}
            for fn in fns.values():
                warm_up(fn)
            load_start = load_average()
            times = interleaved(fns, args.repeats)
            load_end = load_average()
            for name in fns:
                if name.endswith(" jax"):
                    continue
                r = paired_ratio(times, name, name + " jax")
                base = statistics.median(times[name + " jax"]) * 1e3
                print(
                    f"{num_params:>9} {n:>4}  {name:<16} {r['median']:>6.2f}  "
                    f"{r['q1']:.2f}-{r['q3']:.2f}  {base:>9.2f}  {load_start:.2f}-{load_end:.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
