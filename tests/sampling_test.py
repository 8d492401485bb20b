"""Tests for the pure maths in `mlesearch.sampling`."""

import fractions
import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

import mlesearch as mls
from mlesearch import _threefry


def _tree(dtype=jnp.float32):
    return {
        "w": jnp.array([[0.5, -1.0, 2.0], [0.1, 0.0, -0.3]], dtype),
        "b": jnp.array([1.5, -0.5], dtype),
    }


def _flat(tree):
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


@pytest.mark.parametrize(
    ("num_candidates", "mix", "expected"),
    [(4, 0.5, (2, 2)), (4, 1.0, (4, 0)), (4, 0.0, (0, 4)), (10, 0.3, (3, 7)), (1, 0.5, (0, 1))],
)
def test_component_sizes_round_mix_times_n(num_candidates, mix, expected):
    assert mls.component_sizes(num_candidates, mix) == expected


def test_component_sizes_round_halves_towards_the_guided_component():
    # k0 = ⌈λn - ½⌉: λn to the nearest integer, a half rounded down, so that a tie gives the odd
    # candidate to the guided component (not Python's round, which goes to the even number).
    halves = {n: mls.component_sizes(n, 0.5) for n in range(1, 10)}
    assert halves == {n: (n // 2, n - n // 2) for n in range(1, 10)}
    assert mls.component_sizes(2, 0.25) == (0, 2)  # λn = 0.5
    assert mls.component_sizes(6, 0.25) == (1, 5)  # 1.5
    assert mls.component_sizes(10, 0.25) == (2, 8)  # 2.5
    assert mls.component_sizes(6, 0.75) == (4, 2)  # 4.5
    assert mls.component_sizes(15, 0.1) == (1, 14)  # 1.5, though 0.1 * 15 is 1.5000000000000002
    # Everywhere else the nearest integer, checked in exact arithmetic.
    for n in range(1, 41):
        for percent in range(101):
            exact = fractions.Fraction(percent, 100) * n
            k0 = math.ceil(exact - fractions.Fraction(1, 2))
            assert mls.component_sizes(n, percent / 100) == (k0, n - k0), (n, percent)


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("noise", ["absolute", "relative"])
def test_log_proposal_density_matches_scipy_mixture(share, noise):
    guide = _tree()
    scales = mls.proposal_scales(guide, 0.7, noise)
    flat_scales = np.concatenate(
        [
            np.full(x.size, float(s))
            for x, s in zip(jax.tree.leaves(guide), jax.tree.leaves(scales), strict=True)
        ]
    )
    cov = np.diag(flat_scales**2)
    u = _flat(guide)
    rng = np.random.default_rng(0)
    for _ in range(5):
        flat_delta = rng.normal(size=u.size) * 1.3 + u * rng.uniform()
        delta = jax.tree.unflatten(
            jax.tree.structure(guide),
            [
                jnp.asarray(part.reshape(x.shape), jnp.float32)
                for part, x in zip(
                    np.split(flat_delta, np.cumsum([x.size for x in jax.tree.leaves(guide)])[:-1]),
                    jax.tree.leaves(guide),
                    strict=True,
                )
            ],
        )
        with np.errstate(divide="ignore"):
            expected = special.logsumexp(
                [
                    np.log(share)
                    + stats.multivariate_normal(np.zeros(u.size), cov).logpdf(flat_delta),
                    np.log1p(-share) + stats.multivariate_normal(u, cov).logpdf(flat_delta),
                ]
            )
        got = jax.jit(mls.log_proposal_density)(delta, guide, scales, share)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_log_proposal_density_leaves_out_zero_scale_leaves():
    guide = {"a": jnp.array([1.0, 2.0]), "zero": jnp.zeros((3,))}
    scales = mls.proposal_scales(guide, 1.0, "relative")
    assert float(scales["zero"]) == 0.0
    delta = {"a": jnp.array([0.5, 0.5]), "zero": jnp.zeros((3,))}
    got = mls.log_proposal_density(delta, guide, scales, 0.5)
    only_a = mls.log_proposal_density({"a": delta["a"]}, {"a": guide["a"]}, {"a": scales["a"]}, 0.5)
    assert np.isfinite(got)
    np.testing.assert_allclose(got, only_a, rtol=1e-6)


def test_relative_scales_are_sigma_times_mean_abs_guide():
    guide = _tree()
    scales = mls.proposal_scales(guide, 2.0, "relative")
    for leaf, scale in zip(jax.tree.leaves(guide), jax.tree.leaves(scales), strict=True):
        np.testing.assert_allclose(scale, 2.0 * np.mean(np.abs(leaf)), rtol=1e-6)


def test_sample_candidates_stratified_means_and_float32_noise():
    guide = _tree(jnp.bfloat16)
    scales = mls.proposal_scales(guide, 0.5)
    n = 4000
    deltas = jax.jit(mls.sample_candidates, static_argnums=(3, 4))(
        jax.random.key(0), guide, scales, n, 0.25
    )
    k0, _ = mls.component_sizes(n, 0.25)
    for delta, u in zip(jax.tree.leaves(deltas), jax.tree.leaves(guide), strict=True):
        assert delta.dtype == jnp.float32
        assert delta.shape == (n, *u.shape)
        u = np.asarray(u, np.float32)
        np.testing.assert_allclose(delta[:k0].mean(0), 0.0, atol=0.1)
        np.testing.assert_allclose(delta[k0:].mean(0), u, atol=0.06)
        np.testing.assert_allclose(delta[k0:].std(0), 0.5, rtol=0.1)


def test_antithetic_pairs_mirror_about_their_component_mean():
    guide = _tree()
    scales = mls.proposal_scales(guide, 0.3)
    deltas = mls.sample_candidates(jax.random.key(1), guide, scales, 8, 0.5, antithetic=True)
    for delta, u in zip(jax.tree.leaves(deltas), jax.tree.leaves(guide), strict=True):
        means = [np.zeros_like(u)] * 2 + [np.zeros_like(u)] * 2 + [np.asarray(u)] * 4
        for i in range(0, 8, 2):
            np.testing.assert_allclose(delta[i] + delta[i + 1], 2 * means[i], atol=1e-6)
            assert not np.allclose(delta[i], delta[i + 2])


def test_sample_candidate_redraws_the_same_candidate_from_its_index():
    guide = _tree()
    scales = mls.proposal_scales(guide, 0.3)
    key = jax.random.key(5)
    stacked = mls.sample_candidates(key, guide, scales, 6, 0.5)
    for i in (0, 3, 5):
        one = mls.sample_candidate(key, i, guide, scales, 3)
        chex.assert_trees_all_close(one, jax.tree.map(lambda x, i=i: x[i], stacked))


def test_tilted_weights_are_softmax_of_negative_loss_over_temperature():
    losses = jnp.array([0.3, 1.2, -0.4, 2.0])
    got = mls.candidate_weights(losses, temperature=0.7, weighting="tilted")
    np.testing.assert_allclose(got, special.softmax(-np.asarray(losses) / 0.7), rtol=1e-6)


def test_uniform_weights_ignore_the_loss_but_not_its_finiteness():
    losses = jnp.array([0.3, jnp.nan, -0.4, 2.0, jnp.inf])
    got = mls.candidate_weights(losses, temperature=1e-6, weighting="uniform")
    np.testing.assert_allclose(got, [1 / 3, 0.0, 1 / 3, 1 / 3, 0.0], rtol=1e-6)
    assert float(mls.effective_sample_size(got)) == pytest.approx(3.0)


def test_importance_weights_subtract_log_proposal():
    losses = jnp.array([0.3, 1.2, -0.4, 2.0])
    log_q = jnp.array([-3.0, -1.0, -7.5, -2.0])
    got = mls.candidate_weights(losses, log_q, temperature=0.5, weighting="importance")
    expected = special.softmax(-np.asarray(losses) / 0.5 - np.asarray(log_q))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_non_finite_losses_get_zero_weight():
    losses = jnp.array([jnp.nan, 1.0, jnp.inf, 2.0, -jnp.inf])
    weights = mls.candidate_weights(losses, jnp.zeros(5), 1.0, "importance")
    np.testing.assert_allclose(weights[jnp.array([0, 2, 4])], 0.0)
    np.testing.assert_allclose(weights[1] / weights[3], np.e, rtol=1e-5)
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)


def test_all_non_finite_gives_zero_weights_and_zero_ess():
    weights = mls.candidate_weights(jnp.array([jnp.nan, jnp.inf]), jnp.zeros(2), 1.0)
    chex.assert_trees_all_equal(weights, jnp.zeros(2))
    assert float(mls.effective_sample_size(weights)) == 0.0


@pytest.mark.parametrize(
    ("losses", "log_q", "temperature"),
    [
        # Gaps that overflow float32 (6e38), with an α that keeps them a few nats apart.
        ([-3e38, 3e38, 1e38, -2e38], [0.0, 0.0, 0.0, 0.0], 1e38),
        ([-3e38, 3e38, 2e38, 0.0], [0.0, 0.0, 0.0, 0.0], 2e38),
        # The best loss has the largest log q, 6e38 above the smallest, and every other
        # candidate's loss term is astronomically worse: its logit still wins.
        ([0.0, 1e38, 3e38], [3e38, -3e38, 0.0], 1e-3),
        ([0.0, 1e38], [3e38, -3e38], 1e-30),
    ],
)
@pytest.mark.parametrize("weighting", ["importance", "tilted"])
def test_finite_losses_whose_gaps_overflow_keep_their_ranking(
    losses, log_q, temperature, weighting
):
    # The weights are the float64 softmax's: never NaN, never all 0 while a loss is finite, and
    # the best finite candidates win.
    losses64 = np.asarray(losses, np.float64)
    logits = -losses64 / temperature
    if weighting == "importance":
        logits = logits - np.asarray(log_q, np.float64)
    expected = special.softmax(logits)
    log_q = jnp.asarray(log_q, jnp.float32) if weighting == "importance" else None
    weigh = jax.jit(mls.candidate_weights, static_argnums=3)
    weights = weigh(jnp.asarray(losses, jnp.float32), log_q, temperature, weighting)
    np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)
    # Folded in chunk by chunk, the same.
    deltas = {"w": jax.random.normal(jax.random.key(0), (len(losses), 3))}
    for chunks in ([[0], list(range(1, len(losses)))], [list(range(len(losses) - 1, -1, -1))]):
        running = _fold_in_chunks(
            jnp.asarray(losses, jnp.float32), log_q, deltas, temperature, weighting, chunks
        )
        np.testing.assert_allclose(
            running.mean["w"], expected @ np.asarray(deltas["w"]), rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize("weighting", ["importance", "tilted"])
def test_auto_temperature_chooses_alpha_when_the_spread_of_the_losses_overflows(weighting):
    # The losses span 6e38, beyond float32: they still rank the candidates, so α is chosen for
    # the target, not the fallback.
    losses = jnp.linspace(-3e38, 3e38, 8)
    log_q = jnp.zeros(8)
    alpha = mls.auto_temperature(losses, log_q, 0.5, weighting, fallback=1.0)
    weights = mls.candidate_weights(losses, log_q, alpha, weighting)
    np.testing.assert_allclose(mls.effective_sample_size(weights), 4.0, rtol=1e-3)
    assert np.all(np.diff(np.asarray(weights)) < 0)  # ranked by the losses


def test_huge_losses_do_not_overflow():
    losses = jnp.array([1e30, -1e30, 3e38, -3e38])
    weights = mls.candidate_weights(losses, jnp.array([0.0, 1e30, -1e30, 5.0]), 1e-3)
    assert np.all(np.isfinite(weights))
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(weights[3], 1.0)


@pytest.mark.parametrize("temperature", [0.0, -3e-8, -1.0, np.nan])
def test_non_positive_temperature_gives_the_zero_temperature_limit(temperature):
    # The best finite loss (0.5) is tied between candidates 2 and 5; candidate 4's log q is not
    # finite, and candidate 6 has a better loss but no finite loss. Tilted weights share the tie
    # equally, importance weights in proportion to 1/q (the limit of exp(-Δl/α) / q as α → 0⁺).
    losses = jnp.array([2.0, 1.0, 0.5, 3.0, 0.5, 0.5, jnp.nan, 1e30])
    log_q = jnp.array([0.0, -1.0, -2.0, 1.0, jnp.nan, 0.5, 0.0, -3.0])
    expected = {
        "tilted": np.array([0, 0, 1, 0, 1, 1, 0, 0]) / 3.0,
        "importance": np.array([0, 0, np.exp(2.0), 0, 0, np.exp(-0.5), 0, 0])
        / (np.exp(2.0) + np.exp(-0.5)),
        "uniform": np.array([1, 1, 1, 1, 1, 1, 0, 1]) / 7.0,
    }
    weigh = jax.jit(mls.candidate_weights, static_argnums=3)
    for weighting, expected_weights in expected.items():
        weights = weigh(losses, log_q, temperature, weighting)
        np.testing.assert_allclose(weights, expected_weights, rtol=1e-6, err_msg=weighting)
    deltas = {"w": jax.random.normal(jax.random.key(0), (8, 3))}
    for weighting in ("importance", "tilted"):
        chunked_log_q = log_q if weighting == "importance" else None
        for chunks in ([[0, 1], [2, 3, 4], [5, 6, 7]], [[7], [6, 5], [4, 3, 2, 1, 0]]):
            running = _fold_in_chunks(losses, chunked_log_q, deltas, temperature, weighting, chunks)
            chex.assert_trees_all_close(
                running.mean,
                {"w": expected[weighting] @ np.asarray(deltas["w"])},
                rtol=1e-5,
                atol=1e-7,
            )


def test_effective_sample_size_extremes():
    np.testing.assert_allclose(mls.effective_sample_size(jnp.full(8, 1 / 8)), 8.0, rtol=1e-6)
    np.testing.assert_allclose(mls.effective_sample_size(jnp.eye(8)[3]), 1.0)


@pytest.mark.parametrize("weighting", ["tilted", "importance"])
@pytest.mark.parametrize("target", [0.2, 0.5, 0.8])
def test_auto_temperature_hits_target_ess_on_spread_losses(weighting, target):
    n = 64
    losses = jax.random.normal(jax.random.key(0), (n,)) * 3.0 + 10.0
    log_q = jax.random.normal(jax.random.key(1), (n,)) * 0.1
    alpha = jax.jit(mls.auto_temperature, static_argnums=3)(losses, log_q, target, weighting)
    ess = mls.effective_sample_size(mls.candidate_weights(losses, log_q, alpha, weighting))
    assert np.isfinite(alpha) and alpha > 0
    np.testing.assert_allclose(ess, target * n, rtol=1e-3)


def test_auto_temperature_scales_with_the_loss():
    losses = jax.random.normal(jax.random.key(0), (32,))
    alpha = mls.auto_temperature(losses, weighting="tilted")
    alpha_scaled = mls.auto_temperature(1e6 * losses, weighting="tilted")
    np.testing.assert_allclose(alpha_scaled / alpha, 1e6, rtol=1e-3)


def test_auto_temperature_with_equal_losses_returns_finite_fallback():
    alpha = mls.auto_temperature(jnp.full((8,), 3.0), jnp.zeros(8), 0.5, fallback=0.25)
    np.testing.assert_allclose(alpha, 0.25)
    alpha = mls.auto_temperature(jnp.full((8,), jnp.nan), jnp.zeros(8), 0.5)
    np.testing.assert_allclose(alpha, 1.0)


def test_auto_temperature_short_of_an_unreachable_target_stays_loss_driven():
    # Importance weights whose -log q term holds the ESS near 1: candidate 1 (loss 1, a tiny q)
    # takes all the weight for α above 1/500, candidate 0 (the best loss) below it, and the
    # ESS never comes near the target 0.9 · 8. α is then the most loss-driven choice: all the
    # weight on the best loss, not on the candidate that q favours.
    losses = jnp.arange(8.0)
    log_q = jnp.array([0.0, -500.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    alpha = float(mls.auto_temperature(losses, log_q, 0.9, "importance"))
    ess = lambda a: mls.effective_sample_size(mls.candidate_weights(losses, log_q, a, "importance"))
    assert max(float(ess(a)) for a in np.geomspace(1e-6, 1e6, 241)) < 0.9 * 8
    assert 0 < alpha < 1 / 500
    weights = mls.candidate_weights(losses, log_q, alpha, "importance")
    np.testing.assert_allclose(weights, np.eye(8)[0], atol=1e-6)


def test_unknown_weighting_is_rejected():
    with pytest.raises(ValueError, match="weighting"):
        mls.candidate_weights(jnp.zeros(3), jnp.zeros(3), 1.0, "softmax")
    with pytest.raises(ValueError, match="log_proposals"):
        mls.candidate_weights(jnp.zeros(3), None, 1.0, "importance")


def test_log_proposal_density_is_finite_and_exact_for_tiny_scales():
    # σ = 1e-20 on one leaf: 1/σ² overflows float32, the standardised form does not.
    guide = {"tiny": jnp.full((3,), 2e-20), "big": jnp.array([1.0, -1.0])}
    scales = {"tiny": jnp.float32(1e-20), "big": jnp.float32(0.5)}
    delta = {"tiny": jnp.array([1e-20, 3e-20, -1e-20]), "big": jnp.array([0.2, -0.4])}
    got = mls.log_proposal_density(delta, guide, scales, 0.5)
    d, u = _flat(delta), _flat(guide)
    s = np.array([0.5] * 2 + [1e-20] * 3)  # leaves in key order: "big", then "tiny".
    log_n = lambda mean: np.sum(-0.5 * ((d - mean) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi))
    expected = special.logsumexp([np.log(0.5) + log_n(0.0), np.log(0.5) + log_n(u)])
    assert np.isfinite(got)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_relative_scales_ignore_non_finite_guide_entries_and_flush_subnormal_ones():
    guide = {"a": jnp.array([jnp.nan, 1.0, -3.0, jnp.inf]), "b": jnp.full((2,), 1e-39)}
    scales = mls.proposal_scales(guide, 0.5, "relative")
    np.testing.assert_allclose(scales["a"], 0.5 * 2.0)
    assert float(scales["b"]) == 0.0


def test_zero_mean_candidates_stay_finite_when_the_guide_is_not():
    guide = {"a": jnp.array([jnp.nan, 1.0]), "b": jnp.array([jnp.inf])}
    scales = {"a": jnp.float32(0.1), "b": jnp.float32(0.1)}
    deltas = mls.sample_candidates(jax.random.key(0), guide, scales, 4, 0.5)
    chex.assert_tree_all_finite(jax.tree.map(lambda d: d[:2], deltas))


def test_auto_temperature_takes_the_first_crossing_when_the_ess_is_not_monotone():
    # Importance weights: the worst candidate has a tiny q, so as α grows its 1/q takes all the
    # weight and the ESS falls back to 1. The target (2 of 4) is reached on the way up, at an α
    # where the best candidate still weighs at least as much as the worst.
    losses = jnp.array([0.0, 1.0, 2.0, 3.0])
    log_q = jnp.array([0.0, 0.0, 0.0, -5.0])
    alpha = mls.auto_temperature(losses, log_q, 0.5, "importance")
    weights = mls.candidate_weights(losses, log_q, alpha, "importance")
    np.testing.assert_allclose(mls.effective_sample_size(weights), 2.0, rtol=1e-3)
    assert weights[0] >= weights[3]
    # Far past the crossing the worst candidate takes almost everything: not what auto picks.
    far = mls.candidate_weights(losses, log_q, 100.0, "importance")
    assert far[3] > 0.95


@pytest.mark.parametrize("target", [0.75, 0.99])
def test_auto_temperature_finds_a_target_reached_between_two_grid_points(target):
    # -Δl/α - log q is 0 for every candidate at α = 0.5 only: the ESS climbs from 2 to 4 and
    # falls to 1 again within about ±3% of it, narrower than the grid's step in log α (0.78).
    losses = jnp.array([0.0, 0.0, 10.0, 20.0])
    log_q = jnp.array([0.0, 0.0, -20.0, -40.0])
    alpha = jax.jit(mls.auto_temperature, static_argnums=3)(losses, log_q, target, "importance")
    ess = mls.effective_sample_size(mls.candidate_weights(losses, log_q, alpha, "importance"))
    assert float(ess) >= target * 4 * (1 - 1e-4), (float(alpha), float(ess))
    # The first crossing from below, on the rising side of the window.
    np.testing.assert_allclose(ess, target * 4, rtol=1e-3)
    assert 0.4 < float(alpha) <= 0.5


def test_auto_temperature_counts_only_the_usable_candidates():
    losses = jnp.array([0.0, 1.0, 2.0, 3.0, jnp.nan, jnp.nan, jnp.inf, jnp.nan])
    alpha = mls.auto_temperature(losses, None, 0.5, "tilted")
    weights = mls.candidate_weights(losses, None, alpha, "tilted")
    np.testing.assert_allclose(mls.effective_sample_size(weights), 2.0, rtol=1e-3)
    assert weights[0] > weights[3]


def test_auto_temperature_short_of_the_target_is_not_decided_by_rounding():
    # Importance weights tend to 1/q as α grows: here the ESS climbs to a plateau of 2, short of
    # the target 3, and stays there over many grid points. Perturbations of log q at the level
    # of float rounding (as from summing in another order) must not move α along the plateau.
    losses = jnp.array([0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    log_q = jnp.array([0.0, 0.0, 30.0, 30.0, 30.0, 30.0])
    choose = jax.jit(mls.auto_temperature)
    alphas = {
        float(choose(losses, log_q + 1e-6 * jax.random.normal(jax.random.key(i), (6,))))
        for i in range(12)
    }
    assert len(alphas) == 1, alphas
    (alpha,) = alphas
    ess = mls.effective_sample_size(mls.candidate_weights(losses, log_q, alpha, "importance"))
    np.testing.assert_allclose(ess, 2.0, rtol=1e-3)  # on the plateau...
    assert alpha < 1e3  # ...where it starts, not far along it.


def test_antithetic_relative_noise_on_a_multi_leaf_tree():
    guide = {
        "w": jnp.full((3, 4), 0.5),
        "b": jnp.array([2.0, -2.0]),
        "tiny": jnp.full((5,), 1e-3),
    }
    scales = mls.proposal_scales(guide, 0.7, "relative")
    chex.assert_trees_all_close(scales, {"w": 0.35, "b": 1.4, "tiny": 7e-4}, rtol=1e-6, atol=0.0)
    n = 4000
    deltas = mls.sample_candidates(jax.random.key(7), guide, scales, n, 0.5, antithetic=True)
    is_guided = (jnp.arange(n) >= n // 2).astype(jnp.float32)
    standardized = {}
    for name, leaf in deltas.items():
        mean = is_guided.reshape(-1, *([1] * guide[name].ndim)) * guide[name]
        # Pairs mirror about their component's mean, leaf by leaf.
        np.testing.assert_allclose(
            leaf[0::2] + leaf[1::2], 2 * mean[0::2], atol=1e-5 * float(scales[name])
        )
        standardized[name] = np.asarray((leaf - mean) / scales[name]).reshape(n, -1)
        # Each leaf's noise is standard normal in units of its own scale.
        np.testing.assert_allclose(standardized[name].mean(), 0.0, atol=0.02)
        np.testing.assert_allclose(standardized[name].std(), 1.0, atol=0.02)
    # The leaves get independent noise, not copies of one draw.
    first = standardized["w"][0::2, 0]
    for other in (standardized["b"][0::2, 0], standardized["tiny"][0::2, 0]):
        assert abs(np.corrcoef(first, other)[0, 1]) < 0.1


@pytest.mark.parametrize("share", [0.0, 0.25, 1.0])
@pytest.mark.parametrize("antithetic", [False, True])
def test_log_q_from_the_drawing_pass_matches_the_density_of_the_candidate(share, antithetic):
    # Mixed tree: a float32 leaf, a bfloat16 leaf (its rounded perturbation is the candidate), a
    # float16 leaf, and a leaf whose relative scale is zero (left out of the density).
    key = jax.random.key(3)
    guide = {
        "a": jnp.linspace(-2.0, 2.0, 500),
        "b": jnp.full((4, 3), 0.3),
        "c": jnp.linspace(0.1, 1.0, 7),
        "zero": jnp.zeros((5,)),
    }
    params = {
        "a": jnp.linspace(1.0, 3.0, 500),
        "b": jnp.ones((4, 3), jnp.bfloat16),
        "c": jnp.full((7,), 5.0, jnp.float16),
        "zero": jnp.zeros((5,)),
    }
    scales = mls.proposal_scales(guide, 0.8, "relative")
    sample = jax.jit(mls.sampling._sample_candidate_and_log_q, static_argnums=(4, 6))
    for index in range(4):
        delta, log_q = sample(key, index, guide, scales, 2, share, antithetic, params)
        drawn = mls.sample_candidate(key, index, guide, scales, 2, antithetic)
        expected_delta = jax.tree.map(mls.sampling._effective_perturbation, params, drawn)
        chex.assert_trees_all_close(delta, expected_delta, atol=1e-6, rtol=1e-6)
        assert expected_delta["b"].dtype == jnp.float32
        assert not np.array_equal(expected_delta["b"], drawn["b"])  # really rounded
        # The drawing pass leaves out the normalising constants, shared by every candidate.
        expected = mls.log_proposal_density(
            expected_delta, guide, scales, share, include_normalizer=False
        )
        np.testing.assert_allclose(log_q, expected, rtol=1e-5, atol=1e-5)
        assert np.isfinite(log_q)


@pytest.mark.parametrize("num_zero_mean", [0, 2, 4])
def test_an_antithetic_pair_drawn_together_equals_its_two_candidates(num_zero_mean):
    key = jax.random.key(5)
    guide = {"a": jnp.linspace(-2.0, 2.0, 50), "b": jnp.full((4, 3), 0.3)}
    params = {"a": jnp.linspace(1.0, 3.0, 50), "b": jnp.ones((4, 3), jnp.bfloat16)}
    scales = mls.proposal_scales(guide, 0.5, "relative")
    pair = jax.jit(mls.sampling._sample_antithetic_pair_and_log_q, static_argnums=(4,))
    one = jax.jit(mls.sampling._sample_candidate_and_log_q, static_argnums=(4, 6))
    for j in range(2):
        deltas, log_q = pair(key, j, guide, scales, num_zero_mean, 0.5, params)
        assert log_q.shape == (2,)
        for k in range(2):
            delta, expected = one(key, 2 * j + k, guide, scales, num_zero_mean, 0.5, True, params)
            chex.assert_trees_all_close(jax.tree.map(lambda x, k=k: x[k], deltas), delta)
            np.testing.assert_allclose(log_q[k], expected, rtol=1e-6)
        # The second candidate mirrors the first about their component's mean.
        mean = guide["a"] if 2 * j >= num_zero_mean else 0.0
        np.testing.assert_allclose(deltas["a"][0] + deltas["a"][1], 2 * mean, rtol=1e-5, atol=1e-6)


def test_log_q_differences_between_candidates_are_exact_at_four_million_parameters():
    # At d = 2²² the normalising constant (about -1.4 · d for σ = 1/2) and ‖ε‖² (about d) are
    # of order 10⁶ to 10⁷, where float32's spacing is 0.25 to 1: added in, they rounded the
    # differences of log q between candidates, which set the importance weights, by up to
    # tenths of nats. Left out (they are shared), the differences keep about 10⁻⁴ nats. The
    # guide is small enough that both components count in the mixture.
    dim = 2**22
    sigma, share = 0.5, 0.5
    key = jax.random.key(0)
    guide = {"w": jnp.full((dim,), 2e-4, jnp.float32)}
    scales = mls.proposal_scales(guide, sigma)
    draw = jax.jit(
        lambda i: mls.sampling._sample_candidate_and_log_q(key, i, guide, scales, 2, share)
    )
    density = jax.jit(
        lambda delta: mls.log_proposal_density(
            delta, guide, scales, share, include_normalizer=False
        )
    )
    u = np.asarray(guide["w"], np.float64)

    def exact_log_q(x):  # float64, at the float32 candidate
        def log_normal(mean):
            z = (x - mean) / sigma
            return -0.5 * np.dot(z, z) - dim * np.log(sigma) - 0.5 * dim * np.log(2 * np.pi)

        return np.logaddexp(np.log(share) + log_normal(0.0), np.log1p(-share) + log_normal(u))

    drawn, public, exact = [], [], []
    for index in range(4):  # two zero-mean candidates, then two guided ones
        delta, log_q = draw(index)
        drawn.append(float(log_q))
        public.append(float(density(delta)))
        exact.append(exact_log_q(np.asarray(delta["w"], np.float64)))
        del delta
    exact = np.asarray(exact)
    assert np.ptp(exact) > 100  # the candidates' densities really differ
    for got in (np.asarray(drawn), np.asarray(public)):
        np.testing.assert_allclose(got - got[0], exact - exact[0], rtol=0, atol=1e-3)


@pytest.mark.parametrize("written_out", [True, False])
@pytest.mark.parametrize("shapes", [[(3, 5), (2,)], [(4, 5), (2,)], [(7,)]])
def test_noise_is_one_flat_draw_whatever_the_parity_of_its_length(shapes, written_out):
    # An odd total is drawn with one extra entry (much faster on CPU); the noise must still be
    # the first entries of the flat draw, so that candidates do not change with the parity.
    key = jax.random.key(5)
    tree = [jnp.zeros(shape) for shape in shapes]
    total = sum(int(np.prod(shape)) for shape in shapes)
    noise = mls.sampling._standard_normal_like(key, tree, written_out=written_out)
    flat = jnp.concatenate([leaf.reshape(-1) for leaf in noise])
    chex.assert_trees_all_equal(flat, jax.random.normal(key, (total,), jnp.float32))


_KEYS = {
    "typed": lambda: jax.random.key(11),
    "raw": lambda: jax.random.PRNGKey(11),
    "folded": lambda: jax.random.fold_in(jax.random.key(3), 7),
}


# Written-out draws (`_threefry.threefry_normals`), as a CPU step makes them.
_written_out_normal = functools.partial(_threefry.standard_normal, written_out=True)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("key_kind", sorted(_KEYS))
@pytest.mark.parametrize("length", [4, 6, 998, 10_000])
def test_written_out_threefry_draws_jax_normals_bit_for_bit(key_kind, length, jit):
    key = _KEYS[key_kind]()
    assert _threefry.usable_key_words(key, length) is not None  # the path under test.
    draw = _written_out_normal
    if jit:
        draw = jax.jit(draw, static_argnums=1)
    chex.assert_trees_all_equal(draw(key, length), jax.random.normal(key, (length,)))


@pytest.mark.parametrize("key_kind", sorted(_KEYS))
@pytest.mark.parametrize("length", [2, 998, 10_000])
def test_written_out_threefry_follows_jax_private_layout(key_kind, length):
    """The layout the written-out draw copies from jax: bits and their assumptions.

    Fails when a jax release changes the counter layout of its partitionable threefry (the
    bits), stops making it the default, or renames the implementation: then the written-out
    draw must be updated or removed, not silently kept.
    """
    assert jax.config.jax_threefry_partitionable, "jax's default threefry layout changed"
    key = _KEYS[key_kind]()
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        assert str(jax.random.key_impl(key)) == "threefry2x32"
    words = _threefry.threefry_words(jnp.asarray(data, jnp.uint32), length)
    chex.assert_trees_all_equal(words, jax.random.bits(key, (length,), jnp.uint32))
    normals = _threefry.normals_from_bits(words)
    chex.assert_trees_all_equal(normals, jax.random.normal(key, (length,)))


@pytest.mark.parametrize("written_out", [True, False])
def test_written_out_threefry_matches_under_vmap_and_in_a_loop(written_out):
    keys = jax.random.split(jax.random.key(2), 6)
    expected = jax.vmap(lambda k: jax.random.normal(k, (1000,)))(keys)

    def draw(k):
        return _threefry.standard_normal(k, 1000, written_out=written_out)

    by_vmap = jax.jit(jax.vmap(draw))(keys)
    in_a_loop = jax.jit(lambda ks: jax.lax.map(draw, ks))(keys)
    nested = jax.jit(jax.vmap(jax.vmap(draw)))(keys.reshape(2, 3)).reshape(6, 1000)
    raw_keys = jax.vmap(jax.random.key_data)(keys)
    by_vmap_raw = jax.jit(jax.vmap(draw))(raw_keys)
    for got in (by_vmap, in_a_loop, nested, by_vmap_raw):
        chex.assert_trees_all_equal(got, expected)


@pytest.mark.parametrize("num_keys", [1, 4])
@pytest.mark.parametrize("written_out", [True, False])
def test_written_out_draws_are_made_once_for_all_the_keys_of_a_vmap(num_keys, written_out):
    # Written out, the normals come from one cond (for one key, or for all the keys of a vmap,
    # whose normals are then stored once); otherwise from jax's random_bits.
    keys = jax.random.split(jax.random.key(0), num_keys)
    normal = functools.partial(_threefry.standard_normal, written_out=written_out)

    def draw(ks):
        if num_keys == 1:
            return normal(ks[0], 16)[None]
        return jax.vmap(lambda k: normal(k, 16))(ks)

    jaxpr = str(jax.make_jaxpr(draw)(keys))  # with every sub-jaxpr, inline.
    assert jaxpr.count("cond[") == written_out
    assert ("random_bits[" in jaxpr) != written_out
    chex.assert_trees_all_equal(draw(keys), jax.vmap(lambda k: jax.random.normal(k, (16,)))(keys))


def test_written_out_draws_can_be_differentiated_through():
    keys = jax.random.split(jax.random.key(0), 3)

    def loss(x, draw):
        return jnp.sum(jax.vmap(lambda k: x * draw(k, 100))(keys))

    expected = jax.grad(loss)(2.0, lambda k, n: jax.random.normal(k, (n,)))
    got = jax.jit(jax.grad(loss), static_argnums=1)(2.0, _written_out_normal)
    chex.assert_trees_all_close(got, expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("key", "length", "partitionable"),
    [
        (lambda: jax.random.key(0, impl="rbg"), 1000, True),  # not threefry
        (lambda: jax.random.key(0), 999, True),  # odd length
        (lambda: jax.random.key(0), 1000, False),  # jax's other threefry stream
    ],
)
def test_other_draws_go_through_jax_random_normal(key, length, partitionable):
    key = key()
    with jax.threefry_partitionable(partitionable):
        assert _threefry.usable_key_words(key, length) is None
        chex.assert_trees_all_equal(
            _written_out_normal(key, length), jax.random.normal(key, (length,))
        )


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_public_samplers_write_their_draws_out_on_cpu_only(monkeypatch, backend):
    # The same candidates either way; the written-out draw is a cond that makes normals.
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    guide = {"w": jnp.ones((3, 4)), "b": jnp.zeros(5)}
    scales = mls.proposal_scales(guide, 0.5)

    def draw(key):
        return mls.sample_candidates(key, guide, scales, 4, 0.5)

    jaxpr = str(jax.make_jaxpr(draw)(jax.random.key(0)))
    assert ("erf_inv" in jaxpr and "cond[" in jaxpr) == (backend == "cpu")
    assert ("random_bits[" in jaxpr) == (backend != "cpu")


def _fold_in_chunks(losses, log_q, deltas, temperature, weighting, chunks):
    running = mls.sampling._init_running_weighted_mean(jax.tree.map(lambda d: d[0], deltas))
    for chunk in chunks:
        chunk = np.asarray(chunk)
        running = mls.sampling._update_running_weighted_mean(
            running,
            losses[chunk],
            None if log_q is None else log_q[chunk],
            jax.tree.map(lambda d, c=chunk: d[c], deltas),
            temperature,
            weighting,
        )
    return running


@pytest.mark.parametrize("weighting", ["importance", "tilted", "uniform"])
@pytest.mark.parametrize(
    ("losses", "log_q", "temperature"),
    [
        ([0.3, 1.2, -0.5, 2.0, 0.7, 0.1, 1.5], [-1.0, 0.5, -2.0, 0.0, 1.0, -0.5, 0.2], 0.7),
        # Non-finite losses and log q, and a chunk with nothing usable (the first two).
        (
            [jnp.nan, jnp.inf, 0.4, 1.0, -jnp.inf, 0.2, 3.0],
            [0.0, 1.0, -1.0, jnp.nan, 0.0, 2.0, 1.0],
            1.0,
        ),
        # Losses far apart: a later chunk outweighs the earlier ones entirely.
        ([1e30, 5e29, -1e30, 3e38, 2.0, -3e38, 0.0], [0.0, 1e30, -1e30, 5.0, 0.0, 1.0, 2.0], 1e-3),
        # α = inf weighs every finite loss alike, gaps that overflow float32 (3e38 - (-3e38))
        # included.
        (
            [1e30, 5e29, -1e30, 3e38, 2.0, -3e38, 0.0],
            [0.0, 1e30, -1e30, 5.0, 0.0, 1.0, 2.0],
            jnp.inf,
        ),
        # Gaps that overflow float32 with an α that keeps them apart by a few nats only.
        ([-3e38, 3e38, 1e38, 2e38, -2e38, 0.0, -3e38], [0.0] * 7, 2e38),
    ],
)
@pytest.mark.parametrize("chunks", [[[0, 1], [2, 3, 4], [5, 6]], [[6], [5, 4], [3, 2, 1, 0]]])
def test_running_weighted_mean_over_chunks_equals_the_weighted_sum(
    weighting, losses, log_q, temperature, chunks
):
    losses = jnp.array(losses, jnp.float32)
    log_q = jnp.array(log_q, jnp.float32) if weighting == "importance" else None
    deltas = {
        "w": jax.random.normal(jax.random.key(0), (7, 3, 2)),
        "b": jax.random.normal(jax.random.key(1), (7, 4)).astype(jnp.bfloat16),
    }
    weights = mls.candidate_weights(losses, log_q, temperature, weighting)
    expected = jax.tree.map(lambda d: jnp.tensordot(weights, d.astype(jnp.float32), axes=1), deltas)
    running = _fold_in_chunks(losses, log_q, deltas, temperature, weighting, chunks)
    chex.assert_trees_all_close(running.mean, expected, atol=1e-6, rtol=1e-5)
    chex.assert_tree_all_finite(running.mean)
    assert jax.tree.map(lambda m: m.dtype, running.mean) == {"w": jnp.float32, "b": jnp.float32}


def test_running_weighted_mean_of_nothing_usable_is_zero():
    losses = jnp.array([jnp.nan, jnp.inf, -jnp.inf, jnp.nan])
    deltas = {"w": jnp.ones((4, 3))}
    running = _fold_in_chunks(losses, jnp.zeros(4), deltas, 1.0, "importance", [[0, 1], [2, 3]])
    chex.assert_trees_all_equal(running.mean, {"w": jnp.zeros(3)})
    assert float(running.half_log_mass) == -np.inf
