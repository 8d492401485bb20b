"""Memory of one MGS step against num_candidates and chunk_size.

Usage:
  python benchmarks/memory.py                 # d = 1e6 and 1e7, n = 16 and 64 (a few minutes)
  python benchmarks/memory.py --d 1e5 --n 64  # one size
  python benchmarks/memory.py --large-step    # one d = 1e7, n = 16, chunk_size = 8 step to the end
  python benchmarks/memory.py --antithetic    # the same with antithetic pairs (one draw per pair)
  python benchmarks/memory.py --smoke         # seconds: checks that everything runs

For each setting it reports XLA's ``compiled.memory_analysis()`` temporary bytes (deterministic)
and the peak resident memory (RSS) of a fresh process that compiles and runs one step, both also as
a multiple of one float32 copy of the parameters, with the wall time of the compilation and of the
one step and the 1-minute load average before and after. With the two-pass evaluation, memory
follows chunk_size, not n.

Each setting runs in its own process, because a peak RSS is a process's high-water mark; neither
it nor the temp bytes depend on the load, so there is nothing to pair here. The one step's wall
time is there to show that a step completes (``--large-step``, with ``--timeout``), not to compare
settings: for time ratios, chunked against unchunked, interleaved, use ``chunked.py``.

``--large-step`` is the check that a d = 10^7, n = 16, chunk_size = 8 step runs to completion
with its temporary memory set by the chunk: it runs that step, then compiles (without running)
the same chunk at n = 64 and the unchunked step at n = 16 for their temp bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
from _timing import load_average

import mlesearch as mls


def measure(
    dim: int,
    num_candidates: int,
    chunk_size: int | None,
    run: bool = True,
    antithetic: bool = False,
) -> dict[str, Any]:
    """Compiles one MGS step in this process and, with ``run``, runs it.

    Returns:
      ``{"temp_bytes", "peak_rss_bytes", "compile_seconds", "step_seconds"}``; without ``run``
      the peak RSS is 0 and the step time None.
    """
    import resource

    params = jnp.zeros((dim,), jnp.float32)
    tx = mls.mgs(
        num_candidates=num_candidates, sigma=0.1, chunk_size=chunk_size, antithetic=antithetic
    )
    state = tx.init(params)

    def loss(p):
        return jnp.sum(jnp.sin(p) ** 2)

    def step(u, s, p):
        return tx.update(u, s, p, task_loss_fn=loss)

    start = time.perf_counter()
    compiled = jax.jit(step).lower(params, state, params).compile()
    compile_seconds = time.perf_counter() - start
    temp = compiled.memory_analysis().temp_size_in_bytes
    result = dict(temp_bytes=int(temp), compile_seconds=compile_seconds)
    if not run:
        return dict(result, peak_rss_bytes=0, step_seconds=None)
    start = time.perf_counter()
    jax.block_until_ready(compiled(params, state, params))
    step_seconds = time.perf_counter() - start
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return dict(result, peak_rss_bytes=int(peak_rss), step_seconds=step_seconds)


def run_in_subprocess(
    module: str,
    function: str,
    args: list[Any],
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> Any:
    """Calls ``module.function(*args)`` (a module of this folder) in a fresh Python process.

    The function's result must be JSON; so are ``args``. A fresh process gives a clean peak RSS,
    and lets ``env`` set flags that jax reads once at start (``XLA_FLAGS``). After ``timeout``
    seconds the process is killed and ``subprocess.TimeoutExpired`` raised.
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
        timeout=timeout,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_in_subprocess(
    dim: int,
    num_candidates: int,
    chunk_size: int | None,
    run: bool = True,
    timeout: float | None = None,
    antithetic: bool = False,
) -> dict[str, Any]:
    """`measure` in a fresh Python process, so that its peak RSS is this setting's alone.

    Adds the 1-minute load average before and after, and ``finished``: False (with no sizes) when
    the process did not end within ``timeout`` seconds.
    """
    load_start = load_average()
    start = time.perf_counter()
    try:
        result = run_in_subprocess(
            "memory",
            "measure",
            [dim, num_candidates, chunk_size, run, antithetic],
            timeout=timeout,
        )
        result["finished"] = True
    except subprocess.TimeoutExpired:
        result = dict(
            temp_bytes=None,
            peak_rss_bytes=None,
            compile_seconds=None,
            step_seconds=None,
            finished=False,
        )
    result["process_seconds"] = time.perf_counter() - start
    return dict(result, load_start=load_start, load_end=load_average())


