"""Tests for `mlesearch.baselines`: policy gradient, minimum risk training, and the ES adapters."""

from __future__ import annotations

import ast
import collections
import functools
import inspect
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import flatten_util

from mlesearch import baselines
from mlesearch.seq import host

# A categorical policy softmax(θ) over 5 actions with fixed costs: E[c] = softmax(θ) · c.
THETA = jnp.array([0.3, -0.2, 0.5, 0.0, -0.6])
ACTION_COSTS = jnp.array([1.0, 3.0, -1.0, 0.5, 2.0])


def _exact_expected_cost_gradient() -> jax.Array:
    return jax.grad(lambda theta: jax.nn.softmax(theta) @ ACTION_COSTS)(THETA)


def _reinforce_gradient(
    theta: jax.Array, key: jax.Array, shape: tuple[int, ...], baseline: float
) -> jax.Array:
    actions = jax.random.categorical(key, theta, shape=shape)

    def surrogate(theta: jax.Array) -> jax.Array:
        log_probs = jax.nn.log_softmax(theta)[actions]
        return baselines.policy_gradient_loss(log_probs, ACTION_COSTS[actions], baseline)

    return jax.grad(surrogate)(theta)


# ---------------------------------------------------------------------------------------------
# Policy gradient.


@pytest.mark.parametrize("shape, baseline", [((40_000,), 0.0), ((400, 100), 1.2)])
def test_reinforce_gradient_matches_exact_gradient_in_expectation(shape, baseline):
    estimate = jax.jit(_reinforce_gradient, static_argnums=(2,))(
        THETA, jax.random.key(0), shape, baseline
    )
    # Per-sample standard deviation is below 3, so 40k samples give a standard error below 0.015.
    np.testing.assert_allclose(estimate, _exact_expected_cost_gradient(), atol=0.05)


def test_gradient_does_not_flow_through_costs_or_baseline():
    actions = jnp.array([0, 2, 2])
    base_costs = jnp.array([1.0, 2.0, 3.0])
    # At theta = e_0, the θ-dependent costs and baseline below equal base_costs and 1.0 in value,
    # but not in derivative.
    theta = jnp.array([1.0, 0.0, 0.0, 0.0, 0.0])

    def surrogate(theta: jax.Array, dependent: bool) -> jax.Array:
        log_probs = jax.nn.log_softmax(theta)[actions]
        if dependent:
            costs = base_costs + theta[0] - theta[0] ** 2
            baseline = 0.5 * jnp.sum(theta) + 0.5
        else:
            costs, baseline = base_costs, 1.0
        return baselines.policy_gradient_loss(log_probs, costs, baseline)

    np.testing.assert_allclose(
        jax.grad(surrogate)(theta, True), jax.grad(surrogate)(theta, False), rtol=1e-6
    )


def test_value_is_mean_advantage_times_log_prob():
    log_probs = jnp.array([-1.0, -2.0, -0.5])
    costs = jnp.array([2.0, 1.0, 0.0])
    got = baselines.policy_gradient_loss(log_probs, costs, baseline=1.0)
    np.testing.assert_allclose(got, (1.0 * -1.0 + 0.0 * -2.0 + -1.0 * -0.5) / 3)


def test_mask_leaves_out_entries():
    log_probs = jnp.array([[-1.0, -2.0], [-0.5, -9.0]])
    costs = jnp.array([[2.0, 1.0], [0.0, 100.0]])
    mask = jnp.array([[True, True], [True, False]])
    got = baselines.policy_gradient_loss(log_probs, costs, mask=mask)
    np.testing.assert_allclose(got, (2.0 * -1.0 + 1.0 * -2.0 + 0.0) / 3)


@pytest.mark.parametrize("mix, weights", [("convex", (0.75, 0.25)), ("additive", (1.0, 0.25))])
def test_mle_mix(mix, weights):
    log_probs = jnp.array([-1.0, -2.0])
    costs = jnp.array([2.0, 1.0])
    pg = baselines.policy_gradient_loss(log_probs, costs)
    got = jax.jit(
        lambda w: baselines.policy_gradient_loss(
            log_probs, costs, mle_loss=jnp.asarray(3.0), mle_weight=w, mix=mix
        )
    )(0.25)  # a traced weight
    np.testing.assert_allclose(got, weights[0] * pg + weights[1] * 3.0, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mix": "sum"}, "mix"),
        ({"mle_weight": 1.5, "mle_loss": 1.0}, r"mle_weight must be in \[0.0, 1.0\]"),
        ({"mle_weight": -1.0, "mle_loss": 1.0, "mix": "additive"}, "mle_weight"),
        ({"mle_weight": 0.5}, "mle_loss"),
        ({"mask": jnp.ones((2, 1), bool)}, "same shape"),
    ],
)
def test_policy_gradient_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        baselines.policy_gradient_loss(jnp.zeros(2), jnp.zeros(2), **kwargs)


