"""Step time of MGS against the batched limit, a sequential loop and evosax, side by side.

Usage:
  python benchmarks/speed.py                       # d = 1e4-1e6, n = 4-32, LM small
  python benchmarks/speed.py --n 4 8 --d 1e3 1e5   # a smaller sweep
  python benchmarks/speed.py --smoke               # seconds: checks that everything runs

Each cell compiles and warms up, in one process, the jitted steps

  (a) mgs: one training step, the surrogate gradient, an SGD update as the guide, then
      ``mlesearch.mgs`` with n candidates of a non-differentiable task loss;
  (b) limit: the least work such a step needs, written by hand: the same surrogate gradient and
      optimiser update, ONE batched evaluation of all n candidates' losses (noise drawn for all n
      at once, ``jax.vmap`` of the loss), softmax weights and the weighted sum of the candidates
      (one ``tensordot`` per leaf), applied to the parameters;
  (c) sequential: the surrogate gradient, then the n candidates one jitted call each, as a PyTorch
      loop would;
  (d) evosax OpenES and GuidedES with population n: ask, ``jax.vmap`` of the same loss, tell, in
      one jitted step (GuidedES also takes the surrogate gradient);
  (a') mgs_antithetic: (a) with ``antithetic=True``, so that n / 2 noise vectors are drawn, as
      evosax's GuidedES and OpenES draw them (they always sample antithetic pairs);
  (e) with_mgs: a step of ``mlesearch.with_mgs(optax.adam(lr), probe_scale=0.1, num_candidates=n)``,
      the paper's placement, against its own limit (b'), which is (b) with the weighted direction
      handed to Adam as a pseudo-gradient;
  (a'') mgs_all_at_once: (a) with ``chunk_size=n``, all n candidates in one vmap. (a) is the
      same step except on CPU, where (with its fixed α) n perturbations of more than 4 MiB go
      in cache-sized chunks;
  (p) parts: the irreducible parts of (a), each alone as its own jitted function of inputs
      prepared outside it (``part_*`` in the JSON): drawing the n·d standard normals
      (as ``mgs`` draws them on this backend: on CPU the written-out threefry draw, which
      gives ``jax.random.normal``'s values several times faster; a new key every call), the n
      task losses (``jax.vmap`` of the loss
      over n stacked perturbed parameter sets), the weighted sum of the n candidates (one
      ``tensordot`` per leaf), the surrogate gradient, and the SGD update applied to the
      parameters;

and then runs ``--repeats`` repetitions in which every step runs once, in an order shuffled with
a fixed seed (each call waited for with ``block_until_ready``). Each ratio a/b, a/c, a/d, a'/b,
a'/d (``a_anti/...`` in the JSON), e/b' (``with_mgs/b``), a/a'' (``a/a_all``) and a/parts is
the median over the repetitions of the paired, per-repetition ratio, reported with its
interquartile range and the 1-minute load average at the start and the end of the cell: under
load only such paired ratios carry over. a/parts divides (a)'s time by the sum of the five parts'
times in the same repetition: what (a) spends beyond the work it cannot avoid, the ratio to drive
towards 1 (each part's median time is in ``seconds``). It prints them per cell, with each
step's temporary memory in float32 copies of the parameters (XLA's
``memory_analysis().temp_size_in_bytes`` of the compiled step, not timed; ``temp_bytes`` in the
JSON) and the parts' median times, and writes them, with the per-repetition times, as JSON.
Workloads: an MLP classifier with 0/1 error as the task loss (d set by its hidden width), and the
transformer language model of ``mlesearch.models`` with token error rate as the task loss.
"""

from __future__ import annotations

import argparse
import itertools
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
from _timing import interleaved, load_average, paired_ratio, warm_up

import mlesearch as mls
from mlesearch import _threefry, models, sampling

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
    widths = {"tiny": (1, 16), "small": (2, 64), "medium": (4, 128), "large": (6, 256)}
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


def _draw_noise(
    key: jax.Array, leaves: list[Any], n: int, *, written_out: bool = False
) -> list[jax.Array]:
    """n float32 standard normals per entry of ``leaves``, stacked on a leading axis, one key per
    leaf: ``jax.random.normal``'s values, drawn by jax or, with ``written_out``, by the
    written-out threefry that ``mgs`` uses on CPU (several times faster there). The draw part of
    ``a/parts`` draws as ``mgs`` does on this backend, so that it bounds the step from below.
    """
    keys = jax.random.split(key, len(leaves))
    return [
        _threefry.standard_normal(k, n * x.size, written_out=written_out).reshape(n, *x.shape)
        for k, x in zip(keys, leaves, strict=True)
    ]


