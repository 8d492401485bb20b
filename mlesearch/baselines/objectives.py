r"""Baselines for sampled sequences: policy gradient and minimum risk training.

Objectives as pure functions of arrays: `policy_gradient_loss` (REINFORCE [1] with a moving-average
baseline kept by `update_baseline`, optionally mixed with the MLE loss as in [2]) and
`minimum_risk_loss` (minimum risk training [3], with `unique_sample_mask` to drop duplicate
samples). Their gradients are the baselines' parameter updates; sampling the sequences is the
caller's job (see `mlesearch.seq.decoding`). The evolution strategies are in `es.py`; MGS itself is
in `mlesearch/transform.py`.

References:
  [1] Williams, `Simple statistical gradient-following algorithms for connectionist reinforcement
  learning <https://doi.org/10.1007/BF00992696>`_, Machine Learning, 1992.
  [2] Welleck & Cho, `MLE-guided parameter search for task loss minimization in neural sequence
  modeling <https://arxiv.org/abs/2006.03158>`_, AAAI 2021.
  [3] Shen et al., `Minimum risk training for neural machine translation
  <https://arxiv.org/abs/1512.02433>`_, ACL 2016.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from mlesearch import _checks

MLE_MIXES = ("convex", "additive")


def _check_same_shape(reference: jax.Array, other: jax.Array | None, names: str) -> None:
    if other is not None and jnp.shape(other) != jnp.shape(reference):
        raise ValueError(
            f"{names} must have the same shape, got {jnp.shape(reference)} and {jnp.shape(other)}."
        )


# ---------------------------------------------------------------------------------------------
# Policy gradient.


def _masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Mean of ``values`` over the entries where ``mask`` is true; 0 when none is."""
    if mask is None:
        return jnp.mean(values)
    mask = mask.astype(bool)
    total = jnp.sum(jnp.where(mask, values, 0))
    return total / jnp.maximum(jnp.sum(mask), 1).astype(total.dtype)


def policy_gradient_loss(
    log_probs: jax.Array,
    costs: jax.Array,
    baseline: jax.Array | float = 0.0,
    *,
    mask: jax.Array | None = None,
    mle_loss: jax.Array | None = None,
    mle_weight: float | jax.Array = 0.0,
    mix: str = "convex",
) -> jax.Array:
    r"""REINFORCE surrogate loss: its gradient estimates the gradient of the expected cost.

    For sequences :math:`y_i \sim p_\theta(\cdot | x_i)` with costs :math:`c_i` (to minimise, such
    as a task loss) and a baseline :math:`b`, the surrogate is

    .. math::
        L_{PG}(\theta) = \frac{1}{N} \sum_i \mathrm{sg}(c_i - b) \, \log p_\theta(y_i | x_i),

    where sg is `jax.lax.stop_gradient`. Its gradient
    :math:`\frac{1}{N}\sum_i (c_i - b) \nabla \log p_\theta(y_i | x_i)` is an unbiased estimate
    of :math:`\nabla_\theta \mathbb{E}_{y \sim p_\theta}[c(y)]` for any baseline that does not
    depend on the samples it multiplies [1]. Its value is not the expected cost; log that from
    ``costs``.

    With ``mle_weight`` :math:`w > 0`, the MLE loss is mixed in, as the policy-gradient baseline of
    [2] does to keep the model fluent:

    - ``mix="convex"``: :math:`L = (1 - w) L_{PG} + w L_{MLE}`, with :math:`w \in [0, 1]`;
    - ``mix="additive"``: :math:`L = L_{PG} + w L_{MLE}`, with :math:`w \ge 0`.

    Args:
      log_probs: summed log-probabilities :math:`\log p_\theta(y | x)` of the sampled sequences,
        differentiable in the parameters; shape ``(batch,)`` or ``(batch, num_samples)``.
      costs: the cost of each sample, same shape as ``log_probs``. Gradients are stopped.
      baseline: a scalar, or an array broadcastable to ``costs`` (such as a per-input baseline of
        shape ``(batch, 1)``), usually from `update_baseline`. Gradients are stopped.
      mask: optional boolean array, same shape as ``log_probs``; false entries (padding, invalid
        samples) are left out of the mean.
      mle_loss: the MLE (negative log-likelihood) loss of the reference sequences, a scalar.
        Required when ``mle_weight`` is not 0.
      mle_weight: :math:`w`, the weight of the MLE loss; may be traced.
      mix: ``"convex"`` or ``"additive"``, as above.

    Returns:
      The surrogate loss, shape ``()``. Differentiate it with `jax.grad`.

    Raises:
      ValueError: on mismatched shapes, an unknown ``mix``, a weight out of range, or a missing
        ``mle_loss``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from mlesearch import baselines
      >>> logits = jnp.zeros(3)
      >>> def loss(logits):
      ...   log_probs = jax.nn.log_softmax(logits)[jnp.array([0, 2])]  # two sampled actions
      ...   return baselines.policy_gradient_loss(log_probs, jnp.array([1.0, 0.0]), baseline=0.5)
      >>> print(jax.grad(loss)(logits))  # descent moves mass from costly action 0 to action 2
      [ 0.25  0.   -0.25]

    References:
      Williams, Simple statistical gradient-following algorithms for connectionist reinforcement
      learning, Machine Learning 8, 1992. https://doi.org/10.1007/BF00992696

      Welleck & Cho, MLE-guided parameter search for task loss minimization in neural sequence
      modeling, AAAI 2021. https://arxiv.org/abs/2006.03158
    """
    log_probs = jnp.asarray(log_probs)
    costs = jnp.asarray(costs)
    if log_probs.ndim not in (1, 2):
        raise ValueError(
            f"log_probs must have shape (batch,) or (batch, num_samples), got {log_probs.shape}."
        )
    _check_same_shape(log_probs, costs, "log_probs and costs")
    _check_same_shape(log_probs, mask, "log_probs and mask")
    if mix not in MLE_MIXES:
        raise ValueError(f"mix must be one of {MLE_MIXES}, got {mix!r}.")
    if mix == "convex":
        _checks.check_in_range(mle_weight, "mle_weight", 0.0, 1.0, open_low=False)
    else:
        _checks.check_in_range(mle_weight, "mle_weight", 0.0, math.inf, open_low=False)
    mixes_mle = (
        _checks.is_tracer(mle_weight) or _checks.concrete_float(mle_weight, "mle_weight") != 0.0
    )
    if mixes_mle and mle_loss is None:
        raise ValueError("mle_weight is not 0, so pass the MLE loss as mle_loss=...")

    advantages = jax.lax.stop_gradient(costs - jnp.asarray(baseline, costs.dtype))
    pg_loss = _masked_mean(advantages * log_probs, mask)
    if not mixes_mle:
        return pg_loss
    mle_loss = jnp.asarray(mle_loss)
    if mle_loss.shape != ():
        raise ValueError(f"mle_loss must be a scalar, got shape {mle_loss.shape}; reduce it first.")
    if mix == "convex":
        return (1.0 - mle_weight) * pg_loss + mle_weight * mle_loss
    return pg_loss + mle_weight * mle_loss