def _bytes(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=float, nargs="+", default=[1e6, 1e7])
    parser.add_argument("--n", type=int, nargs="+", default=[16, 64])
    parser.add_argument(
        "--chunk", type=int, nargs="+", default=[1, 8, 0], help="0 means n (all at once)"
    )
    parser.add_argument("--out", default=None, help="JSON path for the results")
    parser.add_argument(
        "--compile-only",
        action="store_true",
        help="compile without running: temp bytes only, no peak RSS (fast at large d on a CPU)",
    )
    parser.add_argument(
        "--large-step",
        action="store_true",
        help="run one d = 1e7, n = 16, chunk_size = 8 step to completion (wall time, temp bytes, "
        "peak RSS), then compile chunk 8 at n = 64 and the unchunked n = 16 step for comparison; "
        "replaces --d, --n and --chunk",
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds before a setting's process is killed"
    )
    parser.add_argument(
        "--antithetic", action="store_true", help="antithetic pairs (mgs(antithetic=True))"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check that it runs")
    args = parser.parse_args()
    # (d, n, chunk_size, run) per setting.
    if args.large_step:
        dim = int(1e4 if args.smoke else 1e7)
        settings = [(dim, 16, 8, True), (dim, 64, 8, False), (dim, 16, 16, False)]
    else:
        if args.smoke:
            args.d, args.n, args.chunk = [1e4], [8], [1, 0]
        settings = [
            (int(d), n, n if chunk == 0 else chunk, not args.compile_only)
            for d in args.d
            for n in args.n
            for chunk in args.chunk
        ]

    rows = []
    header = (
        f"{'d':>10} {'n':>4} {'chunk':>6} {'temp bytes':>15} {'x tree':>7} {'peak RSS':>15}"
        f" {'compile s':>10} {'step s':>8} {'load':>11}"
    )
    print(f"backend={jax.default_backend()} jax={jax.__version__}")
    print(header)
    print("-" * len(header))
    for dim, n, chunk_size, run in settings:
        result = measure_in_subprocess(dim, n, chunk_size, run, args.timeout, args.antithetic)
        rows.append(
            dict(d=dim, n=n, chunk_size=chunk_size, run=run, antithetic=args.antithetic, **result)
        )
        temp = result["temp_bytes"]
        copies = "-" if temp is None else f"{temp / (4 * dim):.1f}"
        step = _seconds(result["step_seconds"]) if result["finished"] else "timeout"
        print(
            f"{dim:>10} {n:>4} {chunk_size!s:>6} {_bytes(temp):>15} {copies:>7} "
            f"{_bytes(result['peak_rss_bytes'] or None):>15} "
            f"{_seconds(result['compile_seconds']):>10} {step:>8} "
            f"{result['load_start']:>5.2f}-{result['load_end']:.2f}",
            flush=True,
        )
    if args.large_step:
        first = rows[0]
        verdict = "completed" if first["finished"] else f"did not complete in {args.timeout} s"
        print(
            f"d = {first['d']:,}, n = 16, chunk_size = 8: the step {verdict}; temp bytes with "
            "chunk_size = 8 at n = 16 and 64, and unchunked at n = 16: "
            + ", ".join(_bytes(row["temp_bytes"]) for row in rows)
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(backend=jax.default_backend(), jax=jax.__version__, rows=rows), f)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
