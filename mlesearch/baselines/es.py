r"""Evolution strategies as optax transformations with the calling convention of `mlesearch.mgs`.

`open_es` (OpenAI-ES [1]) and `guided_es` (Guided ES [2]) are adapters around evosax [3]. They take
the guide ``u``, evaluate the same ``task_loss_fn`` on ``num_candidates`` perturbed parameters per
step, and return an update in the `optax.apply_updates` convention. evosax is an optional
dependency (``pip install "mlesearch[es]"``), imported only when one of them is built. The argument
checks are those of `mgs` (`mlesearch/_checks.py`).

References:
  [1] Salimans et al., `Evolution strategies as a scalable alternative to reinforcement learning
  <https://arxiv.org/abs/1703.03864>`_, 2017.
  [2] Maheswaranathan et al., `Guided evolutionary strategies: augmenting random search with
  surrogate gradients <https://arxiv.org/abs/1806.10230>`_, ICML 2019.
  [3] Lange, `evosax: JAX-based evolution strategies <https://arxiv.org/abs/2212.04180>`_, 2022.
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
from jax.flatten_util import ravel_pytree

from mlesearch import _checks, _utils

_EVOSAX_MISSING = (
    'The evolution-strategy baselines need evosax. Install it with: pip install "mlesearch[es]"'
)


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
        _checks.check_update_arguments(params, task_loss_fn, name)
        _checks.check_params(params, name)
        _checks.check_guide_matches_params(updates, params, name)
        loss_kwargs = _utils.route_kwargs(task_loss_fn, extra_args)

        def loss_fn(candidate_params: Any) -> jax.Array:
            return task_loss_fn(candidate_params, **loss_kwargs)

        _checks.check_task_loss(loss_fn, params)
        algorithm = get_algorithm(params)
        es_params = make_es_params(algorithm)
        next_key, ask_key, tell_key = jax.random.split(state.key, 3)

        es_state = state.es_state
        # Re-centre the search distribution on the current params: other transformations in the
        # chain, or rounding in apply_updates, may have moved them away from the ES's mean.
        flat_params = ravel_pytree(params)[0]
        es_state = es_state.replace(
            mean=flat_params.astype(es_state.mean.dtype),
            std=jnp.asarray(sigma, dtype=es_state.std.dtype),
        )
        if uses_guide:
            flat_guide = ravel_pytree(updates)[0]
            es_state = es_state.replace(grad=flat_guide.astype(es_state.grad.dtype))
        population, es_state = algorithm.ask(ask_key, es_state, es_params)
        # evosax adds float32 noise; give the task loss candidates in the dtypes of params.
        population = jax.tree.map(lambda c, p: c.astype(jnp.result_type(p)), population, params)
        candidate_losses = jnp.asarray(jax.vmap(loss_fn)(population), jnp.float32)
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
    num_candidates = _checks.static_int(num_candidates, "num_candidates", minimum=2)
    if num_candidates % 2:
        raise ValueError(
            "evosax's OpenES and GuidedES draw antithetic pairs, so num_candidates must be even, "
            f"got {num_candidates}."
        )
    _checks.check_in_range(sigma, "sigma", 0.0, math.inf, open_low=True)
    number = _checks.concrete_float(learning_rate, "learning_rate")
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
    _checks.check_in_range(alpha, "alpha", 0.0, 1.0, open_low=False)
    _checks.concrete_float(beta, "beta")
    subspace_dims = _checks.static_int(subspace_dims, "subspace_dims", minimum=1)
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
