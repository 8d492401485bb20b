"""Temporary memory of one compiled MGS step against num_candidates and chunk_size.

Usage: python benchmarks/memory.py [--dim 100000]

Prints XLA's ``memory_analysis()`` temp bytes for each setting, and its ratio to the size of one
float32 parameter vector. With the two-pass evaluation, temp memory follows chunk_size, not n.
"""

import argparse

import jax
import jax.numpy as jnp

import mlesearch as mls


def temp_bytes(dim: int, num_candidates: int, chunk_size: int | None) -> int:
    params = jnp.zeros((dim,), jnp.float32)
    tx = mls.mgs(num_candidates=num_candidates, sigma=0.1, chunk_size=chunk_size)
    state = tx.init(params)

    def loss(p):
        return jnp.sum(jnp.sin(p) ** 2)

    def step(u, s, p):
        return tx.update(u, s, p, task_loss_fn=loss)

    compiled = jax.jit(step).lower(params, state, params).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=100_000)
    args = parser.parse_args()
    one_tree = 4 * args.dim
    print(f"backend={jax.default_backend()} d={args.dim} (one tree = {one_tree:,} bytes)")
    print(f"{'n':>5} {'chunk_size':>10} {'temp bytes':>14} {'/ one tree':>10}")
    for n in (64, 256):
        for chunk in (1, 8, None):
            b = temp_bytes(args.dim, n, chunk)
            print(f"{n:>5} {chunk!s:>10} {b:>14,} {b / one_tree:>10.1f}")


if __name__ == "__main__":
    main()
