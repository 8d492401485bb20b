"""Step time of MGS against the batched limit, a sequential loop and evosax, side by side.

Usage:
  python benchmarks/speed.py                       # the default sweep (minutes on 2 CPU cores)
  python benchmarks/speed.py --n 4 8 --d 1e3 1e5   # a smaller sweep
  python benchmarks/speed.py --smoke               # seconds: checks that everything runs

Each cell times, in one process, after warm-up, the median over ``--repeats`` calls (with
``block_until_ready``) of:

  (a) mgs: one jitted training step, the surrogate gradient then ``mlesearch.mgs`` with n
      candidates of a non-differentiable task loss;
  (b) limit: the same surrogate gradient plus ONE batched evaluation of all n candidates' losses,
      written by hand (noise drawn for all n at once, params + noise, ``jax.vmap`` of the loss);
  (c) sequential: the surrogate gradient, then the n candidates one jitted call each, as a PyTorch
      loop would;
  (d) evosax OpenES and GuidedES with population n: ask, ``jax.vmap`` of the same loss, tell, in
      one jitted step (GuidedES also takes the surrogate gradient).

It prints the ratios a/b, a/c and a/d per cell and writes them, with the raw times, as JSON.
Workloads: an MLP classifier with 0/1 error as the task loss (d set by its hidden width), and the
transformer language model of ``mlesearch.models`` with token error rate as the task loss.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

import mlesearch as mls
from mlesearch import models

Workload = tuple[Any, Callable[..., jax.Array], Callable[..., jax.Array], tuple[Any, ...]]


def mlp_workload(num_params: int, batch: int = 128, inputs: int = 64, classes: int = 10):
    """An MLP whose parameter count is about ``num_params``; returns params, losses and data."""
    hidden = max(1, round(num_params / (inputs + classes + 1)))
    k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
    params = {
        "w1": jax.random.normal(k1, (inputs, hidden)) / math.sqrt(inputs),
        "b1": jnp.zeros((hidden,)),
        "w2": jax.random.normal(k2, (hidden, classes)) / math.sqrt(hidden),
        "b2": jnp.zeros((classes,)),
    }
    x = jax.random.normal(k3, (batch, inputs))
    y = jax.random.randint(k4, (batch,), 0, classes)

    def logits(p, x):
        return jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    def surrogate(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(logits(p, x), y).mean()

    def task_loss(p, x, y):
        return jnp.mean(jnp.argmax(logits(p, x), -1) != y).astype(jnp.float32)

    return params, surrogate, task_loss, (x, y)


def lm_workload(size: str = "small", batch: int = 16, length: int = 32):
    """The transformer LM of `mlesearch.models` on random tokens; token error rate as task loss."""
    widths = {"small": (2, 64), "medium": (4, 128), "large": (6, 256)}
    layers, width = widths[size]
    config = models.TransformerConfig(
        vocab_size=512,
        num_layers=layers,
        num_heads=4,
        embed_dim=width,
        mlp_dim=4 * width,
        max_len=length,
    )
    model = models.TransformerLM(config)
    tokens = jax.random.randint(jax.random.key(1), (batch, length), 0, config.vocab_size)
    params = model.init(jax.random.key(0), tokens)

    def surrogate(p, tokens):
        logits = model.apply(p, tokens[:, :-1])
        return models.lm_loss(logits, tokens[:, 1:])

    def task_loss(p, tokens):
        logits = model.apply(p, tokens[:, :-1])
        return jnp.mean(jnp.argmax(logits, -1) != tokens[:, 1:]).astype(jnp.float32)

    return params, surrogate, task_loss, (tokens,)


def _time(fn: Callable[[], Any], repeats: int) -> float:
    jax.block_until_ready(fn())
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def implementations(workload: Workload, n: int, lr: float = 1e-3) -> dict[str, Callable[[], Any]]:
    """The timed callables (a)-(d) for one workload and population size n."""
    params, surrogate, task_loss, data = workload
    grad_fn = jax.grad(surrogate)
    sigma = 1e-2

    # mgs routes extra arguments to the task loss by name.
    def routed(p, data):
        return task_loss(p, *data)

    tx = optax.chain(optax.sgd(lr), mls.mgs(num_candidates=n, sigma=sigma, key=0))
    mgs_state = tx.init(params)

    @jax.jit
    def mgs_step(p, state, data):
        g = grad_fn(p, *data)
        u, state = tx.update(g, state, p, task_loss_fn=routed, data=data)
        return optax.apply_updates(p, u), state

    @jax.jit
    def limit_step(p, key, data):
        g = grad_fn(p, *data)
        leaves, treedef = jax.tree.flatten(p)
        keys = jax.random.split(key, len(leaves))
        noise = [
            sigma * jax.random.normal(k, (n, *leaf.shape))
            for k, leaf in zip(keys, leaves, strict=True)
        ]
        candidates = jax.tree.unflatten(
            treedef, [x + e for x, e in zip(leaves, noise, strict=True)]
        )
        losses = jax.vmap(lambda c: task_loss(c, *data))(candidates)
        return g, losses

    grad_jit = jax.jit(lambda p, data: grad_fn(p, *data))

    @jax.jit
    def one_candidate(p, key, data):
        leaves, treedef = jax.tree.flatten(p)
        keys = jax.random.split(key, len(leaves))
        candidate = jax.tree.unflatten(
            treedef,
            [x + sigma * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)],
        )
        return task_loss(candidate, *data)

    keys = jax.random.split(jax.random.key(1), n)

    def sequential():
        g = grad_jit(params, data)
        losses = [one_candidate(params, keys[i], data) for i in range(n)]
        return g, jnp.stack(losses)

    out = {
        "mgs": lambda: mgs_step(params, mgs_state, data),
        "limit": lambda: limit_step(params, jax.random.key(1), data),
        "sequential": sequential,
    }
    out.update(_evosax_steps(params, grad_fn, task_loss, data, n, sigma, lr))
    return out


def _evosax_steps(params, grad_fn, task_loss, data, n, sigma, lr) -> dict[str, Callable[[], Any]]:
    import evosax.algorithms

    steps = {}
    for name, cls in (
        ("open_es", evosax.algorithms.Open_ES),
        ("guided_es", evosax.algorithms.GuidedES),
    ):
        population = n if n % 2 == 0 else n + 1
        es = cls(
            population,
            solution=params,
            optimizer=optax.sgd(lr),
            std_schedule=optax.constant_schedule(sigma),
        )
        es_params = es.default_params
        state = es.init(jax.random.key(0), params, es_params)
        guided = name == "guided_es"

        @jax.jit
        def step(state, key, data, es=es, es_params=es_params, guided=guided):
            if guided:
                g = grad_fn(es.get_mean(state), *data)
                state = state.replace(grad=es._ravel_solution(g))
            ask_key, tell_key = jax.random.split(key)
            candidates, state = es.ask(ask_key, state, es_params)
            losses = jax.vmap(lambda c: task_loss(c, *data))(candidates)
            state, _ = es.tell(tell_key, candidates, losses, state, es_params)
            return state

        steps[name] = lambda step=step, state=state: step(state, jax.random.key(2), data)
    return steps


def run(args: argparse.Namespace, out: str | None = None) -> dict[str, Any]:
    """Times every cell; with ``out``, rewrites the JSON there after each cell."""
    cells = []
    workloads: list[tuple[str, Callable[[], Workload]]] = []
    for d in args.d:
        workloads.append((f"mlp d={int(d):.0e}", lambda d=d: mlp_workload(int(d))))
    for size in args.lm:
        workloads.append((f"lm {size}", lambda size=size: lm_workload(size)))
    header = (
        f"{'workload':<16}{'d':>10}{'n':>4}{'mgs ms':>10}{'a/b':>7}{'a/c':>7}"
        f"{'a/d open':>9}{'a/d guided':>11}"
    )
    print(header)
    print("-" * len(header))
    for label, make in workloads:
        workload = make()
        num_params = sum(x.size for x in jax.tree.leaves(workload[0]))
        for n in args.n:
            timed = {
                name: _time(fn, args.repeats) for name, fn in implementations(workload, n).items()
            }
            cell = dict(workload=label, d=int(num_params), n=n, seconds=timed)
            cell["ratios"] = {
                "a/b": timed["mgs"] / timed["limit"],
                "a/c": timed["mgs"] / timed["sequential"],
                "a/d_open_es": timed["mgs"] / timed["open_es"],
                "a/d_guided_es": timed["mgs"] / timed["guided_es"],
            }
            cells.append(cell)
            if out:
                _write(out, _results(args, cells))
            r = cell["ratios"]
            print(
                f"{label:<16}{num_params:>10}{n:>4}{1e3 * timed['mgs']:>10.2f}{r['a/b']:>7.2f}"
                f"{r['a/c']:>7.2f}{r['a/d_open_es']:>9.2f}{r['a/d_guided_es']:>11.2f}",
                flush=True,
            )
    return _results(args, cells)


def _write(path: str, results: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=1)


def _results(args: argparse.Namespace, cells: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(
        date=time.strftime("%Y-%m-%d"),
        machine=dict(
            backend=jax.default_backend(),
            devices=[str(d) for d in jax.devices()],
            cpu_count=os.cpu_count(),
            processor=platform.processor() or platform.machine(),
            jax=jax.__version__,
        ),
        repeats=args.repeats,
        cells=cells,
    )


def plot(results: dict[str, Any], path: str) -> None:
    """Step time against n (largest MLP) and against d (largest n), log-log, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [c for c in results["cells"] if c["workload"].startswith("mlp")]
    if not cells:
        return
    names = list(cells[0]["seconds"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    d_max, n_max = max(c["d"] for c in cells), max(c["n"] for c in cells)
    for name in names:
        by_n = sorted((c["n"], c["seconds"][name]) for c in cells if c["d"] == d_max)
        by_d = sorted((c["d"], c["seconds"][name]) for c in cells if c["n"] == n_max)
        axes[0].plot(*zip(*by_n, strict=True), marker="o", label=name)
        axes[1].plot(*zip(*by_d, strict=True), marker="o", label=name)
    axes[0].set(
        xscale="log",
        yscale="log",
        xlabel="candidates n",
        ylabel="step time (s)",
        title=f"MLP, d = {d_max:,}",
    )
    axes[1].set(
        xscale="log",
        yscale="log",
        xlabel="parameters d",
        ylabel="step time (s)",
        title=f"n = {n_max}",
    )
    axes[0].legend()
    fig.suptitle(f"{results['machine']['backend']}, jax {results['machine']['jax']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    parser.add_argument("--d", type=float, nargs="+", default=[1e3, 1e4, 1e5, 1e6, 1e7])
    parser.add_argument("--lm", nargs="*", default=["small", "medium"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/)")
    parser.add_argument("--plot", default=None, help="PNG path for the log-log plot")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.n, args.d, args.lm, args.repeats = [2], [1e3], [], 1
    out = args.out or os.path.join(
        os.path.dirname(__file__), "results", f"speed_{jax.default_backend()}.json"
    )
    if args.smoke and not args.out:
        out = None
    results = run(args, out)
    if out:
        _write(out, results)
        print(f"wrote {out}")
    if args.plot:
        plot(results, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
