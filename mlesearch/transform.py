r"""The MGS optax transformation :func:`mgs`, its state :class:`MGSState` and :class:`MGSInfo`.

This module holds the plumbing: argument checks, PRNG keys carried in state, routing of extra
arguments to the task loss, the plan of a step (`_execution_plan`), and the one pass over the
candidates: chunk by chunk (a single chunk of all n unless the plan or ``chunk_size`` says
otherwise), each chunk folded into the weighted mean as it is evaluated. The placement on a mesh
is in `_mesh.py`, the maths in `sampling.py`.

References:
  [1] Welleck & Cho, `MLE-guided parameter search for task loss minimization in neural sequence
  modeling <https://arxiv.org/abs/2006.03158>`_, AAAI 2021.
  [2] Owen, *Monte Carlo theory, methods and examples*, 2013, ch. 9.
  [3] Veach & Guibas, *Optimally combining sampling techniques for Monte Carlo rendering*,
  SIGGRAPH 1995.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlesearch import _checks, _mesh, _utils, sampling


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


def _over_chunks(
    body: Callable[[Any, Any], tuple[Any, Any]], carry: Any, xs: Any, chunk: int
) -> tuple[Any, Any]:
    """``body(carry, rows)`` on consecutive slices of ``chunk`` rows of ``xs``, in a loop.

    ``jax.lax.scan`` over the full slices (a single one is traced without a loop: XLA runs loop
    bodies with less parallelism than top-level code), then ``body`` once more on the remainder
    when ``chunk`` does not divide the number of rows. Returns the last carry and the outputs
    joined along their leading axis (which may hold a multiple of each slice's rows).
    """
    count = jax.tree.leaves(xs)[0].shape[0]
    num_full, rest = divmod(count, chunk)
    split = num_full * chunk
    parts = []
    if num_full == 1:
        carry, out = body(carry, jax.tree.map(lambda x: x[:split], xs))
        parts.append(out)
    elif num_full > 1:
        rows = jax.tree.map(lambda x: x[:split].reshape(num_full, chunk, *x.shape[1:]), xs)
        carry, out = jax.lax.scan(body, carry, rows)
        parts.append(jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), out))
    if rest:
        carry, out = body(carry, jax.tree.map(lambda x: x[split:], xs))
        parts.append(out)
    if len(parts) == 1:
        return carry, parts[0]
    return carry, jax.tree.map(lambda *x: jnp.concatenate(x), *parts)


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

    chunk: int  # candidates drawn and evaluated at once (whole antithetic pairs); n for all.
    sum_chunk: int  # with temperature="auto", candidates drawn again and summed at once.
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
    ``"auto"``, else the given one; antithetic pairs are drawn together, so a chunk holds whole
    pairs (rounded down, at least one). On CPU two speed rules follow, each kept for a gain of
    more than 15 % in several cells of interleaved benchmarks (figures in docs/performance.md):

    - written-out draw: normals from `_threefry` at any size (0.45-0.90 of the step's time with
      jax's draw, `benchmarks/draws.py`).
    - cache-sized chunks: with a fixed α, no mesh and ``chunk_size`` None or ``"auto"``, a step
      whose n perturbations exceed ``_CPU_CHUNK_BYTES`` goes in chunks of the largest power of
      two that fits, so that a chunk stays in cache from its draw to the sum (0.52-0.79 of the
      all-at-once step's time, `benchmarks/speed.py`). With ``temperature="auto"``, whose chunks
      are drawn twice, it was mixed (0.86-1.27), so that step keeps its chunk; but when it is
      chunked, the pass that draws the chunks again for the sum (no task loss) goes in
      cache-sized chunks.

    Other backends keep jax's draw and the given chunk (not measured there).

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
    cache_chunk = chunk
    if backend == "cpu" and sharding is None:
        fits = auto_chunk_size(num_candidates, params, _CPU_CHUNK_BYTES)
        if fits < num_candidates:  # the largest power of two that fits
            cache_chunk = min(chunk, 1 << (fits.bit_length() - 1))
    if not auto_temperature and not isinstance(chunk_size, int):
        chunk = cache_chunk

    def whole_pairs(c: int) -> int:
        return max(2, c - c % 2) if antithetic else c

    return _Plan(
        chunk=whole_pairs(chunk),
        sum_chunk=whole_pairs(cache_chunk if auto_temperature else chunk),
        written_out_draw=sampling._written_out_by_default(backend),
    )


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
        sharding=_mesh.candidate_sharding(mesh, candidate_axis),
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
    candidates.

    One engine, `_over_chunks`, goes through the candidates ``plan.chunk`` at a time (antithetic
    pairs drawn together from one noise draw), each chunk folded into a running weighted mean
    (an online softmax) as soon as it is evaluated. With ``temperature="auto"`` α needs every
    loss first: the losses are evaluated chunk by chunk, α is chosen, and one more pass draws
    the chunks again and folds them in, unless all the candidates were drawn at once and kept.
    """
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
    sample = (guide, scales, num_zero_mean, share)
    group = 2 if settings.antithetic else 1
    written_out = plan.written_out_draw

    def draw(groups: jax.Array) -> tuple[jax.Array, Any, jax.Array]:
        # Candidates group·j .. group·j + group - 1 of each j in ``groups``: their indices,
        # perturbations and log q. On a low-precision leaf the candidate really evaluated is
        # round(θ + Δ): its effective perturbation is the one returned, and the one in log q.
        groups = _mesh.constrain(groups, sharding)
        if group == 1:
            drawn = jax.vmap(
                lambda i: sampling._sample_candidate_and_log_q(
                    step_key, i, *sample, params=params, written_out=written_out
                )
            )(groups)
            return (groups, *_mesh.constrain(drawn, sharding))
        pairs, log_q = jax.vmap(
            lambda j: sampling._sample_antithetic_pair_and_log_q(
                step_key, j, *sample, params, written_out=written_out
            )
        )(groups)
        members = 2 * groups[:, None] + jnp.arange(2, dtype=jnp.int32)
        flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), (members, pairs, log_q))
        return _mesh.constrain(flat, sharding)

    def loss_at(index: jax.Array, delta: Any) -> jax.Array:
        candidate = jax.tree.map(lambda p, d: (p + d).astype(p.dtype), params, delta)
        loss = jnp.asarray(loss_fn(candidate), jnp.float32)
        return jnp.where(guide_is_finite | (index < num_zero_mean), loss, jnp.nan)

    # log q is passed with every weighting; only "importance" reads it.
    def fold(running: Any, losses: jax.Array, log_q: jax.Array, deltas: Any) -> Any:
        return sampling._update_running_weighted_mean(
            running,
            losses,
            log_q,
            deltas,
            alpha,
            settings.weighting,
            weighted_sum=lambda w, d: _mesh.weighted_sum(w, d, guide, sharding),
        )

    def search(known: Any = None, keep: bool = False) -> tuple[Any, Any]:
        """One pass over the chunks: evaluates them (or takes their ``known`` losses and log q),
        folds them in once α is known, and returns the running mean and, replicated, the
        losses and log q (and the candidates, with ``keep``)."""

        def body(running: Any, rows: tuple[jax.Array, Any]) -> tuple[Any, Any]:
            groups, known_rows = rows
            members, deltas, log_q = draw(groups)
            if known_rows is None:
                losses = _mesh.constrain(jax.vmap(loss_at)(members, deltas), sharding)
            else:
                losses, log_q = (x.reshape(-1) for x in known_rows)
            if alpha is not None:
                running = fold(running, losses, log_q, deltas)
            return running, (
                _mesh.gather(losses, sharding),
                _mesh.gather(log_q, sharding),
                deltas if keep else None,
            )

        count = settings.num_candidates // group
        rows = (jnp.arange(count, dtype=jnp.int32), known)
        return _over_chunks(
            body, start, rows, (plan.chunk if known is None else plan.sum_chunk) // group
        )

    start = sampling._init_running_weighted_mean(guide)
    auto = isinstance(settings.temperature, str)
    if not auto:
        # A traced α that is not positive (a schedule annealed to 0 reaches -3e-8 by rounding)
        # is the α → 0⁺ limit, which the weights take at α = 0 and MGSInfo reports as 0.
        alpha = jnp.asarray(settings.temperature, jnp.float32)
        alpha = jnp.where(alpha > 0, alpha, 0.0)
        running, (losses, log_q, _) = search()
    else:
        alpha = None
        keep = plan.chunk >= settings.num_candidates
        _, (losses, log_q, kept) = search(keep=keep)
        previous = state.info.temperature
        alpha = sampling.auto_temperature(
            losses,
            log_q,
            settings.target_ess,
            settings.weighting,
            fallback=jnp.where(previous > 0, previous, 1.0),
        )
        if keep:
            running = fold(start, losses, log_q, kept)
        else:
            running, _ = search(known=(losses.reshape(-1, group), log_q.reshape(-1, group)))
    weights = sampling.candidate_weights(losses, log_q, alpha, settings.weighting)
    # A traced σ that is not positive searches nothing: the update is the guide (zeros if it
    # is not finite, so that nothing non-finite reaches the update).
    searching = jnp.asarray(settings.sigma, jnp.float32) > 0
    fallback = jax.tree.map(lambda u: jnp.where(guide_is_finite, u, 0.0), guide)
    mean_delta = jax.tree.map(
        lambda m, u: jnp.where(searching, m, u.astype(jnp.float32)), running.mean, fallback
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
      chunk_size: candidates evaluated at once (bounds memory; whole antithetic pairs); None
        or ``"auto"``: chosen.
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
        sharding = _mesh.resolve(settings.sharding, (updates, params, loss_kwargs))
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
        with _mesh.context(sharding):
            return _step(settings, updates, state, params, loss_fn, sharding, plan)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
