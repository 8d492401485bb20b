"""Tests for `mlesearch.with_mgs` and `mlesearch.mgs_adamw`: the paper's placement of MGS."""

import doctest

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mlesearch as mls
from mlesearch import recipes

PARAMS = {"w": jnp.array([0.5, -1.0, 2.0]), "b": jnp.asarray(0.3, jnp.float32)}


def task_loss(params, target):
    """A piecewise-constant loss: the number of weights on the wrong side of ``target``."""
    return jnp.sum(jnp.sign(params["w"]) != jnp.sign(target)).astype(jnp.float32) + jnp.abs(
        jnp.round(params["b"] * 4)
    )


def surrogate(params, target):
    return jnp.sum((params["w"] - target) ** 2) + params["b"] ** 2


TARGET = jnp.array([1.0, 1.0, -1.0])


def _run(tx, steps=3, params=PARAMS, jit=True):
    state = tx.init(params)

    def step(params, state):
        grads = jax.grad(surrogate)(params, TARGET)
        updates, state = tx.update(grads, state, params, task_loss_fn=task_loss, target=TARGET)
        return optax.apply_updates(params, updates), state, updates

    step = jax.jit(step) if jit else step
    history = []
    for _ in range(steps):
        params, state, updates = step(params, state)
        history.append(updates)
    return params, state, history


def _unwrap(tree):
    return optax.tree.unwrap_random_key_data(tree)


@pytest.mark.parametrize("clip_norm", [1.0, 0.5, None])
def test_with_mgs_is_the_documented_chain(clip_norm):
    kwargs = dict(num_candidates=6, sigma=0.7, mix=0.5, temperature=0.3, key=3)
    clip = () if clip_norm is None else (optax.clip_by_global_norm(clip_norm),)
    probe_scale = 0.2
    explicit = optax.chain(
        *clip,
        optax.scale(-probe_scale),
        mls.mgs(weighting="tilted", noise="relative", **kwargs),
        optax.scale(-1 / probe_scale),
        *clip,
        optax.adam(0.05),
    )
    recipe = mls.with_mgs(optax.adam(0.05), probe_scale=probe_scale, clip_norm=clip_norm, **kwargs)
    params_a, state_a, updates_a = _run(explicit)
    params_b, state_b, updates_b = _run(recipe)
    chex.assert_trees_all_close(updates_a, updates_b, rtol=1e-6)
    chex.assert_trees_all_close(_unwrap(state_a), _unwrap(state_b), rtol=1e-6)
    # The updates differ from step to step: fresh keys, not one reused draw.
    assert optax.tree.norm(optax.tree.sub(updates_b[0], updates_b[1])) > 0


def test_vanishing_noise_guided_only_reduces_to_the_optimizer_on_clipped_gradients():
    # With sigma -> 0 and mix = 0 every candidate is the guide -η·clip(g), whatever the weights;
    # the pseudo-gradient is then clip(g) and the chain is the optimiser on clipped gradients.
    recipe = mls.with_mgs(
        optax.adam(0.1), probe_scale=0.3, clip_norm=0.5, sigma=1e-9, noise="absolute", mix=0.0
    )
    plain = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(0.1))
    params_a, _, updates_a = _run(recipe, steps=5)
    params_b, _, updates_b = _run(plain, steps=5)
    chex.assert_trees_all_close(updates_a, updates_b, atol=1e-6)
    chex.assert_trees_all_close(params_a, params_b, atol=1e-6)


def test_selection_by_the_task_loss_changes_the_update():
    # The same candidates (same key) weighted by the loss or uniformly give different updates.
    common = dict(probe_scale=1.0, sigma=1.5, noise="absolute", num_candidates=8, key=0)
    selected = mls.with_mgs(optax.sgd(1.0), temperature=0.01, **common)
    uniform = mls.with_mgs(optax.sgd(1.0), weighting="uniform", **common)
    _, state_s, updates_s = _run(selected, steps=1)
    _, state_u, updates_u = _run(uniform, steps=1)
    chex.assert_trees_all_close(
        optax.tree.get(state_s, "candidate_losses"), optax.tree.get(state_u, "candidate_losses")
    )
    losses = np.asarray(optax.tree.get(state_s, "candidate_losses"))
    assert losses.max() > losses.min()  # the candidates do not tie here
    np.testing.assert_allclose(optax.tree.get(state_u, "weights"), 1 / 8)
    assert float(optax.tree.get(state_s, "weights")[np.argmin(losses)]) > 0.5
    assert optax.tree.norm(optax.tree.sub(updates_s[0], updates_u[0])) > 1e-3


def test_jit_and_no_jit_agree_and_nothing_retraces():
    tx = mls.with_mgs(optax.adam(0.05), probe_scale=0.2, num_candidates=4, key=1)
    _, state_jit, updates_jit = _run(tx, jit=True)
    _, state_eager, updates_eager = _run(tx, jit=False)
    chex.assert_trees_all_close(updates_jit, updates_eager, rtol=1e-5, atol=1e-6)

    traces = []

    @jax.jit
    def step(params, state):
        traces.append(1)
        grads = jax.grad(surrogate)(params, TARGET)
        return tx.update(grads, state, params, task_loss_fn=task_loss, target=TARGET)

    state = tx.init(PARAMS)
    for _ in range(3):
        _, state = step(PARAMS, state)
    assert len(traces) == 1


