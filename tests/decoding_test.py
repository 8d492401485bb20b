"""Tests for mlesearch.decoding: greedy and sampled decoding with a key/value cache."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlesearch.seq.decoding import (
    DecodeOutput,
    Decoder,
    greedy_decode,
    sample_decode,
    transformer_decoder,
)
from mlesearch.seq.models import (
    TransformerConfig,
    TransformerLM,
    init_cache,
    token_log_probs,
)

# One layer keeps compilation short; models_test.py checks the cache of a two-layer model.
CONFIG = TransformerConfig(
    vocab_size=11, num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32, max_len=12
)
DECODER = transformer_decoder(CONFIG)
MODEL = TransformerLM(CONFIG)
BATCH = 4
PROMPT_LEN = 3
NEW_TOKENS = CONFIG.max_len - PROMPT_LEN + 1  # the most that fit: the last token is not fed back
NO_EOS = -1  # matches no token
NUM_SAMPLES = 4000
# rbg keys compile far faster than the default threefry on CPU; decoding does not depend on the
# key's implementation.
KEY_IMPL = "rbg"

_jit_forward = jax.jit(MODEL.apply)


def _greedy_fn(
    params: chex.ArrayTree, prompt: jax.Array, eos_id: jax.Array, pad_id: jax.Array
) -> DecodeOutput:
    return greedy_decode(
        DECODER, params, prompt, max_new_tokens=NEW_TOKENS, eos_id=eos_id, pad_id=pad_id
    )


# Every test shares these compiled functions; the trace counter proves that none retraces.
_greedy = jax.jit(chex.assert_max_traces(_greedy_fn, n=1))


@jax.jit
@chex.assert_max_traces(n=1)
def _sample(
    params: chex.ArrayTree, prompt: jax.Array, key: jax.Array, temperature: jax.Array
) -> DecodeOutput:
    return sample_decode(
        DECODER, params, prompt, key, max_new_tokens=NEW_TOKENS, temperature=temperature
    )


@pytest.fixture(scope="module")
def params(random_transformer_params) -> chex.ArrayTree:
    return random_transformer_params(MODEL, seed=0)


@pytest.fixture(scope="module")
def prompt() -> jax.Array:
    token_ids = np.random.default_rng(0).integers(1, CONFIG.vocab_size, (BATCH, PROMPT_LEN))
    return jnp.asarray(token_ids, jnp.int32)


@pytest.fixture(scope="module")
def greedy_output(params: chex.ArrayTree, prompt: jax.Array) -> DecodeOutput:
    return _greedy(params, prompt, NO_EOS, 0)


@pytest.fixture(scope="module")
def repeated_prompt(prompt: jax.Array) -> jax.Array:
    return jnp.asarray(np.tile(np.asarray(prompt)[:1], (NUM_SAMPLES, 1)))


def _full_model_log_probs(
    params: chex.ArrayTree, prompt: jax.Array, new_tokens: jax.Array
) -> jax.Array:
    """Scores ``new_tokens`` after ``prompt`` with one full forward pass, shape (batch, new)."""
    sequence = np.concatenate([prompt, new_tokens], axis=1)[:, : CONFIG.max_len]
    padded = np.pad(sequence, ((0, 0), (0, CONFIG.max_len - sequence.shape[1])))
    logits = _jit_forward(params, jnp.asarray(padded))
    return token_log_probs(logits[:, PROMPT_LEN - 1 : PROMPT_LEN - 1 + NEW_TOKENS], new_tokens)


def test_greedy_has_documented_shapes(greedy_output: DecodeOutput) -> None:
    chex.assert_shape([greedy_output.tokens, greedy_output.log_probs], (BATCH, NEW_TOKENS))
    chex.assert_shape(greedy_output.lengths, (BATCH,))
    chex.assert_type([greedy_output.tokens, greedy_output.lengths], jnp.int32)
    chex.assert_type(greedy_output.log_probs, jnp.float32)
    np.testing.assert_array_equal(greedy_output.lengths, NEW_TOKENS)


def test_greedy_matches_argmax_loop_over_full_model(
    params: chex.ArrayTree, prompt: jax.Array, greedy_output: DecodeOutput
) -> None:
    # Re-run the full model on the whole prefix at every step; a fixed padded length keeps it to
    # one compilation, and the causal mask makes the padding invisible.
    sequence = np.zeros((BATCH, CONFIG.max_len + 1), np.int32)
    sequence[:, :PROMPT_LEN] = np.asarray(prompt)
    log_probs = np.zeros((BATCH, NEW_TOKENS), np.float32)
    for step in range(NEW_TOKENS):
        position = PROMPT_LEN + step - 1
        logits = np.asarray(_jit_forward(params, jnp.asarray(sequence[:, : CONFIG.max_len])))
        next_logits = logits[:, position]
        sequence[:, position + 1] = next_logits.argmax(axis=-1)
        log_normaliser = np.log(np.exp(next_logits.astype(np.float64)).sum(axis=-1))
        chosen_logits = next_logits[np.arange(BATCH), sequence[:, position + 1]]
        log_probs[:, step] = chosen_logits - log_normaliser
    np.testing.assert_array_equal(greedy_output.tokens, sequence[:, PROMPT_LEN:])
    chex.assert_trees_all_close(greedy_output.log_probs, log_probs, atol=1e-5)


def test_eos_masks_the_rest_of_the_sequence(
    params: chex.ArrayTree, prompt: jax.Array, greedy_output: DecodeOutput
) -> None:
    # Declare as EOS the token that greedy decoding emits third in row 0: decoding up to the
    # first EOS is unchanged, everything after it becomes padding.
    unmasked_tokens = np.asarray(greedy_output.tokens)
    eos_id = int(unmasked_tokens[0, 2])
    pad_id = CONFIG.vocab_size  # out of the vocabulary, so padding is unmistakable
    output = _greedy(params, prompt, eos_id, pad_id)

    is_eos = unmasked_tokens == eos_id
    lengths = np.where(is_eos.any(axis=1), is_eos.argmax(axis=1) + 1, NEW_TOKENS)
    assert lengths[0] <= 3
    kept = np.arange(NEW_TOKENS)[None, :] < lengths[:, None]
    np.testing.assert_array_equal(output.lengths, lengths)
    np.testing.assert_array_equal(output.tokens, np.where(kept, unmasked_tokens, pad_id))
    np.testing.assert_array_equal(output.log_probs, np.where(kept, greedy_output.log_probs, 0.0))


def test_vmap_over_parameter_candidates_matches_separate_calls(
    params: chex.ArrayTree, prompt: jax.Array, greedy_output: DecodeOutput
) -> None:
    rng = np.random.default_rng(1)
    candidates = jax.tree.map(
        lambda leaf: (np.asarray(leaf) + rng.normal(scale=0.5, size=(4, *leaf.shape))).astype(
            np.float32
        ),
        params,
    )
    eos_id = int(greedy_output.tokens[0, 4])  # so that some rows stop early
    batched = jax.jit(jax.vmap(_greedy_fn, in_axes=(0, None, None, None)))(
        candidates, prompt, eos_id, 0
    )
    chex.assert_shape(batched.tokens, (4, BATCH, NEW_TOKENS))
    batched = jax.device_get(batched)
    for index in range(4):
        candidate = jax.tree.map(lambda leaf, i=index: leaf[i], candidates)
        single = _greedy(candidate, prompt, eos_id, 0)
        chex.assert_trees_all_close(
            jax.tree.map(lambda leaf, i=index: leaf[i], batched), single, atol=1e-5
        )
    assert len({batched.tokens[i].tobytes() for i in range(4)}) > 1


def test_greedy_does_not_retrace_for_new_inputs(params: chex.ArrayTree, prompt: jax.Array) -> None:
    # _greedy is wrapped in chex.assert_max_traces(n=1): a second trace would raise.
    _greedy(params, prompt, NO_EOS, 0)
    _greedy(params, (np.asarray(prompt) + 1) % CONFIG.vocab_size, 2, 5)


def test_decoder_without_prefill_steps_through_the_prompt(
    params: chex.ArrayTree, prompt: jax.Array, greedy_output: DecodeOutput
) -> None:
    stepwise = Decoder(init_cache=DECODER.init_cache, step=DECODER.step, max_len=CONFIG.max_len)
    output = jax.jit(
        lambda params, prompt: greedy_decode(stepwise, params, prompt, max_new_tokens=NEW_TOKENS)
    )(params, prompt)
    np.testing.assert_array_equal(output.tokens, greedy_output.tokens)
    chex.assert_trees_all_close(output.log_probs, greedy_output.log_probs, atol=1e-5)


def test_transformer_decoder_matches_decoding_on_the_documented_cache(
    params: chex.ArrayTree, prompt: jax.Array, greedy_output: DecodeOutput
) -> None:
    # The same loop on `TransformerLM.decode` and its `KVCache`: the decoder's own cache, in
    # another order, must give the same tokens and log-probabilities.
    def decode(params, tokens, cache, position):
        return MODEL.apply(params, tokens, cache, position, method=TransformerLM.decode)

    def step(params, cache, tokens, position):
        logits, cache = decode(params, tokens[:, None], cache, position)
        return logits[:, 0], cache

    documented = Decoder(
        init_cache=lambda batch_size: init_cache(CONFIG, batch_size),
        step=step,
        prefill=lambda params, cache, tokens: decode(params, tokens, cache, 0)[1],
        max_len=CONFIG.max_len,
    )
    output = jax.jit(
        lambda params, prompt: greedy_decode(
            documented, params, prompt, max_new_tokens=NEW_TOKENS, eos_id=NO_EOS
        )
    )(params, prompt)
    np.testing.assert_array_equal(output.tokens, greedy_output.tokens)
    chex.assert_trees_all_close(output.log_probs, greedy_output.log_probs, atol=1e-6)


def test_sampling_is_reproducible_and_depends_on_key(
    params: chex.ArrayTree, repeated_prompt: jax.Array
) -> None:
    temperature = jnp.float32(1.5)
    first = _sample(params, repeated_prompt, jax.random.key(0, impl=KEY_IMPL), temperature)
    again = _sample(params, repeated_prompt, jax.random.key(0, impl=KEY_IMPL), temperature)
    other = _sample(params, repeated_prompt, jax.random.key(1, impl=KEY_IMPL), temperature)
    chex.assert_trees_all_equal(first, again)
    assert not np.array_equal(first.tokens, other.tokens)
    # The reported log-probabilities are the model's own (temperature 1) scores.
    chex.assert_trees_all_close(
        first.log_probs[:BATCH],
        _full_model_log_probs(
            params, np.asarray(repeated_prompt[:BATCH]), np.asarray(first.tokens[:BATCH])
        ),
        atol=1e-5,
    )


def test_sampling_first_token_follows_tempered_softmax(
    params: chex.ArrayTree, prompt: jax.Array, repeated_prompt: jax.Array
) -> None:
    temperature = 0.7
    output = _sample(
        params, repeated_prompt, jax.random.key(3, impl=KEY_IMPL), jnp.float32(temperature)
    )
    frequencies = np.bincount(np.asarray(output.tokens[:, 0]), minlength=CONFIG.vocab_size)
    frequencies = frequencies / NUM_SAMPLES
    padded_prompt = np.pad(prompt, ((0, 0), (0, CONFIG.max_len - PROMPT_LEN)))
    logits = np.asarray(_jit_forward(params, jnp.asarray(padded_prompt)), np.float64)
    tempered = np.exp(logits[0, PROMPT_LEN - 1] / temperature)
    expected = tempered / tempered.sum()
    standard_error = np.sqrt(expected * (1 - expected) / NUM_SAMPLES)
    np.testing.assert_array_less(np.abs(frequencies - expected), 5 * standard_error + 1e-3)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_sampling_rejects_nonpositive_temperature(
    params: chex.ArrayTree, prompt: jax.Array, temperature: float
) -> None:
    with pytest.raises(ValueError, match="temperature"):
        sample_decode(DECODER, params, prompt, 0, max_new_tokens=2, temperature=temperature)


@pytest.mark.parametrize(
    ("prompt_shape", "max_new_tokens", "match"),
    [
        ((BATCH, PROMPT_LEN), NEW_TOKENS + 1, "max_len"),
        ((BATCH, PROMPT_LEN), 0, "max_new_tokens"),
        ((PROMPT_LEN,), 2, "prompt"),
        ((BATCH, 0), 2, "prompt"),
    ],
)
def test_greedy_rejects_invalid_arguments(
    params: chex.ArrayTree, prompt_shape: tuple[int, ...], max_new_tokens: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        greedy_decode(
            DECODER, params, jnp.ones(prompt_shape, jnp.int32), max_new_tokens=max_new_tokens
        )