def test_policy_gradient_rejects_mismatched_costs():
    with pytest.raises(ValueError, match="same shape"):
        baselines.policy_gradient_loss(jnp.zeros((2, 3)), jnp.zeros((2,)))


def test_update_baseline_is_an_exponential_moving_average():
    costs = jnp.array([[1.0, 3.0], [5.0, 100.0]])
    mask = jnp.array([[True, True], [True, False]])
    np.testing.assert_allclose(baselines.update_baseline(1.0, costs[0], 0.9), 0.9 + 0.1 * 2.0)
    np.testing.assert_allclose(
        baselines.update_baseline(1.0, costs, 0.5, mask=mask), 0.5 + 0.5 * 3.0
    )
    with pytest.raises(ValueError, match="decay"):
        baselines.update_baseline(0.0, costs, 1.0)


# ---------------------------------------------------------------------------------------------
# Group-relative policy gradient (GRPO, RLOO).

GROUP_MASK = jnp.array(
    [
        [True, True, True, True],
        [True, False, True, True],  # one sample left out
        [False, False, True, False],  # one valid sample: no signal
        [False, False, False, False],  # none valid
    ]
)


def _hand_advantages(costs, mask, kind: str, eps: float = 1e-6) -> np.ndarray:
    """The advantages written out one group at a time, in float64."""
    costs, mask = np.asarray(costs, np.float64), np.asarray(mask, bool)
    advantages = np.zeros_like(costs)
    for row in range(costs.shape[0]):
        valid = costs[row, mask[row]]
        if valid.size < 2:
            continue
        if kind == "grpo":
            group = (valid - valid.mean()) / (valid.std() + eps)  # numpy's std is the population's
        else:
            group = np.array([c - (valid.sum() - c) / (valid.size - 1) for c in valid])
        advantages[row, mask[row]] = group
    return advantages


def _random_costs(shape: tuple[int, int] = (4, 4)) -> jax.Array:
    return jax.random.normal(jax.random.key(0), shape) * 2.0 + 1.0