def _weighted_sum(weights: jax.Array, stacked: list[jax.Array]) -> list[jax.Array]:
    """Σ_i w_i x_i per leaf of n stacked leaves: one ``tensordot`` each."""
    return [jnp.tensordot(weights, x, axes=1) for x in stacked]


def _limit_step(
    grad_fn: Callable[..., jax.Array],
    task_loss: Callable[..., jax.Array],
    n: int,
    sigma: float,
    optimizer: optax.GradientTransformation,
    probe_scale: float | None = None,
) -> Callable[..., Any]:
    """The least work of one step: gradient, optimiser, one fused evaluation, weighted sum.

    Without ``probe_scale`` the optimiser's update is the guide u (the placement of
    ``optax.chain(optimizer, mgs(...))``); with it, u = -probe_scale * g and the weighted
    direction goes to the optimiser as the pseudo-gradient -Δ*/probe_scale (``with_mgs``).
    The candidates are u + σε_i, the weights softmax(-l_i) and Δ* = u + σ Σ w_i ε_i.
    """

    def step(p, opt_state, key, data):
        g = grad_fn(p, *data)
        if probe_scale is None:
            u, opt_state = optimizer.update(g, opt_state, p)
        else:
            u = jax.tree.map(lambda x: -probe_scale * x, g)
        leaves, treedef = jax.tree.flatten(p)
        guides = treedef.flatten_up_to(u)
        noise = _draw_noise(key, leaves, n)

        def loss(eps):
            candidate = [x + v + sigma * e for x, v, e in zip(leaves, guides, eps, strict=True)]
            return task_loss(jax.tree.unflatten(treedef, candidate), *data)

        weights = jax.nn.softmax(-jax.vmap(loss)(noise))
        delta = jax.tree.unflatten(
            treedef,
            [v + sigma * s for v, s in zip(guides, _weighted_sum(weights, noise), strict=True)],
        )
        if probe_scale is not None:
            pseudo = jax.tree.map(lambda d: -d / probe_scale, delta)
            delta, opt_state = optimizer.update(pseudo, opt_state, p)
        return optax.apply_updates(p, delta), opt_state

    return jax.jit(step)


# The irreducible parts of step (a), each timed alone: the n·d standard normals, the n task
# losses (one vmap), the weighted sum of the n candidates, the surrogate gradient, the SGD update.
PARTS = ("part_draw", "part_losses", "part_sum", "part_grad", "part_update")


def _parts(
    params: Any,
    grad_jit: Callable[..., Any],
    task_loss: Callable[..., jax.Array],
    data: tuple[Any, ...],
    n: int,
    sigma: float,
    optimizer: optax.GradientTransformation,
) -> dict[str, Callable[[], Any]]:
    """The parts of `PARTS`, each its own jitted function of inputs prepared here.

    Every input is an argument, so XLA has no constant to fold the work into, and the draw takes
    a new key at every call (from a cycle of 16).
    """
    leaves, treedef = jax.tree.flatten(params)
    written_out = sampling._written_out_by_default()
    draw = jax.jit(lambda key: _draw_noise(key, leaves, n, written_out=written_out))
    draw_keys = itertools.cycle(list(jax.random.split(jax.random.key(2), 16)))
    noise = draw(jax.random.key(3))
    candidates = jax.tree.unflatten(
        treedef, [x + sigma * e for x, e in zip(leaves, noise, strict=True)]
    )
    losses = jax.jit(lambda c, data: jax.vmap(lambda p: task_loss(p, *data))(c))
    weights = jax.nn.softmax(-losses(candidates, data))
    weighted_sum = jax.jit(lambda w, c: _weighted_sum(w, jax.tree.leaves(c)))
    grads = grad_jit(params, data)
    opt_state = optimizer.init(params)

    @jax.jit
    def update(g, state, p):
        u, state = optimizer.update(g, state, p)
        return optax.apply_updates(p, u), state

    return {
        "part_draw": lambda: draw(next(draw_keys)),
        "part_losses": lambda: losses(candidates, data),
        "part_sum": lambda: weighted_sum(weights, candidates),
        "part_grad": lambda: grad_jit(params, data),
        "part_update": lambda: update(grads, opt_state, params),
    }


def _temp_bytes(jitted: Any, *args: Any) -> Callable[[], int]:
    """A getter of the temporary bytes that XLA allocates for one call of ``jitted(*args)``."""
    return lambda: int(jitted.lower(*args).compile().memory_analysis().temp_size_in_bytes)


