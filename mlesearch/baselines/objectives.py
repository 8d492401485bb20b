r"""Baselines that MGS is compared with: policy gradient, minimum risk training, and evolution.

Two kinds live here.

- **Objectives** for sampled sequences, as pure functions of arrays: `policy_gradient_loss`
  (REINFORCE [1] with a moving-average baseline kept by `update_baseline`, optionally mixed with the
  MLE loss as in [2]) and `minimum_risk_loss` (minimum risk training [3], with `unique_sample_mask`
  to drop duplicate samples). Their gradients are the baselines' parameter updates; sampling the
  sequences is the caller's job (see `decoding.py`).
- **Evolution strategies** as optax transformations with the calling convention of `mlesearch.mgs`:
  `open_es` (OpenAI-ES [4]) and `guided_es` (Guided ES [5]), adapters around evosax [6]. They take
  the guide ``u``, evaluate the same ``task_loss_fn`` on ``num_candidates`` perturbed parameters per
  step, and return an update in the `optax.apply_updates` convention. evosax is an optional
  dependency (``pip install "mlesearch[es]"``), imported only when one of them is built.

MGS itself is in `transform.py`, its maths in `sampling.py`.

References:
  [1] Williams, `Simple statistical gradient-following algorithms for connectionist reinforcement
  learning <https://doi.org/10.1007/BF00992696>`_, Machine Learning, 1992.
  [2] Welleck & Cho, `MLE-guided parameter search for task loss minimization in neural sequence
  modeling <https://arxiv.org/abs/2006.03158>`_, AAAI 2021.
  [3] Shen et al., `Minimum risk training for neural machine translation
  <https://arxiv.org/abs/1512.02433>`_, ACL 2016.
  [4] Salimans et al., `Evolution strategies as a scalable alternative to reinforcement learning
  <https://arxiv.org/abs/1703.03864>`_, 2017.
  [5] Maheswaranathan et al., `Guided evolutionary strategies: augmenting random search with
  surrogate gradients <https://arxiv.org/abs/1806.10230>`_, ICML 2019.
  [6] Lange, `evosax: JAX-based evolution strategies <https://arxiv.org/abs/2212.04180>`_, 2022.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlesearch import _utils

MLE_MIXES = ("convex", "additive")

_EVOSAX_MISSING = (
    'The evolution-strategy baselines need evosax. Install it with: pip install "mlesearch[es]"'
)


# ---------------------------------------------------------------------------------------------
# Argument checks.


def _is_tracer(value: Any) -> bool:
    return isinstance(value, jax.core.Tracer)


def _concrete_float(value: Any, name: str) -> float | None:
    """Returns ``value`` as a float, or None when it is traced (and so cannot be checked)."""
    if _is_tracer(value):
        return None
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a real number, got {value!r}.") from error
    if array.shape != ():
        raise ValueError(f"{name} must be a scalar, got shape {array.shape}.")
    return float(array)


def _check_in_range(value: Any, name: str, low: float, high: float, *, open_low: bool) -> None:
    number = _concrete_float(value, name)
    if number is None:
        return
    above_low = number > low if open_low else number >= low
    if not (above_low and number <= high):
        interval = f"{'(' if open_low else '['}{low}, {high}]"
        raise ValueError(f"{name} must be in {interval}, got {number}.")


def _static_int(value: Any, name: str, minimum: int) -> int:
    """Reads a hyperparameter that shapes arrays, so must be known when the step is traced."""
    if _is_tracer(value):
        raise ValueError(
            f"{name} shapes arrays, so it must be a Python int, not a traced value. With "
            f"optax.inject_hyperparams, list it in static_args."
        )
    array = np.asarray(value) if isinstance(value, int | np.integer | jax.Array) else None
    if (
        isinstance(value, bool)
        or array is None
        or array.shape != ()
        or not np.issubdtype(array.dtype, np.integer)
    ):
        raise ValueError(f"{name} must be an int, got {value!r}.")
    if int(array) < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {int(array)}.")
    return int(array)


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
        _check_in_range(mle_weight, "mle_weight", 0.0, 1.0, open_low=False)
    else:
        _check_in_range(mle_weight, "mle_weight", 0.0, math.inf, open_low=False)
    mixes_mle = _is_tracer(mle_weight) or _concrete_float(mle_weight, "mle_weight") != 0.0
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
    number = _concrete_float(decay, "decay")
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
    _check_in_range(alpha, "alpha", 0.0, math.inf, open_low=True)

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
    decoders in `decoding.py` write after EOS). The cost is ``O(num_samples² · length)``.

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


# ---------------------------------------------------------------------------------------------
# Evolution strategies.


class ESState(NamedTuple):
    """State of :func:`open_es` and :func:`guided_es`."""

    key: jax.Array  # () typed PRNG key, split every step.
    count: jax.Array  # () int32: number of steps taken.
    candidate_losses: jax.Array  # (num_candidates,) float32: losses of the last population.
    es_state: Any  # evosax's state; its mean is the flat (d,) vector of the last params.


def _require_evosax() -> None:
    try:
        import evosax.algorithms  # noqa: F401
    except ImportError as error:
        raise ImportError(_EVOSAX_MISSING) from error


def _abstract_params(params: Any) -> tuple[Any, tuple[tuple[tuple[int, ...], Any], ...]]:
    leaves, treedef = jax.tree.flatten(params)
    return treedef, tuple((tuple(jnp.shape(x)), jnp.result_type(x)) for x in leaves)


@functools.lru_cache(maxsize=64)
def _build_algorithm(
    name: str,
    num_candidates: int,
    options: tuple[tuple[str, Any], ...],
    treedef: Any,
    leaf_specs: tuple[tuple[tuple[int, ...], Any], ...],
) -> Any:
    """Builds (once per configuration and parameter layout) an evosax algorithm for the params.

    evosax jits ``ask``/``tell`` with the algorithm as a static argument, so reusing one object
    per layout avoids recompiling them on every eager step.
    """
    import evosax.algorithms

    # evosax computes arrays in __init__; evaluate them now, even when first built under jit, so
    # that no tracer is kept in the cached object.
    with jax.ensure_compile_time_eval():
        # Zero-stride views: the template costs no memory, whatever the size of the model.
        template = jax.tree.unflatten(
            treedef,
            [np.broadcast_to(np.zeros((), dtype), shape) for shape, dtype in leaf_specs],
        )
        # The ES's own step is plain SGD with rate 1; the adapters scale it by their learning
        # rate, which may then be traced.
        common = dict(solution=template, optimizer=optax.sgd(1.0))
        config = dict(options)
        if name == "open_es":
            from evosax.core.fitness_shaping import (
                centered_rank_fitness_shaping_fn,
                identity_fitness_shaping_fn,
            )

            shaping = (
                centered_rank_fitness_shaping_fn
                if config["centered_rank"]
                else identity_fitness_shaping_fn
            )
            return evosax.algorithms.Open_ES(
                num_candidates,
                use_antithetic_sampling=config["antithetic"],
                fitness_shaping_fn=shaping,
                **common,
            )
        return evosax.algorithms.GuidedES(
            num_candidates, subspace_dims=config["subspace_dims"], **common
        )


def _strongly_typed(tree: Any) -> Any:
    """Makes every leaf a strongly typed array, so that the state's types do not change (and
    retrace a jitted step) between init and the first update."""
    return jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.asarray(x).dtype), tree)


def _es_transformation(
    name: str,
    num_candidates: int,
    sigma: float | jax.Array,
    learning_rate: float | jax.Array,
    options: tuple[tuple[str, Any], ...],
    key: jax.Array | int,
    make_es_params: Callable[[Any], Any],
    uses_guide: bool,
) -> optax.GradientTransformationExtraArgs:
    """The optax plumbing shared by the evosax adapters."""
    canonical_key = _utils.canonicalize_key(key)

    def get_algorithm(params: Any) -> Any:
        treedef, leaf_specs = _abstract_params(params)
        num_dims = sum(math.prod(shape) for shape, _ in leaf_specs)
        subspace_dims = dict(options).get("subspace_dims", 1)
        if subspace_dims > num_dims:
            raise ValueError(
                f"subspace_dims={subspace_dims} exceeds the number of parameters, {num_dims}; "
                "lower it."
            )
        return _build_algorithm(name, num_candidates, options, treedef, leaf_specs)

    def init_fn(params: optax.Params) -> ESState:
        algorithm = get_algorithm(params)
        state_key, init_key = jax.random.split(canonical_key)
        es_state = algorithm.init(init_key, params, make_es_params(algorithm))
        return ESState(
            key=state_key,
            count=jnp.zeros((), jnp.int32),
            candidate_losses=jnp.zeros((num_candidates,), jnp.float32),
            es_state=_strongly_typed(es_state),
        )

    def update_fn(
        updates: optax.Updates,
        state: ESState,
        params: optax.Params | None = None,
        *,
        task_loss_fn: Callable[..., jax.Array] | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, ESState]:
        if params is None:
            raise ValueError(
                f"{name} needs the current parameters: call tx.update(updates, state, params, "
                "task_loss_fn=...)."
            )
        if task_loss_fn is None:
            raise ValueError(
                f"{name} needs a task loss: call tx.update(updates, state, params, "
                "task_loss_fn=f), where f(params, **kwargs) returns a scalar."
            )
        if jax.tree.structure(updates) != jax.tree.structure(params):
            raise ValueError(
                f"The updates passed to {name} must have the tree structure of params. Place it "
                "in an optax.chain after transformations that keep the structure of params."
            )
        algorithm = get_algorithm(params)
        es_params = make_es_params(algorithm)
        loss_kwargs = _utils.route_kwargs(task_loss_fn, extra_args)
        next_key, ask_key, tell_key = jax.random.split(state.key, 3)

        es_state = state.es_state
        # Re-centre the search distribution on the current params: other transformations in the
        # chain, or rounding in apply_updates, may have moved them away from the ES's mean.
        flat_params = algorithm._ravel_solution(params)
        es_state = es_state.replace(
            mean=flat_params.astype(es_state.mean.dtype),
            std=jnp.asarray(sigma, dtype=es_state.std.dtype),
        )
        if uses_guide:
            flat_guide = algorithm._ravel_solution(updates)
            es_state = es_state.replace(grad=flat_guide.astype(es_state.grad.dtype))
        population, es_state = algorithm.ask(ask_key, es_state, es_params)
        # evosax adds float32 noise; give the task loss candidates in the dtypes of params.
        population = jax.tree.map(lambda c, p: c.astype(jnp.result_type(p)), population, params)
        candidate_losses = jax.vmap(lambda p: task_loss_fn(p, **loss_kwargs))(population)
        candidate_losses = jnp.asarray(candidate_losses, jnp.float32)
        if candidate_losses.shape != (num_candidates,):
            raise ValueError(
                "task_loss_fn must return a scalar (shape ()); reduce over the batch, for "
                f"example with jnp.mean. Got {candidate_losses.shape[1:]}."
            )
        es_state, _ = algorithm.tell(tell_key, population, candidate_losses, es_state, es_params)
        step = optax.tree.sub(algorithm.get_mean(es_state), params)
        new_updates = optax.tree.cast_like(optax.tree.scale(learning_rate, step), updates)
        new_state = ESState(
            key=next_key,
            count=optax.safe_increment(state.count),
            candidate_losses=candidate_losses,
            es_state=_strongly_typed(es_state),
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_es_arguments(num_candidates: Any, sigma: Any, learning_rate: Any) -> int:
    num_candidates = _static_int(num_candidates, "num_candidates", 2)
    if num_candidates % 2:
        raise ValueError(
            "evosax's OpenES and GuidedES draw antithetic pairs, so num_candidates must be even, "
            f"got {num_candidates}."
        )
    _check_in_range(sigma, "sigma", 0.0, math.inf, open_low=True)
    number = _concrete_float(learning_rate, "learning_rate")
    if number is not None and not math.isfinite(number):
        raise ValueError(f"learning_rate must be finite, got {number}.")
    return num_candidates


def open_es(
    num_candidates: int = 4,
    sigma: float | jax.Array = 0.1,
    learning_rate: float | jax.Array = 1.0,
    *,
    antithetic: bool = True,
    centered_rank: bool = True,
    key: jax.Array | int = 0,
) -> optax.GradientTransformationExtraArgs:
    r"""OpenAI evolution strategy (evosax's ``Open_ES``), with the calling convention of ``mgs``.

    Each step, centred on the current params :math:`\theta`, it draws
    :math:`\epsilon_i \sim \mathcal{N}(0, I)` (in antithetic pairs), evaluates
    :math:`l_i = l(\theta + \sigma\epsilon_i)` with one `jax.vmap` of ``task_loss_fn``, shapes
    them into centred ranks :math:`r_i \in [-\frac12, \frac12]`, and returns

    .. math::
        \mathrm{update} = -\eta\, \hat g, \qquad
        \hat g = \frac{1}{n \sigma} \sum_{i=1}^{n} r_i \epsilon_i .

    The guide ``u`` is not used, except for its tree structure and dtypes, which the update
    takes; OpenES is the unguided baseline. ``learning_rate=1`` returns the raw step
    :math:`-\hat g`, for a later optimiser in the chain to scale (as ``mgs``'s reference
    configuration hands its output to AdamW). To use the ES on its own, set a step size.

    The number of task-loss evaluations per step is ``num_candidates``, as in ``mgs``. Losses
    that are NaN rank last; with ``centered_rank=False`` a non-finite loss makes the update
    non-finite.

    Args:
      num_candidates: n, the population size; an even Python int (evosax draws pairs).
      sigma: σ > 0, the perturbation scale, the same for every parameter; may be traced.
      learning_rate: η, the step size of the ES's SGD step; may be traced.
      antithetic: draw pairs :math:`(\epsilon, -\epsilon)`.
      centered_rank: shape losses into centred ranks (the paper's choice); if false, use the raw
        losses.
      key: an int seed, a typed key (`jax.random.key`) or a raw key (`jax.random.PRNGKey`).

    Returns:
      An `optax.GradientTransformationExtraArgs`. Call
      ``tx.update(u, state, params, task_loss_fn=f, **extra_args)``, where
      ``f(params, **kwargs)`` returns a scalar and the extra arguments that its signature names
      are passed on. The state is an `ESState`; ``state.candidate_losses`` has shape ``(n,)``.

    Raises:
      ValueError: if ``num_candidates`` is odd or below 2, or ``sigma`` is not positive.
      ImportError: if evosax is not installed.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> from mlesearch import baselines
      >>> loss = lambda p: jnp.sum(p["w"] ** 2)
      >>> params = {"w": jnp.array([1.0, -1.0])}
      >>> tx = baselines.open_es(num_candidates=8, sigma=0.1, learning_rate=0.05, key=0)
      >>> state = tx.init(params)
      >>> for _ in range(20):
      ...   u = {"w": jnp.zeros(2)}
      ...   updates, state = tx.update(u, state, params, task_loss_fn=loss)
      ...   params = optax.apply_updates(params, updates)
      >>> print(bool(loss(params) < 0.5))
      True

    References:
      Salimans et al., Evolution strategies as a scalable alternative to reinforcement learning,
      2017. https://arxiv.org/abs/1703.03864

      Lange, evosax: JAX-based evolution strategies, 2022. https://arxiv.org/abs/2212.04180
    """
    _require_evosax()
    num_candidates = _check_es_arguments(num_candidates, sigma, learning_rate)
    options = (("antithetic", bool(antithetic)), ("centered_rank", bool(centered_rank)))
    return _es_transformation(
        "open_es",
        num_candidates,
        sigma,
        learning_rate,
        options,
        key,
        make_es_params=lambda algorithm: algorithm.default_params,
        uses_guide=False,
    )


def guided_es(
    num_candidates: int = 4,
    sigma: float | jax.Array = 0.1,
    learning_rate: float | jax.Array = 1.0,
    *,
    alpha: float | jax.Array = 0.5,
    beta: float | jax.Array = 1.0,
    subspace_dims: int = 1,
    key: jax.Array | int = 0,
) -> optax.GradientTransformationExtraArgs:
    r"""Guided evolution strategy (evosax's ``GuidedES``), guided by ``u``, as ``mgs`` is.

    The guide ``u`` (the update from the surrogate, such as the negative MLE gradient times a
    learning rate) is the surrogate gradient of [1]: the last ``subspace_dims`` guides span a
    subspace :math:`U` (orthonormalised; sign and scale of ``u`` do not matter), and perturbations
    are drawn, in antithetic pairs, from

    .. math::
        \epsilon \sim \mathcal{N}\Big(0, \sigma^2 \big(\tfrac{\alpha}{d} I
            + \tfrac{1 - \alpha}{k} U U^\top\big)\Big).

    With :math:`P = n/2` pairs and losses evaluated by one `jax.vmap` of ``task_loss_fn``, the
    update is

    .. math::
        \mathrm{update} = -\eta\, \hat g, \qquad
        \hat g = \frac{\beta}{2 \sigma^2 P} \sum_{i=1}^{P} \epsilon_i
            \big(l(\theta + \epsilon_i) - l(\theta - \epsilon_i)\big),

    the estimator of [1, Algorithm 1]. (evosax 0.3 leaves out the :math:`1/P`; this adapter
    passes :math:`\beta / P` to it to restore it.) The number of task-loss evaluations per step
    is ``num_candidates``, as in ``mgs``. A non-finite loss makes the update non-finite.
    Before ``subspace_dims`` steps have been taken, the missing guides are zero.

    Args:
      num_candidates: n, the population size; an even Python int (evosax draws pairs).
      sigma: σ > 0, the overall perturbation scale; may be traced.
      learning_rate: η, the step size of the ES's SGD step; may be traced. 1 returns
        :math:`-\hat g` for a later optimiser in the chain to scale.
      alpha: α in [0, 1], the share of the variance in the full space; 1 is plain ES, 0 searches
        the guide subspace only. May be traced.
      beta: β, the scale of the gradient estimate; may be traced.
      subspace_dims: k, the number of past guides that span the subspace; a Python int, at most
        the number of parameters.
      key: an int seed, a typed key (`jax.random.key`) or a raw key (`jax.random.PRNGKey`).

    Returns:
      An `optax.GradientTransformationExtraArgs`. Call
      ``tx.update(u, state, params, task_loss_fn=f, **extra_args)``, where
      ``f(params, **kwargs)`` returns a scalar and the extra arguments that its signature names
      are passed on. The update has the structure and dtypes of ``u``. The state is an
      `ESState`; ``state.candidate_losses`` has shape ``(n,)``.

    Raises:
      ValueError: if ``num_candidates`` is odd or below 2, ``sigma`` is not positive, ``alpha``
        is outside [0, 1], or ``subspace_dims`` is below 1 (or, at init, above the number of
        parameters).
      ImportError: if evosax is not installed.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> from mlesearch import baselines
      >>> loss = lambda p: jnp.sum(p["w"] ** 2)
      >>> params = {"w": jnp.array([1.0, -1.0, 0.5])}
      >>> tx = optax.chain(optax.scale(-1.0), baselines.guided_es(4, sigma=0.1, learning_rate=0.1))
      >>> state = tx.init(params)
      >>> for _ in range(20):
      ...   grad = jax.grad(loss)(params)  # the surrogate gradient
      ...   updates, state = tx.update(grad, state, params, task_loss_fn=loss)
      ...   params = optax.apply_updates(params, updates)
      >>> print(bool(loss(params) < 0.1))
      True

    References:
      Maheswaranathan et al., Guided evolutionary strategies: augmenting random search with
      surrogate gradients, ICML 2019. https://arxiv.org/abs/1806.10230

      Lange, evosax: JAX-based evolution strategies, 2022. https://arxiv.org/abs/2212.04180
    """
    _require_evosax()
    num_candidates = _check_es_arguments(num_candidates, sigma, learning_rate)
    _check_in_range(alpha, "alpha", 0.0, 1.0, open_low=False)
    _concrete_float(beta, "beta")
    subspace_dims = _static_int(subspace_dims, "subspace_dims", 1)
    num_pairs = num_candidates // 2

    def make_es_params(algorithm: Any) -> Any:
        return algorithm.default_params.replace(alpha=alpha, beta=beta / num_pairs)

    return _es_transformation(
        "guided_es",
        num_candidates,
        sigma,
        learning_rate,
        (("subspace_dims", subspace_dims),),
        key,
        make_es_params=make_es_params,
        uses_guide=True,
    )