def test_inject_hyperparams_on_probe_scale_and_sigma():
    static = ("num_candidates", "mix", "key")
    common = dict(sigma=0.5, noise="absolute", num_candidates=4, key=2)
    injected = optax.inject_hyperparams(mls.with_mgs, static_args=static)(
        optax.adam(0.05), probe_scale=0.2, **common
    )
    direct = mls.with_mgs(optax.adam(0.05), probe_scale=0.2, **common)
    _, state_i, updates_i = _run(injected, steps=2)
    _, _, updates_d = _run(direct, steps=2)
    chex.assert_trees_all_close(updates_i, updates_d, rtol=1e-5, atol=1e-7)

    # A traced change of either hyperparameter reaches the update.
    state = injected.init(PARAMS)
    grads = jax.grad(surrogate)(PARAMS, TARGET)
    step = jax.jit(
        lambda s: injected.update(grads, s, PARAMS, task_loss_fn=task_loss, target=TARGET)
    )
    base, _ = step(state)
    for name, value in (("probe_scale", 3.0), ("sigma", 2.0)):
        hyperparams = {**state.hyperparams, name: jnp.asarray(value, jnp.float32)}
        changed, _ = step(state._replace(hyperparams=hyperparams))
        assert optax.tree.norm(optax.tree.sub(changed, base)) > 1e-6, name
        # ... and equals the update of the recipe built with that value.
        rebuilt = mls.with_mgs(optax.adam(0.05), **{"probe_scale": 0.2, **common, name: value})
        expected, _ = rebuilt.update(
            grads, rebuilt.init(PARAMS), PARAMS, task_loss_fn=task_loss, target=TARGET
        )
        chex.assert_trees_all_close(changed, expected, rtol=1e-5, atol=1e-7)


def test_mgs_adamw_is_with_mgs_around_adamw():
    kwargs = dict(probe_scale=0.3, num_candidates=4, key=5)
    _, _, updates_a = _run(mls.mgs_adamw(1e-2, weight_decay=0.1, **kwargs))
    _, _, updates_b = _run(mls.with_mgs(optax.adamw(1e-2, weight_decay=0.1), **kwargs))
    chex.assert_trees_all_close(updates_a, updates_b)
    assert recipes.PAPER_LEARNING_RATE == 6.25e-5


def test_diagnostics_are_read_through_the_chain():
    tx = mls.with_mgs(optax.adam(0.05), num_candidates=4)
    _, state, _ = _run(tx, steps=1)
    assert optax.tree.get(state, "candidate_losses").shape == (4,)
    # with_mgs defaults to temperature="auto" at target_ess 0.5: an ESS of 2 of 4.
    weights = optax.tree.get(state, "weights")
    ess = float(optax.tree.get(state, "ess"))
    np.testing.assert_allclose(ess, 1.0 / float(jnp.sum(weights**2)), rtol=1e-5)
    assert 2.0 * (1 - 1e-3) <= ess <= 4.0


def test_frozen_relative_noise_leaves_a_zero_gradient_leaf_alone():
    # A leaf whose gradient is zero (a frozen layer) gets no noise with relative scales, so
    # neither the candidates nor the update move it.
    tx = mls.with_mgs(optax.sgd(1.0), probe_scale=0.5, num_candidates=4)
    state = tx.init(PARAMS)
    grads = {"w": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array(0.0)}
    updates, _ = tx.update(grads, state, PARAMS, task_loss_fn=task_loss, target=TARGET)
    assert float(updates["b"]) == 0.0
    assert float(optax.tree.norm(updates["w"])) > 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(probe_scale=0.0), "probe_scale must be positive"),
        (dict(probe_scale=-0.1), "probe_scale must be positive"),
        (dict(probe_scale=float("nan")), "probe_scale must be positive"),
        (dict(probe_scale=float("inf")), "probe_scale must be positive"),
        (dict(probe_scale="big"), "probe_scale must be a positive number"),
        (dict(clip_norm=0.0), "clip_norm must be positive"),
        (dict(clip_norm=-1.0), "clip_norm must be positive"),
        (dict(clip_norm=float("inf")), "clip_norm must be positive"),
        (dict(num_candidates=0), "num_candidates must be at least 1"),
        (dict(weighting="best"), "weighting must be one of"),
    ],
)
def test_bad_settings_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mls.with_mgs(optax.adam(1e-3), **kwargs)


@pytest.mark.parametrize("optimizer", [optax.adam, "adam", None, lambda g: g])
def test_optimizer_must_be_a_transformation(optimizer):
    with pytest.raises(ValueError, match="optimizer must be an optax transformation"):
        mls.with_mgs(optimizer)


def test_docstring_examples_run():
    failures, tried = doctest.testmod(recipes, optionflags=doctest.ELLIPSIS)
    assert tried >= 6 and failures == 0