def update_baseline(
    baseline: jax.Array | float,
    costs: jax.Array,
    decay: float | jax.Array = 0.9,
    *,
    mask: jax.Array | None = None,
) -> jax.Array:
    r"""Moves the REINFORCE baseline towards the mean cost of a batch.

    .. math:: b \leftarrow \gamma\, b + (1 - \gamma)\, \overline{c}

    Starting from ``baseline=0`` biases the first steps towards zero; starting from the mean cost of
    the first batch avoids that. Call it after computing the loss, so that the baseline stays
    independent of the samples it multiplies.

    Args:
      baseline: the current baseline, shape ``()``.
      costs: the costs of the batch, any shape, such as ``(batch,)`` or ``(batch, num_samples)``.
      decay: :math:`\gamma \in [0, 1)`, the weight of the old value; may be traced.
      mask: optional boolean array, same shape as ``costs``; false entries are left out of the
        mean. If none is true, the mean is taken as 0.

    Returns:
      The new baseline, shape ``()``, with the dtype of ``costs``; gradients are stopped.

    Raises:
      ValueError: if ``decay`` is outside [0, 1) or the shapes differ.

    References:
      Williams, Simple statistical gradient-following algorithms for connectionist reinforcement
      learning, Machine Learning 8, 1992. https://doi.org/10.1007/BF00992696
    """
    costs = jax.lax.stop_gradient(jnp.asarray(costs))
    _check_same_shape(costs, mask, "costs and mask")
    number = _checks.concrete_float(decay, "decay")
    if number is not None and not 0.0 <= number < 1.0:
        raise ValueError(f"decay must be in [0, 1), got {number}.")
    baseline = jax.lax.stop_gradient(jnp.asarray(baseline, costs.dtype))
    return decay * baseline + (1.0 - decay) * _masked_mean(costs, mask)


# ---------------------------------------------------------------------------------------------
# Minimum risk training.


