"""Memory of one MGS step against num_candidates and chunk_size.

Usage:
  python benchmarks/memory.py                 # d = 1e6 and 1e7, n = 16 and 64 (a few minutes)
  python benchmarks/memory.py --d 1e5 --n 64  # one size
  python benchmarks/memory.py --smoke         # seconds: checks that everything runs

For each setting it reports XLA's ``compiled.memory_analysis()`` temporary bytes (deterministic)
and the peak resident memory (RSS) of a fresh process that compiles and runs one step, both also as
a multiple of one float32 copy of the parameters. With the two-pass evaluation, memory follows
chunk_size, not n.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp

import mlesearch as mls


def measure(dim: int, num_candidates: int, chunk_size: int | None) -> dict[str, int]:
    """Compiles and runs one MGS step in this process; returns temp bytes and peak RSS bytes."""
    import resource

    params = jnp.zeros((dim,), jnp.float32)
    tx = mls.mgs(num_candidates=num_candidates, sigma=0.1, chunk_size=chunk_size)
    state = tx.init(params)

    def loss(p):
        return jnp.sum(jnp.sin(p) ** 2)

    def step(u, s, p):
        return tx.update(u, s, p, task_loss_fn=loss)

    compiled = jax.jit(step).lower(params, state, params).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    jax.block_until_ready(compiled(params, state, params))
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return dict(temp_bytes=int(temp), peak_rss_bytes=int(peak_rss))


def measure_in_subprocess(dim: int, num_candidates: int, chunk_size: int | None) -> dict[str, int]:
    """`measure` in a fresh Python process, so that its peak RSS is this setting's alone."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import memory; "
        "print(json.dumps(memory.measure(*json.loads(sys.argv[2]))))"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            os.path.dirname(os.path.abspath(__file__)),
            json.dumps([dim, num_candidates, chunk_size]),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=float, nargs="+", default=[1e6, 1e7])
    parser.add_argument("--n", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--chunk", type=int, nargs="+", default=[1, 8, 0], help="0 means None")
    parser.add_argument("--out", default=None, help="JSON path for the results")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.d, args.n, args.chunk = [1e4], [8], [1, 0]

    rows = []
    header = f"{'d':>10} {'n':>4} {'chunk':>6} {'temp bytes':>15} {'x tree':>7} {'peak RSS':>15}"
    print(f"backend={jax.default_backend()} jax={jax.__version__}")
    print(header)
    print("-" * len(header))
    for dim in (int(d) for d in args.d):
        one_tree = 4 * dim
        for n in args.n:
            for chunk in args.chunk:
                chunk_size = None if chunk == 0 else chunk
                result = measure_in_subprocess(dim, n, chunk_size)
                rows.append(dict(d=dim, n=n, chunk_size=chunk_size, **result))
                print(
                    f"{dim:>10} {n:>4} {chunk_size!s:>6} {result['temp_bytes']:>15,} "
                    f"{result['temp_bytes'] / one_tree:>7.1f} {result['peak_rss_bytes']:>15,}",
                    flush=True,
                )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(backend=jax.default_backend(), jax=jax.__version__, rows=rows), f)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