def test_grpo_advantages_have_group_mean_0_and_std_1():
    advantages = jax.jit(baselines.group_advantages)(_random_costs((5, 8)))
    chex.assert_shape(advantages, (5, 8))
    np.testing.assert_allclose(jnp.mean(advantages, axis=-1), 0.0, atol=1e-6)
    np.testing.assert_allclose(jnp.std(advantages, axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    "shift, scale", [(jnp.array([[-3.0], [0.0], [10.0], [100.0]]), 1.0), (0.0, 7.5)]
)
def test_grpo_advantages_are_invariant_to_shifting_and_scaling_each_groups_costs(shift, scale):
    costs = _random_costs()
    advantages = jax.jit(baselines.group_advantages)
    np.testing.assert_allclose(
        advantages(scale * costs + shift), advantages(costs), rtol=1e-4, atol=1e-4
    )


def test_grpo_advantages_match_hand_computation_with_population_std():
    costs = _random_costs()
    got = jax.jit(lambda c, m: baselines.group_advantages(c, mask=m))(costs, GROUP_MASK)
    np.testing.assert_allclose(got, _hand_advantages(costs, GROUP_MASK, "grpo"), rtol=1e-5)


def test_rloo_advantages_are_cost_minus_mean_of_the_other_valid_samples():
    costs = jnp.array([[1.0, 2.0, 6.0, 3.0], [4.0, 100.0, 0.0, 2.0]])
    mask = jnp.array([[True, True, True, True], [True, False, True, True]])
    got = jax.jit(lambda c, m: baselines.group_advantages(c, mask=m, kind="rloo"))(costs, mask)
    # Row 0: 1 - 11/3, 2 - 10/3, 6 - 2, 3 - 3; row 1 without 100: 4 - 1, 0 - 3, 2 - 2.
    expected = [[1 - 11 / 3, 2 - 10 / 3, 4.0, 0.0], [3.0, 0.0, -3.0, 0.0]]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got, _hand_advantages(costs, mask, "rloo"), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_masked_samples_and_groups_under_2_valid_samples_get_advantage_0(kind):
    costs = _random_costs()
    # What masked entries hold must not matter, not even inf or NaN.
    poisoned = jnp.where(GROUP_MASK, costs, jnp.array([jnp.nan, jnp.inf, -jnp.inf, 1e30])[None])
    got = jax.jit(lambda c: baselines.group_advantages(c, mask=GROUP_MASK, kind=kind))(poisoned)
    np.testing.assert_array_equal(jnp.where(GROUP_MASK, 0.0, got), 0.0)
    np.testing.assert_array_equal(got[2:], 0.0)
    # Row 1 is its 3 valid samples on their own.
    alone = baselines.group_advantages(costs[1:2, jnp.array([0, 2, 3])], kind=kind)
    np.testing.assert_allclose(got[1, jnp.array([0, 2, 3])], alone[0], rtol=1e-6)


def test_group_advantages_of_equal_costs_are_0():
    advantages = baselines.group_advantages(jnp.full((2, 3), 4.0))
    np.testing.assert_array_equal(advantages, 0.0)


def test_group_advantages_stop_gradients():
    gradient = jax.grad(lambda c: jnp.sum(baselines.group_advantages(c) ** 3))(_random_costs())
    np.testing.assert_array_equal(gradient, 0.0)


def test_grpo_loss_gives_masked_samples_and_groups_under_2_valid_samples_no_gradient():
    costs = _random_costs()
    log_probs = jax.random.normal(jax.random.key(4), (4, 4)) - 2.0
    poison = jnp.array([jnp.nan, jnp.inf, -jnp.inf, 1e30])[None]
    old_log_probs = log_probs + 0.1

    def loss(log_probs: jax.Array) -> jax.Array:
        return baselines.grpo_loss(
            jnp.where(GROUP_MASK, log_probs, poison),
            jnp.where(GROUP_MASK, costs, poison),
            old_log_probs=jnp.where(GROUP_MASK, old_log_probs, poison),
            mask=GROUP_MASK,
        )

    value, gradient = jax.jit(jax.value_and_grad(loss))(log_probs)
    chex.assert_tree_all_finite((value, gradient))
    np.testing.assert_array_equal(jnp.where(GROUP_MASK, 0.0, gradient), 0.0)
    np.testing.assert_array_equal(gradient[2:], 0.0)
    assert jnp.all(gradient[:2][GROUP_MASK[:2]] != 0.0)


def _sampled_actions(shape: tuple[int, int] = (4, 6)) -> jax.Array:
    return jax.random.categorical(jax.random.key(1), THETA, shape=shape)


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
@pytest.mark.parametrize("masked", [False, True])
def test_grpo_gradient_without_old_log_probs_is_the_normalised_policy_gradient(kind, masked):
    actions = _sampled_actions()
    costs = ACTION_COSTS[actions]
    mask = GROUP_MASK[:, jnp.array([0, 1, 2, 3, 0, 1])] if masked else None  # (4, 6)
    hand_mask = np.ones(actions.shape, bool) if mask is None else np.asarray(mask)
    advantages = jnp.asarray(_hand_advantages(costs, hand_mask, kind), jnp.float32)

    def grpo(theta: jax.Array) -> jax.Array:
        log_probs = jax.nn.log_softmax(theta)[actions]
        return baselines.grpo_loss(log_probs, costs, mask=mask, advantage=kind)

    def explicit(theta: jax.Array) -> jax.Array:
        log_probs = jax.nn.log_softmax(theta)[actions]
        return jnp.sum(jnp.where(hand_mask, advantages * log_probs, 0.0)) / hand_mask.sum()

    np.testing.assert_allclose(
        jax.jit(jax.grad(grpo))(THETA), jax.grad(explicit)(THETA), rtol=1e-5, atol=1e-6
    )


def test_grpo_loss_is_minus_the_clipped_reward_objective_of_grpo():
    keys = jax.random.split(jax.random.key(2), 3)
    log_probs = jax.random.normal(keys[0], (3, 5)) - 5.0
    old_log_probs = log_probs + 0.4 * jax.random.normal(keys[1], (3, 5))  # some ratios clipped
    reference_log_probs = log_probs + 0.3 * jax.random.normal(keys[2], (3, 5))
    costs = _random_costs((3, 5))
    epsilon, beta = 0.2, 0.05

    def grpo_objective(log_probs: jax.Array) -> jax.Array:
        """[1]'s objective as written there, to maximise: rewards, min, minus the KL penalty."""
        rewards = -costs
        reward_advantages = (rewards - rewards.mean(-1, keepdims=True)) / (
            rewards.std(-1, keepdims=True) + 1e-6
        )
        ratio = jnp.exp(log_probs - old_log_probs)
        surrogate = jnp.minimum(
            ratio * reward_advantages, jnp.clip(ratio, 1 - epsilon, 1 + epsilon) * reward_advantages
        )
        kl = jnp.exp(reference_log_probs - log_probs) - (reference_log_probs - log_probs) - 1.0
        return jnp.mean(surrogate - beta * kl)

    def loss(log_probs: jax.Array) -> jax.Array:
        return baselines.grpo_loss(
            log_probs,
            costs,
            old_log_probs=old_log_probs,
            clip_epsilon=epsilon,
            reference_log_probs=reference_log_probs,
            kl_weight=beta,
        )

    ratios = jnp.exp(log_probs - old_log_probs)
    assert jnp.any(jnp.abs(ratios - 1.0) > epsilon) and jnp.any(jnp.abs(ratios - 1.0) < epsilon)
    value, gradient = jax.jit(jax.value_and_grad(loss))(log_probs)
    np.testing.assert_allclose(value, -grpo_objective(log_probs), rtol=1e-5)
    np.testing.assert_allclose(gradient, -jax.grad(grpo_objective)(log_probs), rtol=1e-5, atol=1e-7)


# Costs (0, 1) give advantages (-1, +1): sample 0 is better than its group, sample 1 worse.
@pytest.mark.parametrize(
    "sample, ratio, clipped",
    [
        (0, 1.5, True),  # better, and already made more likely than the trust region allows
        (0, 1.1, False),
        (0, 0.5, False),  # better, but made less likely: the gradient still pushes it up
        (1, 0.5, True),  # worse, and already made less likely than the trust region allows
        (1, 0.9, False),
        (1, 1.5, False),  # worse, but made more likely: the gradient still pushes it down
    ],
)
def test_clipping_stops_the_gradient_only_beyond_the_trust_region_in_the_improving_direction(
    sample, ratio, clipped
):
    costs = jnp.array([[0.0, 1.0]])
    log_probs = jnp.zeros((1, 2)).at[0, sample].set(jnp.log(ratio))

    @jax.jit
    def gradient(log_probs: jax.Array, clip_epsilon: jax.Array) -> jax.Array:
        return jax.grad(baselines.grpo_loss)(
            log_probs, costs, old_log_probs=jnp.zeros((1, 2)), clip_epsilon=clip_epsilon
        )

    advantage = (-1.0, 1.0)[sample]
    expected = 0.0 if clipped else advantage * ratio / 2  # d(r A) / d log r, over 2 samples
    np.testing.assert_allclose(gradient(log_probs, 0.2)[0, sample], expected, rtol=1e-5)


@pytest.mark.parametrize("kind, inner_steps", [("grpo", 1), ("rloo", 1), ("grpo", 4)])
def test_grpo_descent_moves_probability_to_the_lowest_cost_action(kind, inner_steps):
    def loss(theta, actions, old_log_probs):
        log_probs = jax.nn.log_softmax(theta)[actions]
        return baselines.grpo_loss(
            log_probs, ACTION_COSTS[actions], old_log_probs=old_log_probs, advantage=kind
        )

    @jax.jit
    def train(theta: jax.Array) -> jax.Array:
        def step(theta, key):
            actions = jax.random.categorical(key, theta, shape=(8, 4))
            old_log_probs = jax.nn.log_softmax(theta)[actions]
            for _ in range(inner_steps):  # several steps on one batch of samples, as in PPO
                theta = theta - 0.5 * jax.grad(loss)(theta, actions, old_log_probs)
            return theta, None

        return jax.lax.scan(step, theta, jax.random.split(jax.random.key(3), 60))[0]

    before, after = jax.nn.softmax(THETA), jax.nn.softmax(train(THETA))
    best = jnp.argmin(ACTION_COSTS)
    assert after[best] > 0.9 > before[best]
    assert jnp.argmax(after) == best


def test_kl_term_is_0_at_the_reference_and_positive_elsewhere():
    log_probs = jnp.array([[-1.0, -2.0, -0.5], [-3.0, -1.5, -2.5]])
    costs = _random_costs((2, 3))

    def loss(log_probs, reference_log_probs, kl_weight):
        return baselines.grpo_loss(
            log_probs, costs, reference_log_probs=reference_log_probs, kl_weight=kl_weight
        )

    value_and_grad = jax.jit(jax.value_and_grad(loss))
    without_kl = value_and_grad(log_probs, log_probs, 0.0)
    chex.assert_trees_all_close(value_and_grad(log_probs, log_probs, 0.5), without_kl)
    reference_log_probs = log_probs + jnp.array([[0.5, -1.0, 0.0], [2.0, 0.1, -0.3]])
    with_kl, _ = value_and_grad(log_probs, reference_log_probs, 0.5)
    difference = reference_log_probs - log_probs
    k3 = jnp.exp(difference) - difference - 1.0
    assert with_kl > without_kl[0]
    np.testing.assert_allclose(with_kl - without_kl[0], 0.5 * jnp.mean(k3), rtol=1e-5)


@pytest.mark.parametrize("mix, weights", [("convex", (0.75, 0.25)), ("additive", (1.0, 0.25))])
def test_grpo_mle_mix(mix, weights):
    log_probs = jnp.array([[-1.0, -2.0, -0.5]])
    old_log_probs = jnp.array([[-1.2, -1.5, -0.5]])
    costs = jnp.array([[2.0, 1.0, 0.0]])
    grpo = baselines.grpo_loss(log_probs, costs, old_log_probs=old_log_probs)
    got = jax.jit(
        lambda w: baselines.grpo_loss(
            log_probs,
            costs,
            old_log_probs=old_log_probs,
            mle_loss=jnp.asarray(3.0),
            mle_weight=w,
            mix=mix,
        )
    )(0.25)  # a traced weight
    np.testing.assert_allclose(got, weights[0] * grpo + weights[1] * 3.0, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"log_probs": jnp.zeros(4)}, "k >= 2"),
        ({"log_probs": jnp.zeros((4, 1)), "costs": jnp.zeros((4, 1))}, "group of 1"),
        ({"costs": jnp.zeros((2, 2))}, "log_probs and costs must have the same shape"),
        ({"mask": jnp.ones((2, 1), bool)}, "log_probs and mask"),
        ({"old_log_probs": jnp.zeros(2)}, "log_probs and old_log_probs"),
        ({"reference_log_probs": jnp.zeros(2), "kl_weight": 0.1}, "reference_log_probs"),
        ({"clip_epsilon": 0.0}, "clip_epsilon"),
        ({"clip_epsilon": -0.2}, "clip_epsilon"),
        ({"advantage": "ppo"}, "advantage must be one of"),
        ({"eps": 0.0}, "eps"),
        ({"kl_weight": -0.1, "reference_log_probs": jnp.zeros((2, 3))}, "kl_weight"),
        ({"kl_weight": 0.1}, "reference_log_probs=..."),
        ({"mle_weight": 1.5, "mle_loss": 1.0}, r"mle_weight must be in \[0.0, 1.0\]"),
        ({"mle_weight": -1.0, "mle_loss": 1.0, "mix": "additive"}, "mle_weight"),
        ({"mle_weight": 0.5}, "mle_loss=..."),
        ({"mle_weight": 0.5, "mle_loss": jnp.zeros(2)}, "mle_loss must be a scalar"),
        ({"mix": "sum"}, "mix"),
    ],
)
def test_grpo_loss_invalid_arguments(kwargs, message):
    arguments = {"log_probs": jnp.zeros((2, 3)), "costs": jnp.zeros((2, 3))} | kwargs
    with pytest.raises(ValueError, match=message):
        baselines.grpo_loss(arguments.pop("log_probs"), arguments.pop("costs"), **arguments)


