"""Property-based tests: random pytrees, dtypes and hostile losses never give NaN updates."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mlesearch as mls

DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
SHAPES = ((), (3,), (2, 2))
HOSTILE = (np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0, 1.0, -2.5, 1e-30)

leaf_specs = st.tuples(st.sampled_from(SHAPES), st.sampled_from(DTYPES))
tree_specs = st.dictionaries(st.sampled_from(("a", "b", "c")), leaf_specs, min_size=1, max_size=3)
loss_values = st.one_of(st.sampled_from(HOSTILE), st.floats(-1e6, 1e6, allow_nan=False, width=32))


def _tree(spec, seed, scale):
    keys = jax.random.split(jax.random.key(seed), len(spec))
    return {
        name: (scale * jax.random.normal(k, shape)).astype(dtype)
        for k, (name, (shape, dtype)) in zip(keys, sorted(spec.items()), strict=True)
    }


def _hostile_loss(params, values):
    """Piecewise loss: one of two hostile constants, or a hostile multiple of the parameter sum.

    Which branch a candidate lands in depends on its parameters, so candidates get different mixes
    of nan, inf, ±1e30 and ordinary values.
    """
    leaves = [jnp.ravel(p).astype(jnp.float32) for p in jax.tree.leaves(params)]
    flat = jnp.concatenate(leaves)
    total = jnp.sum(flat)
    first = flat[0]
    return jnp.where(
        first > values[0], values[1], jnp.where(first > -values[0], values[2] * total, values[3])
    )


@functools.cache
def _compiled_step(num_candidates, weighting, noise, temperature, chunk_size):
    tx = mls.mgs(
        num_candidates=num_candidates,
        chunk_size=chunk_size,
        sigma=0.5,
        temperature=temperature,
        weighting=weighting,
        noise=noise,
        key=3,
    )

    @jax.jit
    def step(guide, params, values):
        state = tx.init(params)
        updates, state = tx.update(guide, state, params, task_loss_fn=_hostile_loss, values=values)
        return updates, state

    return step


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    spec=tree_specs,
    seed=st.integers(0, 2**16),
    guide_scale=st.sampled_from((0.0, 1e-20, 1e-3, 1.0, 100.0)),
    guide_poison=st.sampled_from((None, np.nan, np.inf, -np.inf)),
    values=st.tuples(st.floats(-1.0, 1.0, width=32), loss_values, loss_values, loss_values),
    num_candidates=st.sampled_from((1, 4, 6)),
    weighting=st.sampled_from(mls.sampling.WEIGHTINGS),
    noise=st.sampled_from(mls.sampling.NOISE_SCALES),
    temperature=st.sampled_from((1.0, 1e-4, "auto")),
    chunk_size=st.sampled_from((None, 2)),
)
def test_updates_stay_finite_and_keep_structure_and_dtypes(
    spec,
    seed,
    guide_scale,
    guide_poison,
    values,
    num_candidates,
    weighting,
    noise,
    temperature,
    chunk_size,
):
    params = _tree(spec, seed, 1.0)
    guide = _tree(spec, seed + 1, guide_scale)
    if guide_poison is not None:  # a diverged surrogate gradient: one non-finite entry.
        name = sorted(guide)[0]
        leaf = guide[name].astype(jnp.float32)
        guide[name] = (
            leaf.reshape(-1).at[0].set(guide_poison).reshape(leaf.shape).astype(guide[name].dtype)
        )
    step = _compiled_step(num_candidates, weighting, noise, temperature, chunk_size)
    updates, state = step(guide, params, jnp.asarray(values, jnp.float32))

    assert jax.tree.structure(updates) == jax.tree.structure(guide)
    for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(guide), strict=True):
        assert u.dtype == g.dtype and u.shape == g.shape
        assert bool(jnp.all(jnp.isfinite(u.astype(jnp.float32)))), (values, u)

    info = state.info
    losses = np.asarray(info.candidate_losses)
    weights = np.asarray(info.weights)
    assert weights.shape == (num_candidates,)
    assert np.all(np.isfinite(weights)) and np.all(weights >= 0)
    assert np.all(weights[~np.isfinite(losses)] == 0)
    if guide_poison is not None:  # guided candidates get no weight; zero-mean ones still count.
        num_zero_mean, _ = mls.component_sizes(num_candidates, 0.5)
        assert np.all(weights[num_zero_mean:] == 0)
        assert float(info.guide_weight) == 0
    if np.any(np.isfinite(losses)):
        np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-5)
    else:
        assert weights.sum() == 0
        assert float(info.ess) == 0
        for u in jax.tree.leaves(updates):
            assert not bool(jnp.any(u))
    assert np.isfinite(float(info.ess)) and np.isfinite(float(info.guide_weight))
    _check_temperature(info, temperature, weighting, previous=0.0)
    for leaf in jax.tree.leaves(optax.tree.unwrap_random_key_data(state)):
        assert not getattr(leaf, "weak_type", False)


def _check_temperature(info, temperature, weighting, previous):
    """The α that a step reports: the one given, or the one chosen from the step's losses."""
    alpha = float(info.temperature)
    losses = np.asarray(info.candidate_losses)
    if temperature != "auto":
        assert alpha == np.float32(temperature), (alpha, temperature)
        return
    assert np.isfinite(alpha) and alpha > 0
    finite = losses[np.isfinite(losses)]
    if weighting == "uniform" or len(np.unique(finite)) < 2:
        # α does not change the weights: the previous step's α, or 1 before the first.
        assert alpha == (previous if previous > 0 else 1.0), (alpha, previous, losses)
    elif weighting == "tilted":
        # The weights are those of the α reported, and it is the one chosen from the losses.
        chosen = mls.auto_temperature(info.candidate_losses, None, 0.5, "tilted")
        np.testing.assert_allclose(alpha, chosen, rtol=1e-5)
        np.testing.assert_allclose(
            info.weights,
            mls.candidate_weights(info.candidate_losses, None, alpha, "tilted"),
            rtol=1e-5,
            atol=1e-7,
        )


