r"""Baselines for sampled sequences: policy gradient, group-relative policy gradient, minimum risk.

Objectives as pure functions of arrays: `policy_gradient_loss` (REINFORCE [1] with a moving-average
baseline kept by `update_baseline`, optionally mixed with the MLE loss as in [2]),
`minimum_risk_loss` (minimum risk training [3], with `unique_sample_mask` to drop duplicate
samples) and `grpo_loss` (the clipped group-relative objective of GRPO [4], or RLOO's
leave-one-out baseline [5], with advantages from `group_advantages`). Their gradients are the
baselines' parameter updates; sampling the sequences is the caller's job (see
`mlesearch.seq.decoding`). The evolution strategies are in `es.py`; MGS itself is in
`mlesearch/transform.py`.

References:
  [1] Williams, `Simple statistical gradient-following algorithms for connectionist reinforcement
  learning <https://doi.org/10.1007/BF00992696>`_, Machine Learning, 1992.
  [2] Welleck & Cho, `MLE-guided parameter search for task loss minimization in neural sequence
  modeling <https://arxiv.org/abs/2006.03158>`_, AAAI 2021.
  [3] Shen et al., `Minimum risk training for neural machine translation
  <https://arxiv.org/abs/1512.02433>`_, ACL 2016.
  [4] Shao et al., `DeepSeekMath: Pushing the limits of mathematical reasoning in open language
  models <https://arxiv.org/abs/2402.03300>`_, 2024.
  [5] Ahmadian et al., `Back to basics: revisiting REINFORCE style optimization for learning from
  human feedback in LLMs <https://arxiv.org/abs/2402.14740>`_, ACL 2024.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from mlesearch import _checks

#: The values of ``mix``, how :func:`policy_gradient_loss` and :func:`grpo_loss` add the MLE
#: loss with weight ``mle_weight`` w to their loss L: ``"convex"``, (1 - w)·L + w·L_MLE, or
#: ``"additive"``, L + w·L_MLE.
MLE_MIXES = ("convex", "additive")
#: The values of ``kind`` in :func:`group_advantages`: ``"grpo"`` (cost less the group's mean,
#: over its population standard deviation) or ``"rloo"`` (cost less the mean of the others).
ADVANTAGE_KINDS = ("grpo", "rloo")


def _check_same_shape(reference: jax.Array, other: jax.Array | None, names: str) -> None:
    if other is not None and jnp.shape(other) != jnp.shape(reference):
        raise ValueError(
            f"{names} must have the same shape, got {jnp.shape(reference)} and {jnp.shape(other)}."
        )


def _weight_is_used(weight: float | jax.Array, name: str) -> bool:
    """Whether a term with this weight enters the loss; a traced weight always does."""
    return _checks.is_tracer(weight) or _checks.concrete_float(weight, name) != 0.0


def _check_mle_mix(
    mle_loss: jax.Array | None, mle_weight: float | jax.Array, mix: str
) -> jax.Array | None:
    """Checks the MLE mix arguments; returns the scalar MLE loss, or None when it is not mixed."""
    if mix not in MLE_MIXES:
        raise ValueError(f"mix must be one of {MLE_MIXES}, got {mix!r}.")
    if mix == "convex":
        _checks.check_in_range(mle_weight, "mle_weight", 0.0, 1.0, open_low=False)
    else:
        _checks.check_in_range(mle_weight, "mle_weight", 0.0, math.inf, open_low=False)
    if not _weight_is_used(mle_weight, "mle_weight"):
        return None
    if mle_loss is None:
        raise ValueError("mle_weight is not 0, so pass the MLE loss as mle_loss=...")
    mle_loss = jnp.asarray(mle_loss)
    if mle_loss.shape != ():
        raise ValueError(f"mle_loss must be a scalar, got shape {mle_loss.shape}; reduce it first.")
    return mle_loss


def _mix_mle(
    loss: jax.Array, mle_loss: jax.Array, mle_weight: float | jax.Array, mix: str
) -> jax.Array:
    if mix == "convex":
        return (1.0 - mle_weight) * loss + mle_weight * mle_loss
    return loss + mle_weight * mle_loss


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
    mle_loss = _check_mle_mix(mle_loss, mle_weight, mix)

    advantages = jax.lax.stop_gradient(costs - jnp.asarray(baseline, costs.dtype))
    pg_loss = _masked_mean(advantages * log_probs, mask)
    if mle_loss is None:
        return pg_loss
    return _mix_mle(pg_loss, mle_loss, mle_weight, mix)


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
# Group-relative policy gradient (GRPO, RLOO).


def _check_groups(array: jax.Array, name: str) -> None:
    if array.ndim != 2 or array.shape[1] < 2:
        raise ValueError(
            f"{name} must have shape (batch, k), k samples of each input with k >= 2, got "
            f"{array.shape}. The advantages are relative to the other samples of the same input, "
            "so a group of 1 gives no signal: draw several samples per input (for one input, add "
            "a leading axis: x[None])."
        )


def group_advantages(
    costs: jax.Array,
    *,
    mask: jax.Array | None = None,
    kind: str = "grpo",
    eps: float | jax.Array = 1e-6,
) -> jax.Array:
    r"""Advantages of each sample relative to the other samples of its input, in cost convention.

    For an input with :math:`n` valid samples of costs :math:`c_1, \dots, c_n`, mean
    :math:`\bar c` and population standard deviation
    :math:`s = \sqrt{\frac{1}{n} \sum_j (c_j - \bar c)^2}`:

    - ``kind="grpo"`` (the outcome supervision of [1]):
      :math:`A_i = (c_i - \bar c) / (s + \epsilon)`. The valid advantages of a group have mean 0
      and population standard deviation 1 (up to :math:`\epsilon`). Implementations that divide
      by the sample standard deviation (with :math:`n - 1`) give advantages smaller by
      :math:`\sqrt{(n - 1) / n}`.
    - ``kind="rloo"`` (the leave-one-out baseline of [2]):
      :math:`A_i = c_i - \frac{1}{n - 1} \sum_{j \ne i} c_j = \frac{n}{n - 1} (c_i - \bar c)`,
      not normalised.

    Costs are minimised, so a negative advantage marks a sample better than its group; the reward
    convention of [1] and [2] is :math:`A^{\mathrm{reward}} = -A`. A group with fewer than 2 valid
    samples has no other sample to compare with, and gets advantage 0, as does a group whose costs
    are all equal.

    Args:
      costs: the cost of each sample, shape ``(batch, k)`` with ``k >= 2``; gradients are stopped.
      mask: optional boolean array, shape ``(batch, k)``; false entries (invalid samples, padding)
        are left out of the group statistics and get advantage 0. Their costs may be anything,
        even NaN.
      kind: ``"grpo"`` or ``"rloo"``, as above.
      eps: :math:`\epsilon > 0`, added to the standard deviation (``"grpo"`` only); may be traced.

    Returns:
      The advantages, shape ``(batch, k)``, floating point; gradients are stopped.

    Raises:
      ValueError: if ``costs`` is not ``(batch, k)`` with ``k >= 2``, ``mask`` has another shape,
        ``kind`` is unknown or ``eps`` is not positive.

    Examples:
      >>> import jax.numpy as jnp
      >>> from mlesearch import baselines
      >>> costs = jnp.array([[0.0, 3.0, 6.0]])
      >>> print(baselines.group_advantages(costs).round(4))  # s = √6
      [[-1.2247  0.      1.2247]]
      >>> print(baselines.group_advantages(costs, kind="rloo"))  # 0 - 4.5, 3 - 3, 6 - 1.5
      [[-4.5  0.   4.5]]

    References:
      Shao et al., DeepSeekMath: Pushing the limits of mathematical reasoning in open language
      models, 2024. https://arxiv.org/abs/2402.03300

      Ahmadian et al., Back to basics: revisiting REINFORCE style optimization for learning from
      human feedback in LLMs, ACL 2024. https://arxiv.org/abs/2402.14740
    """
    costs = jnp.asarray(costs)
    _check_groups(costs, "costs")
    _check_same_shape(costs, mask, "costs and mask")
    if kind not in ADVANTAGE_KINDS:
        raise ValueError(f"kind must be one of {ADVANTAGE_KINDS}, got {kind!r}.")
    _checks.check_positive(eps, "eps", "It keeps the advantages of a group of equal costs finite.")
    if not jnp.issubdtype(costs.dtype, jnp.floating):
        costs = costs.astype(jnp.result_type(float))
    costs = jax.lax.stop_gradient(costs)

    valid = jnp.ones(costs.shape, bool) if mask is None else jnp.asarray(mask).astype(bool)
    # Masked costs may be inf or NaN (a failed sample): keep them out of the sums.
    costs = jnp.where(valid, costs, 0.0)
    count = jnp.sum(valid, axis=-1, keepdims=True)
    safe_count = jnp.maximum(count, 1).astype(costs.dtype)
    mean = jnp.sum(costs, axis=-1, keepdims=True) / safe_count
    # Zero where masked, and exactly zero for a group of 1 (its mean is its cost): no signal.
    centred = jnp.where(valid, costs - mean, 0.0)
    if kind == "rloo":
        # c_i - (S - c_i) / (n - 1), from the centred costs to avoid the cancellation in S - c_i.
        return centred * safe_count / jnp.maximum(count - 1, 1).astype(costs.dtype)
    std = jnp.sqrt(jnp.sum(centred**2, axis=-1, keepdims=True) / safe_count)
    return centred / (std + eps)


def grpo_loss(
    log_probs: jax.Array,
    costs: jax.Array,
    *,
    old_log_probs: jax.Array | None = None,
    mask: jax.Array | None = None,
    clip_epsilon: float | jax.Array = 0.2,
    advantage: str = "grpo",
    eps: float | jax.Array = 1e-6,
    reference_log_probs: jax.Array | None = None,
    kl_weight: float | jax.Array = 0.0,
    mle_loss: jax.Array | None = None,
    mle_weight: float | jax.Array = 0.0,
    mix: str = "convex",
) -> jax.Array:
    r"""Group-relative policy gradient (GRPO) loss, written for costs; RLOO as an option.

    Each input :math:`x` has :math:`k` samples :math:`y_i` drawn from the model
    :math:`\pi_{\mathrm{old}}` that generated them, with costs :math:`c_i` (to minimise) and
    advantages :math:`A_i` from `group_advantages` (cost convention). With the sequence ratio
    :math:`r_i = \pi_\theta(y_i | x) / \pi_{\mathrm{old}}(y_i | x)`, the loss is

    .. math::
        L(\theta) = \frac{1}{N} \sum_i \Big[ \max\big(r_i A_i,\;
        \mathrm{clip}(r_i, 1 - \varepsilon, 1 + \varepsilon) A_i\big) + \beta D_i \Big],
        \qquad D_i = \frac{\pi_{\mathrm{ref}}(y_i | x)}{\pi_\theta(y_i | x)}
        - \log \frac{\pi_{\mathrm{ref}}(y_i | x)}{\pi_\theta(y_i | x)} - 1,

    the mean over the :math:`N` valid samples of the batch. [1] maximises
    :math:`\min(r_i \hat A_i, \mathrm{clip}(r_i) \hat A_i) - \beta D_i` with reward advantages
    :math:`\hat A_i = -A_i`; since :math:`-\min(a, b) = \max(-a, -b)`, L is minus that objective.
    The clip stops the gradient once the ratio has left :math:`[1 - \varepsilon, 1 + \varepsilon]`
    in the direction that lowers the loss (:math:`r_i > 1 + \varepsilon` for a better-than-group
    sample, :math:`A_i < 0`; :math:`r_i < 1 - \varepsilon` for a worse one), and not in the other.

    With ``old_log_probs=None`` the samples are taken as drawn from the current parameters
    (:math:`\pi_{\mathrm{old}} = \mathrm{sg}(\pi_\theta)`), so :math:`r_i = 1` and the gradient is
    :math:`\frac{1}{N} \sum_i A_i \nabla \log \pi_\theta(y_i | x)`; with ``advantage="rloo"`` that
    is the RLOO estimator of [2]. Pass the log-probabilities of the sampling model to take several
    steps on one batch of samples, as [1] does.

    [1] averages over the tokens of each sequence, with a ratio and a clip per token; here only
    sequence log-probabilities are given, so the ratio is that of whole sequences (the product of
    the token ratios, which leaves the clip range sooner on long sequences) and the mean is over
    valid samples. Groups with fewer than 2 valid samples, or with equal costs, have
    :math:`A_i = 0`: they give no policy-gradient signal but still count in :math:`N` (and in the
    KL term).

    :math:`D_i` is the k3 estimator of [1] at the sequence level, used when
    ``reference_log_probs`` is given and ``kl_weight`` :math:`\beta > 0`: it is non-negative, zero
    where the two models agree, and its mean over samples from :math:`\pi_\theta` estimates
    :math:`\mathrm{KL}(\pi_\theta \| \pi_{\mathrm{ref}})`. It exponentiates a difference of
    sequence log-probabilities, so it overflows when the reference gives a sample far more
    probability than the model does.

    With ``mle_weight`` :math:`w > 0`, the MLE loss is mixed in as in `policy_gradient_loss`:
    :math:`(1 - w) L + w L_{MLE}` for ``mix="convex"``, :math:`L + w L_{MLE}` for
    ``mix="additive"``.

    Args:
      log_probs: summed log-probabilities :math:`\log \pi_\theta(y | x)` of the sampled sequences,
        shape ``(batch, k)`` with ``k >= 2`` samples per input, differentiable in the parameters.
      costs: the cost of each sample, shape ``(batch, k)``; gradients are stopped.
      old_log_probs: :math:`\log \pi_{\mathrm{old}}(y | x)` under the model that drew the samples,
        shape ``(batch, k)``; gradients are stopped. Defaults to ``stop_gradient(log_probs)``.
      mask: optional boolean array, shape ``(batch, k)``; false entries are left out of the group
        statistics and the mean, and get no gradient, whatever their values (even inf or NaN).
      clip_epsilon: :math:`\varepsilon > 0`, the half-width of the clip range; may be traced.
      advantage: ``"grpo"`` or ``"rloo"``, the ``kind`` of `group_advantages`.
      eps: passed to `group_advantages`; may be traced.
      reference_log_probs: :math:`\log \pi_{\mathrm{ref}}(y | x)` under the reference model, shape
        ``(batch, k)``; gradients are stopped. Required when ``kl_weight`` is not 0.
      kl_weight: :math:`\beta \ge 0`, the weight of the KL penalty; may be traced.
      mle_loss: the MLE (negative log-likelihood) loss of the reference sequences, a scalar.
        Required when ``mle_weight`` is not 0.
      mle_weight: :math:`w`, the weight of the MLE loss; may be traced.
      mix: ``"convex"`` (:math:`w \in [0, 1]`) or ``"additive"`` (:math:`w \ge 0`), as above.

    Returns:
      The loss, shape ``()``. Differentiate it with `jax.grad`. Its value is not the expected cost;
      log that from ``costs``.

    Raises:
      ValueError: if ``log_probs`` is not ``(batch, k)`` with ``k >= 2``, another array has a
        different shape, ``clip_epsilon`` or ``eps`` is not positive, ``advantage`` or ``mix`` is
        unknown, a weight is out of range, or ``reference_log_probs`` or ``mle_loss`` is missing
        for a weight that is not 0.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from mlesearch import baselines
      >>> logits = jnp.zeros(3)
      >>> def loss(logits):
      ...   log_probs = jax.nn.log_softmax(logits)[jnp.array([[0, 2]])]  # one input, two samples
      ...   return baselines.grpo_loss(log_probs, jnp.array([[1.0, 0.0]]))  # A = (1, -1)
      >>> print(jax.grad(loss)(logits).round(4))  # descent moves mass from costly action 0 to 2
      [ 0.5  0.  -0.5]

    References:
      Shao et al., DeepSeekMath: Pushing the limits of mathematical reasoning in open language
      models, 2024. https://arxiv.org/abs/2402.03300

      Ahmadian et al., Back to basics: revisiting REINFORCE style optimization for learning from
      human feedback in LLMs, ACL 2024. https://arxiv.org/abs/2402.14740
    """
    log_probs = jnp.asarray(log_probs)
    _check_groups(log_probs, "log_probs")
    _check_same_shape(log_probs, costs, "log_probs and costs")
    _check_same_shape(log_probs, mask, "log_probs and mask")
    _check_same_shape(log_probs, old_log_probs, "log_probs and old_log_probs")
    _check_same_shape(log_probs, reference_log_probs, "log_probs and reference_log_probs")
    _checks.check_positive(clip_epsilon, "clip_epsilon")
    if advantage not in ADVANTAGE_KINDS:
        raise ValueError(f"advantage must be one of {ADVANTAGE_KINDS}, got {advantage!r}.")
    _checks.check_in_range(kl_weight, "kl_weight", 0.0, math.inf, open_low=False)
    uses_kl = _weight_is_used(kl_weight, "kl_weight")
    if uses_kl and reference_log_probs is None:
        raise ValueError(
            "kl_weight is not 0, so pass the reference model's log-probabilities of the samples "
            "as reference_log_probs=..."
        )
    mle_loss = _check_mle_mix(mle_loss, mle_weight, mix)

    advantages = group_advantages(costs, mask=mask, kind=advantage, eps=eps)
    valid = jnp.ones(log_probs.shape, bool) if mask is None else jnp.asarray(mask).astype(bool)

    # Zeroing masked entries before any arithmetic keeps inf or NaN there out of the gradient too.
    def valid_only(values: jax.Array) -> jax.Array:
        return jnp.where(valid, values, 0.0)

    log_probs = valid_only(log_probs)
    if old_log_probs is None:
        old_log_probs = log_probs
    old_log_probs = valid_only(jax.lax.stop_gradient(jnp.asarray(old_log_probs)))
    ratio = jnp.exp(log_probs - old_log_probs)
    clipped_ratio = jnp.clip(ratio, 1.0 - clip_epsilon, 1.0 + clip_epsilon)
    # The pessimistic (larger) of the two losses: minus the min of PPO's reward objectives.
    per_sample = jnp.maximum(ratio * advantages, clipped_ratio * advantages)
    if uses_kl:
        reference_log_probs = valid_only(jax.lax.stop_gradient(jnp.asarray(reference_log_probs)))
        log_ratio = reference_log_probs - log_probs
        per_sample = per_sample + kl_weight * (jnp.exp(log_ratio) - log_ratio - 1.0)
    loss = _masked_mean(per_sample, None if mask is None else valid)
    if mle_loss is None:
        return loss
    return _mix_mle(loss, mle_loss, mle_weight, mix)


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