@pytest.mark.parametrize(
    "costs, kwargs, message",
    [
        (jnp.zeros(3), {}, r"\(batch, k\)"),
        (jnp.zeros((3, 1)), {}, "group of 1"),
        (jnp.zeros((2, 3)), {"mask": jnp.ones((3, 2), bool)}, "costs and mask"),
        (jnp.zeros((2, 3)), {"kind": "ppo"}, "kind must be one of"),
        (jnp.zeros((2, 3)), {"eps": -1.0}, "eps"),
    ],
)
def test_group_advantages_invalid_arguments(costs, kwargs, message):
    with pytest.raises(ValueError, match=message):
        baselines.group_advantages(costs, **kwargs)


# ---------------------------------------------------------------------------------------------
# Minimum risk training.


def test_minimum_risk_loss_matches_hand_computation():
    log_probs = jnp.log(jnp.array([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]))
    costs = jnp.array([[1.0, 0.0, 0.5], [1.0, 0.0, 0.5]])
    # α = 1: Q = p = (1/2, 1/4, 1/4); risk = 1/2 + 0 + 1/8.
    np.testing.assert_allclose(baselines.minimum_risk_loss(log_probs, costs, 1.0), 0.625, rtol=1e-6)
    # α = 2: Q ∝ (1/4, 1/16, 1/16) = (2/3, 1/6, 1/6); risk = 2/3 + 1/12.
    np.testing.assert_allclose(baselines.minimum_risk_loss(log_probs, costs, 2.0), 0.75, rtol=1e-6)
    # α → 0: Q uniform; risk = mean cost.
    np.testing.assert_allclose(baselines.minimum_risk_loss(log_probs, costs, 1e-8), 0.5, rtol=1e-6)


