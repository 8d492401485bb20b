"""Tests for the `mlesearch.mgs` transformation: the sampling-view limits and the API contract."""

import contextlib
import functools
import inspect
import logging
import re
import subprocess
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from scipy import special

import mlesearch as mls

# A fixed quadratic l(θ) = ½ θᵀHθ + bᵀθ: its p(Δ|θ) is Gaussian, N(-H⁻¹g, αH⁻¹).
H = jnp.array([[2.0, 0.5], [0.5, 1.0]])
B = jnp.array([1.0, -1.0])
THETA = jnp.array([0.3, 0.7])


def quadratic(theta):
    return 0.5 * theta @ H @ theta + B @ theta


def _step(tx, guide, params, task_loss_fn, state=None, **extra):
    state = tx.init(params) if state is None else state
    return jax.jit(lambda u, s, p, e: tx.update(u, s, p, task_loss_fn=task_loss_fn, **e))(
        guide, state, params, extra
    )


def _unwrap(state):
    return optax.tree.unwrap_random_key_data(state)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.tanh(nn.Dense(8)(x))
        return nn.Dense(3)(x)


def _mlp_problem(dtype=jnp.float32):
    x = jax.random.normal(jax.random.key(0), (32, 4))
    y = jax.random.randint(jax.random.key(1), (32,), 0, 3)
    model = MLP()
    params = model.init(jax.random.key(2), x)
    params = jax.tree.map(lambda p: p.astype(dtype), params)

    def mle_loss(params, x, y):
        logits = model.apply(params, x.astype(dtype)).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def error_rate(params, x, y):
        logits = model.apply(params, x.astype(dtype))
        return jnp.mean(jnp.argmax(logits, -1) != y).astype(jnp.float32)

    return params, x, y, mle_loss, error_rate


# The sampling view's limits.


def test_importance_with_broad_random_search_converges_to_newton_step():
    newton = -jnp.linalg.solve(H, H @ THETA + B)
    tx = mls.mgs(num_candidates=40_000, sigma=2.0, mix=1.0, temperature=1.0, key=1)
    updates, state = _step(tx, jnp.zeros(2), THETA, quadratic)
    assert state.info.ess > 1000
    np.testing.assert_allclose(updates, newton, atol=0.05)


@pytest.mark.parametrize("mix", [0.25, 0.5, 0.75])
def test_importance_with_a_guided_mixture_converges_to_newton_step(mix):
    # The full estimator, 0 < λ < 1, with the guide away from the target: only the mixture
    # density in log q (both components, weighted by λ) corrects for where candidates came from.
    newton = -jnp.linalg.solve(H, H @ THETA + B)
    guide = newton + jnp.array([1.5, -1.5])
    tx = mls.mgs(num_candidates=40_000, sigma=1.0, mix=mix, temperature=1.0, key=5)
    updates, state = _step(tx, guide, THETA, quadratic)
    assert state.info.ess > 1000
    np.testing.assert_allclose(updates, newton, atol=0.05)
    # The same candidates weighted as if they all came from one component are biased.
    deltas = mls.sample_candidates(
        jax.random.split(tx.init(THETA).key)[1], guide, jnp.float32(1.0), 40_000, mix
    )
    losses = jax.vmap(lambda d: quadratic(THETA + d))(deltas)
    for share, bias in ((0.0, 0.3), (1.0, 0.1)):
        log_q = jax.vmap(mls.log_proposal_density, in_axes=(0, None, None, None))(
            deltas, guide, jnp.float32(1.0), share
        )
        wrong = jnp.tensordot(mls.candidate_weights(losses, log_q, 1.0), deltas, axes=1)
        assert float(jnp.max(jnp.abs(wrong - newton))) > bias, share


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_tilted_single_gaussian_matches_product_of_gaussians(alpha):
    sigma = 0.6
    m = jnp.array([-0.4, 0.2])
    g = H @ THETA + B
    precision = H / alpha + jnp.eye(2) / sigma**2
    exact = jnp.linalg.solve(precision, m / sigma**2 - g / alpha)
    tx = mls.mgs(
        num_candidates=40_000, sigma=sigma, mix=0.0, temperature=alpha, weighting="tilted", key=2
    )
    updates, _ = _step(tx, m, THETA, quadratic)
    np.testing.assert_allclose(updates, exact, atol=0.02)


@pytest.mark.parametrize("weighting", ["importance", "tilted"])
def test_linear_loss_on_a_ball_update_points_along_negative_gradient(weighting):
    # p ∝ exp(-c·Δ/α) is improper on all of R^d; on the ball ‖Δ‖ ≤ ε its mean points along -c.
    # An infinite loss outside the ball gives those candidates weight 0, which makes the ball.
    c = jnp.array([3.0, -1.0, 0.5, 2.0])
    theta = jnp.ones(4)

    def linear_on_ball(params):
        return jnp.where(jnp.linalg.norm(params - theta) <= 0.2, c @ params, jnp.inf)

    tx = mls.mgs(
        num_candidates=20_000, sigma=0.15, mix=1.0, temperature=0.1, weighting=weighting, key=3
    )
    updates, _ = _step(tx, jnp.zeros(4), theta, linear_on_ball)
    cosine = -(updates @ c) / (jnp.linalg.norm(updates) * jnp.linalg.norm(c))
    assert cosine > 0.99


def test_tilted_linear_loss_gives_the_exact_shifted_mean():
    # q · exp(-c·Δ/α) with q = N(0, σ²I) is N(-σ²c/α, σ²I).
    c = jnp.array([3.0, -1.0, 0.5, 2.0])
    tx = mls.mgs(num_candidates=20_000, sigma=0.1, mix=1.0, temperature=0.5, weighting="tilted")
    updates, _ = _step(tx, jnp.zeros(4), jnp.ones(4), lambda theta: c @ theta)
    np.testing.assert_allclose(updates, -(0.1**2) * c / 0.5, atol=0.005)


@pytest.mark.parametrize("weighting", ["importance", "tilted"])
def test_zero_temperature_limit_returns_best_candidate(weighting):
    tx = mls.mgs(num_candidates=16, sigma=0.5, temperature=1e-7, weighting=weighting, key=4)
    updates, state = _step(tx, jnp.array([0.2, -0.1]), THETA, quadratic)
    info = state.info
    best = int(jnp.argmin(info.candidate_losses))
    np.testing.assert_allclose(info.weights, jax.nn.one_hot(best, 16), atol=1e-6)
    np.testing.assert_allclose(quadratic(THETA + updates), info.candidate_losses[best], rtol=1e-5)
    np.testing.assert_allclose(info.ess, 1.0, rtol=1e-5)


_STATIC_ARGS = ("num_candidates", "mix", "key", "chunk_size", "antithetic")


def _traced_step(guide, params, task_loss_fn, factory=mls.mgs, **tx_kwargs):
    """A jitted step of ``inject_hyperparams(factory)(**tx_kwargs)`` from its initial state.

    It takes the hyperparameters to change as keyword arguments, so they are traced, and one
    compilation serves every value of them.
    """
    tx = optax.inject_hyperparams(factory, static_args=_STATIC_ARGS)(**tx_kwargs)
    initial = tx.init(params)

    @jax.jit
    def step(guide, **hyperparams):
        values = {name: jnp.asarray(v, jnp.float32) for name, v in hyperparams.items()}
        state = initial._replace(hyperparams={**initial.hyperparams, **values})
        return tx.update(guide, state, params, task_loss_fn=task_loss_fn)

    return lambda **hyperparams: step(guide, **hyperparams)


