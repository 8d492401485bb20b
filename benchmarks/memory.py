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
from typing import Any

import jax
import jax.numpy as jnp

import mlesearch as mls


def measure(
    dim: int, num_candidates: int, chunk_size: int | None, run: bool = True
) -> dict[str, int]:
    """Compiles one MGS step in this process and, with ``run``, runs it.

    Returns:
      ``{"temp_bytes", "peak_rss_bytes"}``; the peak RSS is 0 without ``run``.
    """
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
    if not run:
        return dict(temp_bytes=int(temp), peak_rss_bytes=0)
    jax.block_until_ready(compiled(params, state, params))
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return dict(temp_bytes=int(temp), peak_rss_bytes=int(peak_rss))


def run_in_subprocess(
    module: str, function: str, args: list[Any], env: dict[str, str] | None = None
) -> Any:
    """Calls ``module.function(*args)`` (a module of this folder) in a fresh Python process.

    The function's result must be JSON; so are ``args``. A fresh process gives a clean peak RSS,
    and lets ``env`` set flags that jax reads once at start (``XLA_FLAGS``).
    """
    code = (
        f"import json, sys; sys.path.insert(0, sys.argv[1]); import {module}; "
        f"print(json.dumps({module}.{function}(*json.loads(sys.argv[2]))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, os.path.dirname(os.path.abspath(__file__)), json.dumps(args)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_in_subprocess(
    dim: int, num_candidates: int, chunk_size: int | None, run: bool = True
) -> dict[str, int]:
    """`measure` in a fresh Python process, so that its peak RSS is this setting's alone."""
    return run_in_subprocess("memory", "measure", [dim, num_candidates, chunk_size, run])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=float, nargs="+", default=[1e6, 1e7])
    parser.add_argument("--n", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--chunk", type=int, nargs="+", default=[1, 8, 0], help="0 means None")
    parser.add_argument("--out", default=None, help="JSON path for the results")
    parser.add_argument(
        "--compile-only",
        action="store_true",
        help="compile without running: temp bytes only, no peak RSS (fast at large d on a CPU)",
    )
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
                result = measure_in_subprocess(dim, n, chunk_size, not args.compile_only)
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
