"""A small decoder-only transformer language model, its key/value cache and its MLE loss.

What lives here: `TransformerConfig`, the flax.linen module `TransformerLM` (a pre-LayerNorm,
causal, decoder-only transformer [1] with learned positions and a tied output head), the
explicit functional key/value cache `KVCache` with `init_cache`, and the MLE loss helpers
`token_log_probs`, `sequence_log_likelihood` and `lm_loss`.

What does not: decoding loops (greedy, sampling, and the adapter from this model to them) live in
`decoding.py`; task losses and metrics on token arrays live in `metrics.py`; the data and the
training loops of the experiments live in ``mlesearch/experiments/`` (`tasks/`, `train.py`).

The model is shared by the experiment tasks and the tests. A sequence-to-sequence task uses it on
the concatenation ``prefix + target``, with the loss mask covering the target only; no encoder is
needed.

Output head: the output projection is tied to the token embedding [2], and the logits are scaled
by ``1 / sqrt(embed_dim)`` as in flax's lm1b example, so that a freshly initialised model (token
embeddings ~ N(0, 1)) has logits of order one.

The cache is an explicit pytree passed in and returned, rather than a flax ``cache`` collection,
so that decoding is a pure function of ``(params, cache)``; this makes it easy to ``jax.vmap``
over parameter candidates. The decoding loops of `decoding.py` keep the same keys and values in
another order, positions last (the private `_TransposedCache`, through
`TransformerLM._decode_transposed`): the order in which XLA's matrix products take them, so that
a step reads the cache as it lies instead of first copying all of it. The products, and so the
logits, are the same.

References:
  [1] Vaswani, Shazeer, Parmar, Uszkoreit, Jones, Gomez, Kaiser and Polosukhin, "Attention Is All
      You Need", NeurIPS 2017. https://arxiv.org/abs/1706.03762
  [2] Press and Wolf, "Using the Output Embedding to Improve Language Models", EACL 2017.
      https://arxiv.org/abs/1608.05859
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyperparameters of `TransformerLM`.

    Attributes:
      vocab_size: number of token ids; tokens are ints in ``[0, vocab_size)``.
      num_layers: number of transformer blocks.
      num_heads: number of attention heads; must divide ``embed_dim``.
      embed_dim: width of the residual stream.
      mlp_dim: hidden width of each block's feed-forward network.
      max_len: the longest sequence the model can see (the size of the position table and of
        the cache).
      dropout_rate: dropout on embeddings, attention weights and residual branches; used only
        when the model is called with ``deterministic=False``.
      dtype: the computation dtype (parameters stay float32). Logits are always float32.
    """

    vocab_size: int
    num_layers: int
    num_heads: int
    embed_dim: int
    mlp_dim: int
    max_len: int
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        for name in ("vocab_size", "num_layers", "num_heads", "embed_dim", "mlp_dim", "max_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim ({self.embed_dim}) must be a multiple of num_heads "
                f"({self.num_heads}); change one of them."
            )
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate!r}.")

    @property
    def head_dim(self) -> int:
        """The width of one attention head, ``embed_dim // num_heads``."""
        return self.embed_dim // self.num_heads


class KVCache(NamedTuple):
    """The keys and values of every layer for the positions decoded so far.

    The cache holds no position counter: the caller passes the position of the first token it
    feeds (see `TransformerLM.decode`). Slots at or beyond that position are ignored.
    """

    keys: jax.Array  # (num_layers, batch, max_len, num_heads, head_dim), config.dtype
    values: jax.Array  # (num_layers, batch, max_len, num_heads, head_dim), config.dtype


def init_cache(config: TransformerConfig, batch_size: int) -> KVCache:
    """Returns an empty (all-zero) key/value cache for `TransformerLM.decode`.

    Args:
      config: the model's configuration.
      batch_size: the number of sequences decoded in parallel.

    Returns:
      A `KVCache` whose arrays have shape
      ``(num_layers, batch_size, max_len, num_heads, head_dim)`` and dtype ``config.dtype``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    shape = (config.num_layers, batch_size, config.max_len, config.num_heads, config.head_dim)
    return KVCache(keys=jnp.zeros(shape, config.dtype), values=jnp.zeros(shape, config.dtype))


class _TransposedCache(NamedTuple):
    """`KVCache`'s keys and values with the positions last, for decoding loops.

    Attention multiplies, for each sequence and head, the query by a ``(head_dim, positions)``
    matrix of keys and the weights by the same matrix of values. With `KVCache`'s order XLA first
    copies the whole cache into that order, at every step and layer; here the matrices are stored
    that way, so the same products read the cache as it lies.
    """

    keys: jax.Array  # (num_layers, batch, num_heads, head_dim, max_len), config.dtype
    values: jax.Array  # (num_layers, batch, num_heads, head_dim, max_len), config.dtype


def _init_transposed_cache(config: TransformerConfig, batch_size: int) -> _TransposedCache:
    """An empty `_TransposedCache` for `TransformerLM._decode_transposed`."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    shape = (config.num_layers, batch_size, config.num_heads, config.head_dim, config.max_len)
    return _TransposedCache(
        keys=jnp.zeros(shape, config.dtype), values=jnp.zeros(shape, config.dtype)
    )