def test_minimum_risk_gradient_moves_probability_to_low_cost_samples():
    logits = jnp.array([0.5, 0.0, -0.3, 0.2])
    costs = jnp.array([[3.0, 0.0, 1.0, 2.0]])  # every output sampled once

    def risk(logits: jax.Array) -> jax.Array:
        return baselines.minimum_risk_loss(jax.nn.log_softmax(logits)[None], costs, alpha=1.0)

    @jax.jit
    def gradient_step(logits: jax.Array) -> tuple[jax.Array, ...]:
        new_logits = logits - 0.5 * jax.grad(risk)(logits)
        return jax.nn.softmax(logits), jax.nn.softmax(new_logits), risk(logits), risk(new_logits)

    before, after, risk_before, risk_after = gradient_step(logits)
    assert after[1] > before[1]  # the cost-0 sample gains
    assert after[0] < before[0]  # the cost-3 sample loses
    assert risk_after < risk_before


def test_masked_samples_are_ignored():
    log_probs = jnp.log(jnp.array([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]]))
    costs = jnp.array([[1.0, 0.0, 0.5], [9.0, 9.0, 9.0]])
    mask = jnp.array([[True, False, True], [False, False, False]])

    def masked(log_probs: jax.Array) -> jax.Array:
        return baselines.minimum_risk_loss(log_probs, costs, 1.0, mask=mask)

    # Row 0 keeps samples 0 and 2: Q = (2/3, 1/3); row 1 has none and is left out.
    value, gradient = jax.jit(jax.value_and_grad(masked))(log_probs)
    np.testing.assert_allclose(value, 2 / 3 + 0.5 / 3, rtol=1e-6)
    chex.assert_tree_all_finite(gradient)
    np.testing.assert_array_equal(gradient[1], 0.0)
    assert gradient[0, 1] == 0.0
    all_masked = baselines.minimum_risk_loss(log_probs, costs, 1.0, mask=jnp.zeros((2, 3), bool))
    assert all_masked == 0.0