def test_temperature_annealed_to_zero_by_a_schedule_keeps_the_best_candidate():
    # linear_schedule(1, 0, 3) reaches -2.98e-8 by float rounding. A negative α weighed
    # exp(+Δl/|α|): all the weight on the worst candidate, and the loss climbed step after step.
    schedule = optax.linear_schedule(1.0, 0.0, 3)
    assert float(schedule(3)) <= 0.0
    for weighting in ("importance", "tilted"):
        search = optax.inject_hyperparams(mls.mgs, static_args=("num_candidates", "mix", "key"))(
            temperature=schedule, num_candidates=8, sigma=0.1, weighting=weighting, key=0
        )
        tx = optax.chain(optax.sgd(0.1), search)
        params = jnp.array([2.0, 2.0])
        state = tx.init(params)

        @jax.jit
        def step(params, state, tx=tx):
            grads = jax.grad(quadratic)(params)
            updates, state = tx.update(grads, state, params, task_loss_fn=quadratic)
            return optax.apply_updates(params, updates), state

        loss = float(quadratic(params))
        for count in range(7):
            params, state = step(params, state)
            info = state[1].inner_state.info
            new_loss = float(quadratic(params))
            assert new_loss < loss, (weighting, count, loss, new_loss)
            loss = new_loss
            if count >= 3:  # α ≤ 0 from here: the α → 0 limit, reported as 0
                best = int(jnp.argmin(info.candidate_losses))
                np.testing.assert_array_equal(info.weights, jax.nn.one_hot(best, 8))
                np.testing.assert_allclose(new_loss, info.candidate_losses[best], rtol=1e-5)
                assert float(info.temperature) == 0.0
                assert float(info.ess) == 1.0


@pytest.mark.parametrize("weighting", ["importance", "tilted"])
@pytest.mark.parametrize(
    "path", [{}, {"chunk_size": 3}, {"antithetic": True}, {"antithetic": True, "chunk_size": 2}]
)
def test_traced_non_positive_temperature_gives_the_best_candidate_in_every_path(weighting, path):
    guide = jnp.array([0.2, -0.1])
    key = jax.random.split(jax.random.key(4))[1]  # the step key that mgs splits off its state
    scales = mls.proposal_scales(guide, 0.5)
    antithetic = path.get("antithetic", False)
    candidates = mls.sample_candidates(key, guide, scales, 8, 0.5, antithetic)
    step = _traced_step(
        guide, THETA, quadratic, num_candidates=8, sigma=0.5, weighting=weighting, key=4, **path
    )
    for alpha in (0.0, -3e-8, -1.0):
        updates, state = step(temperature=alpha)
        info = state.inner_state.info
        best = int(jnp.argmin(info.candidate_losses))
        np.testing.assert_array_equal(info.weights, jax.nn.one_hot(best, 8), err_msg=str(alpha))
        assert float(info.temperature) == 0.0 and float(info.ess) == 1.0
        np.testing.assert_allclose(updates, candidates[best], rtol=1e-6)
        np.testing.assert_allclose(
            quadratic(THETA + updates), info.candidate_losses[best], rtol=1e-5
        )


