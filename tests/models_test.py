"""Tests for mlesearch.models: the transformer LM, its key/value cache and its MLE loss."""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlesearch.seq.models import (
    KVCache,
    TransformerConfig,
    TransformerLM,
    _init_transposed_cache,
    init_cache,
    lm_loss,
    sequence_log_likelihood,
    token_log_probs,
)

CONFIG = TransformerConfig(
    vocab_size=13, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32, max_len=12
)
BATCH = 3
MODEL = TransformerLM(CONFIG)
# rbg keys compile far faster than the default threefry on CPU; the code under test does not
# depend on the key's implementation.
KEY_IMPL = "rbg"

_forward = jax.jit(MODEL.apply)


@pytest.fixture(scope="module")
def tokens() -> jax.Array:
    token_ids = np.random.default_rng(1).integers(0, CONFIG.vocab_size, (BATCH, CONFIG.max_len))
    return jnp.asarray(token_ids, jnp.int32)


@pytest.fixture(scope="module")
def params(random_transformer_params) -> chex.ArrayTree:
    return random_transformer_params(MODEL, seed=0)


def test_init_builds_a_tied_pre_layernorm_model() -> None:
    shapes = jax.eval_shape(MODEL.init, jax.random.key(0), jnp.zeros((2, 5), jnp.int32))
    tree = shapes["params"]
    assert set(tree) == {"token_embed", "position_embed", "blocks_0", "blocks_1", "final_norm"}
    assert tree["token_embed"]["embedding"].shape == (CONFIG.vocab_size, CONFIG.embed_dim)
    assert tree["position_embed"]["embedding"].shape == (CONFIG.max_len, CONFIG.embed_dim)
    assert set(tree["blocks_0"]) == {"attention_norm", "attention", "mlp_norm", "mlp_in", "mlp_out"}


@pytest.fixture(scope="module")
def full_logits(params: chex.ArrayTree, tokens: jax.Array) -> jax.Array:
    return _forward(params, tokens)


def test_forward_has_logits_shape_and_float32(full_logits: jax.Array) -> None:
    chex.assert_shape(full_logits, (BATCH, CONFIG.max_len, CONFIG.vocab_size))
    chex.assert_type(full_logits, jnp.float32)
    chex.assert_tree_all_finite(full_logits)


def test_forward_is_causal(
    params: chex.ArrayTree, tokens: jax.Array, full_logits: jax.Array
) -> None:
    changed = np.array(tokens)
    changed[:, 7:] = (changed[:, 7:] + 1) % CONFIG.vocab_size
    changed_logits = _forward(params, changed)
    chex.assert_trees_all_close(changed_logits[:, :7], full_logits[:, :7], atol=1e-6)
    assert not np.allclose(changed_logits[:, 7:], full_logits[:, 7:])


def test_cached_decoding_matches_full_forward(
    params: chex.ArrayTree, tokens: jax.Array, full_logits: jax.Array
) -> None:
    decode = jax.jit(
        lambda params, chunk, cache, position: MODEL.apply(
            params, chunk, cache, position, method=TransformerLM.decode
        )
    )
    prefill_len = 4
    logits, cache = decode(params, tokens[:, :prefill_len], init_cache(CONFIG, BATCH), 0)
    step_logits = [logits]
    for position in range(prefill_len, CONFIG.max_len):
        logits, cache = decode(params, tokens[:, position : position + 1], cache, position)
        step_logits.append(logits)
    chex.assert_trees_all_close(
        jnp.concatenate(step_logits, axis=1), full_logits, atol=1e-5, rtol=1e-5
    )


def test_decoding_loops_cache_gives_the_same_logits(
    params: chex.ArrayTree, tokens: jax.Array, full_logits: jax.Array
) -> None:
    # The private cache of the decoding loops holds the same keys and values, positions last.
    decode = jax.jit(
        lambda params, chunk, cache, position: MODEL.apply(
            params, chunk, cache, position, method=TransformerLM._decode_transposed
        )
    )
    prefill_len = 4
    cache = _init_transposed_cache(CONFIG, BATCH)
    logits, cache = decode(params, tokens[:, :prefill_len], cache, 0)
    step_logits = [logits]
    for position in range(prefill_len, CONFIG.max_len):
        logits, cache = decode(params, tokens[:, position : position + 1], cache, position)
        step_logits.append(logits)
    chex.assert_trees_all_close(
        jnp.concatenate(step_logits, axis=1), full_logits, atol=1e-5, rtol=1e-5
    )
    documented = init_cache(CONFIG, BATCH)
    _, documented = MODEL.apply(params, tokens, documented, 0, method=TransformerLM.decode)
    for transposed, stored in zip(cache, documented, strict=True):
        np.testing.assert_allclose(
            jnp.transpose(transposed, (0, 1, 4, 2, 3)), stored, atol=1e-6, rtol=1e-6
        )


def test_init_cache_has_documented_shape() -> None:
    cache = init_cache(CONFIG, batch_size=5)
    assert isinstance(cache, KVCache)
    expected = (CONFIG.num_layers, 5, CONFIG.max_len, CONFIG.num_heads, CONFIG.head_dim)
    chex.assert_shape([cache.keys, cache.values], expected)


def _first_layer_only(params: chex.ArrayTree) -> chex.ArrayTree:
    """The parameters of a one-layer model: those of the fixture without its second block.

    Tests that need a compilation of their own (dropout, gradients) use one layer, which
    compiles about twice as fast.
    """
    return {"params": {k: v for k, v in params["params"].items() if k != "blocks_1"}}