def test_unique_sample_mask_keeps_first_occurrences():
    samples = jnp.array(
        [[[1, 2, 0], [1, 2, 0], [3, 0, 0], [1, 2, 0]], [[4, 0, 0], [5, 0, 0], [4, 0, 0], [6, 0, 0]]]
    )
    expected = [[True, False, True, False], [True, True, False, True]]
    np.testing.assert_array_equal(jax.jit(baselines.unique_sample_mask)(samples), expected)


@pytest.mark.parametrize(
    "log_probs, alpha, message",
    [(jnp.zeros(3), 1.0, r"\(batch, num_samples\)"), (jnp.zeros((1, 3)), 0.0, "alpha")],
)
def test_minimum_risk_invalid_arguments(log_probs, alpha, message):
    with pytest.raises(ValueError, match=message):
        baselines.minimum_risk_loss(log_probs, jnp.zeros_like(log_probs), alpha)


# ---------------------------------------------------------------------------------------------
# Evolution strategies.

TARGET = {"w": jnp.array([1.0, -2.0, 0.5]), "b": jnp.full((), 0.5)}
PARAMS = {"w": jnp.zeros(3), "b": jnp.zeros(())}  # strongly typed leaves, as a model's would be
NUM_CANDIDATES = {"open_es": 8, "guided_es": 4}
LOSS_CALLS: list[tuple[int, ...]] = []  # shapes seen by the host-side loss, one entry per call
TRACES = collections.Counter()  # how often the shared jitted step of each ES was traced


def quadratic_loss(params: dict) -> jax.Array:
    return jnp.sum((params["w"] - TARGET["w"]) ** 2) + (params["b"] - TARGET["b"]) ** 2


def _python_quadratic_loss(w: np.ndarray, b: np.ndarray) -> float:
    LOSS_CALLS.append(w.shape)
    return float(np.sum((w - np.asarray(TARGET["w"])) ** 2) + (b - 0.5) ** 2)


_HOST_QUADRATIC_LOSS = host.host_task_loss(_python_quadratic_loss, vmap_method="sequential")


def host_quadratic_loss(params: dict) -> jax.Array:
    """The quadratic loss computed in Python on the host, counting its calls."""
    return _HOST_QUADRATIC_LOSS(params["w"], params["b"])


def _mle_guide(params: dict, scale: float = 0.1) -> dict:
    """A guide in the apply_updates convention: the negative gradient, times a rate."""
    return optax.tree.scale(-scale, jax.grad(quadratic_loss)(params))


def _make_es(name: str, **kwargs) -> optax.GradientTransformationExtraArgs:
    defaults = {
        "open_es": {"sigma": 0.1, "learning_rate": 0.05},
        "guided_es": {"sigma": 0.1, "learning_rate": 0.2},
    }[name]
    factory = getattr(baselines, name)
    return factory(num_candidates=NUM_CANDIDATES[name], **{**defaults, **kwargs})


