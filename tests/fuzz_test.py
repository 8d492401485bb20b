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
    assert np.isfinite(float(info.temperature)) and float(info.temperature) > 0
    for leaf in jax.tree.leaves(optax.tree.unwrap_random_key_data(state)):
        assert not getattr(leaf, "weak_type", False)
