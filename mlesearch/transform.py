r"""The MGS optax transformation :func:`mgs`, its state :class:`MGSState` and :class:`MGSInfo`.

This module holds the plumbing: argument checks, PRNG keys carried in state, routing of extra
arguments to the task loss, and the passes over the candidates: all at once, or chunk by chunk,
each chunk folded into the weighted mean as it is evaluated (or, when α is chosen from every loss,
drawn again from its keys for the weighted sum once α is known). The maths is in `sampling.py`.

References:
  [1] Welleck & Cho, `MLE-guided parameter search for task loss minimization in neural sequence
  modeling <https://arxiv.org/abs/2006.03158>`_, AAAI 2021.
  [2] Owen, *Monte Carlo theory, methods and examples*, 2013, ch. 9.
  [3] Veach & Guibas, *Optimally combining sampling techniques for Monte Carlo rendering*,
  SIGGRAPH 1995.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlesearch import _checks, _utils, sampling


class MGSInfo(NamedTuple):
    """Diagnostics of the last MGS step, read with ``optax.tree.get(state, "ess")``."""

    candidate_losses: jax.Array  # (n,) float32: task loss l(θ + Δ_i) of each candidate.
    weights: jax.Array  # (n,) float32: normalised weights w_i; all 0 if no loss was finite.
    ess: jax.Array  # () float32: ESS 1 / Σ w_i², in [1, m] for m usable candidates; 0 if none.
    guide_weight: jax.Array  # () float32: total weight on candidates from the guided component.
    # () float32: the α used; the chosen one with temperature="auto"; 0 where a traced α ≤ 0
    # took the α → 0 limit (all weight on the best finite candidates).
    temperature: jax.Array


class MGSState(NamedTuple):
    """State of :func:`mgs`."""

    key: jax.Array  # () typed PRNG key, split every step.
    count: jax.Array  # () int32: number of steps taken.
    info: MGSInfo  # diagnostics of the last step (zeros before the first).


def _candidate_sharding(
    mesh: jax.sharding.Mesh | None, axis: str | tuple[str, ...] | None
) -> jax.sharding.NamedSharding | None:
    """The sharding of the candidate axis over ``axis`` of ``mesh``, checked; None without mesh."""
    if mesh is None:
        if axis is not None:
            raise ValueError("candidate_axis needs a mesh: pass mesh=jax.sharding.Mesh(...).")
        return None
    if not isinstance(mesh, jax.sharding.Mesh):
        raise ValueError(
            f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}. Build one with "
            'jax.make_mesh((jax.device_count(),), ("candidates",)).'
        )
    if axis is None:
        axis = mesh.axis_names[0]
    names = (axis,) if isinstance(axis, str) else tuple(axis)
    unknown = [name for name in names if name not in mesh.axis_names]
    if unknown:
        raise ValueError(
            f"candidate_axis {unknown} is not an axis of the mesh, whose axes are "
            f"{mesh.axis_names}."
        )
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis))


def _on_explicit_mesh(trees: Any) -> bool:
    """Whether a mesh is in context, or any array of ``trees`` is typed on a mesh with an
    Explicit axis.

    An array placed on such a mesh carries it in its type whether it is sharded over the mesh
    or replicated on it (as the global arrays of a multi-process run are, made with
    ``jax.make_array_from_process_local_data``), and it cannot meet an array typed on an Auto
    copy of the mesh.
    """
    if not jax.sharding.get_abstract_mesh().empty:
        return True
    for leaf in jax.tree.leaves(trees):
        mesh = getattr(getattr(jax.typeof(leaf), "sharding", None), "mesh", None)
        if (
            mesh is not None
            and not mesh.empty
            and jax.sharding.AxisType.Explicit in mesh.axis_types
        ):
            return True
    return False


def _resolve_sharding(
    sharding: jax.sharding.NamedSharding | None, trees: Any
) -> jax.sharding.NamedSharding | None:
    """The candidate sharding to use for this call.

    With a mesh whose candidate axis is Explicit (``jax.make_mesh``'s default), arrays sharded
    over that mesh carry the sharding in their types, and the candidates must be placed in the
    same typed world: the mesh is used as given. When no input lives on such a mesh (a batch on
    one device), the same devices are used through an Auto copy of the mesh, where a sharding
    hint is enough.
    """
    if not _is_explicit(sharding) or _on_explicit_mesh(trees):
        return sharding
    mesh = sharding.mesh
    auto_mesh = jax.sharding.Mesh(
        mesh.devices,
        mesh.axis_names,
        axis_types=(jax.sharding.AxisType.Auto,) * len(mesh.axis_names),
    )
    return jax.sharding.NamedSharding(auto_mesh, sharding.spec)


def _is_explicit(sharding: jax.sharding.NamedSharding | None) -> bool:
    """Whether the candidate axis of the mesh is Explicit (``jax.make_mesh``'s default)."""
    if sharding is None:
        return False
    axis = sharding.spec[0]
    names = (axis,) if isinstance(axis, str) else tuple(axis)
    types = dict(zip(sharding.mesh.axis_names, sharding.mesh.axis_types, strict=True))
    return any(types[name] == jax.sharding.AxisType.Explicit for name in names)


def _gather(x: Any, sharding: jax.sharding.NamedSharding | None) -> Any:
    """Replicates small per-candidate outputs (losses) over an Explicit mesh; else ``x``."""
    if not _is_explicit(sharding):
        return x
    replicated = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    return jax.sharding.reshard(x, replicated)


def _weighted_sum(weights: jax.Array, deltas: Any, like: Any, sharding: Any) -> Any:
    """Σᵢ wᵢ Δᵢ over the leading axis of each leaf of ``deltas``, as one dot per leaf.

    Over an Explicit mesh the contraction runs over the sharded candidate axis, so the result
    is given the sharding of the matching leaf of ``like`` (the guide).
    """
    if not _is_explicit(sharding):
        return jax.tree.map(lambda d: jnp.tensordot(weights, d, axes=1), deltas)
    return jax.tree.map(
        lambda d, u: jnp.einsum("n,n...->...", weights, d, out_sharding=jax.typeof(u).sharding),
        deltas,
        like,
    )


def _mesh_context(
    sharding: jax.sharding.NamedSharding | None,
) -> contextlib.AbstractContextManager[Any]:
    """The user's mesh as the current one when its candidate axis is Explicit, else nothing.

    Explicit axes need the mesh in context to trace operations on arrays sharded over them.
    """
    if not _is_explicit(sharding):
        return contextlib.nullcontext()
    return jax.sharding.use_abstract_mesh(sharding.mesh.abstract_mesh)


def _constrain(x: Any, sharding: jax.sharding.NamedSharding | None) -> Any:
    """Puts the leading (candidate) axis of every leaf of ``x`` on the candidate axis of the mesh.

    Explicit mesh axes carry their sharding in the arrays' types and are moved with
    ``jax.sharding.reshard``, which splits an axis only evenly: a leading axis that the
    candidate axis's devices do not divide (a chunk of 3 on 2 devices) is replicated instead,
    every device evaluating all of it. Auto axes take a ``with_sharding_constraint`` hint.
    """
    if sharding is None:
        return x
    if not _is_explicit(sharding):
        return jax.lax.with_sharding_constraint(x, sharding)
    axis = sharding.spec[0]
    names = (axis,) if isinstance(axis, str) else tuple(axis)
    devices = math.prod(sharding.mesh.shape[name] for name in names)
    replicated = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    return jax.tree.map(
        lambda leaf: jax.sharding.reshard(
            leaf, sharding if jnp.shape(leaf)[0] % devices == 0 else replicated
        ),
        x,
    )


def _scan_over_chunks(
    body: Callable[[Any, jax.Array], tuple[Any, Any]],
    carry: Any,
    indices: jax.Array,
    chunk: int,
    sharding: jax.sharding.NamedSharding | None = None,
) -> tuple[Any, Any]:
    """``body(carry, indices)`` on consecutive slices of ``chunk`` indices, in a loop.

    ``jax.lax.scan`` over the full slices, then ``body`` once more on the remainder when
    ``chunk`` does not divide the number of indices. Returns the last carry and the outputs
    concatenated along their leading axis (which may hold a multiple of each slice's length:
    candidates drawn by pairs), replicated over an Explicit mesh with ``sharding``.
    """
    count = indices.shape[0]
    num_full = count // chunk
    split = num_full * chunk
    parts = []
    if num_full > 0:
        carry, full = jax.lax.scan(body, carry, indices[:split].reshape(num_full, chunk))
        full = _gather(full, sharding)
        parts.append(jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), full))
    if split < count:
        carry, rest = body(carry, indices[split:])
        parts.append(_gather(rest, sharding))
    outputs = jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts) if len(parts) > 1 else parts[0]
    return carry, outputs