@functools.cache
def _jitted_step(name: str):
    """One jitted step per ES, shared by the tests below so that each compiles once.

    The randomness of an ES lives in its state, so states from any instance with the same
    hyperparameters (and any key) run through it.
    """
    tx = _make_es(name)

    @jax.jit
    def step(params, state):
        TRACES[name] += 1  # runs only while tracing
        updates, state = tx.update(
            _mle_guide(params), state, params, task_loss_fn=host_quadratic_loss
        )
        return optax.apply_updates(params, updates), updates, state

    return step


ES_NAMES = sorted(NUM_CANDIDATES)


@pytest.mark.parametrize("name", ES_NAMES)
def test_es_reduces_a_quadratic_loss_in_50_jitted_steps(name):
    step = _jitted_step(name)
    params, state = PARAMS, _make_es(name, key=0).init(PARAMS)
    for _ in range(50):
        params, _, state = step(params, state)
    assert quadratic_loss(params) < 0.1 * quadratic_loss(PARAMS)
    assert state.count == 50
    # init's state has the types of update's, so the jitted step never retraces.
    assert TRACES[name] == 1


@pytest.mark.parametrize("name", ES_NAMES)
def test_es_evaluates_the_task_loss_num_candidates_times_per_step(name):
    step = _jitted_step(name)
    params, state = PARAMS, _make_es(name).init(PARAMS)
    LOSS_CALLS.clear()
    for _ in range(3):
        params, _, state = jax.block_until_ready(step(params, state))
    assert LOSS_CALLS == [(3,)] * (3 * NUM_CANDIDATES[name])
    chex.assert_shape(state.candidate_losses, (NUM_CANDIDATES[name],))


@pytest.mark.parametrize("name", ES_NAMES)
def test_es_same_seed_same_result(name):
    step = _jitted_step(name)

    def two_steps(key):
        params, state = PARAMS, _make_es(name, key=key).init(PARAMS)
        for _ in range(2):
            params, _, state = step(params, state)
        return params

    first = two_steps(3)
    chex.assert_trees_all_equal(first, two_steps(3))
    chex.assert_trees_all_equal(first, two_steps(jax.random.key(3)))
    chex.assert_trees_all_equal(first, two_steps(jax.random.PRNGKey(3)))
    assert not np.allclose(first["w"], two_steps(4)["w"])


@pytest.mark.parametrize("name", ES_NAMES)
def test_es_uses_a_fresh_key_every_step(name):
    step = _jitted_step(name)
    state = _make_es(name).init(PARAMS)
    _, update_1, state_1 = step(PARAMS, state)
    _, update_2, state_2 = step(PARAMS, state_1)  # same params, next state
    assert not np.allclose(update_1["w"], update_2["w"])
    keys = [jax.random.key_data(s.key) for s in (state, state_1, state_2)]
    assert len({tuple(np.asarray(k).tolist()) for k in keys}) == 3


def test_es_inside_optax_chain_with_routed_extra_arguments():
    def loss_with_batch(params: dict, batch: jax.Array) -> jax.Array:
        return jnp.sum((params["w"] - batch) ** 2) + params["b"] ** 2

    es = _make_es("guided_es", learning_rate=1.0)
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.scale(-1.0),  # grads in, guide out: the reference configuration of mgs
        es,
        optax.scale(-1.0),
        optax.adam(0.1),
    )
    batch = TARGET["w"]

    @jax.jit
    def step(params, state):
        grads = jax.grad(loss_with_batch)(params, batch)
        updates, state = tx.update(
            grads, state, params, task_loss_fn=loss_with_batch, batch=batch, unused=1.0
        )
        return optax.apply_updates(params, updates), state

    params, state = PARAMS, tx.init(PARAMS)
    for _ in range(50):
        params, state = step(params, state)
    assert loss_with_batch(params, batch) < 0.1 * loss_with_batch(PARAMS, batch)
    assert state[2].count == 50


def test_guided_es_with_alpha_0_searches_only_along_the_guide():
    tx = _make_es("guided_es", learning_rate=1.0, alpha=0.0)
    guide = {"w": jnp.array([1.0, 2.0, -1.0]), "b": jnp.full((), 0.5)}
    updates, _ = tx.update(guide, tx.init(PARAMS), PARAMS, task_loss_fn=quadratic_loss)
    flat_update, _ = flatten_util.ravel_pytree(updates)
    flat_guide, _ = flatten_util.ravel_pytree(guide)
    cosine = flat_update @ flat_guide / (jnp.linalg.norm(flat_update) * jnp.linalg.norm(flat_guide))
    np.testing.assert_allclose(jnp.abs(cosine), 1.0, rtol=1e-5)