def implementations(
    workload: Workload, n: int, lr: float = 1e-3, probe_scale: float = 0.1
) -> tuple[dict[str, Callable[[], Any]], dict[str, Callable[[], int]]]:
    """The timed callables (a)-(e), the two limits and (a)'s parts for one workload and n.

    Returns:
      ``(steps, temporaries)``: the callables by name, and for each step that is one compiled
      program (all but ``sequential`` and the parts), a getter of its temporary bytes
      (``compiled.memory_analysis().temp_size_in_bytes``; it compiles the step again).
    """
    params, surrogate, task_loss, data = workload
    grad_fn = jax.grad(surrogate)
    sigma = 1e-2

    # mgs routes extra arguments to the task loss by name.
    def routed(p, data):
        return task_loss(p, *data)

    temporaries = {}

    def mgs_step_for(name, tx):
        @jax.jit
        def step(p, state, data):
            g = grad_fn(p, *data)
            u, state = tx.update(g, state, p, task_loss_fn=routed, data=data)
            return optax.apply_updates(p, u), state

        state = tx.init(params)
        temporaries[name] = _temp_bytes(step, params, state, data)
        return lambda: step(params, state, data)

    sgd, adam = optax.sgd(lr), optax.adam(lr)
    limit_step = _limit_step(grad_fn, task_loss, n, sigma, sgd)
    limit_adam_step = _limit_step(grad_fn, task_loss, n, sigma, adam, probe_scale)
    sgd_state, adam_state = sgd.init(params), adam.init(params)

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
        "mgs": mgs_step_for("mgs", optax.chain(sgd, mls.mgs(num_candidates=n, sigma=sigma, key=0))),
        "mgs_all_at_once": mgs_step_for(
            "mgs_all_at_once",
            optax.chain(sgd, mls.mgs(num_candidates=n, sigma=sigma, key=0, chunk_size=n)),
        ),
        "mgs_antithetic": mgs_step_for(
            "mgs_antithetic",
            optax.chain(sgd, mls.mgs(num_candidates=n, sigma=sigma, key=0, antithetic=True)),
        ),
        "limit": lambda: limit_step(params, sgd_state, jax.random.key(1), data),
        "sequential": sequential,
    }
    temporaries["limit"] = _temp_bytes(limit_step, params, sgd_state, jax.random.key(1), data)
    out.update(_parts(params, grad_jit, task_loss, data, n, sigma, sgd))
    out.update(_evosax_steps(params, grad_fn, task_loss, data, n, sigma, lr, temporaries))
    out["with_mgs"] = mgs_step_for(
        "with_mgs", mls.with_mgs(adam, probe_scale=probe_scale, num_candidates=n, key=0)
    )
    out["limit_adam"] = lambda: limit_adam_step(params, adam_state, jax.random.key(1), data)
    temporaries["limit_adam"] = _temp_bytes(
        limit_adam_step, params, adam_state, jax.random.key(1), data
    )
    return out, temporaries


# Each reported ratio: (name in the JSON, numerator, denominator).
RATIOS = (
    ("a/b", "mgs", "limit"),
    ("a/c", "mgs", "sequential"),
    ("a/d_open_es", "mgs", "open_es"),
    ("a/d_guided_es", "mgs", "guided_es"),
    ("a_anti/b", "mgs_antithetic", "limit"),
    ("a_anti/d_guided_es", "mgs_antithetic", "guided_es"),
    ("with_mgs/b", "with_mgs", "limit_adam"),
    ("a/a_all", "mgs", "mgs_all_at_once"),
    ("a/parts", "mgs", PARTS),
)


def _evosax_steps(
    params, grad_fn, task_loss, data, n, sigma, lr, temporaries
) -> dict[str, Callable[[], Any]]:
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
        temporaries[name] = _temp_bytes(step, state, jax.random.key(2), data)
    return steps


def time_cell(
    fns: dict[str, Callable[[], Any]],
    repeats: int,
    temporaries: dict[str, Callable[[], int]] | None = None,
) -> dict[str, Any]:
    """Compiles and warms up every step, then times them interleaved; the cell's JSON fields.

    With ``temporaries`` (getters by step name), the cell also records each step's temporary
    bytes, read before the timing.
    """
    temp_bytes = {name: get() for name, get in (temporaries or {}).items()}
    for fn in fns.values():
        warm_up(fn)
    load_start = load_average()
    samples = interleaved(fns, repeats)
    load_end = load_average()
    ratios = {}
    for key, numerator, denominator in RATIOS:
        ratio = paired_ratio(samples, numerator, denominator)
        ratios[key] = {k: ratio[k] for k in ("median", "q1", "q3")}
    return dict(
        seconds={name: statistics.median(times) for name, times in samples.items()},
        samples=samples,
        ratios=ratios,
        temp_bytes=temp_bytes,
        load=dict(start=load_start, end=load_end),
    )


