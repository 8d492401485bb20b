"""Greedy and temperature-sampling decoding for models with a key/value cache.

What lives here: the `Decoder` protocol (how a model exposes a cache, a prefill and a one-token
step), `transformer_decoder`, the adapter for `models.TransformerLM`, and the two decoding loops
`greedy_decode` and `sample_decode` with their output `DecodeOutput`.

What does not: the model itself and its MLE loss live in `models.py`; metrics on the decoded
tokens (repetition, non-termination, BLEU, ...) live in `metrics.py`.

Both loops run a fixed number of new tokens with `jax.lax.scan`, so they are jit-able and
vmap-able over ``params`` (one parameter candidate per vmapped row, the same prompt for each).
Every token after the first ``eos_id`` is replaced by ``pad_id`` and scores a log-probability of
0. Do not pass a `Decoder` through `jax.jit` as an argument: close over it, e.g.
``jax.jit(lambda params, prompt: greedy_decode(decoder, params, prompt, max_new_tokens=8))``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mlesearch import _utils
from mlesearch.seq.models import (
    TransformerConfig,
    TransformerLM,
    _init_transposed_cache,
    _TransposedCache,
)

Params = Any
Cache = Any


@dataclasses.dataclass(frozen=True)
class Decoder:
    """How a model is decoded token by token: an empty cache, a prefill and a one-token step.

    All three functions must be pure and traceable by JAX. ``params`` is whatever the model's
    ``apply`` takes; the cache is any pytree.

    Attributes:
      init_cache: ``init_cache(batch_size) -> cache``, an empty cache for ``batch_size``
        sequences. It must not depend on the parameters.
      step: ``step(params, cache, tokens, position) -> (logits, cache)``: feeds ``tokens`` of
        shape ``(batch,)`` at the int32 scalar ``position`` and returns the float logits of the
        next token, shape ``(batch, vocab)``, and the updated cache.
      prefill: ``prefill(params, cache, tokens) -> cache``: feeds ``tokens`` of shape
        ``(batch, length)`` at positions ``[0, length)`` into an empty cache in one call. The
        loops prefill all but the prompt's last token, which goes through ``step``. None runs
        ``step`` over those tokens one at a time instead.
      max_len: the most positions the cache holds, or None for no limit. Decoding checks that
        the prompt and the new tokens fit.
    """

    init_cache: Callable[[int], Cache]
    step: Callable[[Params, Cache, jax.Array, jax.Array], tuple[jax.Array, Cache]]
    prefill: Callable[[Params, Cache, jax.Array], Cache] | None = None
    max_len: int | None = None


class DecodeOutput(NamedTuple):
    """The result of `greedy_decode` or `sample_decode`.

    ``log_probs`` are the model's own (temperature 1) log-probabilities of the emitted tokens.
    ``lengths`` counts the new tokens up to and including the first EOS, or is
    ``max_new_tokens`` where there is none.
    """

    tokens: jax.Array  # (batch, max_new_tokens) int32; pad_id after the first eos_id
    log_probs: jax.Array  # (batch, max_new_tokens) float32; 0 after the first eos_id
    lengths: jax.Array  # (batch,) int32


def transformer_decoder(config: TransformerConfig) -> Decoder:
    """Returns the `Decoder` of a `models.TransformerLM` with this configuration.

    The cache holds the keys and values of `models.KVCache` with the positions last
    (``models._TransposedCache``), the order in which XLA's matrix products take them, so that a
    step reads the cache as it lies; in `KVCache`'s order every step would first copy the whole
    cache. Prefill runs the prompt in one call, and each step runs one token, with the logits of
    `TransformerLM.decode`.

    Args:
      config: the model's configuration; ``params`` passed to the decoding loops are those of
        ``TransformerLM(config).init(...)``.

    Returns:
      A `Decoder` with ``max_len = config.max_len``.
    """
    model = TransformerLM(config)

    def init_fn(batch_size: int) -> _TransposedCache:
        return _init_transposed_cache(config, batch_size)

    def prefill_fn(params: Params, cache: _TransposedCache, tokens: jax.Array) -> _TransposedCache:
        # The logits are unused, and XLA drops their computation under jit.
        _, cache = model.apply(params, tokens, cache, 0, method=TransformerLM._decode_transposed)
        return cache

    def step_fn(
        params: Params, cache: _TransposedCache, tokens: jax.Array, position: jax.Array
    ) -> tuple[jax.Array, _TransposedCache]:
        logits, cache = model.apply(
            params, tokens[:, None], cache, position, method=TransformerLM._decode_transposed
        )
        return logits[:, 0], cache

    return Decoder(init_cache=init_fn, step=step_fn, prefill=prefill_fn, max_len=config.max_len)


def greedy_decode(
    decoder: Decoder,
    params: Params,
    prompt: jax.Array,
    *,
    max_new_tokens: int,
    eos_id: int | jax.Array | None = None,
    pad_id: int | jax.Array = 0,
) -> DecodeOutput:
    """Decodes by always choosing the most likely next token.

    Args:
      decoder: the model's `Decoder`, e.g. from `transformer_decoder`.
      params: the model's parameters.
      prompt: int token ids, shape ``(batch, prompt_len)`` with ``prompt_len >= 1``. Every row
        is a real prompt of the same length (no padding); start it with a BOS token if the model
        has one.
      max_new_tokens: how many tokens to generate; ``prompt_len + max_new_tokens - 1`` must not
        exceed ``decoder.max_len``.
      eos_id: the end-of-sequence id (an int or a traced int32 scalar), or None to never stop
        early.
      pad_id: the id written after the first ``eos_id`` (an int or a traced int32 scalar).

    Returns:
      A `DecodeOutput` with ``tokens`` and ``log_probs`` of shape ``(batch, max_new_tokens)`` and
      ``lengths`` of shape ``(batch,)``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from mlesearch.seq.models import TransformerConfig, TransformerLM
      >>> config = TransformerConfig(vocab_size=11, num_layers=1, num_heads=2, embed_dim=16,
      ...                            mlp_dim=32, max_len=8)
      >>> prompt = jnp.array([[1, 2], [3, 4]])
      >>> params = TransformerLM(config).init(jax.random.key(0), prompt)
      >>> decoder = transformer_decoder(config)
      >>> decode = jax.jit(lambda params, prompt: greedy_decode(
      ...     decoder, params, prompt, max_new_tokens=5, eos_id=2, pad_id=0))
      >>> output = decode(params, prompt)
      >>> output.tokens.shape, output.log_probs.shape, output.lengths.shape
      ((2, 5), (2, 5), (2,))
    """

    def choose(logits: jax.Array, key: jax.Array | None) -> jax.Array:
        del key
        return jnp.argmax(logits, axis=-1)

    return _decode(decoder, params, prompt, None, choose, max_new_tokens, eos_id, pad_id)


def sample_decode(
    decoder: Decoder,
    params: Params,
    prompt: jax.Array,
    key: jax.Array | int,
    *,
    max_new_tokens: int,
    temperature: float | jax.Array = 1.0,
    eos_id: int | jax.Array | None = None,
    pad_id: int | jax.Array = 0,
) -> DecodeOutput:
    r"""Decodes by sampling each next token from :math:`\mathrm{softmax}(z / T)`.

    ``log_probs`` are those of the model itself, :math:`\log\mathrm{softmax}(z)`, not of the
    tempered sampling distribution, so that they can score the sequence under the model.

    Args:
      decoder: the model's `Decoder`, e.g. from `transformer_decoder`.
      params: the model's parameters.
      prompt: int token ids, shape ``(batch, prompt_len)`` with ``prompt_len >= 1``. Every row
        is a real prompt of the same length (no padding). Rows are sampled independently.
      key: an int seed, a typed key (``jax.random.key``) or a raw ``jax.random.PRNGKey``.
      max_new_tokens: how many tokens to generate; ``prompt_len + max_new_tokens - 1`` must not
        exceed ``decoder.max_len``.
      temperature: the sampling temperature :math:`T > 0` (may be traced; checked only when
        concrete).
      eos_id: the end-of-sequence id (an int or a traced int32 scalar), or None to never stop
        early.
      pad_id: the id written after the first ``eos_id`` (an int or a traced int32 scalar).

    Returns:
      A `DecodeOutput` with ``tokens`` and ``log_probs`` of shape ``(batch, max_new_tokens)`` and
      ``lengths`` of shape ``(batch,)``.
    """
    if not isinstance(temperature, jax.core.Tracer) and not float(temperature) > 0:
        raise ValueError(
            f"temperature must be > 0, got {temperature!r}; use greedy_decode for temperature 0."
        )
    key = _utils.canonicalize_key(key)

    def choose(logits: jax.Array, step_key: jax.Array | None) -> jax.Array:
        return jax.random.categorical(step_key, logits / temperature, axis=-1)

    return _decode(decoder, params, prompt, key, choose, max_new_tokens, eos_id, pad_id)


def _decode(
    decoder: Decoder,
    params: Params,
    prompt: jax.Array,
    key: jax.Array | None,
    choose: Callable[[jax.Array, jax.Array | None], jax.Array],
    max_new_tokens: int,
    eos_id: int | jax.Array | None,
    pad_id: int | jax.Array,
) -> DecodeOutput:
    """The decoding loop shared by greedy and sampled decoding."""
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(
            f"prompt must have shape (batch, prompt_len) with prompt_len >= 1, got {prompt.shape}."
        )
    if not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise ValueError(f"prompt must hold integer token ids, got dtype {prompt.dtype}.")
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or max_new_tokens < 1
    ):
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}.")
    batch_size, prompt_len = prompt.shape
    # The last new token is never fed back, so it needs no cache slot.
    if decoder.max_len is not None and prompt_len + max_new_tokens - 1 > decoder.max_len:
        raise ValueError(
            f"prompt_len ({prompt_len}) + max_new_tokens ({max_new_tokens}) - 1 exceeds the "
            f"decoder's max_len ({decoder.max_len}); generate fewer tokens or use a model with "
            "a larger max_len."
        )
    prompt = prompt.astype(jnp.int32)

    # The prompt's last token goes through `step` like every generated token, so one loop body
    # both feeds a token and chooses the next one.
    cache = decoder.init_cache(batch_size)
    context = prompt[:, :-1]
    if prompt_len > 1 and decoder.prefill is not None:
        cache = decoder.prefill(params, cache, context)
    elif prompt_len > 1:

        def feed(cache: Cache, inputs: tuple[jax.Array, jax.Array]) -> tuple[Cache, None]:
            tokens, position = inputs
            _, cache = decoder.step(params, cache, tokens, position)
            return cache, None

        positions = jnp.arange(prompt_len - 1, dtype=jnp.int32)
        cache, _ = jax.lax.scan(feed, cache, (context.T, positions))

    def body(
        carry: tuple[Cache, jax.Array, jax.Array], inputs: tuple[jax.Array, jax.Array | None]
    ) -> tuple[tuple[Cache, jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]:
        cache, previous, done = carry
        position, step_key = inputs
        logits, cache = decoder.step(params, cache, previous, position)
        chosen = choose(logits, step_key).astype(jnp.int32)
        log_prob = jnp.take_along_axis(
            jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), chosen[:, None], axis=-1
        )[:, 0]
        token = jnp.where(done, jnp.asarray(pad_id, jnp.int32), chosen)
        log_prob = jnp.where(done, 0.0, log_prob)
        generated = ~done
        if eos_id is not None:
            done = done | (token == eos_id)
        return (cache, token, done), (token, log_prob, generated)

    positions = prompt_len - 1 + jnp.arange(max_new_tokens, dtype=jnp.int32)
    step_keys = None if key is None else jax.random.split(key, max_new_tokens)
    done = jnp.zeros((batch_size,), bool)
    _, (tokens, log_probs, generated) = jax.lax.scan(
        body, (cache, prompt[:, -1], done), (positions, step_keys)
    )
    lengths = jnp.sum(generated, axis=0, dtype=jnp.int32)
    return DecodeOutput(tokens=tokens.T, log_probs=log_probs.T, lengths=lengths)
