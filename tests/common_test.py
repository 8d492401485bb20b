"""One optax-style suite, run over every search transformation that mlesearch ships.

As optax's ``_common_test.py`` does for its optimisers: each transformation, placed in the chain a
user would write (its guide from the gradient of a differentiable stand-in), must minimise a
parabola and make progress on the Rosenbrock function inside a jitted `jax.lax.scan`, ignore
extra arguments its task loss does not name, compile once, keep bfloat16 parameters in bfloat16,
and take its numeric hyperparameters from `optax.inject_hyperparams` with the same result.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mlesearch as mls
from mlesearch import baselines


class Case(NamedTuple):
    """A transformation under test: ``make(**hyperparams)`` takes raw gradients."""

    make: Callable[..., optax.GradientTransformationExtraArgs]
    hyperparams: dict[str, Any]  # numeric ones, injectable
    static: dict[str, Any]  # the others
    steps: int  # parabola steps
    rosenbrock: dict[str, Any]  # hyperparameters for the Rosenbrock function's steep valley


# Explicit signatures: optax.inject_hyperparams reads the factory's parameters.
def _mgs(
    learning_rate,
    sigma,
    num_candidates=8,
    temperature="auto",
    weighting="tilted",
    chunk_size=None,
    key=0,
):
    return optax.chain(
        optax.adam(learning_rate),
        mls.mgs(
            num_candidates=num_candidates,
            sigma=sigma,
            temperature=temperature,
            weighting=weighting,
            chunk_size=chunk_size,
            key=key,
        ),
    )


def _with_mgs(learning_rate, probe_scale, num_candidates=8, key=0):
    return mls.with_mgs(
        optax.adam(learning_rate), probe_scale=probe_scale, num_candidates=num_candidates, key=key
    )


# The ES transformations return a descent step, -ĝ at learning_rate=1; Adam takes ĝ.
def _open_es(learning_rate, sigma, num_candidates=8, key=0):
    return optax.chain(
        baselines.open_es(num_candidates=num_candidates, sigma=sigma, key=key),
        optax.scale(-1.0),
        optax.adam(learning_rate),
    )


def _guided_es(learning_rate, sigma, num_candidates=8, key=0):
    return optax.chain(
        optax.scale(-1.0),
        baselines.guided_es(num_candidates=num_candidates, sigma=sigma, key=key),
        optax.scale(-1.0),
        optax.adam(learning_rate),
    )


MGS_STATIC = dict(num_candidates=8, temperature="auto", key=0)
CASES = {
    "mgs_importance": Case(
        _mgs,
        dict(learning_rate=0.1, sigma=0.05),
        {**MGS_STATIC, "weighting": "importance"},
        100,
        dict(learning_rate=0.02, sigma=1e-3),
    ),
    "mgs_tilted": Case(
        _mgs,
        dict(learning_rate=0.1, sigma=0.05),
        {**MGS_STATIC, "weighting": "tilted"},
        100,
        dict(learning_rate=0.02, sigma=1e-3),
    ),
    "mgs_uniform": Case(
        _mgs,
        dict(learning_rate=0.1, sigma=0.05),
        {**MGS_STATIC, "weighting": "uniform"},
        100,
        dict(learning_rate=0.02, sigma=1e-3),
    ),
    "mgs_chunked": Case(
        _mgs,
        dict(learning_rate=0.1, sigma=0.05),
        {**MGS_STATIC, "chunk_size": 3},
        100,
        dict(learning_rate=0.02, sigma=1e-3),
    ),
    "with_mgs": Case(
        _with_mgs,
        dict(learning_rate=0.05, probe_scale=0.1),
        dict(num_candidates=8, key=0),
        150,
        dict(learning_rate=0.02, probe_scale=0.01),
    ),
    "open_es": Case(
        _open_es,
        dict(learning_rate=0.05, sigma=0.05),
        dict(num_candidates=8, key=0),
        150,
        dict(learning_rate=0.02, sigma=0.01),
    ),
    "guided_es": Case(
        _guided_es,
        dict(learning_rate=0.05, sigma=0.05),
        dict(num_candidates=8, key=0),
        150,
        dict(learning_rate=0.02, sigma=0.01),
    ),
}
NAMES = sorted(CASES)

TARGET = jnp.array([1.0, -2.0, 0.5])


def parabola(params: jax.Array) -> jax.Array:
    return jnp.sum((params.astype(jnp.float32) - TARGET) ** 2)


def rosenbrock(params: jax.Array) -> jax.Array:
    x, y = params.astype(jnp.float32)
    return (1.0 - x) ** 2 + 100.0 * (y - x**2) ** 2


def _make(case: Case) -> optax.GradientTransformationExtraArgs:
    return case.make(**case.hyperparams, **case.static)


def _minimise(tx, loss, params, steps):
    """``steps`` steps of ``tx`` inside one jitted `jax.lax.scan`; the losses along the way."""

    def step(carry, _):
        params, state = carry
        grads = jax.grad(loss)(params)
        updates, state = tx.update(grads, state, params, task_loss_fn=loss)
        return (optax.apply_updates(params, updates), state), loss(params)

    @jax.jit
    def run(params):
        (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), length=steps)
        return params, losses

    return run(params)


@pytest.mark.parametrize("name", NAMES)
def test_minimises_a_parabola_inside_scan(name):
    case = CASES[name]
    params, losses = _minimise(_make(case), parabola, jnp.zeros(3), case.steps)
    chex.assert_tree_all_finite((params, losses))
    assert parabola(params) < 0.01 * parabola(jnp.zeros(3)), (name, parabola(params))


@pytest.mark.parametrize("name", NAMES)
def test_makes_progress_on_rosenbrock_inside_scan(name):
    case = CASES[name]
    start = jnp.array([-1.0, 1.0])
    tx = case.make(**{**case.hyperparams, **case.rosenbrock}, **case.static)
    params, losses = _minimise(tx, rosenbrock, start, 300)
    chex.assert_tree_all_finite((params, losses))
    assert rosenbrock(params) < 0.5 * rosenbrock(start), (name, rosenbrock(params))


@pytest.mark.parametrize("name", NAMES)
def test_ignores_extra_arguments_its_task_loss_does_not_name(name):
    tx = _make(CASES[name])
    params = jnp.zeros(3)
    state = tx.init(params)

    def loss(params, target):
        return jnp.sum((params - target) ** 2)

    grads = jax.grad(loss)(params, TARGET)
    step = jax.jit(
        lambda s: tx.update(grads, s, params, task_loss_fn=loss, target=TARGET, epoch=3, note="x")
    )
    updates, _ = step(state)
    reference, _ = jax.jit(lambda s: tx.update(grads, s, params, task_loss_fn=loss, target=TARGET))(
        state
    )
    chex.assert_trees_all_close(updates, reference)


@pytest.mark.parametrize("name", NAMES)
def test_compiles_once_over_steps_with_new_values(name):
    chex.clear_trace_counter()
    tx = _make(CASES[name])
    params = jnp.zeros(3)
    state = tx.init(params)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, state, target):
        loss = lambda p: jnp.sum((p - target) ** 2)
        updates, state = tx.update(jax.grad(loss)(params), state, params, task_loss_fn=loss)
        return optax.apply_updates(params, updates), state

    for i in range(4):
        params, state = step(params, state, TARGET * (i + 1))
    chex.assert_tree_all_finite(params)


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_params_stay_bfloat16_and_finite(name):
    tx = _make(CASES[name])
    params = {"w": jnp.zeros(3, jnp.bfloat16), "b": jnp.ones((), jnp.bfloat16)}
    loss = lambda p: parabola(p["w"]) + jnp.square(p["b"].astype(jnp.float32))
    state = tx.init(params)
    step = jax.jit(lambda p, s: tx.update(jax.grad(loss)(p), s, p, task_loss_fn=loss))
    for _ in range(3):
        updates, state = step(params, state)
        chex.assert_trees_all_equal_dtypes(updates, params)
        chex.assert_tree_all_finite(updates)
        params = optax.apply_updates(params, updates)
    chex.assert_trees_all_equal_dtypes(params, {"w": jnp.bfloat16, "b": jnp.bfloat16})


@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_gives_the_same_steps_and_takes_new_values(name):
    case = CASES[name]
    injected = optax.inject_hyperparams(case.make, static_args=tuple(case.static))(
        **case.hyperparams, **case.static
    )
    direct_params, _ = _minimise(_make(case), parabola, jnp.zeros(3), 5)
    injected_params, _ = _minimise(injected, parabola, jnp.zeros(3), 5)
    chex.assert_trees_all_close(injected_params, direct_params, rtol=1e-5, atol=1e-6)

    # A new value in the state changes the step as building the transformation with it would.
    params = jnp.zeros(3)
    grads = jax.grad(parabola)(params)
    state = injected.init(params)
    changed = {k: v * 2 for k, v in case.hyperparams.items()}
    for k, v in changed.items():
        state.hyperparams[k] = jnp.asarray(v, jnp.float32)
    updates, _ = injected.update(grads, state, params, task_loss_fn=parabola)
    rebuilt = case.make(**changed, **case.static)
    expected, _ = rebuilt.update(grads, rebuilt.init(params), params, task_loss_fn=parabola)
    np.testing.assert_allclose(updates, expected, rtol=1e-5, atol=1e-6)