def _written(
    cache: KVCache | _TransposedCache, keys: jax.Array, values: jax.Array, start: tuple
) -> KVCache | _TransposedCache:
    """``cache`` with one layer's new ``keys`` and ``values`` written from index ``start``.

    The update goes into the stacked arrays of every layer rather than into a copy of the layer's
    slice, so that inside a decoding loop XLA updates the cache in place; restacking the layers
    would copy the whole cache at every step.
    """
    return type(cache)(
        keys=jax.lax.dynamic_update_slice(cache.keys, keys[None].astype(cache.keys.dtype), start),
        values=jax.lax.dynamic_update_slice(
            cache.values, values[None].astype(cache.values.dtype), start
        ),
    )


class _CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, with or without a key/value cache."""

    config: TransformerConfig

    @nn.compact
    def __call__(
        self,
        inputs: jax.Array,
        cache: KVCache | _TransposedCache | None,
        layer: int,
        position: jax.Array | int,
        deterministic: bool,
    ) -> tuple[jax.Array, KVCache | _TransposedCache | None]:
        config = self.config
        length = inputs.shape[1]
        qkv = nn.DenseGeneral(
            features=(3, config.num_heads, config.head_dim), dtype=config.dtype, name="qkv"
        )(inputs)  # (batch, length, 3, heads, head_dim)
        query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        query_positions = position + jnp.arange(length)
        # ``key_axes`` names the axes of ``keys`` and ``values``: (batch, key, heads, head_dim)
        # or, in a `_TransposedCache`, (batch, heads, head_dim, key).
        if cache is None:
            keys, values, key_axes = key, value, "bkhd"
            key_positions = jnp.arange(length)
        elif isinstance(cache, _TransposedCache):
            positions_last = (jnp.transpose(key, (0, 2, 3, 1)), jnp.transpose(value, (0, 2, 3, 1)))
            cache = _written(cache, *positions_last, (layer, 0, 0, 0, position))
            keys, values, key_axes = cache.keys[layer], cache.values[layer], "bhdk"
            key_positions = jnp.arange(config.max_len)
        else:
            cache = _written(cache, key, value, (layer, 0, position, 0, 0))
            keys, values, key_axes = cache.keys[layer], cache.values[layer], "bkhd"
            key_positions = jnp.arange(config.max_len)
        causal = key_positions[None, :] <= query_positions[:, None]  # (length, key_length)

        scores = jnp.einsum(f"bqhd,{key_axes}->bhqk", query, keys) / math.sqrt(config.head_dim)
        # Softmax in float32 even for bf16 models: masked scores use the float32 minimum.
        scores = jnp.where(causal, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1).astype(config.dtype)
        weights = nn.Dropout(config.dropout_rate)(weights, deterministic=deterministic)
        attended = jnp.einsum(f"bhqk,{key_axes}->bqhd", weights, values)
        outputs = nn.DenseGeneral(
            features=config.embed_dim, axis=(-2, -1), dtype=config.dtype, name="out"
        )(attended)
        return outputs, cache


class _DecoderBlock(nn.Module):
    """A pre-LayerNorm transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    config: TransformerConfig

    @nn.compact
    def __call__(
        self,
        inputs: jax.Array,
        cache: KVCache | _TransposedCache | None,
        layer: int,
        position: jax.Array | int,
        deterministic: bool,
    ) -> tuple[jax.Array, KVCache | _TransposedCache | None]:
        config = self.config
        dropout = nn.Dropout(config.dropout_rate)
        normed = nn.LayerNorm(dtype=config.dtype, name="attention_norm")(inputs)
        attended, cache = _CausalSelfAttention(config, name="attention")(
            normed, cache, layer, position, deterministic
        )
        hidden = inputs + dropout(attended, deterministic=deterministic)
        normed = nn.LayerNorm(dtype=config.dtype, name="mlp_norm")(hidden)
        expanded = nn.gelu(nn.Dense(config.mlp_dim, dtype=config.dtype, name="mlp_in")(normed))
        projected = nn.Dense(config.embed_dim, dtype=config.dtype, name="mlp_out")(expanded)
        return hidden + dropout(projected, deterministic=deterministic), cache