@pytest.mark.parametrize("weighting", ["importance", "tilted"])
def test_zero_temperature_limit_shares_tied_best_candidates(weighting):
    # A loss in whole units ties several candidates for the best. The α → 0 limit of the tilted
    # weights shares equally among them; that of the importance weights in proportion to 1/q.
    guide = jnp.array([0.2, -0.1])
    step_loss = lambda theta: jnp.floor(quadratic(theta))
    key = jax.random.split(jax.random.key(4))[1]
    scales = mls.proposal_scales(guide, 0.5)
    candidates = mls.sample_candidates(key, guide, scales, 12, 0.5)
    log_q = jax.vmap(lambda d: mls.log_proposal_density(d, guide, scales, 0.5))(candidates)
    results = [
        _traced_step(
            guide,
            THETA,
            step_loss,
            num_candidates=12,
            sigma=0.5,
            weighting=weighting,
            key=4,
            chunk_size=chunk_size,
        )(temperature=0.0)
        for chunk_size in (None, 5)
    ]
    updates, state = results[0]
    info = state.inner_state.info
    losses = np.asarray(info.candidate_losses)
    tied = losses == losses.min()
    assert tied.sum() >= 2, losses
    share = np.exp(-(log_q - log_q.max())) if weighting == "importance" else np.ones(12)
    expected = np.where(tied, share, 0.0) / np.sum(np.where(tied, share, 0.0))
    np.testing.assert_allclose(info.weights, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(updates, expected @ np.asarray(candidates), rtol=1e-5, atol=1e-7)
    chunked_updates, chunked_state = results[1]
    chex.assert_trees_all_close(chunked_updates, updates, atol=1e-6)
    chex.assert_trees_all_close(chunked_state.inner_state.info, info, atol=1e-6)


@pytest.mark.parametrize("weighting", ["importance", "tilted"])
def test_with_mgs_with_a_zero_temperature_applies_the_best_candidate(weighting):
    step = _traced_step(
        jnp.array([0.4, -0.2]),
        THETA,
        quadratic,
        factory=functools.partial(mls.with_mgs, optax.sgd(1.0)),
        probe_scale=1.0,
        clip_norm=None,
        num_candidates=8,
        sigma=0.5,
        weighting=weighting,
        temperature=1.0,
        key=4,
    )
    updates, state = step(temperature=-3e-8)
    losses = optax.tree.get(state, "candidate_losses")
    best = int(jnp.argmin(losses))
    np.testing.assert_array_equal(optax.tree.get(state, "weights"), jax.nn.one_hot(best, 8))
    np.testing.assert_allclose(quadratic(THETA + updates), losses[best], rtol=1e-5)


@pytest.mark.parametrize("noise", ["absolute", "relative"])
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_traced_non_positive_sigma_returns_the_guide(noise, chunk_size):
    params = {"w": THETA, "b": jnp.array([0.1])}
    loss = lambda p: quadratic(p["w"]) + jnp.sum(p["b"] ** 2)
    guide = {"w": jnp.array([0.2, -0.1]), "b": jnp.array([0.05])}
    broken = {"w": jnp.array([jnp.nan, -0.1]), "b": jnp.array([0.05])}
    kwargs = dict(num_candidates=8, sigma=1.0, noise=noise, key=4, chunk_size=chunk_size)
    step = _traced_step(guide, params, loss, **kwargs)
    step_broken = _traced_step(broken, params, loss, **kwargs)
    for sigma in (0.0, -1.0):
        updates, state = step(sigma=sigma)
        chex.assert_trees_all_equal(updates, guide)
        chex.assert_tree_all_finite(_unwrap(state))
        # A guide with a NaN must not reach the update, even then.
        updates, _ = step_broken(sigma=sigma)
        chex.assert_trees_all_equal(updates, optax.tree.zeros_like(guide))


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_uniform_weights_return_the_mean_of_the_finite_candidates(chunk_size):
    guide = jnp.array([0.2, -0.1])
    tx = mls.mgs(num_candidates=6, sigma=0.5, weighting="uniform", chunk_size=chunk_size, key=4)
    # A loss that is infinite on one side: those candidates get no weight.
    loss = lambda theta: jnp.where(theta[0] > 0.6, jnp.inf, quadratic(theta))
    updates, state = _step(tx, guide, THETA, loss)
    key = jax.random.split(jax.random.key(4))[1]  # the step key that mgs splits off its state
    scales = mls.proposal_scales(guide, 0.5)
    candidates = mls.sample_candidates(key, guide, scales, 6, 0.5)
    finite = np.isfinite(np.asarray(state.info.candidate_losses))
    assert 0 < finite.sum() < 6
    np.testing.assert_allclose(state.info.weights, finite / finite.sum(), rtol=1e-6)
    np.testing.assert_allclose(updates, np.asarray(candidates)[finite].mean(axis=0), rtol=1e-5)


class ParityTest(parameterized.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_and_no_jit_agree(self):
        params, x, y, mle_loss, error_rate = _mlp_problem()
        tx = mls.mgs(num_candidates=6, sigma=0.2, temperature="auto", key=0)
        state = tx.init(params)
        guide = jax.grad(mle_loss)(params, x, y)
        update = self.variant(lambda u, s, p: tx.update(u, s, p, task_loss_fn=error_rate, x=x, y=y))
        updates, new_state = update(guide, state, params)
        expected_updates, expected_state = jax.jit(
            lambda u, s, p: tx.update(u, s, p, task_loss_fn=error_rate, x=x, y=y)
        )(guide, state, params)
        chex.assert_trees_all_close(updates, expected_updates, atol=1e-6)
        chex.assert_trees_all_close(_unwrap(new_state), _unwrap(expected_state), atol=1e-6)


def test_same_seed_same_update_and_successive_steps_use_fresh_keys():
    guide = jnp.array([0.1, -0.2])
    tx = mls.mgs(num_candidates=4, key=7)
    first, state = _step(tx, guide, THETA, quadratic)
    again, _ = _step(mls.mgs(num_candidates=4, key=7), guide, THETA, quadratic)
    chex.assert_trees_all_equal(first, again)
    second, state2 = _step(tx, guide, THETA, quadratic, state=state)
    assert not np.allclose(first, second)
    assert not np.array_equal(jax.random.key_data(state.key), jax.random.key_data(state2.key))
    assert int(state2.count) == 2
    other_seed, _ = _step(mls.mgs(num_candidates=4, key=8), guide, THETA, quadratic)
    assert not np.allclose(first, other_seed)


def test_int_seed_typed_key_and_raw_key_agree():
    guide = jnp.array([0.1, -0.2])
    results = [
        _step(mls.mgs(key=k), guide, THETA, quadratic)[0]
        for k in (3, jax.random.key(3), jax.random.PRNGKey(3))
    ]
    chex.assert_trees_all_equal(*results)


@pytest.mark.parametrize(
    ("temperature", "weighting"), [(1.0, "importance"), (0.05, "tilted"), ("auto", "importance")]
)
def test_chunked_evaluation_gives_the_same_update(temperature, weighting):
    # With a fixed α each chunk is folded into the mean as it is evaluated; with "auto" the
    # chunks are drawn again for the sum once α is known. Either way, the unchunked update.
    params, x, y, mle_loss, error_rate = _mlp_problem()
    guide = jax.grad(mle_loss)(params, x, y)
    results = [
        _step(
            mls.mgs(
                num_candidates=10,
                sigma=0.3,
                chunk_size=c,
                temperature=temperature,
                weighting=weighting,
            ),
            guide,
            params,
            error_rate,
            x=x,
            y=y,
        )
        for c in (None, 1, 3, 10, 64)
    ]
    if weighting == "tilted":  # several candidates share the weight, so the merging is tested
        assert float(results[0][1].info.ess) > 1.5
    for updates, state in results[1:]:
        chex.assert_trees_all_close(updates, results[0][0], atol=1e-6)
        chex.assert_trees_all_close(state.info, results[0][1].info, atol=1e-6)


@pytest.mark.parametrize(
    ("num_candidates", "dim", "antithetic", "expected"),
    [
        (32, 10_000, False, 32),  # 1.28 MB in all: no chunks
        (4, 100_000, False, 4),
        (16, 100_000, False, 8),  # 400 kB each: 10 fit in 4 MiB, the power of two below is 8
        (32, 134_912, False, 4),
        (16, 1_000_000, False, 1),
        (16, 1_000_000, True, 2),  # antithetic pairs stay together
        (16, 10_000_000, False, 1),
    ],
)
def test_plan_of_a_default_cpu_step_takes_cache_sized_chunks(
    num_candidates, dim, antithetic, expected
):
    params = jax.ShapeDtypeStruct((dim,), jnp.float32)
    plan = mls.transform._execution_plan(
        num_candidates, params, "cpu", False, None, 2**30, antithetic, None
    )
    assert plan.chunk == expected


_PLAN = mls.transform._Plan
_MESH_SHARDING = object()  # only whether there is a mesh counts


@pytest.mark.parametrize(
    ("num_candidates", "dim", "backend", "auto", "chunk_size", "antithetic", "mesh", "expected"),
    [
        # Small CPU steps: all at once, written out.
        (16, 10_000, "cpu", False, None, False, False, _PLAN(16, 16, True)),
        (16, 10_000, "cpu", True, None, False, False, _PLAN(16, 16, True)),
        # A fixed α at d = 10⁶: chunks of 1, in cache.
        (16, 1_000_000, "cpu", False, None, False, False, _PLAN(1, 1, True)),
        (16, 1_000_000, "cpu", False, "auto", False, False, _PLAN(1, 1, True)),
        # An automatic α keeps all n, as does an explicit chunk_size; an automatic α that is
        # chunked draws its chunks again for the sum in cache-sized chunks.
        (16, 1_000_000, "cpu", True, None, False, False, _PLAN(16, 1, True)),
        (16, 1_000_000, "cpu", False, 16, False, False, _PLAN(16, 16, True)),
        (16, 1_000_000, "cpu", False, 8, False, False, _PLAN(8, 8, True)),
        (16, 1_000_000, "cpu", True, 8, False, False, _PLAN(8, 1, True)),
        # Below 4 MiB of perturbations no chunks; with an automatic α none at any size.
        (4, 100_000, "cpu", False, None, False, False, _PLAN(4, 4, True)),
        (64, 100_000, "cpu", True, None, False, False, _PLAN(64, 8, True)),
        # Antithetic pairs are drawn together: a chunk holds whole pairs, at least one.
        (16, 1_000_000, "cpu", False, None, True, False, _PLAN(2, 2, True)),
        (16, 1_000_000, "cpu", True, None, True, False, _PLAN(16, 2, True)),
        (16, 1_000_000, "cpu", True, 3, True, False, _PLAN(2, 2, True)),
        (16, 1_000_000, "cpu", False, 1, True, False, _PLAN(2, 2, True)),
        # A mesh keeps the chunk.
        (16, 1_000_000, "cpu", False, None, True, True, _PLAN(16, 16, True)),
        (16, 1_000_000, "cpu", True, 4, False, True, _PLAN(4, 4, True)),
        # Other backends: jax's draw and the given chunk.
        (16, 1_000_000, "gpu", False, None, False, False, _PLAN(16, 16, False)),
        (16, 1_000_000, "tpu", True, 4, True, False, _PLAN(4, 4, False)),
        (16, 1_000_000, "gpu", False, "auto", False, False, _PLAN(16, 16, False)),
    ],
)
def test_execution_plan(num_candidates, dim, backend, auto, chunk_size, antithetic, mesh, expected):
    params = {"w": jax.ShapeDtypeStruct((dim - 10,), jnp.float32), "b": jnp.zeros(10)}
    sharding = _MESH_SHARDING if mesh else None
    plan = mls.transform._execution_plan(
        num_candidates, params, backend, auto, chunk_size, 2**30, antithetic, sharding
    )
    assert plan == expected


def test_execution_plan_with_auto_chunk_size_fits_the_memory_budget():
    params = jax.ShapeDtypeStruct((1_000_000,), jnp.float32)
    plan = mls.transform._execution_plan(
        16, params, "gpu", True, "auto", 5 * 4_000_000, False, None
    )
    assert plan.chunk == 5


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a rule of CPU steps")
@pytest.mark.parametrize(
    ("temperature", "antithetic", "mesh"),
    [(0.5, False, False), (0.5, True, False), ("auto", False, False), (0.5, False, True)],
)
def test_default_step_on_cpu_goes_in_cache_sized_chunks(temperature, antithetic, mesh):
    # With a fixed α and no chunk_size or mesh, a CPU step whose perturbations exceed 4 MiB
    # (16 candidates of 175,000 float32 parameters, 11.2 MB) is the chunked step with the chunk
    # the plan picks: 4, the largest power of two below the 5 candidates that fit. An automatic
    # α (which would need a second draw) or a mesh keeps all candidates at once.
    params = {"w": jnp.linspace(-1.0, 1.0, 175_000)}
    guide = {"w": jnp.full((175_000,), 0.01)}
    error_rate = lambda p: jnp.mean(jnp.abs(p["w"]) > 0.5).astype(jnp.float32)  # noqa: E731
    kwargs = dict(num_candidates=16, sigma=0.3, temperature=temperature, antithetic=antithetic)
    if mesh:
        kwargs["mesh"] = jax.make_mesh((1,), ("candidates",))

    def run(**more):
        out = _step(mls.mgs(**kwargs, **more), guide, params, error_rate)
        return optax.tree.unwrap_random_key_data(out)

    def loops(**more):
        tx = mls.mgs(**kwargs, **more)
        step = lambda u, s: tx.update(u, s, params, task_loss_fn=error_rate)
        return str(jax.make_jaxpr(step)(guide, tx.init(params))).count("scan[")

    default = run()
    chunked = run(chunk_size=4)
    at_once = run(chunk_size=16)
    if temperature == "auto" or mesh:
        chex.assert_trees_all_equal(default, at_once)
        assert loops() == loops(chunk_size=16)
    else:
        chex.assert_trees_all_equal(default, chunked)
        chex.assert_trees_all_close(default, at_once, atol=1e-6)
        assert loops() == loops(chunk_size=4) > loops(chunk_size=16)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"chunk_size": 3}, {"antithetic": True}, {"temperature": "auto", "chunk_size": 4}],
)
def test_written_out_threefry_leaves_the_step_unchanged(kwargs):
    # CPU draws are written out (_threefry.threefry_normals): the same candidates as
    # jax.random.normal's (bit for bit, tests/sampling_test.py), so the same step up to the
    # order of floating-point sums (XLA fuses the two programs differently).
    params, x, y, mle_loss, error_rate = _mlp_problem()
    guide = jax.grad(mle_loss)(params, x, y)

    def run(written_out):
        plan = {"written_out_draw": written_out}
        tx = mls.transform._mgs_with(plan, num_candidates=8, sigma=0.3, **kwargs)
        return _unwrap(_step(tx, guide, params, error_rate, x=x, y=y))

    chex.assert_trees_all_close(run(True), run(False), rtol=1e-5, atol=1e-6)


