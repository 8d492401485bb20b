r"""The maths of MLE-guided parameter search, as pure functions on pytrees.

Everything here is a pure function of arrays and keys: candidate sampling from the mixture proposal,
its log density, the self-normalised importance weights, the effective sample size and the automatic
temperature. The optax plumbing (state, keys, extra arguments, chunking) lives in `transform.py`.

The proposal over a parameter perturbation :math:`\Delta` is the two-component mixture

.. math::
    q(\Delta) = \lambda \, \mathcal{N}(\Delta; 0, \sigma^2 I)
        + (1 - \lambda) \, \mathcal{N}(\Delta; u, \sigma^2 I),

where :math:`u` is the guide (the update that the differentiable surrogate proposes). The scale
:math:`\sigma` may differ between the leaves of the parameter tree (``noise="relative"``), so every
function here takes a pytree of per-leaf scales.

References:
  [1] Welleck & Cho, `MLE-guided parameter search for task loss minimization in neural sequence
  modeling <https://arxiv.org/abs/2006.03158>`_, AAAI 2021.
  [2] Owen, *Monte Carlo theory, methods and examples*, 2013, ch. 9 (self-normalised importance
  sampling, effective sample size).
  [3] Veach & Guibas, *Optimally combining sampling techniques for Monte Carlo rendering*,
  SIGGRAPH 1995 (the balance heuristic for stratified mixtures).
  [4] Milakov & Gimelshein, *Online normalizer calculation for softmax*, arXiv 1805.02867, 2018
  (merging softmaxes over chunks, for the weighted mean of chunked candidates).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from mlesearch import _threefry

WEIGHTINGS = ("importance", "tilted", "uniform")
NOISE_SCALES = ("absolute", "relative")

_LOG_2PI = math.log(2.0 * math.pi)
# Bisection bracket for the automatic temperature, in units of log(loss spread): e^±25 spans about
# 22 orders of magnitude around the spread of the losses, far past full collapse and full flatness.
_AUTO_LOG_BRACKET = 25.0
# The grid that finds the first crossing of the target ESS (a step of 0.78 in log α), and the
# bisection steps that refine it inside one grid step (to 0.78 / 2**30).
_AUTO_GRID_POINTS = 65
_AUTO_BISECTION_STEPS = 30
# Golden-section steps that find the largest ESS inside each grid step (to 0.78 · 0.618**30,
# about 4e-7, float32's resolution of log α), where importance weights can reach the target in a
# window narrower than the grid step and fall back on both sides.
_AUTO_PEAK_STEPS = 30
_INVERSE_GOLDEN_RATIO = (math.sqrt(5.0) - 1.0) / 2.0
# ESS values within this relative distance of the largest count as tied for it.
_AUTO_ESS_TIE = 1e-4


def component_sizes(num_candidates: int, mix: float) -> tuple[int, int]:
    r"""Splits ``num_candidates`` between the zero-mean and the guided component.

    Stratified allocation: :math:`k_0 = \lceil \lambda n - \tfrac12 \rceil` candidates come
    from :math:`\mathcal{N}(0, \sigma^2 I)` and the other :math:`n - k_0` from
    :math:`\mathcal{N}(u, \sigma^2 I)`: :math:`\lambda n` rounded to the nearest integer, a
    half rounded down, so that a tie gives the odd candidate to the guided component (n = 1 with
    λ = 1/2 is one guided candidate; n = 3 splits (1, 2), n = 5 (2, 3)). λn is read to 9
    decimals first, so that a tie written in decimal (λ = 0.1, n = 15) stays a tie in float.
    Candidates ``0 .. k0-1`` are zero-mean, the rest guided.

    Args:
      num_candidates: n, the number of candidates (a Python int, at least 1).
      mix: λ in [0, 1], the share of zero-mean candidates.

    Returns:
      ``(k0, n - k0)``: the number of zero-mean and of guided candidates.

    Examples:
      >>> from mlesearch import component_sizes
      >>> [component_sizes(n, 0.5) for n in (1, 2, 3, 4, 5)]
      [(0, 1), (1, 1), (1, 2), (2, 2), (2, 3)]

    References:
      [3] Veach & Guibas 1995.
    """
    num_zero_mean = math.ceil(round(mix * num_candidates, 9) - 0.5)
    return num_zero_mean, num_candidates - num_zero_mean


def proposal_scales(guide: chex.ArrayTree, sigma: chex.Numeric, noise: str = "absolute") -> Any:
    r"""Per-leaf standard deviations of the proposal.

    ``"absolute"``: :math:`\sigma_\ell = \sigma` for every leaf :math:`\ell`. ``"relative"``:
    :math:`\sigma_\ell = \sigma \cdot \mathrm{mean}|u_\ell|`, as in the released code of [1],
    with the mean taken over the finite entries of the leaf, so that a NaN or inf in the guide
    does not spread to the noise. A relative scale is zero on a leaf where the guide is zero, or
    so small that it falls below the smallest normal float32 (about 1.2e-38): the leaf is then
    not searched. Every candidate carries its component's mean there (0 or :math:`u_\ell`) and
    the leaf takes no part in the density (exact when :math:`u_\ell = 0`). A ``sigma`` that is
    not positive (a traced σ ≤ 0) gives zero scales on every leaf, with either noise.

    Args:
      guide: the guide update u, a pytree of arrays.
      sigma: the noise scale, a scalar (may be traced).
      noise: ``"absolute"`` or ``"relative"``.

    Returns:
      A pytree with the structure of ``guide`` whose leaves are float32 scalars, shape ``()``.

    References:
      [1] Welleck & Cho 2020, arXiv 2006.03158.
    """
    if noise not in NOISE_SCALES:
        raise ValueError(f"noise must be one of {NOISE_SCALES}, got {noise!r}.")
    sigma = jnp.asarray(sigma, jnp.float32)
    # A negative scale would draw noise that log q (which skips leaves whose scale is not
    # positive) leaves out.
    sigma = jnp.where(sigma > 0, sigma, 0.0)
    if noise == "absolute":
        return jax.tree.map(lambda _: sigma, guide)

    def relative(leaf: jax.Array) -> jax.Array:
        magnitude = jnp.abs(leaf.astype(jnp.float32))
        finite = jnp.isfinite(magnitude)
        count = jnp.maximum(jnp.sum(finite), 1).astype(jnp.float32)
        scale = sigma * (jnp.sum(jnp.where(finite, magnitude, 0.0)) / count)
        # A scale below the smallest normal float32 cannot scale noise reliably (CPUs flush
        # subnormals to zero): the leaf is then not searched, exactly as a zero guide leaf.
        return jnp.where(scale >= jnp.finfo(jnp.float32).tiny, scale, 0.0)

    return jax.tree.map(relative, guide)


def _written_out_by_default(backend: str | None = None) -> bool:
    """Whether draws on ``backend`` (the default backend if None) are written out (`_threefry`):
    on CPU. The one place that says so, for the public samplers and for the steps of `mgs`.

    The same normals either way, bit for bit; on CPU the written-out draw is faster (the
    figures are beside the rules with which `mlesearch.transform` plans a step).
    """
    return (backend or jax.default_backend()) == "cpu"


def _standard_normal_like(key: jax.Array, tree: chex.ArrayTree, *, written_out: bool) -> Any:
    """Float32 standard normal noise shaped like ``tree``, from one draw for all leaves.

    One draw rather than one per leaf: each random draw site compiles to its own copy of the
    generator, so per-leaf draws make compile time grow with the number of leaves. The draw has
    an even length, one entry more than the leaves hold when their total is odd: threefry makes
    its bits in pairs, and on XLA:CPU an odd-length draw took 4 to 8 times as long as an even
    one of about the same length (``jax.random.normal`` of 99,985 against 99,986 entries). With
    ``jax_threefry_partitionable`` (jax's default) the first entries of the longer draw are the
    shorter draw's, bit for bit. ``written_out`` goes to `_threefry.standard_normal`: the same
    normals either way.
    """
    leaves, treedef = jax.tree.flatten(tree)
    sizes = [math.prod(jnp.shape(leaf)) for leaf in leaves]
    total = sum(sizes)
    flat = _threefry.standard_normal(key, total + total % 2, written_out=written_out)
    offsets = list(itertools.accumulate(sizes, initial=0))[:-1]
    parts = [
        jax.lax.slice_in_dim(flat, start, start + size).reshape(jnp.shape(leaf))
        for leaf, start, size in zip(leaves, offsets, sizes, strict=True)
    ]
    return jax.tree.unflatten(treedef, parts)


def _leaf_terms(
    d: jax.Array, u: jax.Array, scale: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""A leaf's centred squared distances to the two means, and its shared log density.

    The centred squared distance to a mean m is :math:`\sum (z^2 - 1)` with :math:`z = (\Delta -
    m)/\sigma` standardised (see `_shared_log_density`). A leaf whose scale is zero takes no part
    in the density: all three terms are 0.
    """
    d = d.astype(jnp.float32)
    u = u.astype(jnp.float32)
    active = scale > 0
    safe_scale = jnp.where(active, scale, 1.0)
    sq_zero = jnp.where(active, jnp.sum(jnp.square(d / safe_scale) - 1.0), 0.0)
    sq_guided = jnp.where(active, jnp.sum(jnp.square((d - u) / safe_scale) - 1.0), 0.0)
    return sq_zero, sq_guided, _shared_log_density(d.size, scale)


def _shared_log_density(size: int, scale: jax.Array) -> jax.Array:
    r"""The part of :math:`\log\mathcal{N}(\Delta; m, \sigma^2 I)` on a leaf that no candidate
    changes: :math:`-\tfrac12\,\mathrm{size}\,(\log 2\pi + 2\log\sigma + 1)`; 0 where σ = 0.

    The rest of the log density is :math:`-\tfrac12 \sum (z^2 - 1)`, the squared standardised
    distance centred at its mean under the proposal. It is of order :math:`\sqrt{\mathrm{size}}`,
    where float32 keeps its differences between candidates to about 10⁻⁴ nats at size 2²². The
    shared part, about :math:`-1.4\,\mathrm{size}` for σ = 1, cancels in self-normalised
    weights; added first, it would round those differences to float32's spacing at its
    magnitude (0.5 nats at size 2²²).
    """
    active = scale > 0
    safe_scale = jnp.where(active, scale, 1.0)
    return jnp.where(active, -0.5 * size * (_LOG_2PI + 2.0 * jnp.log(safe_scale) + 1.0), 0.0)


def _log_mixture(share: chex.Numeric, sq_zero: jax.Array, sq_guided: jax.Array) -> jax.Array:
    """log(λ e^{-sq_zero/2} + (1-λ) e^{-sq_guided/2}), computed as a log-sum-exp."""
    share = jnp.asarray(share, jnp.float32)
    return jax.nn.logsumexp(
        jnp.stack([jnp.log(share) - 0.5 * sq_zero, jnp.log1p(-share) - 0.5 * sq_guided])
    )


def _candidate_noise(
    key: jax.Array,
    index: chex.Numeric,
    guide: chex.ArrayTree,
    antithetic: bool,
    *,
    written_out: bool = False,
) -> tuple[Any, jax.Array]:
    """The standard normal noise εᵢ of candidate ``index`` and its antithetic sign (±1);
    ``written_out`` as in `_standard_normal_like`."""
    index = jnp.asarray(index, jnp.int32)
    if antithetic:
        parity = index % 2
        noise_index = index - parity
        sign = 1.0 - 2.0 * parity.astype(jnp.float32)
    else:
        noise_index = index
        sign = jnp.float32(1.0)
    noise = _standard_normal_like(
        jax.random.fold_in(key, noise_index), guide, written_out=written_out
    )
    return noise, sign


def _perturb(
    u: jax.Array, scale: jax.Array, eps: jax.Array, sign: jax.Array, is_guided: Any
) -> Any:
    # A select rather than 0·u: zero-mean candidates stay finite even where the guide is not.
    return jnp.where(is_guided, u.astype(jnp.float32), 0.0) + (sign * scale) * eps


def sample_candidate(
    key: jax.Array,
    index: chex.Numeric,
    guide: chex.ArrayTree,
    scales: chex.ArrayTree,
    num_zero_mean: int,
    antithetic: bool = False,
) -> Any:
    r"""Draws candidate number ``index`` of a stratified sample from the mixture proposal.

    Candidate ``i`` is :math:`\Delta_i = m_i + \sigma \epsilon_i`, with :math:`m_i = 0` for
    ``i < num_zero_mean`` and :math:`m_i = u` otherwise, and :math:`\epsilon_i` standard normal
    noise drawn in float32 from ``fold_in(key, i)``. Each candidate depends on its own index only,
    so a candidate can be drawn again later, bit for bit, instead of being stored. With
    ``antithetic``, candidates ``2j`` and ``2j + 1`` share their noise with opposite signs,
    :math:`(m + \sigma\epsilon, m - \sigma\epsilon)`; the marginal of each is still the proposal,
    so the weights stay valid. Each component then needs an even count.

    Args:
      key: the step's PRNG key, shared by all candidates of the step.
      index: the candidate's index i in ``[0, n)``, an int32 scalar (may be traced or vmapped).
      guide: the guide update u, a pytree of arrays.
      scales: per-leaf noise scales from :func:`proposal_scales`.
      num_zero_mean: k0, the number of zero-mean candidates (they come first).
      antithetic: whether candidates come in antithetic pairs.

    Returns:
      :math:`\Delta_i`, a pytree with the structure and shapes of ``guide``, in float32.
    """
    noise, sign = _candidate_noise(
        key, index, guide, antithetic, written_out=_written_out_by_default()
    )
    is_guided = jnp.asarray(index, jnp.int32) >= num_zero_mean
    return jax.tree.map(
        lambda u, scale, eps: _perturb(u, scale, eps, sign, is_guided), guide, scales, noise
    )


def _effective_perturbation(param: jax.Array, delta: jax.Array) -> jax.Array:
    r"""The perturbation that a parameter leaf really receives, in float32.

    On a leaf narrower than float32 (bfloat16, float16), :math:`\theta + \Delta` is rounded to the
    leaf's dtype, so the point evaluated is :math:`\mathrm{round}(\theta + \Delta)` and its
    perturbation is :math:`\mathrm{round}(\theta + \Delta) - \theta`. On a float32 or wider leaf
    it is :math:`\Delta` itself.

    Args:
      param: the parameter leaf θ, any floating dtype and shape.
      delta: the drawn perturbation Δ, float32, the shape of ``param``.

    Returns:
      The effective perturbation, float32, the shape of ``param``.
    """
    if jnp.finfo(param.dtype).bits >= 32:
        return delta
    wide = param.astype(jnp.float32)
    return (wide + delta).astype(param.dtype).astype(jnp.float32) - wide


def _sample_candidate_and_log_q(
    key: jax.Array,
    index: chex.Numeric,
    guide: chex.ArrayTree,
    scales: chex.ArrayTree,
    num_zero_mean: int,
    zero_mean_share: chex.Numeric,
    antithetic: bool = False,
    params: chex.ArrayTree | None = None,
    *,
    written_out: bool = False,
) -> tuple[Any, jax.Array]:
    r"""Draws candidate ``index`` like :func:`sample_candidate`, with its log density under q
    less a constant that every candidate of the step shares.

    The density comes from the noise as it is drawn, not from a second pass over
    :math:`\Delta_i`. In standardised units :math:`v_\ell = u_\ell / \sigma_\ell`, a candidate
    :math:`\Delta_i = m_i + \sigma s_i \epsilon_i` (sign :math:`s_i = \pm 1`) has squared
    distances to the two means

    .. math::
        \|\Delta_i/\sigma\|^2 &= \|\epsilon_i\|^2 + [m_i = u]\,(\|v\|^2 + 2 s_i\,\epsilon_i\cdot v),
        \\
        \|(\Delta_i - u)/\sigma\|^2 &= \|\epsilon_i\|^2 + [m_i = 0]\,(\|v\|^2 - 2 s_i\,
        \epsilon_i\cdot v),

    so only :math:`\|\epsilon_i\|^2` and :math:`\epsilon_i\cdot v` vary with the candidate, and
    the shared :math:`\|\epsilon_i\|^2` leaves the log-sum-exp of the two components, which
    keeps their difference exact in float32. The normalising constants, shared by every
    candidate, are left out (they cancel in self-normalised weights, and at large d their sum
    would round away the differences between candidates, see `_shared_log_density`), and
    :math:`\|\epsilon_i\|^2` enters centred, as :math:`\sum(\epsilon^2 - 1)`. The result
    equals :func:`log_proposal_density` of the returned perturbation with
    ``include_normalizer=False``, up to float32 rounding.

    With ``params``, a leaf narrower than float32 returns its `_effective_perturbation`, and
    its density terms are computed from that one (the rounded point is the one evaluated).

    Args:
      key: the step's PRNG key.
      index: the candidate's index i in ``[0, n)``, an int32 scalar (may be traced or vmapped).
      guide: the guide update u, a pytree of finite arrays.
      scales: per-leaf noise scales from :func:`proposal_scales`, float32 scalars.
      num_zero_mean: k0, the number of zero-mean candidates (they come first).
      zero_mean_share: λ in [0, 1], the weight of the zero-mean component in q.
      antithetic: whether candidates come in antithetic pairs.
      params: θ, a pytree with the structure of ``guide``, or None (every leaf float32).
      written_out: draw the noise through `_threefry` (as in `_standard_normal_like`).

    Returns:
      ``(delta, log_q)``: :math:`\Delta_i` (a float32 pytree shaped like ``guide``) and
      :math:`\log q(\Delta_i) - c` (a float32 scalar, shape ``()``), where c depends on the
      sizes and scales of the leaves only.

    References:
      [3] Veach & Guibas 1995 (the mixture density of a stratified sample).
    """
    noise, sign = _candidate_noise(key, index, guide, antithetic, written_out=written_out)
    is_guided = jnp.asarray(index, jnp.int32) >= num_zero_mean
    return _perturbation_and_log_q(noise, sign, is_guided, guide, scales, zero_mean_share, params)


def _sample_antithetic_pair_and_log_q(
    key: jax.Array,
    pair: chex.Numeric,
    guide: chex.ArrayTree,
    scales: chex.ArrayTree,
    num_zero_mean: int,
    zero_mean_share: chex.Numeric,
    params: chex.ArrayTree | None = None,
    *,
    written_out: bool = False,
) -> tuple[Any, jax.Array]:
    r"""Draws the antithetic candidates ``2 * pair`` and ``2 * pair + 1`` from one noise draw.

    The same candidates and log densities as `_sample_candidate_and_log_q` with
    ``antithetic=True`` at ``index = 2 * pair`` and ``2 * pair + 1``, but the noise
    :math:`\epsilon` shared by the pair is drawn once, not once per candidate: under ``jax.vmap``
    over pairs, a step draws n / 2 noise vectors instead of n. On CPU the random bits are most of
    the cost of drawing.

    Args:
      key: the step's PRNG key.
      pair: the pair's index j in ``[0, n / 2)``, an int32 scalar (may be traced or vmapped).
      guide: the guide update u, a pytree of finite arrays.
      scales: per-leaf noise scales from :func:`proposal_scales`, float32 scalars.
      num_zero_mean: k0, the number of zero-mean candidates (they come first); even.
      zero_mean_share: λ in [0, 1], the weight of the zero-mean component in q.
      params: θ, a pytree with the structure of ``guide``, or None (every leaf float32).
      written_out: draw the noise through `_threefry` (as in `_standard_normal_like`).

    Returns:
      ``(deltas, log_q)``: the two perturbations, stacked (each leaf of shape
      ``(2, *leaf.shape)``, float32, ``+ε`` first), and their log densities less c, shape
      ``(2,)``.
    """
    first = 2 * jnp.asarray(pair, jnp.int32)
    noise, _ = _candidate_noise(key, first, guide, True, written_out=written_out)
    is_guided = first >= num_zero_mean
    drawn = [
        _perturbation_and_log_q(
            noise, jnp.float32(sign), is_guided, guide, scales, zero_mean_share, params
        )
        for sign in (1.0, -1.0)
    ]
    return jax.tree.map(lambda plus, minus: jnp.stack([plus, minus]), *drawn)


def _perturbation_and_log_q(
    noise: Any,
    sign: jax.Array,
    is_guided: jax.Array,
    guide: chex.ArrayTree,
    scales: chex.ArrayTree,
    zero_mean_share: chex.Numeric,
    params: chex.ArrayTree | None,
) -> tuple[Any, jax.Array]:
    """Δ = m + sign·σ·ε from drawn noise ε, and log q(Δ) - c from ε (as described in
    `_sample_candidate_and_log_q`)."""
    if params is None:
        params = jax.tree.map(lambda u: jax.ShapeDtypeStruct(jnp.shape(u), jnp.float32), guide)
    zero = jnp.float32(0.0)
    noise_sq, cross, guide_sq, rounded_zero, rounded_guided = (zero,) * 5
    deltas = []
    leaves = zip(
        jax.tree.leaves(guide),
        jax.tree.leaves(scales),
        jax.tree.leaves(noise),
        jax.tree.leaves(params),
        strict=True,
    )
    for u, scale, eps, param in leaves:
        u = u.astype(jnp.float32)
        delta = _perturb(u, scale, eps, sign, is_guided)
        if jnp.finfo(param.dtype).bits >= 32:
            active = scale > 0
            v = u / jnp.where(active, scale, 1.0)
            noise_sq += jnp.where(active, jnp.sum(jnp.square(eps) - 1.0), 0.0)
            cross += jnp.where(active, sign * jnp.sum(eps * v), 0.0)
            guide_sq += jnp.where(active, jnp.sum(jnp.square(v)), 0.0)
        else:
            delta = _effective_perturbation(param, delta)
            sq_zero, sq_guided, _ = _leaf_terms(delta, u, scale)
            rounded_zero += sq_zero
            rounded_guided += sq_guided
        deltas.append(delta)
    # Centred squared distances less the shared Σ(ε² - 1) of the float32 leaves.
    extra_zero = rounded_zero + jnp.where(is_guided, guide_sq + 2.0 * cross, 0.0)
    extra_guided = rounded_guided + jnp.where(is_guided, 0.0, guide_sq - 2.0 * cross)
    log_q = -0.5 * noise_sq + _log_mixture(zero_mean_share, extra_zero, extra_guided)
    return jax.tree.unflatten(jax.tree.structure(guide), deltas), log_q


def sample_candidates(
    key: jax.Array,
    guide: chex.ArrayTree,
    scales: chex.ArrayTree,
    num_candidates: int,
    mix: float = 0.5,
    antithetic: bool = False,
) -> Any:
    """Draws all ``num_candidates`` candidates of a step at once.

    The same candidates as :func:`sample_candidate` for ``index = 0 .. n-1``, stacked. Handy for
    notebooks and tests; the transformation itself draws them one chunk at a time.

    Args:
      key: the step's PRNG key.
      guide: the guide update u, a pytree of arrays.
      scales: per-leaf noise scales from :func:`proposal_scales`.
      num_candidates: n, the number of candidates.
      mix: λ, the share of zero-mean candidates.
      antithetic: whether candidates come in antithetic pairs.

    Returns:
      A pytree with the structure of ``guide``; each leaf has shape ``(n, *leaf.shape)``, float32.
    """
    num_zero_mean, _ = component_sizes(num_candidates, mix)
    indices = jnp.arange(num_candidates, dtype=jnp.int32)
    return jax.vmap(lambda i: sample_candidate(key, i, guide, scales, num_zero_mean, antithetic))(
        indices
    )


def log_proposal_density(
    delta: chex.ArrayTree,
    guide: chex.ArrayTree,
    scales: chex.ArrayTree,
    zero_mean_share: chex.Numeric,
    *,
    include_normalizer: bool = True,
) -> jax.Array:
    r"""Log density of the mixture proposal at ``delta``.

    .. math::
        \log q(\Delta) = \operatorname{logsumexp}\big(
            \log\lambda + \log\mathcal{N}(\Delta; 0, \Sigma),\;
            \log(1-\lambda) + \log\mathcal{N}(\Delta; u, \Sigma)\big),

    with :math:`\Sigma` diagonal, :math:`\sigma_\ell^2` on leaf :math:`\ell`. It uses the true
    scales, normalising constants included. The squared distances are computed in standardised
    form, :math:`\|(\Delta_\ell - m)/\sigma_\ell\|^2`, so that a tiny scale (say 1e-20, whose
    :math:`1/\sigma^2` overflows float32) gives a finite density. Leaves whose scale is zero are
    left out: there both components put a point mass on the component's mean (see
    :func:`proposal_scales`).

    For importance weights, pass ``include_normalizer=False``: the result is then
    :math:`\log q(\Delta) - c`, with the constant
    :math:`c = -\tfrac12 \sum_\ell d_\ell (\log 2\pi + 2 \log\sigma_\ell + 1)` over the
    leaves of :math:`d_\ell` entries and nonzero scale, the same for every ``delta``; it cancels
    in self-normalised weights. At large d the true density, about :math:`-1.4\,d` for σ = 1,
    is rounded to float32's spacing at that magnitude (0.5 nats at d = 2²²), which its
    differences between candidates inherit; without c they keep about 10⁻⁴ nats.

    Args:
      delta: :math:`\Delta`, a pytree with the structure of ``guide``.
      guide: the guide update u.
      scales: per-leaf noise scales from :func:`proposal_scales`, float32 scalars.
      zero_mean_share: λ, the weight of the zero-mean component, in [0, 1]. For a stratified sample
        use ``k0 / n`` (the balance heuristic [3]).
      include_normalizer: whether to add c (above), making the result the true log density.

    Returns:
      :math:`\log q(\Delta)`, or :math:`\log q(\Delta) - c`, a float32 scalar, shape ``()``.

    References:
      [1] Welleck & Cho 2020, arXiv 2006.03158, eq. for the MGS proposal.
      [3] Veach & Guibas 1995.
    """
    # Summed term by term rather than stacked: under vmap the squared distances vary with the
    # candidate while the normalising constant does not (and their shardings may differ).
    leaves = zip(
        jax.tree.leaves(delta), jax.tree.leaves(guide), jax.tree.leaves(scales), strict=True
    )
    terms = [_leaf_terms(d, u, scale) for d, u, scale in leaves]
    sq_zero, sq_guided, shared = (
        sum(parts, jnp.float32(0.0)) for parts in zip(*terms, strict=True)
    )
    log_q = _log_mixture(zero_mean_share, sq_zero, sq_guided)
    return shared + log_q if include_normalizer else log_q


def _log_weight_terms(
    candidate_losses: jax.Array, log_proposals: jax.Array | None, weighting: str
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Half the shifted losses and half the shifted log q, both >= 0, and the usable mask."""
    half_loss, half_log_q, valid, _, _ = _shifted_log_weight_terms(
        candidate_losses, log_proposals, weighting
    )
    return half_loss, half_log_q, valid


def _half_gap(value: jax.Array, shift: jax.Array) -> jax.Array:
    """(value - shift) / 2, as value/2 - shift/2: finite for any two finite float32 numbers,
    whose difference itself can overflow (3e38 - (-3e38))."""
    return 0.5 * value - 0.5 * shift


def _divide(numerator: jax.Array, divisor: jax.Array) -> jax.Array:
    """numerator / divisor for a positive divisor, also where its reciprocal is subnormal.

    XLA:CPU divides by multiplying with the reciprocal, which flushes to 0 for a divisor above
    2¹²⁶ (about 8.5e37): 3e38 / 2e38 came out 0. Scaling both by 2⁻⁶⁴ first is exact, and keeps
    the reciprocal normal. The barrier keeps XLA from folding a constant divisor's scale into
    its reciprocal, which would make the subnormal factor again.
    """
    divisor = jax.lax.optimization_barrier(divisor)
    scale = jnp.where(divisor > 2.0**100, 2.0**-64, 1.0).astype(jnp.float32)
    return (numerator * scale) / (divisor * scale)


def _shifted_log_weight_terms(
    candidate_losses: jax.Array, log_proposals: jax.Array | None, weighting: str
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """`_log_weight_terms`, and the shifts: the best finite loss and the smallest finite log q.

    The terms are half gaps (`_half_gap`), so that finite losses and log q always give finite
    terms, however far apart: the logits are then taken in half units (`_softmax_and_log_mass`),
    and the candidates keep their ranking instead of overflowing to weight 0. A shift is +inf
    when no candidate is usable, and 0 where the weighting ignores the term.
    """
    losses = jnp.asarray(candidate_losses, jnp.float32)
    valid = jnp.isfinite(losses)
    zero = jnp.zeros((), jnp.float32)
    if weighting == "importance":
        if log_proposals is None:
            raise ValueError(
                'weighting="importance" needs log_proposals (log q of each candidate).'
            )
        log_q = jnp.asarray(log_proposals, jnp.float32)
        valid &= jnp.isfinite(log_q)
        # Shift by the smallest log q so that the -log q term is <= 0 and nothing overflows.
        min_log_q = jnp.min(jnp.where(valid, log_q, jnp.inf))
        half_log_q = jnp.where(valid, _half_gap(log_q, min_log_q), 0.0)
    elif weighting in ("tilted", "uniform"):
        min_log_q = zero
        half_log_q = jnp.zeros_like(losses)
    else:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}.")
    if weighting == "uniform":
        return jnp.zeros_like(losses), half_log_q, valid, zero, min_log_q
    # l(θ) is the same for every candidate and cancels in the softmax; shifting by the best finite
    # loss instead keeps -Δl/α <= 0 whatever the scale of the losses, even for ±3e38.
    best = jnp.min(jnp.where(valid, losses, jnp.inf))
    half_loss = jnp.where(valid, _half_gap(losses, best), 0.0)
    return half_loss, half_log_q, valid, best, min_log_q


def _normalized_weights(
    half_loss: jax.Array, half_log_q: jax.Array, valid: jax.Array, temperature: jax.Array
) -> jax.Array:
    return _softmax_and_log_mass(half_loss, half_log_q, valid, temperature)[0]


def _scaled_loss(loss_gap: jax.Array, temperature: jax.Array) -> jax.Array:
    """Loss gaps (>= 0) over α; an infinite gap (from the shift +inf of a chunk with nothing
    usable) stays inf, even at α = inf.

    α that is not positive (≤ 0, as a schedule annealed to 0 reaches by rounding, or NaN) takes
    the α → 0⁺ limit: a gap of 0 stays 0 and any other gap becomes +inf. Dividing instead would
    flip the sign of every logit at α < 0 (all the weight on the worst candidate) and make 0 / 0
    at α = 0.
    """
    positive = temperature > 0
    scaled = _divide(loss_gap, jnp.where(positive, temperature, 1.0))
    scaled = jnp.where(jnp.isinf(loss_gap), jnp.inf, scaled)
    return jnp.where(positive, scaled, jnp.where(loss_gap > 0, jnp.inf, 0.0))


def _softmax_and_log_mass(
    half_loss: jax.Array, half_log_q: jax.Array, valid: jax.Array, temperature: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The weights, and half of log Σᵢ exp(log wᵢ) over their logits before normalising (-inf if
    none is usable).

    The logits are taken in half units, h = (-Δl/α - Δlog q) / 2, and the weights are
    exp(2 (h - max h)), normalised: the same numbers as from the logits themselves wherever
    those do not overflow, and the candidate with the best loss has a finite h (0 - Δlog q / 2),
    so the weights never all vanish while a candidate is usable.
    """
    # half_loss == 0 for the best candidate: its loss term is 0 for every α, limit included.
    half_logits = jnp.where(valid, -_scaled_loss(half_loss, temperature) - half_log_q, -jnp.inf)
    top = jnp.max(half_logits)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    unnormalized = jnp.exp(2.0 * (half_logits - top))
    total = jnp.sum(unnormalized)
    safe_total = jnp.where(total > 0, total, 1.0)
    weights = jnp.where(total > 0, unnormalized / safe_total, 0.0)
    return weights, jnp.where(total > 0, top + 0.5 * jnp.log(safe_total), -jnp.inf)


def candidate_weights(
    candidate_losses: chex.Array,
    log_proposals: chex.Array | None = None,
    temperature: chex.Numeric = 1.0,
    weighting: str = "importance",
) -> jax.Array:
    r"""Self-normalised importance weights of the candidates, computed in log space.

    ``"importance"`` targets :math:`p(\Delta) \propto \exp(-[l(\theta+\Delta) - l(\theta)]/\alpha)`:

    .. math::
        \log w_i = -\frac{l_i - l(\theta)}{\alpha} - \log q(\Delta_i),
        \qquad w = \mathrm{softmax}(\log w).

    ``"tilted"`` targets :math:`\tilde p \propto q \cdot \exp(-\Delta l/\alpha)`, where the proposal
    acts as a soft trust region; its weights are :math:`\mathrm{softmax}(-l_i/\alpha)`.

    ``"uniform"`` gives every candidate with a finite loss the same weight, whatever its loss: the
    control that separates selection by the task loss from the effect of the noise.

    Candidates whose loss (or, for ``"importance"``, log q) is not finite get weight 0. If no
    candidate is usable, every weight is 0, never NaN. Finite values however far apart (losses
    of -3e38 and 3e38, whose gap overflows float32) keep their ranking: the logits are taken in
    half units, so the weights are the softmax's wherever float32 can hold them, and never all
    0 while a candidate is usable.

    A temperature that is not positive (α ≤ 0, as a schedule annealed to 0 reaches by float
    rounding, or NaN) gives the exact α → 0⁺ limit, never the weights of a negative α: all the
    weight on the usable candidates with the best loss. A tie among them is shared, in
    proportion to :math:`1/q(\Delta_i)` for ``"importance"`` (the limit of its logits, whose
    loss term is 0 for the tied candidates and :math:`-\infty` for the others) and equally for
    ``"tilted"``.

    Args:
      candidate_losses: :math:`l_i = l(\theta + \Delta_i)`, shape ``(n,)``.
      log_proposals: :math:`\log q(\Delta_i)`, shape ``(n,)``. Required for ``"importance"``,
        ignored for ``"tilted"`` and ``"uniform"``.
      temperature: α, a scalar (may be traced): α > 0, or α ≤ 0 for the α → 0⁺ limit (above);
        ignored for ``"uniform"``.
      weighting: ``"importance"``, ``"tilted"`` or ``"uniform"``.

    Returns:
      The weights w, float32, shape ``(n,)``, summing to 1 (or all 0).

    References:
      [1] Welleck & Cho 2020, arXiv 2006.03158.
      [2] Owen 2013, ch. 9.
    """
    half_loss, half_log_q, valid = _log_weight_terms(candidate_losses, log_proposals, weighting)
    return _normalized_weights(half_loss, half_log_q, valid, jnp.asarray(temperature, jnp.float32))


class _RunningWeightedMean(NamedTuple):
    """Σᵢ wᵢ Δᵢ over the candidates seen so far, with the weights normalised over them.

    The state of `_update_running_weighted_mean`, which folds in candidates chunk by chunk, as an
    online softmax does, so that each chunk is drawn once and never kept.

    Attributes:
      best_loss: the best finite loss so far, the shift of the loss term of the logits (+inf
        before any usable candidate; 0 for ``"uniform"``), shape ``()``.
      min_log_q: the smallest finite log q so far, the shift of the log q term (+inf before any
        usable candidate; 0 unless ``"importance"``), shape ``()``.
      half_log_mass: half of log Σᵢ exp(log wᵢ) over the candidates so far, their logits taken
        with those shifts (-inf before any usable candidate), shape ``()``; in half units, as
        in `_softmax_and_log_mass`, so that it stays finite however far apart the losses are.
      mean: the weighted mean of their perturbations, float32, shaped like the parameters
        (zeros before any usable candidate).
    """

    best_loss: jax.Array
    min_log_q: jax.Array
    half_log_mass: jax.Array
    mean: Any


def _init_running_weighted_mean(like: Any) -> _RunningWeightedMean:
    """The empty `_RunningWeightedMean`: no candidate seen, a zero mean shaped like ``like``.

    Args:
      like: a pytree shaped like the parameters (leaves of any shape).

    Returns:
      A `_RunningWeightedMean` whose ``mean`` is float32 zeros shaped like ``like``.
    """
    inf = jnp.asarray(jnp.inf, jnp.float32)
    return _RunningWeightedMean(
        best_loss=inf,
        min_log_q=inf,
        half_log_mass=-inf,
        mean=jax.tree.map(lambda x: jnp.zeros_like(x, jnp.float32), like),
    )


def _update_running_weighted_mean(
    running: _RunningWeightedMean,
    candidate_losses: chex.Array,
    log_proposals: chex.Array | None,
    perturbations: Any,
    temperature: chex.Numeric = 1.0,
    weighting: str = "importance",
    weighted_sum: Callable[[jax.Array, Any], Any] | None = None,
) -> _RunningWeightedMean:
    r"""Folds a chunk of candidates into a running weighted mean of the perturbations.

    After every chunk of n candidates has been folded in, in any order, ``mean`` is
    :math:`\sum_i w_i \Delta_i` with the weights `candidate_weights` gives all n, up to
    rounding. Each chunk's softmax is merged with the running one through their log masses,
    rescaled when either shift (best loss, smallest log q) moves, and its perturbations are
    summed with one dot per leaf.

    Args:
      running: the state so far (`_init_running_weighted_mean` before the first chunk).
      candidate_losses: the chunk's losses, shape ``(c,)``.
      log_proposals: their log q, shape ``(c,)``; required for ``"importance"``.
      perturbations: their perturbations, leaves ``(c, *shape)``.
      temperature: α, the same for every chunk; α ≤ 0 takes the α → 0⁺ limit, as in
        `candidate_weights`; ignored for ``"uniform"``.
      weighting: ``"importance"``, ``"tilted"`` or ``"uniform"``.
      weighted_sum: ``(w, perturbations) -> Σᵢ wᵢ Δᵢ`` in float32 for weights of shape ``(c,)``,
        or None for one ``tensordot`` per leaf (a caller with a mesh places the result).

    Returns:
      The updated `_RunningWeightedMean`.

    References:
      [4] Milakov & Gimelshein 2018.
    """
    temperature = jnp.asarray(temperature, jnp.float32)
    half_loss, half_log_q, valid, best, min_log_q = _shifted_log_weight_terms(
        candidate_losses, log_proposals, weighting
    )
    weights, half_log_mass = _softmax_and_log_mass(half_loss, half_log_q, valid, temperature)
    if weighted_sum is None:
        chunk_mean = jax.tree.map(
            lambda d: jnp.tensordot(weights, d, axes=1).astype(jnp.float32), perturbations
        )
    else:
        chunk_mean = weighted_sum(weights, perturbations)
    new_best = jnp.minimum(running.best_loss, best)
    new_min_log_q = jnp.minimum(running.min_log_q, min_log_q)

    def shifted(half_log_mass: jax.Array, best: jax.Array, min_log_q: jax.Array) -> jax.Array:
        # Both shifts only decrease, so both gaps are >= 0 (inf - inf, nothing seen, is no gap).
        loss_gap = jnp.where(best == new_best, 0.0, _half_gap(best, new_best))
        log_q_gap = jnp.where(min_log_q == new_min_log_q, 0.0, _half_gap(min_log_q, new_min_log_q))
        return half_log_mass - _scaled_loss(loss_gap, temperature) - log_q_gap

    old = shifted(running.half_log_mass, running.best_loss, running.min_log_q)
    new = shifted(half_log_mass, best, min_log_q)
    top = jnp.maximum(old, new)
    seen = top > -jnp.inf
    safe_top = jnp.where(seen, top, 0.0)
    keep = jnp.where(seen, jnp.exp(2.0 * (old - safe_top)), 0.0)
    add = jnp.where(seen, jnp.exp(2.0 * (new - safe_top)), 0.0)
    total = jnp.where(seen, keep + add, 1.0)  # >= 1 when seen: the larger term is exp(0)
    return _RunningWeightedMean(
        best_loss=new_best,
        min_log_q=new_min_log_q,
        half_log_mass=jnp.where(seen, safe_top + 0.5 * jnp.log(total), -jnp.inf),
        mean=jax.tree.map(
            lambda m, c: (keep / total) * m + (add / total) * c, running.mean, chunk_mean
        ),
    )


def effective_sample_size(weights: chex.Array) -> jax.Array:
    r"""Effective sample size of normalised weights, :math:`1 / \sum_i w_i^2`.

    It runs from 1 (all weight on one candidate) to n (uniform weights). It is 0 when every weight
    is 0 (no usable candidate).

    Args:
      weights: normalised weights, shape ``(n,)``.

    Returns:
      The ESS, a float32 scalar, shape ``()``.

    References:
      [2] Owen 2013, ch. 9, eq. (9.13).
    """
    weights = jnp.asarray(weights, jnp.float32)
    sum_sq = jnp.sum(jnp.square(weights))
    return jnp.where(sum_sq > 0, 1.0 / jnp.where(sum_sq > 0, sum_sq, 1.0), 0.0)


def _largest_ess_between(
    batched_ess: Any, lower: jax.Array, upper: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The point of largest ESS strictly inside each interval, by golden-section search.

    Exact for an ESS with one peak (or none) in the interval; else it finds one of the peaks.

    Args:
      batched_ess: ``log α (m,) -> ESS (m,)``.
      lower: the intervals' lower ends in log α, shape ``(m,)``.
      upper: their upper ends, shape ``(m,)``.

    Returns:
      ``(points, ess)``: the point found in each interval and its ESS, both shape ``(m,)``.
    """

    def inner_points(low: jax.Array, high: jax.Array) -> tuple[jax.Array, jax.Array]:
        gap = _INVERSE_GOLDEN_RATIO * (high - low)
        return high - gap, low + gap

    def shrink(_: int, search: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        # Invariant: low < left < right < high, the peak between low and high.
        low, high, left, right, left_ess, right_ess = search
        keep_left = left_ess >= right_ess  # the peak is then below right: drop (right, high].
        low = jnp.where(keep_left, low, left)
        high = jnp.where(keep_left, right, high)
        new_left, new_right = inner_points(low, high)
        probe = jnp.where(keep_left, new_left, new_right)
        probe_ess = batched_ess(probe)
        return (
            low,
            high,
            jnp.where(keep_left, probe, right),
            jnp.where(keep_left, left, probe),
            jnp.where(keep_left, probe_ess, right_ess),
            jnp.where(keep_left, left_ess, probe_ess),
        )

    left, right = inner_points(lower, upper)
    start = (lower, upper, left, right, batched_ess(left), batched_ess(right))
    _, _, left, right, left_ess, right_ess = jax.lax.fori_loop(0, _AUTO_PEAK_STEPS, shrink, start)
    keep_left = left_ess >= right_ess
    return jnp.where(keep_left, left, right), jnp.maximum(left_ess, right_ess)


def auto_temperature(
    candidate_losses: chex.Array,
    log_proposals: chex.Array | None = None,
    target_ess: chex.Numeric = 0.5,
    weighting: str = "importance",
    fallback: chex.Numeric = 1.0,
) -> jax.Array:
    r"""Chooses the smallest temperature α whose weights have an ESS of ``target_ess · m``.

    m is the number of usable candidates (finite loss, and finite log q for ``"importance"``):
    candidates that failed cannot carry weight, so the target counts only the others.

    The search works in :math:`\log\alpha`, over a bracket centred on the log of the spread of
    the finite losses, so the answer does not depend on the scale of the loss. It starts from the
    loss-driven end: as α grows from 0 the weights flatten away from the best candidate and the ESS
    rises from 1. For ``"tilted"`` and ``"uniform"`` it keeps rising to m, but for
    ``"importance"`` it need not: as α grows the weights tend to :math:`1/q`, which in high
    dimension puts almost all weight on one candidate whatever its loss, and the ESS can rise
    above the target only in a window of α narrower than the grid step. So α is the first
    crossing of the target from below: a grid of α from small to large, with a golden-section
    search for the largest ESS inside each of its steps, finds the first step where the ESS
    reaches the target (at its upper grid point, or at the peak inside it), and bisection between
    the step's lower grid point and that point refines it (inside one step the ESS is taken to
    rise to one peak at most). Where nothing reaches the target, α is the smallest grid point
    whose ESS is within a relative 10⁻⁴ of the largest (on a plateau of the ESS, the most
    loss-driven). When fewer than two distinct finite losses exist, α does not change the
    weights, and ``fallback`` is returned; finite losses however far apart (±3e38, whose spread
    overflows float32) still choose α. Jit-compatible: no Python branch on traced values.

    Args:
      candidate_losses: :math:`l_i`, shape ``(n,)``.
      log_proposals: :math:`\log q(\Delta_i)`, shape ``(n,)``, for ``"importance"``.
      target_ess: the ESS to aim for, as a fraction of the usable candidates, in (0, 1].
      weighting: ``"importance"`` or ``"tilted"``.
      fallback: the α to return when the losses do not depend on it (for example the previous
        step's α).

    Returns:
      α, a positive finite float32 scalar, shape ``()``.

    References:
      [2] Owen 2013, ch. 9 (effective sample size).
    """
    half_loss, half_log_q, valid = _log_weight_terms(candidate_losses, log_proposals, weighting)
    # Half the spread of the finite losses: finite however far apart they are (±3e38), where
    # the spread itself can overflow.
    half_spread = jnp.max(jnp.where(valid, half_loss, 0.0))
    informative = half_spread > 0
    half_spread = jnp.where(informative, half_spread, 1.0)
    # Search in log(α / spread), with the losses in units of their spread, so that neither tiny
    # nor huge losses underflow or overflow inside the search.
    scaled_loss = jnp.where(valid, _divide(half_loss, half_spread), 0.0)
    num_valid = jnp.sum(valid).astype(jnp.float32)
    target = jnp.asarray(target_ess, jnp.float32) * num_valid

    def ess_at(log_alpha: jax.Array) -> jax.Array:
        # Half units, as `_normalized_weights` takes them.
        weights = _normalized_weights(0.5 * scaled_loss, half_log_q, valid, jnp.exp(log_alpha))
        return effective_sample_size(weights)

    grid = jnp.linspace(-_AUTO_LOG_BRACKET, _AUTO_LOG_BRACKET, _AUTO_GRID_POINTS)
    batched_ess = jax.vmap(ess_at)
    grid_ess = batched_ess(grid)
    reached = grid_ess >= target
    # Inside each grid step, the point of largest ESS and its ESS (a golden-section search).
    peak, peak_ess = _largest_ess_between(batched_ess, grid[:-1], grid[1:])
    # The first grid step whose ESS reaches the target: at its upper grid point, or inside it.
    step_reaches = reached[1:] | (peak_ess >= target)
    first = jnp.argmax(step_reaches)  # 0 if none does.
    # A point of that step at the target: its upper grid point if that reaches it (so that
    # where the ESS rises through the grid, the bracket is the one between two grid points).
    top = jnp.where(reached[first + 1], grid[first + 1], peak[first])

    def bisect(_: int, bracket: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        # Invariant: ESS(low) < target <= ESS(high), so a crossing lies between them.
        low, high = bracket
        middle = 0.5 * (low + high)
        too_peaked = ess_at(middle) < target
        return jnp.where(too_peaked, middle, low), jnp.where(too_peaked, high, middle)

    _, log_alpha = jax.lax.fori_loop(0, _AUTO_BISECTION_STEPS, bisect, (grid[first], top))
    # Reached at the smallest α already: keep it, the most loss-driven choice of the bracket.
    log_alpha = jnp.where(reached[0], grid[0], log_alpha)
    # Short of the target, the smallest α within a relative _AUTO_ESS_TIE of the largest ESS: on
    # a plateau of the ESS (importance weights tending to 1/q), its argmax would be decided by
    # float rounding, and differ between programs that sum in another order (chunk sizes).
    near_best = grid_ess >= jnp.max(grid_ess) * (1.0 - _AUTO_ESS_TIE)
    reachable = reached[0] | jnp.any(step_reaches)
    log_alpha = jnp.where(reachable, log_alpha, grid[jnp.argmax(near_best)])
    finfo = jnp.finfo(jnp.float32)
    # An α past float32's largest (a spread above 3.4e38) is clipped to it: the weights are
    # then a little more peaked than the target asks, still ranked by the losses.
    alpha = jnp.clip(2.0 * (half_spread * jnp.exp(log_alpha)), finfo.tiny, finfo.max)
    return jnp.where(informative, alpha, jnp.asarray(fallback, jnp.float32))