class TransformerLM(nn.Module):
    """A decoder-only causal transformer language model [1].

    Pre-LayerNorm blocks, learned position embeddings, and an output head tied to the token
    embedding. Two entry points share the same parameters:

    - ``model.apply(params, tokens)`` runs a full sequence (training and scoring), returning the
      logits of the next token at every position;
    - ``model.apply(params, tokens, cache, position, method=TransformerLM.decode)`` runs a chunk
      of tokens (one token when decoding, the whole prompt when prefilling) against an explicit
      `KVCache`, returning the logits and the updated cache.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> config = TransformerConfig(vocab_size=11, num_layers=1, num_heads=2, embed_dim=16,
      ...                            mlp_dim=32, max_len=8)
      >>> model = TransformerLM(config)
      >>> tokens = jnp.zeros((2, 5), jnp.int32)
      >>> params = model.init(jax.random.key(0), tokens)
      >>> model.apply(params, tokens).shape
      (2, 5, 11)

    Attributes:
      config: the model's `TransformerConfig`.

    References:
      [1] Vaswani et al., "Attention Is All You Need", NeurIPS 2017.
          https://arxiv.org/abs/1706.03762
    """

    config: TransformerConfig

    def setup(self) -> None:
        config = self.config
        self.token_embed = nn.Embed(
            config.vocab_size,
            config.embed_dim,
            embedding_init=nn.initializers.normal(stddev=1.0),
            dtype=config.dtype,
        )
        self.position_embed = nn.Embed(
            config.max_len,
            config.embed_dim,
            embedding_init=nn.initializers.normal(stddev=0.02),
            dtype=config.dtype,
        )
        self.blocks = [_DecoderBlock(config) for _ in range(config.num_layers)]
        self.final_norm = nn.LayerNorm(dtype=config.dtype)
        self.embed_dropout = nn.Dropout(config.dropout_rate)

    def __call__(self, tokens: jax.Array, *, deterministic: bool = True) -> jax.Array:
        """Returns the next-token logits at every position of full sequences.

        ``logits[:, t]`` is the model's prediction of ``tokens[:, t + 1]``, computed from
        ``tokens[:, : t + 1]`` only (causal mask).

        Args:
          tokens: int token ids, shape ``(batch, length)`` with ``length <= config.max_len``.
          deterministic: if False, apply dropout (needs a ``"dropout"`` PRNG stream in
            ``apply``).

        Returns:
          Float32 logits of shape ``(batch, length, vocab_size)``.
        """
        _check_tokens(tokens, self.config, position=0)
        logits, _ = self._forward(tokens, None, 0, deterministic)
        return logits

    def decode(
        self, tokens: jax.Array, cache: KVCache, position: jax.Array | int
    ) -> tuple[jax.Array, KVCache]:
        """Runs a chunk of tokens against a key/value cache, without dropout.

        The tokens sit at positions ``position, ..., position + chunk - 1``; they attend to the
        cached positions ``[0, position)`` and causally to each other. Their keys and values are
        written into the cache. With ``position = 0`` and an empty cache this is prefilling; with
        a chunk of one it is one decoding step.

        Args:
          tokens: int token ids, shape ``(batch, chunk)``.
          cache: a `KVCache` from `init_cache` (batch ``batch``), holding the keys and values of
            positions ``[0, position)``.
          position: the position of ``tokens[:, 0]``, an int or int32 scalar (may be traced);
            ``position + chunk <= config.max_len``.

        Returns:
          ``(logits, cache)``: float32 logits of shape ``(batch, chunk, vocab_size)``, equal to
          those of the full forward pass at these positions, and the updated cache.
        """
        _check_tokens(tokens, self.config, position=position)
        expected = (self.config.num_layers, tokens.shape[0], self.config.max_len)
        if cache.keys.shape[:3] != expected or cache.values.shape != cache.keys.shape:
            raise ValueError(
                f"cache has shape {cache.keys.shape}, expected {expected} + (num_heads, "
                "head_dim); build it with init_cache(config, batch_size)."
            )
        return self._forward(tokens, cache, position, True)

    def _decode_transposed(
        self, tokens: jax.Array, cache: _TransposedCache, position: jax.Array | int
    ) -> tuple[jax.Array, _TransposedCache]:
        """`decode` against a `_TransposedCache`: the same logits, for decoding loops."""
        _check_tokens(tokens, self.config, position=position)
        return self._forward(tokens, cache, position, True)

    def _forward(
        self,
        tokens: jax.Array,
        cache: KVCache | _TransposedCache | None,
        position: jax.Array | int,
        deterministic: bool,
    ) -> tuple[jax.Array, KVCache | _TransposedCache | None]:
        positions = position + jnp.arange(tokens.shape[1])
        hidden = self.token_embed(tokens) + self.position_embed(positions)[None]
        hidden = self.embed_dropout(hidden, deterministic=deterministic)
        for layer, block in enumerate(self.blocks):
            hidden, cache = block(hidden, cache, layer, position, deterministic)
        hidden = self.final_norm(hidden)
        logits = self.token_embed.attend(hidden) / math.sqrt(self.config.embed_dim)
        return logits.astype(jnp.float32), cache