def _equations(jaxpr, inside_loop=False):
    """(equation, inside a loop body) for every equation of a jaxpr and of its sub-jaxprs."""
    for eqn in jaxpr.eqns:
        yield eqn, inside_loop
        loop = inside_loop or eqn.primitive.name in ("scan", "while")
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    yield from _equations(sub.jaxpr, loop)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    yield from _equations(sub, loop)


def test_chunked_weighted_sum_is_one_dot_per_chunk_inside_the_loop():
    # A reduce over a broadcast [chunk, d] product runs single-threaded on XLA:CPU; a dot does not.
    # Read from the step's jaxpr (what mgs asks of XLA), not from XLA's text.
    params = {"w": jnp.ones((1000,))}
    guide = {"w": jnp.full((1000,), 0.01)}
    tx = mls.mgs(num_candidates=16, sigma=0.01, weighting="tilted", chunk_size=8, key=0)
    step = lambda u, s: tx.update(u, s, params, task_loss_fn=lambda q: jnp.sum(q["w"]))
    jaxpr = jax.make_jaxpr(step)(guide, tx.init(params)).jaxpr
    in_loops = [eqn for eqn, inside_loop in _equations(jaxpr) if inside_loop]
    chunk_of_deltas = (8, 1000)

    def reads_chunk(eqn):
        return any(getattr(v.aval, "shape", None) == chunk_of_deltas for v in eqn.invars)

    dots = [eqn for eqn in in_loops if eqn.primitive.name == "dot_general" and reads_chunk(eqn)]
    assert dots, "the chunk's weighted sum is not a dot inside the loop"
    # Sums over each candidate's d entries (its log q) are fine; none may run over the chunk.
    over_candidates = [
        eqn
        for eqn in in_loops
        if eqn.primitive.name == "reduce_sum" and reads_chunk(eqn) and 0 in eqn.params["axes"]
    ]
    assert not over_candidates, over_candidates


@pytest.mark.parametrize(
    ("chunk_size", "temperature", "antithetic", "mesh", "draws_per_candidate"),
    [
        (None, 1.0, False, False, 1),
        (8, 1.0, False, False, 1),  # a chunk as large as n is the same single pass
        (2, 1.0, False, False, 1),  # each chunk folded into the weighted mean as it is evaluated
        (3, 1.0, False, False, 1),  # the same, with a remainder chunk
        (3, 1.0, False, True, 1),  # the same over a mesh
        (None, "auto", False, False, 1),
        (2, "auto", False, False, 2),  # α needs every loss: the drawing pass, then the summing one
        (None, 1.0, True, False, 1),  # antithetic pairs: one noise draw per pair
        (4, 1.0, True, False, 1),
        (4, 1.0, True, True, 1),
    ],
)
def test_each_candidate_is_drawn_once_unless_alpha_needs_every_loss(
    monkeypatch, chunk_size, temperature, antithetic, mesh, draws_per_candidate
):
    # Counted as the compiled step runs: a host callback beside each noise draw records the
    # index it draws for. Without chunk_size the candidates are drawn once and kept for the
    # weighted sum; with a chunk size and a fixed α each chunk is folded into the weighted mean
    # as soon as it is evaluated. Only when α is chosen from all the losses are the candidates
    # drawn again from their keys for the sum.
    params, x, y, mle_loss, error_rate = _mlp_problem()
    guide = jax.grad(mle_loss)(params, x, y)
    draws = []
    original = mls.sampling._candidate_noise

    def counted(key, index, *args, **kwargs):
        jax.debug.callback(lambda i: draws.append(int(i)), index)
        return original(key, index, *args, **kwargs)

    def second_pass(*args, **kwargs):
        raise AssertionError("log q must come from the drawing pass, not from the candidates.")

    monkeypatch.setattr(mls.sampling, "_candidate_noise", counted)
    monkeypatch.setattr(mls.sampling, "log_proposal_density", second_pass)
    tx = mls.mgs(
        num_candidates=8,
        sigma=0.3,
        chunk_size=chunk_size,
        temperature=temperature,
        antithetic=antithetic,
        mesh=jax.make_mesh((1,), ("candidates",)) if mesh else None,
    )
    jax.block_until_ready(_step(tx, guide, params, error_rate, x=x, y=y))
    jax.effects_barrier()
    # An antithetic pair draws its noise under the index of its first candidate.
    drawn = range(0, 8, 2) if antithetic else range(8)
    assert sorted(draws) == sorted(list(drawn) * draws_per_candidate)