def _sum_over_candidates(
    draw: Callable[[jax.Array], Any],
    weights: jax.Array,
    like: Any,
    chunk_size: int,
    sharding: jax.sharding.NamedSharding | None = None,
    group: int = 1,
) -> Any:
    """Computes Σᵢ wᵢ draw(i) over candidates, with at most ``chunk_size`` of them live at once.

    Each chunk's candidates are drawn with one vmap and summed with one dot per leaf
    (`_weighted_sum`): a reduce over a broadcast [chunk, d] product inside the loop body runs
    single-threaded on XLA:CPU and made chunked steps several times slower. With ``sharding``,
    each chunk's candidates are split over its devices. ``like`` (the guide) gives the float32
    zeros that the sum starts from and, over an Explicit mesh, the sharding of each leaf. With
    ``group`` > 1 (a divisor of n and of ``chunk_size``), ``draw(j)`` returns candidates
    ``group·j .. group·j + group - 1`` stacked on a leading axis (antithetic pairs: 2).
    """
    num_candidates = weights.shape[0] // group
    chunk_size = chunk_size // group
    indices = jnp.arange(num_candidates, dtype=jnp.int32)
    weights = weights.reshape(num_candidates, group) if group > 1 else weights

    def chunk_sum(chunk_indices: jax.Array, chunk_weights: jax.Array) -> Any:
        chunk_indices = _constrain(chunk_indices, sharding)
        chunk_weights = _constrain(chunk_weights, sharding)
        deltas = _constrain(jax.vmap(draw)(chunk_indices), sharding)
        if group > 1:
            deltas = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), deltas)
            chunk_weights = chunk_weights.reshape(-1)
        return _weighted_sum(chunk_weights, deltas, like, sharding)

    num_full = num_candidates // chunk_size
    total = optax.tree.zeros_like(like, dtype=jnp.float32)
    if num_full > 0:
        split = num_full * chunk_size

        def body(carry: Any, xs: tuple[jax.Array, jax.Array]) -> tuple[Any, None]:
            return optax.tree.add(carry, chunk_sum(*xs)), None

        total, _ = jax.lax.scan(
            body,
            total,
            (
                indices[:split].reshape(num_full, chunk_size),
                weights[:split].reshape(num_full, chunk_size, *weights.shape[1:]),
            ),
        )
    if num_full * chunk_size < num_candidates:
        start = num_full * chunk_size
        total = optax.tree.add(total, chunk_sum(indices[start:], weights[start:]))
    return total