def _check_tokens(tokens: jax.Array, config: TransformerConfig, position: jax.Array | int) -> None:
    """Raises ValueError unless ``tokens`` are (batch, length) ints that fit from ``position``."""
    if tokens.ndim != 2:
        raise ValueError(
            f"tokens must have shape (batch, length), got shape {tokens.shape}; add a batch axis."
        )
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}.")
    if not isinstance(position, jax.core.Tracer) and int(position) + tokens.shape[1] > (
        config.max_len
    ):
        raise ValueError(
            f"position {int(position)} + length {tokens.shape[1]} exceeds max_len "
            f"{config.max_len}; shorten the sequence or raise TransformerConfig.max_len."
        )


def token_log_probs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    r"""Returns the log-probability of each target token, :math:`\log\mathrm{softmax}(z_t)[y_t]`.

    Args:
      logits: float logits, shape ``(batch, length, vocab)``; ``logits[:, t]`` scores
        ``targets[:, t]``.
      targets: int token ids, shape ``(batch, length)``.

    Returns:
      Float32 log-probabilities of shape ``(batch, length)``.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits {logits.shape} and targets {targets.shape} disagree: logits must have shape "
            "targets.shape + (vocab,). For a language model, pass the logits of tokens[:, :-1] "
            "and the targets tokens[:, 1:]."
        )
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


def sequence_log_likelihood(
    logits: jax.Array, targets: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    r"""Returns the log-likelihood of each target sequence, summed over unmasked tokens.

    .. math:: \log p(y) = \sum_t m_t \log\mathrm{softmax}(z_t)[y_t]

    Args:
      logits: float logits, shape ``(batch, length, vocab)``; ``logits[:, t]`` scores
        ``targets[:, t]``.
      targets: int token ids, shape ``(batch, length)``.
      mask: weights of shape ``(batch, length)``, 1 for real tokens and 0 for padding (bool or
        float); None counts every token.

    Returns:
      Float32 log-likelihoods of shape ``(batch,)``.
    """
    log_probs = token_log_probs(logits, targets)
    return jnp.sum(log_probs * _token_weights(mask, targets), axis=-1)


def lm_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    r"""Returns the token-level cross-entropy (the MLE loss), averaged over unmasked tokens.

    .. math:: \ell = -\frac{\sum_{b,t} m_{bt} \log\mathrm{softmax}(z_{bt})[y_{bt}]}
                        {\sum_{b,t} m_{bt}}

    For a language model on ``tokens`` of shape ``(batch, length)``, call it with
    ``logits = model.apply(params, tokens[:, :-1])``, ``targets = tokens[:, 1:]`` and
    ``mask = tokens[:, 1:] != pad_id``. For sequence-to-sequence on ``prefix + target``, mask
    out the prefix as well.

    Args:
      logits: float logits, shape ``(batch, length, vocab)``; ``logits[:, t]`` scores
        ``targets[:, t]``.
      targets: int token ids, shape ``(batch, length)``.
      mask: weights of shape ``(batch, length)``, 1 for real tokens and 0 for padding (bool or
        float); None counts every token.

    Returns:
      A float32 scalar: the mean negative log-likelihood per unmasked token (0 if every token is
      masked).
    """
    weights = _token_weights(mask, targets)
    total = -jnp.sum(token_log_probs(logits, targets) * weights)
    total_weight = jnp.sum(weights)
    return total / jnp.where(total_weight > 0, total_weight, 1.0)


def _token_weights(mask: jax.Array | None, targets: jax.Array) -> jax.Array:
    """Returns ``mask`` as float32 weights of the shape of ``targets`` (all ones for None)."""
    if mask is None:
        return jnp.ones(targets.shape, jnp.float32)
    if mask.shape != targets.shape:
        raise ValueError(
            f"mask has shape {mask.shape} but targets have shape {targets.shape}; pass a mask "
            "of the same shape, e.g. targets != pad_id."
        )
    return mask.astype(jnp.float32)