@functools.cache
def _compiled_steps(num_candidates, weighting, noise, temperature, chunk_size):
    """The transformation, its jitted step, and the step's traces (appended to at each)."""
    tx = mls.mgs(
        num_candidates=num_candidates,
        chunk_size=chunk_size,
        sigma=0.5,
        temperature=temperature,
        weighting=weighting,
        noise=noise,
        key=3,
    )

    traces = []

    @jax.jit
    def step(guide, state, params, values):
        traces.append(1)
        updates, state = tx.update(guide, state, params, task_loss_fn=_hostile_loss, values=values)
        return updates, state, optax.apply_updates(params, updates)

    return tx, step, traces


@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    spec=tree_specs,
    seed=st.integers(0, 2**16),
    guide_scales=st.lists(st.sampled_from((0.0, 1e-3, 1.0, 100.0)), min_size=4, max_size=4),
    poisoned_step=st.sampled_from((None, 0, 1, 2, 3)),
    values=st.lists(
        st.tuples(st.floats(-1.0, 1.0, width=32), loss_values, loss_values, loss_values),
        min_size=4,
        max_size=4,
    ),
    num_candidates=st.sampled_from((1, 4, 6)),
    weighting=st.sampled_from(mls.sampling.WEIGHTINGS),
    noise=st.sampled_from(mls.sampling.NOISE_SCALES),
    temperature=st.sampled_from((1.0, 1e-4, "auto")),
    chunk_size=st.sampled_from((None, 2)),
)
def test_consecutive_steps_with_one_state_stay_finite_and_compile_once(
    spec,
    seed,
    guide_scales,
    poisoned_step,
    values,
    num_candidates,
    weighting,
    noise,
    temperature,
    chunk_size,
):
    # Four steps of one optimisation, each from the state and parameters the one before left:
    # the key moves on every step, the count goes up, the parameters stay finite and keep their
    # dtypes, an automatic α that the losses cannot set keeps the one before, and the step
    # compiles once (the state's dtypes do not drift). One step may have a diverged guide.
    tx, step, traces = _compiled_steps(num_candidates, weighting, noise, temperature, chunk_size)
    traced_before = len(traces)  # earlier examples with other trees share the jitted step
    params = _tree(spec, seed, 1.0)
    dtypes = jax.tree.map(lambda p: p.dtype, params)
    state = tx.init(params)
    keys = [np.asarray(jax.random.key_data(state.key))]
    for index, (scale, step_values) in enumerate(zip(guide_scales, values, strict=True)):
        guide = _tree(spec, seed + 1 + index, scale)
        if index == poisoned_step:
            name = sorted(guide)[0]
            dtype = guide[name].dtype
            leaf = guide[name].astype(jnp.float32)
            guide[name] = leaf.reshape(-1).at[0].set(np.nan).reshape(leaf.shape).astype(dtype)
        previous = float(state.info.temperature)
        updates, state, params = step(guide, state, params, jnp.asarray(step_values, jnp.float32))
        assert int(state.count) == index + 1
        keys.append(np.asarray(jax.random.key_data(state.key)))
        assert not np.array_equal(keys[-1], keys[-2])  # a fresh key every step
        assert jax.tree.map(lambda p: p.dtype, params) == dtypes
        for leaf in jax.tree.leaves((updates, params)):
            assert bool(jnp.all(jnp.isfinite(leaf.astype(jnp.float32)))), (index, leaf)
        info = state.info
        losses = np.asarray(info.candidate_losses)
        weights = np.asarray(info.weights)
        assert np.all(weights[~np.isfinite(losses)] == 0)
        if index == poisoned_step:
            num_zero_mean, _ = mls.component_sizes(num_candidates, 0.5)
            assert np.all(weights[num_zero_mean:] == 0)
        if np.any(weights > 0):
            np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-5)
        _check_temperature(info, temperature, weighting, previous)
        if index == 0:
            traced_first = len(traces)
    assert traced_first - traced_before <= 1 and len(traces) == traced_first  # no retrace