# The default memory_budget of chunk_size="auto": 1 GiB of float32 perturbations.
DEFAULT_MEMORY_BUDGET = 2**30


def auto_chunk_size(num_candidates: int, params: Any, memory_budget: int) -> int:
    """How many candidates ``chunk_size="auto"`` evaluates at once.

    All n when their float32 perturbations, n · d · 4 bytes for d parameters, fit in
    ``memory_budget``; else as many as fit, at least 1. The whole step needs a few times that
    (2 to 4 parameter-sized float32 buffers per live candidate on CPU, see
    ``benchmarks/memory.py``).

    Args:
      num_candidates: n, the number of candidates.
      params: the parameter pytree (arrays or shape-dtype structs); only the sizes are read.
      memory_budget: bytes, at least 1.

    Returns:
      The chunk size, an int in [1, n].

    Examples:
      >>> import jax.numpy as jnp
      >>> from mlesearch.transform import auto_chunk_size
      >>> auto_chunk_size(16, jnp.zeros((1000,)), memory_budget=16 * 4000)
      16
      >>> auto_chunk_size(16, jnp.zeros((1000,)), memory_budget=5 * 4000)
      5
    """
    per_candidate = 4 * sum(math.prod(jnp.shape(leaf)) for leaf in jax.tree.leaves(params))
    if num_candidates * per_candidate <= memory_budget:
        return num_candidates
    return max(1, min(num_candidates, memory_budget // max(per_candidate, 1)))


class _Plan(NamedTuple):
    """How one step goes through its candidates; made by `_execution_plan`."""

    chunk: int  # candidates drawn and evaluated at once; n when not chunked.
    by_pairs: bool  # antithetic pairs drawn together, from one noise draw.
    written_out_draw: bool  # normals through `_threefry` rather than jax.random.normal.


# The cache-sized chunks of `_execution_plan` hold at most this many bytes of perturbations.
_CPU_CHUNK_BYTES = 2**22


def _execution_plan(
    num_candidates: int,
    params: Any,
    backend: str,
    auto_temperature: bool,
    chunk_size: int | str | None,
    memory_budget: int,
    antithetic: bool,
    sharding: jax.sharding.NamedSharding | None,
) -> _Plan:
    """How a step goes through its candidates: the one place where the backend changes the path.

    Every path gives the same candidates, bit for bit, and the same update up to the order of
    floating-point sums. The chunk is ``chunk_size``'s: n for None, `auto_chunk_size` for
    ``"auto"``, else the given one. Antithetic pairs are drawn together where no mesh splits
    them and every chunk holds whole pairs. On CPU two speed rules follow, each kept for a gain of
    more than 15 % in several cells of interleaved benchmarks (paired ratios; figures in
    docs/performance.md, runs in docs/benchmark_log.md):

    - written-out draw: normals from `_threefry`, for any size: `speed.py`'s MLP steps took
      0.45-0.90 of their time with jax's draw (`benchmarks/draws.py`, d = 10⁴ to 10⁶, n = 16
      and 32), and 0.58-0.91 at d = 10² to 3 · 10³ (scratch runs).
    - cache-sized chunks: with a fixed α, no mesh and ``chunk_size`` None or ``"auto"``, a step
      whose n perturbations exceed ``_CPU_CHUNK_BYTES`` goes in chunks of the largest power of
      two that fits (at least 1, 2 for antithetic pairs), folded into the weighted mean as they
      are evaluated, so that a chunk stays in cache from its draw to the sum: 0.52-0.79 of the
      all-at-once step's time (`benchmarks/speed.py`, a/a_all: d = 10⁵ with n = 16 and 32,
      d = 10⁶ with n = 4 to 32, the LM with n = 16 and 32); no gain below (d = 10⁴, n = 32;
      d = 10⁵, n = 4). With ``temperature="auto"`` (chunks drawn twice) it was mixed, 0.86 to
      1.27, so that step keeps its chunk.

    Candidates are drawn with one vmap everywhere: a loop over large draws on CPU, once 0.66-0.70
    of the vmap's time with jax's draw, timed alike with the written-out one (0.96-1.04 at
    d = 3 · 10⁵ and 10⁶). Other backends keep jax's draw and the given chunk (not measured there).

    Args:
      num_candidates: n.
      params: the parameter pytree (arrays or shape-dtype structs); only the sizes are read.
      backend: ``jax.default_backend()`` when the step is traced, e.g. ``"cpu"`` or ``"gpu"``.
      auto_temperature: whether α is chosen from the losses (``temperature="auto"``).
      chunk_size: the checked ``chunk_size`` of :func:`mgs`: an int in [1, n], None or
        ``"auto"``.
      memory_budget: bytes, read with ``chunk_size="auto"``.
      antithetic: whether candidates come in antithetic pairs.
      sharding: the candidate axis's sharding, or None without a mesh.

    Returns:
      The `_Plan`.
    """
    if chunk_size is None:
        chunk = num_candidates
    elif chunk_size == "auto":
        chunk = auto_chunk_size(num_candidates, params, memory_budget)
    else:
        chunk = chunk_size
    cpu = backend == "cpu"
    if cpu and not isinstance(chunk_size, int) and not auto_temperature and sharding is None:
        fits = auto_chunk_size(num_candidates, params, _CPU_CHUNK_BYTES)
        if fits < num_candidates:
            cache_chunk = 1 << (fits.bit_length() - 1)  # the largest power of two that fits
            chunk = min(chunk, max(cache_chunk, 2 if antithetic else 1))
    by_pairs = antithetic and sharding is None and chunk % 2 == 0
    return _Plan(chunk=chunk, by_pairs=by_pairs, written_out_draw=cpu)


class _Settings(NamedTuple):
    """The arguments of :func:`mgs`, checked and normalised."""

    num_candidates: int
    num_zero_mean: int
    chunk_size: int | str | None  # an int in [1, n], None or "auto" (see `_execution_plan`).
    memory_budget: int  # bytes of perturbations live at once, with chunk_size="auto".
    sigma: Any  # float or traced scalar.
    temperature: Any  # float, traced scalar, or "auto".
    target_ess: Any  # float or traced scalar; used with temperature="auto".
    weighting: str
    noise: str
    antithetic: bool
    sharding: jax.sharding.NamedSharding | None  # of the candidate axis, or None.
    key: jax.Array | None  # the canonical key; None when traced (not needed in update).


def _check_settings(
    num_candidates: Any,
    sigma: Any,
    temperature: Any,
    mix: Any,
    weighting: Any,
    noise: Any,
    antithetic: Any,
    chunk_size: Any,
    key: Any,
    target_ess: Any,
    mesh: Any,
    candidate_axis: Any,
    memory_budget: Any = DEFAULT_MEMORY_BUDGET,
) -> _Settings:
    """Checks the arguments of :func:`mgs` and returns them normalised, or raises ValueError."""
    num_candidates = _checks.static_int(num_candidates, "num_candidates", minimum=1)
    if _checks.is_tracer(mix):
        raise ValueError(
            'mix must be a static Python number; with optax.inject_hyperparams, add "mix" to '
            "static_args."
        )
    _checks.check_in_range(mix, "mix", 0.0, 1.0, open_low=False)
    mix = float(np.asarray(mix))
    _checks.check_positive(sigma, "sigma")
    auto = isinstance(temperature, str)
    if auto and temperature != "auto":
        raise ValueError(f'temperature must be a positive number or "auto", got {temperature!r}.')
    if not auto:
        _checks.check_positive(temperature, "temperature")
    if auto:
        _checks.check_in_range(target_ess, "target_ess", 0.0, 1.0, open_low=True)
    if weighting not in sampling.WEIGHTINGS:
        raise ValueError(f"weighting must be one of {sampling.WEIGHTINGS}, got {weighting!r}.")
    if noise not in sampling.NOISE_SCALES:
        raise ValueError(f"noise must be one of {sampling.NOISE_SCALES}, got {noise!r}.")
    if not isinstance(antithetic, bool | np.bool_):
        raise ValueError(f"antithetic must be a bool, got {antithetic!r}.")
    num_zero_mean, num_guided = sampling.component_sizes(num_candidates, mix)
    if antithetic and (num_zero_mean % 2 or num_guided % 2):
        raise ValueError(
            f"antithetic=True pairs candidates within each component, but mix={mix} with "
            f"num_candidates={num_candidates} gives {num_zero_mean} zero-mean and {num_guided} "
            "guided candidates. Choose num_candidates and mix so that both counts are even."
        )
    if isinstance(chunk_size, str):
        if chunk_size != "auto":
            raise ValueError(f'chunk_size must be an integer, None or "auto", got {chunk_size!r}.')
        # Read only with chunk_size="auto": optax.inject_hyperparams traces numeric defaults.
        memory_budget = _checks.static_int(memory_budget, "memory_budget", minimum=1)
    elif chunk_size is not None:
        chunk_size = _checks.static_int(chunk_size, "chunk_size")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1 or None, got {chunk_size}.")
        chunk_size = min(chunk_size, num_candidates)
    return _Settings(
        num_candidates=num_candidates,
        num_zero_mean=num_zero_mean,
        chunk_size=chunk_size,
        memory_budget=memory_budget,
        sigma=sigma,
        temperature=temperature,
        target_ess=target_ess,
        weighting=weighting,
        noise=noise,
        antithetic=bool(antithetic),
        sharding=_candidate_sharding(mesh, candidate_axis),
        # Under inject_hyperparams without "key" in static_args the key arrives as an array:
        # traced in update (where it is not needed) and concrete in init (where it is).
        key=None if _checks.is_tracer(key) else _utils.canonicalize_key(key),
    )


def _initial_state(settings: _Settings) -> MGSState:
    """The state before the first step: the seed's key, count 0 and zero diagnostics."""
    if settings.key is None:
        raise ValueError(
            'The key of mgs must be concrete at init; with optax.inject_hyperparams, add "key" '
            "to static_args."
        )
    zeros = jnp.zeros((settings.num_candidates,), jnp.float32)
    scalar = jnp.zeros((), jnp.float32)
    return MGSState(
        key=settings.key,
        count=jnp.zeros((), jnp.int32),
        info=MGSInfo(
            candidate_losses=zeros,
            weights=zeros,
            ess=scalar,
            guide_weight=scalar,
            temperature=scalar,
        ),
    )


def _bound_task_loss(
    updates: Any, params: Any, task_loss_fn: Callable[..., Any] | None, extra_args: dict[str, Any]
) -> tuple[Callable[[Any], jax.Array], dict[str, Any]]:
    """Checks the arguments of ``update``; returns ``params -> task loss`` and its kwargs."""
    _checks.check_update_arguments(params, task_loss_fn, "mgs")
    _checks.check_params(params)
    _checks.check_guide_matches_params(updates, params)
    loss_kwargs = _utils.route_kwargs(task_loss_fn, extra_args)

    def loss_fn(candidate_params: Any) -> jax.Array:
        return task_loss_fn(candidate_params, **loss_kwargs)

    _checks.check_task_loss(loss_fn, params)
    return loss_fn, loss_kwargs


def _evaluate_candidates(
    draw: Callable[[jax.Array], tuple[Any, jax.Array]],
    loss_at: Callable[[jax.Array, Any], jax.Array],
    num_candidates: int,
    chunk: int,
    sharding: jax.sharding.NamedSharding | None,
    draw_pair: Callable[[jax.Array], tuple[Any, jax.Array]] | None = None,
    running_mean: Callable[[Any, jax.Array, jax.Array, Any], Any] | None = None,
    start: Any = None,
) -> tuple[jax.Array, jax.Array, Any, Any]:
    """Every candidate's task loss and log q, chunked and placed on the mesh as asked.

    Args:
      draw: ``index -> (Δ_index, log q(Δ_index))``.
      loss_at: ``(index, Δ) -> task loss`` of the candidate.
      num_candidates: n.
      chunk: candidates evaluated at once; ``n`` for all at once.
      sharding: the candidate axis's sharding, or None.
      draw_pair: with antithetic candidates, ``j -> (Δ_2j and Δ_2j+1 stacked, their log q)``
        from one noise draw, or None. When given, candidates are drawn by pairs (n / 2 noise
        draws), ``chunk / 2`` pairs at a time; the caller passes it only without a mesh and with
        an even chunk.
      running_mean: when chunked, ``(state, losses, log_q, deltas) -> state``, folding each
        chunk into a running weighted mean as soon as it is evaluated (the weights' temperature
        is then known before the losses are), or None.
      start: the state ``running_mean`` starts from.

    Returns:
      ``(losses, log_q, deltas, state)``: losses and log q of shape ``(n,)``; ``deltas``, the
      stacked candidates (leaves ``(n, *shape)``) when all were drawn at once and are kept for
      the weighted sum, else None; ``state``, the last state of ``running_mean`` when chunked
      with one, else None. When chunked without one, the weighted sum draws the candidates
      again from their keys.
    """

    def evaluate(chunk_indices: jax.Array) -> tuple[Any, jax.Array, jax.Array]:
        if draw_pair is not None:
            # Antithetic pairs share their noise: one draw for two candidates.
            pairs, log_q = jax.vmap(draw_pair)(chunk_indices)
            deltas = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), pairs)
            members = 2 * chunk_indices[:, None] + jnp.arange(2, dtype=jnp.int32)
            return deltas, jax.vmap(loss_at)(members.reshape(-1), deltas), log_q.reshape(-1)
        placed = _constrain(chunk_indices, sharding)
        deltas, log_q = _constrain(jax.vmap(draw)(placed), sharding)
        losses = _constrain(jax.vmap(loss_at)(placed, deltas), sharding)
        return deltas, losses, log_q

    group = 1 if draw_pair is None else 2
    indices = jnp.arange(num_candidates // group, dtype=jnp.int32)
    if chunk >= num_candidates:
        # All at once: draw them once, keep them for the weighted sum, and evaluate them with
        # one vmap (XLA runs loop bodies with less parallelism than top-level code).
        deltas, losses, log_q = evaluate(indices)
        return losses, log_q, deltas, None

    def body(state: Any, chunk_indices: jax.Array) -> tuple[Any, tuple[jax.Array, jax.Array]]:
        deltas, losses, log_q = evaluate(chunk_indices)
        if running_mean is not None:
            state = running_mean(state, losses, log_q, deltas)
        return state, (losses, log_q)

    state, (losses, log_q) = _scan_over_chunks(body, start, indices, chunk // group, sharding)
    return losses, log_q, None, state


def _weighted_mean(
    weights: jax.Array,
    deltas: Any,
    draw: Callable[[jax.Array], tuple[Any, jax.Array]],
    like: Any,
    chunk: int,
    sharding: jax.sharding.NamedSharding | None,
    draw_pair: Callable[[jax.Array], tuple[Any, jax.Array]] | None = None,
) -> Any:
    """Σᵢ wᵢ Δᵢ in float32: from the kept ``deltas``, or drawn again chunk by chunk if None."""
    if deltas is not None:
        return _weighted_sum(weights, deltas, like, sharding)
    if draw_pair is not None:
        return _sum_over_candidates(lambda j: draw_pair(j)[0], weights, like, chunk, group=2)
    return _sum_over_candidates(lambda i: draw(i)[0], weights, like, chunk, sharding)


def _step(
    settings: _Settings,
    updates: Any,
    state: MGSState,
    params: Any,
    loss_fn: Callable[[Any], jax.Array],
    sharding: jax.sharding.NamedSharding | None,
    plan: _Plan,
) -> tuple[Any, MGSState]:
    """One MGS step on checked arguments, along ``plan``: draw, evaluate and weigh the
    candidates."""
    next_key, step_key = jax.random.split(state.key)
    num_zero_mean = settings.num_zero_mean
    # A guide with a NaN or inf anywhere cannot place the guided candidates: they are drawn
    # around a finite stand-in and then given no weight, while the zero-mean candidates still
    # search, so that nothing non-finite reaches the update. The proposal is then the zero-mean
    # component alone (λ = 1 in log q).
    guide_is_finite = jnp.all(
        jnp.stack([jnp.all(jnp.isfinite(u)) for u in jax.tree.leaves(updates)])
    )
    guide = jax.tree.map(lambda u: jnp.where(jnp.isfinite(u), u, jnp.zeros_like(u)), updates)
    scales = sampling.proposal_scales(updates, settings.sigma, settings.noise)
    share = jnp.where(guide_is_finite, num_zero_mean / settings.num_candidates, 1.0)

    def draw(index: jax.Array) -> tuple[Any, jax.Array]:
        # On a low-precision leaf the candidate really evaluated is round(θ + Δ): its effective
        # perturbation is the one returned, and the one in log q.
        return sampling._sample_candidate_and_log_q(
            step_key,
            index,
            guide,
            scales,
            num_zero_mean,
            share,
            settings.antithetic,
            params,
            written_out=plan.written_out_draw,
        )

    def draw_pair(pair: jax.Array) -> tuple[Any, jax.Array]:
        return sampling._sample_antithetic_pair_and_log_q(
            step_key,
            pair,
            guide,
            scales,
            num_zero_mean,
            share,
            params,
            written_out=plan.written_out_draw,
        )

    def loss_at(index: jax.Array, delta: Any) -> jax.Array:
        candidate = jax.tree.map(lambda p, d: (p + d).astype(p.dtype), params, delta)
        loss = jnp.asarray(loss_fn(candidate), jnp.float32)
        return jnp.where(guide_is_finite | (index < num_zero_mean), loss, jnp.nan)

    chunk = plan.chunk
    pairs = draw_pair if plan.by_pairs else None
    fixed_alpha = not isinstance(settings.temperature, str)
    alpha = None
    if fixed_alpha:
        # A traced α that is not positive (a schedule annealed to 0 reaches -3e-8 by rounding)
        # is the α → 0⁺ limit, which the weights take at α = 0 and MGSInfo reports as 0.
        alpha = jnp.asarray(settings.temperature, jnp.float32)
        alpha = jnp.where(alpha > 0, alpha, 0.0)
    use_log_q = settings.weighting == "importance"
    running_mean = start = None
    if alpha is not None and sharding is None:
        # With α known before the losses, chunks are folded into the weighted mean as they are
        # evaluated (an online softmax), so that each candidate is drawn once, not twice. (Over
        # a mesh, chunks are drawn again for the sum, as with an automatic α.)
        def running_mean(running: Any, losses: jax.Array, log_q: jax.Array, deltas: Any) -> Any:
            return sampling._update_running_weighted_mean(
                running, losses, log_q if use_log_q else None, deltas, alpha, settings.weighting
            )

        start = sampling._init_running_weighted_mean(guide)
    losses, log_q, deltas, running = _evaluate_candidates(
        draw,
        loss_at,
        settings.num_candidates,
        chunk,
        sharding,
        pairs,
        running_mean,
        start,
    )
    log_q = log_q if use_log_q else None
    if alpha is None:
        previous = state.info.temperature
        alpha = sampling.auto_temperature(
            losses,
            log_q,
            settings.target_ess,
            settings.weighting,
            fallback=jnp.where(previous > 0, previous, 1.0),
        )
    weights = sampling.candidate_weights(losses, log_q, alpha, settings.weighting)
    if running is not None:
        mean_delta = running.mean
    else:
        mean_delta = _weighted_mean(weights, deltas, draw, guide, chunk, sharding, pairs)
    # A traced σ that is not positive searches nothing: the update is the guide (zeros if it
    # is not finite, so that nothing non-finite reaches the update).
    searching = jnp.asarray(settings.sigma, jnp.float32) > 0
    fallback = jax.tree.map(lambda u: jnp.where(guide_is_finite, u, 0.0), guide)
    mean_delta = jax.tree.map(
        lambda m, u: jnp.where(searching, m, u.astype(jnp.float32)), mean_delta, fallback
    )
    info = MGSInfo(
        candidate_losses=losses,
        weights=weights,
        ess=sampling.effective_sample_size(weights),
        guide_weight=jnp.sum(weights[num_zero_mean:]),
        temperature=jnp.asarray(alpha, jnp.float32),
    )
    new_state = MGSState(key=next_key, count=optax.safe_increment(state.count), info=info)
    return optax.tree.cast_like(mean_delta, updates), new_state


def mgs(
    num_candidates: int = 4,
    sigma: float | jax.Array = 1.0,
    *,
    temperature: float | jax.Array | str = 1.0,
    mix: float = 0.5,
    weighting: str = "importance",
    noise: str = "absolute",
    antithetic: bool = False,
    chunk_size: int | str | None = None,
    key: jax.Array | int = 0,
    target_ess: float | jax.Array = 0.5,
    mesh: jax.sharding.Mesh | None = None,
    candidate_axis: str | tuple[str, ...] | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> optax.GradientTransformationExtraArgs:
    r"""MLE-guided parameter search: turns a guide update into one that lowers a task loss.

    The ideal update is the mean of :math:`p(\Delta\mid\theta) \propto \exp(-[l(\theta+\Delta) -
    l(\theta)]/\alpha)` for a task loss :math:`l` that need not be differentiable. MGS estimates it
    by self-normalised importance sampling: n candidates from the mixture :math:`q(\Delta) =
    \lambda\,\mathcal{N}(0, \sigma^2 I) + (1-\lambda)\,\mathcal{N}(u, \sigma^2 I)` around the
    incoming update :math:`u` (the guide), their losses :math:`l_i = l(\theta + \Delta_i)`, and
    :math:`\Delta^* = \sum_i w_i \Delta_i` with :math:`w = \mathrm{softmax}(-l_i/\alpha - \log
    q(\Delta_i))` (``"importance"``) or :math:`\mathrm{softmax}(-l_i/\alpha)` (``"tilted"``).
    Candidates with a non-finite loss, and guided ones under a non-finite guide, get weight 0.
    Memory, chunks, devices, low-precision leaves: ``docs/performance.md``.

    Args:
      num_candidates: n >= 1, candidates per step. Static.
      sigma: σ > 0, the noise scale. May be traced; a traced σ ≤ 0 returns the guide.
      temperature: α > 0, or ``"auto"`` (each step the smallest α whose ESS is ``target_ess``
        times the usable candidates). May be traced; a traced α ≤ 0 is the α → 0 limit.
      mix: λ in [0, 1], the share of zero-mean candidates (`component_sizes`). Static.
      weighting: ``"importance"``, ``"tilted"`` (robust in high dimension) or ``"uniform"``.
      noise: ``"absolute"`` (σ on every leaf) or ``"relative"`` (σ · mean|u| per leaf, as in [1]).
      antithetic: candidates in pairs m ± σε; each component needs an even count.
      chunk_size: candidates evaluated at once (bounds memory); None or ``"auto"``: chosen.
      key: an int seed, a typed key (``jax.random.key``) or a raw ``jax.random.PRNGKey``.
      target_ess: with ``temperature="auto"``, the target ESS as a fraction, in (0, 1].
      mesh: a ``jax.sharding.Mesh`` whose devices share the candidates, or None. Static.
      candidate_axis: the mesh axis (or axes) of the candidates; by default its first.
      memory_budget: with ``chunk_size="auto"``, bytes of float32 perturbations at once.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; its ``update(updates, state, params,
      task_loss_fn=f, **extra_args)`` needs ``params`` and ``f(params, **kwargs) -> scalar``,
      and passes ``f`` the extra arguments it names. The update is shaped like ``updates``.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> import mlesearch as mls
      >>> params = jnp.array([1.0, -2.0])
      >>> task_loss = lambda p: jnp.sum(jnp.abs(p) > 0.5).astype(jnp.float32)
      >>> tx = optax.chain(optax.sgd(0.5), mls.mgs(num_candidates=8, sigma=0.3, key=0))
      >>> grads = 2 * params  # the gradient of a differentiable surrogate, sum(p**2)
      >>> updates, state = tx.update(grads, tx.init(params), params, task_loss_fn=task_loss)
      >>> print(updates.shape, updates.dtype)
      (2,) float32

    References:
      [1] Welleck & Cho 2020, arXiv 2006.03158.
      [2] Owen 2013, *Monte Carlo theory, methods and examples*, ch. 9.
      [3] Veach & Guibas 1995 (balance heuristic).
    """
    settings = _check_settings(
        num_candidates,
        sigma,
        temperature,
        mix,
        weighting,
        noise,
        antithetic,
        chunk_size,
        key,
        target_ess,
        mesh,
        candidate_axis,
        memory_budget,
    )
    return _transformation(settings)


def _mgs_with(plan: dict[str, Any], **mgs_kwargs: Any) -> optax.GradientTransformationExtraArgs:
    """``mgs(**mgs_kwargs)`` with fields of its `_execution_plan` replaced by ``plan``.

    For tests and benchmarks that compare paths, e.g. ``{"written_out_draw": False}``.
    """
    arguments = inspect.signature(mgs).bind(**mgs_kwargs)
    arguments.apply_defaults()
    return _transformation(_check_settings(**arguments.arguments), plan)


def _transformation(
    settings: _Settings, plan_overrides: dict[str, Any] | None = None
) -> optax.GradientTransformationExtraArgs:
    """The init and update of :func:`mgs` on checked settings (``plan_overrides`` as in
    `_mgs_with`)."""

    def init_fn(params: optax.Params) -> MGSState:
        del params
        return _initial_state(settings)

    def update_fn(
        updates: optax.Updates,
        state: MGSState,
        params: optax.Params | None = None,
        *,
        task_loss_fn: Callable[..., jax.Array] | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, MGSState]:
        loss_fn, loss_kwargs = _bound_task_loss(updates, params, task_loss_fn, extra_args)
        sharding = _resolve_sharding(settings.sharding, (updates, params, loss_kwargs))
        plan = _execution_plan(
            settings.num_candidates,
            params,
            jax.default_backend(),
            isinstance(settings.temperature, str),
            settings.chunk_size,
            settings.memory_budget,
            settings.antithetic,
            sharding,
        )._replace(**(plan_overrides or {}))
        with _mesh_context(sharding):
            return _step(settings, updates, state, params, loss_fn, sharding, plan)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