def test_bfloat16_model_returns_float32_logits(
    params: chex.ArrayTree, tokens: jax.Array, full_logits: jax.Array
) -> None:
    config = dataclasses.replace(CONFIG, dtype=jnp.bfloat16)
    # The parameters stay float32 whatever the computation dtype, so the tree is shared.
    logits = jax.jit(TransformerLM(config).apply)(params, tokens)
    chex.assert_type(logits, jnp.float32)
    chex.assert_trees_all_close(logits, full_logits, atol=0.25)
    chex.assert_type(init_cache(config, 2).keys, jnp.bfloat16)


def test_dropout_only_when_not_deterministic(params: chex.ArrayTree, tokens: jax.Array) -> None:
    model = TransformerLM(dataclasses.replace(CONFIG, num_layers=1, dropout_rate=0.5))

    @jax.jit
    def apply_three_ways(
        params: chex.ArrayTree, key: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        noisy = model.apply(params, tokens, deterministic=False, rngs={"dropout": key})
        return model.apply(params, tokens), model.apply(params, tokens, deterministic=True), noisy

    default, deterministic, noisy = apply_three_ways(
        _first_layer_only(params), jax.random.key(1, impl=KEY_IMPL)
    )
    chex.assert_trees_all_close(default, deterministic)
    assert not np.allclose(noisy, deterministic)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"embed_dim": 15},
        {"num_layers": 0},
        {"vocab_size": 2.5},
        {"dropout_rate": 1.0},
    ],
)
def test_config_rejects_invalid_values(kwargs: dict[str, float]) -> None:
    base = dict(vocab_size=13, num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32, max_len=12)
    with pytest.raises(ValueError):
        TransformerConfig(**{**base, **kwargs})


def test_rejects_sequences_longer_than_max_len(params: chex.ArrayTree) -> None:
    too_long = jnp.zeros((1, CONFIG.max_len + 1), jnp.int32)
    with pytest.raises(ValueError, match="max_len"):
        MODEL.apply(params, too_long)
    with pytest.raises(ValueError, match="max_len"):
        MODEL.apply(
            params,
            too_long[:, :2],
            init_cache(CONFIG, 1),
            CONFIG.max_len - 1,
            method=TransformerLM.decode,
        )


def test_rejects_unbatched_tokens(params: chex.ArrayTree) -> None:
    with pytest.raises(ValueError, match="batch"):
        MODEL.apply(params, jnp.zeros((4,), jnp.int32))


def _random_logits_and_targets() -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.normal(size=(2, 5, 7)), jnp.float32)
    return logits, jnp.asarray(rng.integers(1, 7, (2, 5)), jnp.int32)


def _reference_log_probs(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return np.take_along_axis(log_softmax, targets[..., None], axis=-1)[..., 0]


def test_token_log_probs_match_numpy() -> None:
    logits, targets = _random_logits_and_targets()
    expected = _reference_log_probs(np.asarray(logits, np.float64), np.asarray(targets))
    chex.assert_trees_all_close(token_log_probs(logits, targets), expected, atol=1e-5)


def test_mle_loss_ignores_padding() -> None:
    logits, targets = _random_logits_and_targets()
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    # Whatever sits in the padded slots must not matter.
    padded_targets = jnp.where(mask, targets, 0)
    padded_logits = jnp.where(mask[..., None], logits, 100.0 * jnp.arange(7.0))

    loss = lm_loss(logits, targets, mask)
    chex.assert_trees_all_close(lm_loss(padded_logits, padded_targets, mask), loss, atol=1e-6)
    reference = _reference_log_probs(np.asarray(logits, np.float64), np.asarray(targets))
    valid = np.asarray(mask)
    chex.assert_trees_all_close(loss, -reference[valid].mean(), atol=1e-5)

    log_likelihood = sequence_log_likelihood(padded_logits, padded_targets, mask)
    chex.assert_shape(log_likelihood, (2,))
    chex.assert_trees_all_close(log_likelihood, (reference * valid).sum(axis=-1), atol=1e-5)


def test_mle_loss_without_mask_averages_every_token() -> None:
    logits, targets = _random_logits_and_targets()
    chex.assert_trees_all_close(
        lm_loss(logits, targets), -token_log_probs(logits, targets).mean(), atol=1e-6
    )


def test_mle_loss_is_zero_when_everything_is_padding() -> None:
    logits, targets = _random_logits_and_targets()
    loss = lm_loss(logits, targets, jnp.zeros(targets.shape, bool))
    assert float(loss) == 0.0


def test_loss_helpers_reject_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="targets"):
        lm_loss(jnp.zeros((2, 4, 5)), jnp.zeros((2, 5), jnp.int32))
    with pytest.raises(ValueError, match="mask"):
        lm_loss(jnp.zeros((2, 4, 5)), jnp.zeros((2, 4), jnp.int32), jnp.ones((2, 5)))


def test_mle_training_reduces_loss(params: chex.ArrayTree) -> None:
    model = TransformerLM(dataclasses.replace(CONFIG, num_layers=1))
    params = _first_layer_only(params)
    data = np.tile(np.arange(CONFIG.max_len) % CONFIG.vocab_size, (2, 1)).astype(np.int32)
    mask = np.ones((2, CONFIG.max_len - 1), np.float32)
    mask[1, 6:] = 0.0

    @jax.jit
    def loss_and_grad(params: chex.ArrayTree) -> tuple[jax.Array, chex.ArrayTree]:
        return jax.value_and_grad(
            lambda params: lm_loss(model.apply(params, data[:, :-1]), data[:, 1:], mask)
        )(params)

    # Plain SGD in numpy: only the gradient is compiled.
    params = jax.device_get(params)
    losses = []
    for _ in range(15):
        loss, grads = jax.device_get(loss_and_grad(params))
        losses.append(float(loss))
        params = jax.tree.map(lambda param, grad: param - 0.5 * grad, params, grads)
    chex.assert_tree_all_finite(grads)
    assert losses[-1] < 0.5 * losses[0]