def test_guided_es_update_is_the_papers_estimator():
    sigma, beta, learning_rate = 0.2, 2.0, 0.3
    num_pairs = NUM_CANDIDATES["guided_es"] // 2
    tx = _make_es("guided_es", sigma=sigma, learning_rate=learning_rate, beta=beta)
    updates, state = tx.update(
        _mle_guide(PARAMS), tx.init(PARAMS), PARAMS, task_loss_fn=quadratic_loss
    )
    # evosax keeps the perturbations, pairs (ε_i, -ε_i), raveled in the order of jax.tree.leaves.
    perturbations = state.es_state.z[:num_pairs]
    flat_params, unravel = flatten_util.ravel_pytree(PARAMS)
    flat_loss = lambda x: quadratic_loss(unravel(x))
    differences = jax.vmap(lambda e: flat_loss(flat_params + e) - flat_loss(flat_params - e))(
        perturbations
    )
    estimate = beta / (2 * sigma**2 * num_pairs) * differences @ perturbations
    chex.assert_trees_all_close(updates, unravel(-learning_rate * estimate), rtol=1e-4, atol=1e-6)


def test_es_update_has_the_structure_and_dtypes_of_the_guide():
    params = {"w": jnp.zeros(3, jnp.bfloat16), "b": jnp.zeros((), jnp.float32)}
    tx = _make_es("open_es")
    seen_dtypes = []

    def loss(p: dict) -> jax.Array:
        seen_dtypes.append((p["w"].dtype, p["b"].dtype))
        return jnp.sum(p["w"].astype(jnp.float32) ** 2) + p["b"] ** 2

    updates, _ = tx.update(params, tx.init(params), params, task_loss_fn=loss)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    assert updates["w"].dtype == jnp.bfloat16 and updates["b"].dtype == jnp.float32
    assert seen_dtypes[-1] == (jnp.bfloat16, jnp.float32)


def test_es_works_with_inject_hyperparams():
    tx = optax.inject_hyperparams(
        baselines.guided_es, static_args=("num_candidates", "subspace_dims", "key")
    )(num_candidates=4, sigma=0.1, learning_rate=0.05, alpha=0.3)
    state = tx.init(PARAMS)
    updates, state = jax.jit(
        lambda s: tx.update(_mle_guide(PARAMS), s, PARAMS, task_loss_fn=quadratic_loss)
    )(state)
    chex.assert_tree_all_finite(updates)
    np.testing.assert_allclose(state.hyperparams["alpha"], 0.3)


@pytest.mark.parametrize(
    "factory, kwargs, message",
    [
        (baselines.open_es, {"num_candidates": 3}, "even"),
        (baselines.open_es, {"num_candidates": 0}, "at least 2"),
        (baselines.open_es, {"sigma": 0.0}, "sigma"),
        (baselines.guided_es, {"alpha": 1.5}, "alpha"),
        (baselines.guided_es, {"subspace_dims": 0}, "subspace_dims"),
    ],
)
def test_es_invalid_hyperparameters_raise_at_construction(factory, kwargs, message):
    with pytest.raises(ValueError, match=message):
        factory(**kwargs)


def test_es_update_misuse_raises_value_error():
    tx = _make_es("guided_es")
    state = tx.init(PARAMS)
    with pytest.raises(ValueError, match="current parameters"):
        tx.update(PARAMS, state, None, task_loss_fn=quadratic_loss)
    with pytest.raises(ValueError, match="task loss"):
        tx.update(PARAMS, state, PARAMS)
    with pytest.raises(ValueError, match="tree structure"):
        tx.update({"w": PARAMS["w"]}, state, PARAMS, task_loss_fn=quadratic_loss)
    with pytest.raises(ValueError, match="scalar"):
        tx.update(PARAMS, state, PARAMS, task_loss_fn=lambda p: p["w"])
    with pytest.raises(ValueError, match="subspace_dims"):
        baselines.guided_es(subspace_dims=5).init(PARAMS)


def test_missing_evosax_raises_import_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "evosax", None)
    monkeypatch.setitem(sys.modules, "evosax.algorithms", None)
    with pytest.raises(ImportError, match=r"mlesearch\[es\]"):
        baselines.open_es()


def test_baselines_module_does_not_import_evosax_at_import_time():
    tree = ast.parse(inspect.getsource(baselines))
    top_level_imports = [
        alias.name if isinstance(node, ast.Import) else node.module
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [None])
    ]
    assert not any(name.startswith("evosax") for name in top_level_imports), top_level_imports