def run(args: argparse.Namespace, out: str | None = None) -> dict[str, Any]:
    """Times every cell; with ``out``, rewrites the JSON there after each cell."""
    cells = []
    workloads: list[tuple[str, Callable[[], Workload]]] = []
    for d in args.d:
        workloads.append((f"mlp d={int(d):.0e}", lambda d=d: mlp_workload(int(d))))
    for size in args.lm:
        workloads.append((f"lm {size}", lambda size=size: lm_workload(size)))
    columns = "".join(f" {key:>18}" for key, _, _ in RATIOS)
    header = f"{'workload':<14}{'d':>10}{'n':>4}{'mgs ms':>9}{columns}{'load':>11}"
    print(f"median of {args.repeats} paired ratios per cell (interquartile range)")
    print(header)
    print("-" * len(header))
    for label, make in workloads:
        workload = make()
        num_params = sum(x.size for x in jax.tree.leaves(workload[0]))
        for n in args.n:
            cell = dict(workload=label, d=int(num_params), n=n)
            steps, temporaries = implementations(workload, n)
            cell.update(time_cell(steps, args.repeats, temporaries))
            cells.append(cell)
            if out:
                _write(out, _results(args, cells))
            ratios = "".join(
                f" {r['median']:>6.2f} ({r['q1']:.2f}-{r['q3']:.2f})"
                for r in cell["ratios"].values()
            )
            load = cell["load"]
            print(
                f"{label:<14}{num_params:>10}{n:>4}{1e3 * cell['seconds']['mgs']:>9.2f}{ratios}"
                f"{load['start']:>6.2f}-{load['end']:.2f}",
                flush=True,
            )
            copies = "  ".join(
                f"{name} {b / (4 * num_params):.0f}" for name, b in cell["temp_bytes"].items()
            )
            print(f"{'':<14}temporaries, float32 parameter copies: {copies}", flush=True)
            parts = "  ".join(
                f"{name.removeprefix('part_')} {1e3 * cell['seconds'][name]:.2f}" for name in PARTS
            )
            print(f"{'':<14}parts of (a), median ms: {parts}", flush=True)
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
            # glibc's allocator settings, which change large-d step times on CPU (see the docs).
            malloc_env={k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")},
        ),
        repeats=args.repeats,
        timing="interleaved: every step once per repetition, shuffled order (seed 0); ratios "
        "are the median and quartiles of the per-repetition ratios",
        cells=cells,
    )


def plot(results: dict[str, Any], path: str) -> None:
    """Step time against n (largest MLP) and against d (largest n), log-log, one line per step;
    and the paired ratio a/b (median, interquartile range as error bars) against d, per n."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [c for c in results["cells"] if c["workload"].startswith("mlp")]
    if not cells:
        return
    names = [name for name in cells[0]["seconds"] if name not in PARTS]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
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
        ylabel="step time (s, median)",
        title=f"MLP, d = {d_max:,}",
    )
    axes[1].set(
        xscale="log",
        yscale="log",
        xlabel="parameters d",
        ylabel="step time (s, median)",
        title=f"n = {n_max}",
    )
    axes[0].legend(fontsize="small")
    for n in sorted({c["n"] for c in cells}):
        row = sorted((c["d"], c["ratios"]["a/b"]) for c in cells if c["n"] == n)
        ds = [d for d, _ in row]
        medians = [r["median"] for _, r in row]
        spread = [
            [r["median"] - r["q1"] for _, r in row],
            [r["q3"] - r["median"] for _, r in row],
        ]
        axes[2].errorbar(ds, medians, yerr=spread, marker="o", capsize=3, label=f"n = {n}")
    axes[2].axhline(1.10, color="gray", linestyle="--", linewidth=1, label="target 1.10")
    axes[2].set(
        xscale="log",
        xlabel="parameters d",
        ylabel="a/b, median of paired ratios (IQR)",
        title="mgs / limit",
    )
    axes[2].legend(fontsize="small")
    fig.suptitle(f"{results['machine']['backend']}, jax {results['machine']['jax']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[4, 16, 32])
    parser.add_argument("--d", type=float, nargs="+", default=[1e4, 1e5, 1e6])
    parser.add_argument(
        "--lm", nargs="*", default=None, help="LM sizes: tiny, small, medium, large (default small)"
    )
    parser.add_argument(
        "--repeats", type=int, default=9, help="interleaved repetitions per cell (paired ratios)"
    )
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/)")
    parser.add_argument("--plot", default=None, help="PNG path for the log-log plot")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check that it runs")
    args = parser.parse_args()
    if args.smoke:  # LM rows only when named, e.g. --smoke --lm tiny
        args.n, args.d, args.lm, args.repeats = [4], [1e3], args.lm or [], 3
    elif args.lm is None:
        args.lm = ["small"]
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