def test_info_is_consistent():
    tx = mls.mgs(num_candidates=8, mix=0.25, sigma=0.5, key=0)
    _, state = _step(tx, jnp.array([0.3, 0.1]), THETA, quadratic)
    info = state.info
    chex.assert_shape([info.candidate_losses, info.weights], (8,))
    np.testing.assert_allclose(info.weights.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(info.ess, 1.0 / jnp.sum(info.weights**2), rtol=1e-6)
    np.testing.assert_allclose(info.guide_weight, info.weights[2:].sum(), rtol=1e-6)
    np.testing.assert_allclose(info.temperature, 1.0)
    np.testing.assert_allclose(optax.tree.get(state, "ess"), info.ess)


def test_auto_temperature_reaches_target_ess_inside_mgs():
    tx = mls.mgs(
        num_candidates=32,
        sigma=0.5,
        temperature="auto",
        target_ess=0.25,
        weighting="tilted",
        key=0,
    )
    _, state = _step(tx, jnp.array([0.3, 0.1]), THETA, quadratic)
    np.testing.assert_allclose(state.info.ess, 8.0, rtol=1e-3)
    # The α reported is the one the weights used, and the one chosen from these losses.
    losses, alpha = state.info.candidate_losses, state.info.temperature
    np.testing.assert_allclose(
        state.info.weights, mls.candidate_weights(losses, None, alpha, "tilted"), rtol=1e-5
    )
    np.testing.assert_allclose(alpha, mls.auto_temperature(losses, None, 0.25, "tilted"), rtol=1e-5)


def test_auto_temperature_with_constant_loss_keeps_the_previous_alpha():
    # A constant loss says nothing about α: the first step falls back to 1, later steps keep the
    # α of the step before, and tilted weights are uniform whatever α is.
    tx = mls.mgs(num_candidates=8, temperature="auto", weighting="tilted", key=0)
    guide = jnp.array([0.3, 0.1])
    constant = lambda p: jnp.float32(2.0)
    updates, state = _step(tx, guide, THETA, constant)
    assert float(state.info.temperature) == 1.0
    np.testing.assert_allclose(state.info.weights, np.full(8, 1 / 8), rtol=1e-6)
    np.testing.assert_allclose(state.info.ess, 8.0, rtol=1e-6)
    chex.assert_tree_all_finite(updates)
    earlier = state._replace(info=state.info._replace(temperature=jnp.float32(0.37)))
    _, state = _step(tx, guide, THETA, constant, state=earlier)
    np.testing.assert_allclose(state.info.temperature, 0.37)


def test_all_losses_non_finite_gives_zero_update_and_zero_ess():
    tx = mls.mgs(num_candidates=4, key=0)
    updates, state = _step(tx, jnp.array([0.3, 0.1]), THETA, lambda p: jnp.nan * jnp.sum(p))
    chex.assert_trees_all_equal(updates, jnp.zeros(2))
    assert float(state.info.ess) == 0.0
    chex.assert_trees_all_equal(state.info.weights, jnp.zeros(4))


@pytest.mark.parametrize("temperature", [1e38, "auto"])
def test_losses_whose_gaps_overflow_still_rank_the_candidates(temperature):
    # Task losses from -3e38 to 3e38: their gaps overflow float32, yet they rank the candidates.
    # The weights are the float64 softmax's (with a fixed α) or reach the target ESS (with
    # "auto", where the overflowing spread used to make α fall back), chunked or not.
    def huge(theta):
        return 3e38 * jnp.tanh(3.0 * (theta[0] - THETA[0]) + theta[1] - THETA[1])

    results = []
    for chunk_size in (None, 3):
        tx = mls.mgs(
            num_candidates=8,
            sigma=0.5,
            temperature=temperature,
            weighting="tilted",
            chunk_size=chunk_size,
            key=2,
        )
        results.append(_step(tx, jnp.array([0.3, 0.1]), THETA, huge))
    (updates, state), (chunked_updates, chunked_state) = results
    info = state.info
    losses = np.asarray(info.candidate_losses, np.float64)
    assert np.ptp(losses) > np.finfo(np.float32).max  # the gaps really overflow
    if temperature == "auto":
        np.testing.assert_allclose(info.ess, 4.0, rtol=1e-3)
        alpha = float(info.temperature)
    else:
        alpha = temperature
    expected = special.softmax(-losses / alpha)
    np.testing.assert_allclose(info.weights, expected, rtol=1e-4, atol=1e-7)
    assert int(jnp.argmax(info.weights)) == int(np.argmin(losses))
    chex.assert_trees_all_close(chunked_updates, updates, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(chunked_state.info.weights, info.weights, rtol=1e-5, atol=1e-7)


def test_relative_noise_with_a_zero_guide_leaf_stays_finite():
    params = {"a": jnp.array([1.0, 2.0]), "frozen": jnp.ones((3,))}
    guide = {"a": jnp.array([0.1, -0.1]), "frozen": jnp.zeros((3,))}
    tx = mls.mgs(num_candidates=6, noise="relative", key=0)
    updates, state = _step(tx, guide, params, lambda p: jnp.sum(p["a"] ** 2))
    chex.assert_tree_all_finite(updates)
    chex.assert_trees_all_equal(updates["frozen"], jnp.zeros(3))
    np.testing.assert_allclose(state.info.weights.sum(), 1.0, rtol=1e-6)


@pytest.mark.parametrize("chunk_size", [None, 2])
@pytest.mark.parametrize("weighting", ["importance", "tilted", "uniform"])
@pytest.mark.parametrize("noise", ["absolute", "relative"])
def test_non_finite_guide_keeps_the_zero_mean_candidates(chunk_size, weighting, noise):
    params = {"a": jnp.array([1.0, 2.0, -1.0]), "b": jnp.array([0.5, 0.5])}
    guide = {"a": jnp.array([jnp.nan, 0.1, -0.2]), "b": jnp.array([jnp.inf, 0.3])}
    tx = mls.mgs(
        num_candidates=8, sigma=0.5, weighting=weighting, noise=noise, chunk_size=chunk_size, key=0
    )
    updates, state = _step(tx, guide, params, lambda p: jnp.sum(p["a"] ** 2) + jnp.sum(p["b"]))
    chex.assert_tree_all_finite(updates)
    assert float(jnp.abs(updates["a"]).sum()) > 0  # the zero-mean candidates still searched.
    chex.assert_tree_all_finite(state.info.candidate_losses[:4])
    chex.assert_trees_all_equal(state.info.weights[4:], jnp.zeros(4))
    np.testing.assert_allclose(state.info.weights[:4].sum(), 1.0, rtol=1e-6)
    assert float(state.info.guide_weight) == 0.0
    # The update is the weighted mean of the zero-mean candidates, drawn as with a zero guide.
    finite_guide = jax.tree.map(lambda u: jnp.where(jnp.isfinite(u), u, 0.0), guide)
    scales = mls.proposal_scales(guide, 0.5, noise)
    step_key = jax.random.split(tx.init(params).key)[1]
    deltas = mls.sample_candidates(step_key, finite_guide, scales, 8, 0.5)
    expected = jax.tree.map(lambda d: jnp.tensordot(state.info.weights, d, axes=1), deltas)
    chex.assert_trees_all_close(updates, expected, rtol=1e-5, atol=1e-7)


def test_a_tiny_relative_scale_does_not_stop_the_search():
    # mean|u| = 1e-20 on one leaf: 1/σ² overflows float32 there.
    params = {"tiny": jnp.ones(3), "big": jnp.array([1.0, -2.0])}
    guide = {"tiny": jnp.full((3,), 1e-20), "big": jnp.array([-0.5, 1.0])}
    tx = mls.mgs(num_candidates=8, noise="relative", weighting="importance", key=0)
    updates, state = _step(tx, guide, params, lambda p: jnp.sum(p["big"] ** 2))
    chex.assert_tree_all_finite(updates)
    assert float(jnp.abs(updates["big"]).sum()) > 0
    np.testing.assert_allclose(state.info.weights.sum(), 1.0, rtol=1e-6)
    assert float(state.info.ess) > 1.0


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_bfloat16_params_use_the_rounded_perturbations(chunk_size):
    # Around 100 bfloat16 values are 0.5 apart, so most of a 0.2-sized perturbation rounds away.
    params = jnp.array([100.0, -100.0, 0.25], jnp.bfloat16)
    guide = jnp.array([0.3, -0.3, 0.1], jnp.bfloat16)
    tx = mls.mgs(num_candidates=6, sigma=0.2, weighting="tilted", chunk_size=chunk_size, key=1)
    loss = lambda p: jnp.sum(jnp.abs(p.astype(jnp.float32) - jnp.array([101.0, -99.0, 0.0])))
    updates, state = _step(tx, guide, params, loss)
    step_key = jax.random.split(tx.init(params).key)[1]
    scales = mls.proposal_scales(guide, 0.2, "absolute")
    deltas = mls.sample_candidates(step_key, guide, scales, 6, 0.5)
    wide = params.astype(jnp.float32)
    rounded = (wide + deltas).astype(jnp.bfloat16).astype(jnp.float32)
    expected_losses = jax.vmap(loss)(rounded)
    np.testing.assert_allclose(state.info.candidate_losses, expected_losses, rtol=1e-6)
    expected = jnp.tensordot(state.info.weights, rounded - wide, axes=1)
    unrounded = jnp.tensordot(state.info.weights, deltas, axes=1)
    assert float(jnp.max(jnp.abs(expected - unrounded))) > 0.05  # the check can tell them apart
    assert updates.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        updates.astype(jnp.float32), expected.astype(jnp.bfloat16).astype(jnp.float32), rtol=1e-6
    )


def test_params_without_leaves_or_with_integer_leaves_are_rejected():
    tx = mls.mgs()
    with pytest.raises(ValueError, match="no array leaves"):
        tx.update({}, tx.init({}), {}, task_loss_fn=lambda p: jnp.float32(0.0))
    params = {"w": jnp.ones(2), "step": jnp.zeros((), jnp.int32)}
    with pytest.raises(ValueError, match=r"\['step'\].*int32"):
        tx.update(params, tx.init(params), params, task_loss_fn=lambda p: jnp.sum(p["w"]))


@pytest.mark.parametrize("chunk_size", [None, 2, 4, 3])
def test_antithetic_relative_importance_step_on_a_multi_leaf_tree(chunk_size):
    # Pairs are drawn together unchunked and with even chunks, one candidate at a time with odd.
    # The whole step, recomputed from the pure functions: draw, log q, weights, weighted sum.
    params = {"w": jnp.ones((2, 3)), "b": jnp.array([0.5, -0.5])}
    guide = {"w": jnp.full((2, 3), -0.2), "b": jnp.array([0.4, 0.1])}
    tx = mls.mgs(
        num_candidates=8,
        sigma=0.8,
        noise="relative",
        antithetic=True,
        weighting="importance",
        temperature=0.3,
        chunk_size=chunk_size,
        key=11,
    )

    def loss(p):
        return jnp.sum(jnp.abs(p["w"] - 0.5)) + jnp.sum(p["b"] ** 2)

    updates, state = _step(tx, guide, params, loss)
    scales = mls.proposal_scales(guide, 0.8, "relative")
    step_key = jax.random.split(tx.init(params).key)[1]
    deltas = mls.sample_candidates(step_key, guide, scales, 8, 0.5, antithetic=True)
    losses = jax.vmap(lambda d: loss(optax.apply_updates(params, d)))(deltas)
    log_q = jax.vmap(mls.log_proposal_density, in_axes=(0, None, None, None))(
        deltas, guide, scales, 0.5
    )
    weights = mls.candidate_weights(losses, log_q, 0.3, "importance")
    np.testing.assert_allclose(state.info.candidate_losses, losses, rtol=1e-6)
    np.testing.assert_allclose(state.info.weights, weights, rtol=1e-5, atol=1e-7)
    expected = jax.tree.map(lambda d: jnp.tensordot(weights, d, axes=1), deltas)
    chex.assert_trees_all_close(updates, expected, rtol=1e-5, atol=1e-7)


def _random_bits_drawn(jaxpr) -> int:
    """Random words drawn in a jaxpr and its sub-jaxprs (loop bodies counted once): the entries
    of every random_bits, and of every written-out draw (`_threefry.threefry_normals`, a cond
    that makes normals)."""
    total = 0
    for eqn in jaxpr.eqns:
        written_out = eqn.primitive.name == "cond" and "erf_inv" in str(eqn.params["branches"])
        if eqn.primitive.name == "random_bits" or written_out:
            total += sum(int(np.prod(v.aval.shape)) for v in eqn.outvars)
            continue
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    total += _random_bits_drawn(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    total += _random_bits_drawn(sub)
    return total


@pytest.mark.parametrize("written_out", [True, False])
@pytest.mark.parametrize("chunk_size", [None, 4])
def test_antithetic_pairs_draw_their_noise_once(chunk_size, written_out):
    params = {"w": jnp.ones((3, 5)), "b": jnp.zeros(5)}

    def bits(antithetic):
        tx = mls.transform._mgs_with(
            {"written_out_draw": written_out},
            num_candidates=8,
            antithetic=antithetic,
            chunk_size=chunk_size,
        )
        jaxpr = jax.make_jaxpr(
            lambda g, s: tx.update(g, s, params, task_loss_fn=lambda p: jnp.sum(p["w"]))
        )(params, tx.init(params))
        return _random_bits_drawn(jaxpr.jaxpr)

    assert bits(False) > 0
    assert bits(True) * 2 == bits(False)


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_steps_write_their_draws_out_on_cpu_only(monkeypatch, backend):
    params = {"w": jnp.ones((3, 5)), "b": jnp.zeros(5)}
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    tx = mls.mgs(num_candidates=8, chunk_size=4)
    jaxpr = str(
        jax.make_jaxpr(
            lambda g, s: tx.update(g, s, params, task_loss_fn=lambda p: jnp.sum(p["w"]))
        )(params, tx.init(params))
    )
    assert ("erf_inv" in jaxpr and "cond[" in jaxpr) == (backend == "cpu")
    assert ("random_bits[" in jaxpr) == (backend != "cpu")


def test_antithetic_candidates_are_mirrored():
    tx = mls.mgs(num_candidates=4, antithetic=True, mix=0.5, sigma=0.3, key=0)
    guide = jnp.array([0.2, 0.0])
    _, state = _step(tx, guide, jnp.zeros(2), lambda p: p[0] + 10 * p[1])
    losses = state.info.candidate_losses
    # A linear loss of mirrored candidates: l(m + ε) + l(m - ε) = 2 l(m).
    np.testing.assert_allclose(losses[0] + losses[1], 0.0, atol=1e-5)
    np.testing.assert_allclose(losses[2] + losses[3], 2 * 0.2, atol=1e-5)


# Extra arguments.


def test_extra_args_reach_the_task_loss_by_signature():
    seen = []

    def task_loss(params, batch, *, scale=1.0):
        seen.append((jnp.shape(batch), scale))
        return scale * jnp.sum((params - batch) ** 2)

    tx = optax.chain(optax.sgd(0.1), mls.mgs(num_candidates=4, temperature=1e-7))
    params = jnp.zeros(2)
    state = tx.init(params)
    updates, state = jax.jit(
        lambda s, b: tx.update(
            params, s, params, task_loss_fn=task_loss, batch=b, scale=2.0, unused=1
        )
    )(state, jnp.ones(2))
    losses = optax.tree.get(state, "candidate_losses")
    best = losses.min()
    np.testing.assert_allclose(2.0 * jnp.sum((params + updates - 1.0) ** 2), best, rtol=1e-5)
    # Every call got the batch and the scale passed to update, never the default; `unused`,
    # which the signature does not name, would have raised a TypeError.
    assert seen
    assert all(shape == (2,) and scale == 2.0 for shape, scale in seen), seen


def test_task_loss_with_var_kwargs_gets_every_extra_arg():
    def task_loss(params, **kwargs):
        return jnp.sum(params) * kwargs["factor"]

    updates, state = _step(mls.mgs(), jnp.ones(2), jnp.zeros(2), task_loss, factor=3.0)
    chex.assert_tree_all_finite(updates)


# Composition.


def test_inject_hyperparams_gives_same_updates_and_takes_new_values_without_retracing():
    params, x, y, mle_loss, error_rate = _mlp_problem()
    guide = jax.grad(mle_loss)(params, x, y)
    kwargs = dict(num_candidates=6, sigma=0.3, temperature=0.5, mix=0.5, key=3)
    direct, _ = _step(mls.mgs(**kwargs), guide, params, error_rate, x=x, y=y)
    injected_tx = optax.inject_hyperparams(mls.mgs, static_args=("num_candidates", "mix", "key"))(
        **kwargs
    )
    state = injected_tx.init(params)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(state):
        return injected_tx.update(guide, state, params, task_loss_fn=error_rate, x=x, y=y)

    injected, new_state = step(state)
    chex.assert_trees_all_close(injected, direct, atol=1e-6)
    state.hyperparams["temperature"] = jnp.asarray(5.0, jnp.float32)
    state.hyperparams["sigma"] = jnp.asarray(0.1, jnp.float32)
    changed, new_state = step(state)
    np.testing.assert_allclose(new_state.inner_state.info.temperature, 5.0)
    # The traced values reach the update: it is that of mgs built with them.
    expected, _ = _step(
        mls.mgs(**{**kwargs, "sigma": 0.1, "temperature": 5.0}), guide, params, error_rate, x=x, y=y
    )
    chex.assert_trees_all_close(changed, expected, atol=1e-6)
    assert optax.tree.norm(optax.tree.sub(changed, injected)) > 1e-3


def test_inject_hyperparams_with_auto_temperature():
    kwargs = dict(num_candidates=8, temperature="auto", target_ess=0.5, weighting="tilted")
    tx = optax.inject_hyperparams(mls.mgs, static_args=("num_candidates", "mix", "key"))(**kwargs)
    guide = jnp.array([0.3, 0.1])
    updates, state = _step(tx, guide, THETA, quadratic)
    np.testing.assert_allclose(optax.tree.get(state, "ess"), 4.0, rtol=1e-3)
    # A traced target_ess changes the chosen α, the weights and the update.
    state = tx.init(THETA)
    state.hyperparams["target_ess"] = jnp.asarray(0.25, jnp.float32)
    lower, state = _step(tx, guide, THETA, quadratic, state=state)
    np.testing.assert_allclose(optax.tree.get(state, "ess"), 2.0, rtol=1e-3)
    expected, _ = _step(mls.mgs(**{**kwargs, "target_ess": 0.25}), guide, THETA, quadratic)
    chex.assert_trees_all_close(lower, expected, atol=1e-6)
    assert float(jnp.max(jnp.abs(lower - updates))) > 1e-4


def test_multisteps_accumulates_then_searches():
    tx = optax.MultiSteps(mls.mgs(num_candidates=4, key=0), every_k_schedule=2)
    state = tx.init(THETA)
    step = jax.jit(lambda u, s: tx.update(u, s, THETA, task_loss_fn=quadratic))
    updates, state = step(jnp.array([0.1, 0.1]), state)
    chex.assert_trees_all_equal(updates, jnp.zeros(2))
    updates, state = step(jnp.array([0.3, 0.1]), state)
    assert not np.allclose(updates, 0.0)
    assert int(optax.tree.get(state, "count")) == 1


def test_apply_if_finite_skips_non_finite_guides():
    tx = optax.apply_if_finite(mls.mgs(num_candidates=4, key=0), max_consecutive_errors=2)
    state = tx.init(THETA)
    step = jax.jit(lambda u, s: tx.update(u, s, THETA, task_loss_fn=quadratic))
    updates, state = step(jnp.array([0.1, 0.1]), state)
    chex.assert_tree_all_finite(updates)
    updates, state = step(jnp.array([jnp.nan, 0.1]), state)
    chex.assert_trees_all_equal(updates, jnp.zeros(2))
    assert int(state.notfinite_count) == 1


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_flax_params_keep_structure_and_dtype_and_the_step_lands_on_the_best_candidate(dtype):
    params, x, y, mle_loss, error_rate = _mlp_problem(dtype)
    # α → 0: each step applies the best candidate, whose task loss MGSInfo recorded. A small
    # weight penalty breaks the ties of the 0/1 error.
    tx = optax.chain(optax.adam(0.05), mls.mgs(num_candidates=8, sigma=0.5, temperature=1e-7))

    def task_loss(params, x, y):
        penalty = sum(jnp.sum(p.astype(jnp.float32) ** 2) for p in jax.tree.leaves(params))
        return error_rate(params, x, y) + 1e-4 * penalty

    state = tx.init(params)

    @jax.jit
    def train_step(params, state):
        grads = jax.grad(mle_loss)(params, x, y)
        updates, state = tx.update(grads, state, params, task_loss_fn=task_loss, x=x, y=y)
        return optax.apply_updates(params, updates), state, updates

    for _ in range(30):
        params, state, updates = train_step(params, state)
        losses = optax.tree.get(state, "candidate_losses")
        if dtype == jnp.float32:  # bfloat16 rounds the update again when it is applied
            np.testing.assert_allclose(task_loss(params, x, y), jnp.min(losses), rtol=1e-6)
    chex.assert_trees_all_equal_structs(updates, params)
    chex.assert_trees_all_equal_dtypes(updates, params)
    chex.assert_trees_all_equal_dtypes(params, jax.tree.map(lambda p: p.astype(dtype), params))


def test_reference_configuration_chain_runs_on_a_flax_model():
    params, x, y, mle_loss, error_rate = _mlp_problem()
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.scale(-1.0),
        mls.mgs(num_candidates=4, sigma=1.0, noise="relative", temperature=1 / 100.0),
        optax.scale(-1.0),
        optax.clip_by_global_norm(1.0),
        optax.adamw(1e-2, weight_decay=0.01),
    )
    state = tx.init(params)

    @jax.jit
    def train_step(params, state):
        grads = jax.grad(mle_loss)(params, x, y)
        updates, state = tx.update(grads, state, params, task_loss_fn=error_rate, x=x, y=y)
        return optax.apply_updates(params, updates), state

    for _ in range(5):
        params, state = train_step(params, state)
    chex.assert_tree_all_finite(params)
    mgs_state = state[2]
    info = mgs_state.info
    np.testing.assert_allclose(info.weights.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(info.ess, 1.0 / jnp.sum(info.weights**2), rtol=1e-5)
    assert int(mgs_state.count) == 5


# Compilation and state dtypes.


def test_fifty_steps_with_changing_data_compile_once_and_state_dtypes_are_stable():
    params, _, _, mle_loss, error_rate = _mlp_problem()
    tx = optax.chain(optax.adam(1e-2), mls.mgs(num_candidates=4, temperature="auto"))
    state = tx.init(params)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def train_step(params, state, x, y):
        grads = jax.grad(mle_loss)(params, x, y)
        updates, state = tx.update(grads, state, params, task_loss_fn=error_rate, x=x, y=y)
        return optax.apply_updates(params, updates), state

    def signature(tree):
        leaves = jax.tree.leaves(_unwrap(tree))
        assert not any(leaf.weak_type for leaf in leaves)
        return [(leaf.shape, leaf.dtype) for leaf in leaves]

    initial = signature(state)
    with _count_compilations() as compiled:
        for i in range(50):
            x = jax.random.normal(jax.random.key(i), (32, 4))
            y = jax.random.randint(jax.random.key(100 + i), (32,), 0, 3)
            params, state = train_step(params, state, x, y)
            assert signature(state) == initial
    assert compiled.count("train_step") == 1, compiled
    assert train_step._cache_size() == 1


class _count_compilations(contextlib.ContextDecorator):
    """Collects the names of the functions that XLA compiles, from jax's compile log."""

    def __enter__(self) -> list[str]:
        self.names: list[str] = []
        names = self.names

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                match = re.match(r"Compiling jit\((\w+)\)", record.getMessage())
                if match:
                    names.append(match.group(1))

        self.handler = Handler(level=logging.DEBUG)
        self.logger = logging.getLogger("jax")
        self.previous_level = self.logger.level
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.DEBUG)
        self.log_compiles = jax.log_compiles(True)
        self.log_compiles.__enter__()
        return names

    def __exit__(self, *exc: object) -> None:
        self.log_compiles.__exit__(*exc)
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.previous_level)