def minimum_risk_loss(
    log_probs: jax.Array,
    costs: jax.Array,
    alpha: float | jax.Array = 5e-3,
    *,
    mask: jax.Array | None = None,
) -> jax.Array:
    r"""Minimum risk training: the expected cost under the sharpened, renormalised model.

    For each input :math:`x` with a sample set :math:`S(x)` of candidate outputs, [1] defines

    .. math::
        Q(y | x) = \frac{p_\theta(y | x)^\alpha}{\sum_{y' \in S(x)} p_\theta(y' | x)^\alpha},
        \qquad R(\theta) = \frac{1}{B} \sum_x \sum_{y \in S(x)} Q(y | x)\, c(y),

    computed as ``softmax(alpha * log_probs)`` over the samples. Gradients flow through
    :math:`Q` into ``log_probs``, and not into the costs. Minimising R moves probability towards
    low-cost samples. [1] sums over inputs; here the mean over the batch is taken, so that the
    scale does not grow with the batch size. [1] uses α = 5e-3 and 100 samples per input, with
    duplicates removed: pass ``mask=unique_sample_mask(samples)`` to do the same.

    Args:
      log_probs: summed log-probabilities :math:`\log p_\theta(y | x)`, shape
        ``(batch, num_samples)``, differentiable in the parameters.
      costs: the cost of each sample, shape ``(batch, num_samples)``; gradients are stopped.
      alpha: :math:`\alpha > 0`, the sharpness; may be traced. Small values flatten Q.
      mask: optional boolean array, shape ``(batch, num_samples)``; false entries (duplicates,
        invalid samples) get Q = 0. Inputs with no true entry are left out of the mean, and the
        loss is 0 if no input has one.

    Returns:
      The risk, shape ``()``.

    Raises:
      ValueError: on inputs that are not ``(batch, num_samples)`` or differ in shape, or
        ``alpha`` not positive.

    Examples:
      >>> import jax.numpy as jnp
      >>> from mlesearch import baselines
      >>> log_probs = jnp.log(jnp.array([[0.5, 0.25]]))
      >>> costs = jnp.array([[1.0, 0.0]])
      >>> print(baselines.minimum_risk_loss(log_probs, costs, alpha=1.0))  # Q = (2/3, 1/3)
      0.6666667

    References:
      Shen et al., Minimum risk training for neural machine translation, ACL 2016.
      https://arxiv.org/abs/1512.02433
    """
    log_probs = jnp.asarray(log_probs)
    costs = jax.lax.stop_gradient(jnp.asarray(costs))
    if log_probs.ndim != 2:
        raise ValueError(
            f"log_probs must have shape (batch, num_samples), got {log_probs.shape}. For one "
            "input, add a leading axis: log_probs[None]."
        )
    _check_same_shape(log_probs, costs, "log_probs and costs")
    _check_same_shape(log_probs, mask, "log_probs and mask")
    _checks.check_in_range(alpha, "alpha", 0.0, math.inf, open_low=True)

    logits = alpha * log_probs
    if mask is None:
        q = jax.nn.softmax(logits, axis=-1)
        return jnp.mean(jnp.sum(q * costs, axis=-1))
    mask = mask.astype(bool)
    q = jax.nn.softmax(logits, axis=-1, where=mask)
    # where= leaves masked entries, and whole rows with no valid sample, undefined: zero them.
    risk_per_input = jnp.sum(jnp.where(mask, q * costs, 0.0), axis=-1)
    return _masked_mean(risk_per_input, jnp.any(mask, axis=-1))


def unique_sample_mask(samples: jax.Array) -> jax.Array:
    """Marks the first occurrence of each distinct sample of an input; later duplicates are false.

    Samples are compared whole, so pad them canonically (for example, with the padding that the
    decoders in `mlesearch.seq.decoding` write after EOS). The cost is ``O(num_samples² · length)``.

    Args:
      samples: integer token arrays, shape ``(batch, num_samples, length)``.

    Returns:
      A boolean mask, shape ``(batch, num_samples)``, for `minimum_risk_loss`.

    Raises:
      ValueError: if ``samples`` is not three-dimensional.

    References:
      Shen et al., Minimum risk training for neural machine translation, ACL 2016.
      https://arxiv.org/abs/1512.02433
    """
    samples = jnp.asarray(samples)
    if samples.ndim != 3:
        raise ValueError(
            f"samples must have shape (batch, num_samples, length), got {samples.shape}."
        )
    num_samples = samples.shape[1]
    same = jnp.all(samples[:, :, None, :] == samples[:, None, :, :], axis=-1)
    earlier = jnp.tril(jnp.ones((num_samples, num_samples), bool), k=-1)
    return ~jnp.any(same & earlier, axis=-1)