def _temp_copies(dim, num_candidates, **kwargs):
    """XLA's temporary memory for one step, in float32 copies of d parameters."""
    tx = mls.mgs(num_candidates=num_candidates, **kwargs)
    params = jnp.zeros((dim,))
    step = jax.jit(lambda u, s, p: tx.update(u, s, p, task_loss_fn=lambda q: jnp.sum(q**2)))
    compiled = step.lower(params, tx.init(params), params).compile()
    return compiled.memory_analysis().temp_size_in_bytes / (4 * dim)


def test_chunk_size_bounds_temporary_memory():
    # About c candidates are live at once (a few copies each), whatever n is, while the
    # unchunked step keeps all n. Bounds within a factor, not XLA's exact byte counts.
    dim = 100_000
    copies = {c: _temp_copies(dim, 64, chunk_size=c) for c in (1, 8, 64)}
    for chunk in (1, 8):
        assert copies[chunk] <= 4 * (chunk + 1), copies
    assert copies[64] >= 2 * 64, copies  # the measure sees the candidates
    assert copies[1] < copies[8] < copies[64]
    # It does not grow with n at a fixed chunk size.
    assert _temp_copies(dim, 256, chunk_size=8) <= 4 * (8 + 1)
    if jax.default_backend() == "cpu":
        # Without chunk_size, n · d · 4 bytes above 4 MiB go in cache-sized chunks (here 8).
        assert _temp_copies(dim, 64, chunk_size=None) <= 4 * (8 + 1)


@pytest.mark.parametrize(("budget_candidates", "expected_chunk"), [(12, None), (8, None), (3, 3)])
def test_auto_chunk_size_fits_the_memory_budget(budget_candidates, expected_chunk):
    # d = 1000 float32 entries: 4000 bytes per candidate; n = 8.
    params = {"a": jnp.linspace(-1.0, 1.0, 600), "b": jnp.linspace(0.0, 2.0, 400)}
    guide = jax.tree.map(lambda p: 0.1 * p, params)
    loss = lambda p: jnp.sum(jnp.abs(p["a"])) + jnp.sum(jnp.square(p["b"]))
    budget = budget_candidates * 4000
    assert mls.auto_chunk_size(8, params, budget) == (expected_chunk or 8)

    def run(**kwargs):
        tx = mls.mgs(num_candidates=8, sigma=0.2, key=4, **kwargs)
        return _step(tx, guide, params, loss)

    auto = run(chunk_size="auto", memory_budget=budget)
    explicit = run(chunk_size=expected_chunk)
    # The same path as the explicit chunk size, so the same result bit for bit.
    chex.assert_trees_all_equal(
        optax.tree.unwrap_random_key_data(auto), optax.tree.unwrap_random_key_data(explicit)
    )


def test_auto_chunk_size_bounds_temporary_memory_like_an_explicit_chunk():
    # A budget of 4 candidates' perturbations: memory within a factor of 4 copies, far below the
    # unchunked step's.
    dim = 100_000
    auto = _temp_copies(dim, 64, chunk_size="auto", memory_budget=4 * 4 * dim)
    assert auto <= 4 * (4 + 1)
    assert auto < _temp_copies(dim, 64, chunk_size=64) / 4


# Bad input.


def test_options_after_sigma_are_keyword_only():
    parameters = inspect.signature(mls.mgs).parameters.values()
    positional = [p.name for p in parameters if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert positional == ["num_candidates", "sigma"]
    mls.mgs(8, 0.1)
    with pytest.raises(TypeError):
        mls.mgs(8, 0.1, 1.0)  # a temperature by position would be easy to misread


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(num_candidates=0), "num_candidates"),
        (dict(num_candidates=2.5), "num_candidates"),
        (dict(sigma=0.0), "sigma"),
        (dict(sigma=-1.0), "sigma"),
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(temperature=float("inf")), "temperature"),
        (dict(sigma=float("inf")), "sigma"),
        (dict(sigma=float("nan")), "sigma"),
        (dict(temperature="hot"), "temperature"),
        (dict(mix=1.5), "mix"),
        (dict(chunk_size="big"), "chunk_size"),
        (dict(chunk_size="auto", memory_budget=0), "memory_budget"),
        (dict(chunk_size="auto", memory_budget=2.5), "memory_budget"),
        (dict(mix=-0.1), "mix"),
        (dict(weighting="softmax"), "weighting"),
        (dict(noise="uniform"), "noise"),
        (dict(num_candidates=6, antithetic=True), "antithetic"),
        (dict(num_candidates=4, mix=0.25, antithetic=True), "antithetic"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(key="seed"), "key"),
        (dict(temperature="auto", target_ess=0.0), "target_ess"),
        (dict(temperature="auto", target_ess=1.5), "target_ess"),
    ],
)
def test_invalid_hyperparameters_raise_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mls.mgs(**kwargs)


def test_missing_params_names_the_fix():
    tx = mls.mgs()
    state = tx.init(THETA)
    with pytest.raises(ValueError, match="params"):
        tx.update(THETA, state, task_loss_fn=quadratic)


def test_missing_task_loss_names_the_fix():
    tx = mls.mgs()
    with pytest.raises(ValueError, match="task_loss_fn"):
        tx.update(THETA, tx.init(THETA), THETA)


def test_guide_with_another_structure_is_rejected():
    params = {"a": jnp.zeros(2), "b": jnp.zeros(3)}
    tx = mls.mgs()
    with pytest.raises(ValueError, match="tree structure"):
        tx.update({"a": jnp.zeros(2)}, tx.init(params), params, task_loss_fn=lambda p: 0.0)
    with pytest.raises(ValueError, match="shape"):
        tx.update(
            {"a": jnp.zeros(2), "b": jnp.zeros(4)},
            tx.init(params),
            params,
            task_loss_fn=lambda p: 0.0,
        )


def test_non_scalar_task_loss_is_rejected_when_traced():
    tx = mls.mgs()
    with pytest.raises(ValueError, match="scalar"):
        jax.jit(lambda s: tx.update(THETA, s, THETA, task_loss_fn=lambda p: p**2))(tx.init(THETA))


def test_task_loss_that_cannot_take_params_is_rejected():
    tx = mls.mgs()
    with pytest.raises(ValueError, match="task_loss_fn"):
        tx.update(THETA, tx.init(THETA), THETA, task_loss_fn=lambda p: p["weights"].sum())


def test_import_mlesearch_needs_only_jax_optax_and_chex():
    # In a fresh process: what `import mlesearch` pulls in, and that the toolkit still loads.
    code = (
        "import sys, mlesearch\n"
        "heavy = ('flax', 'ml_collections', 'tqdm', 'matplotlib', 'orbax', 'evosax')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "print(mlesearch.models.TransformerLM.__name__, mlesearch.decoding.__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == ["[]", "TransformerLM mlesearch.seq.decoding"], (
        result.stdout
    )
