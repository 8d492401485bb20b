"""jax's threefry normals on CPU, drawn in one pass and stored once: a private speed-up.

``standard_normal(key, length, written_out=...)`` returns ``jax.random.normal(key, (length,),
jnp.float32)`` bit for bit. With ``written_out`` (which `mlesearch.transform` sets on CPU), for
jax's default threefry keys with the partitionable counter layout (``jax_threefry_partitionable``,
jax's default), it draws them itself, because of two things XLA:CPU does with jax's own draw
(jax 0.10-0.12):

- jax lowers the threefry-2x32 hash as a rolled loop of five passes over the draw; written out
  here (`threefry_words`), its 20 rounds fuse into one elementwise pass;
- XLA fuses the last part of ``erf⁻¹`` into every consumer of the normals and computes it again
  in each (each leaf's slice, θ + Δ, the log q terms, the noise kept for the weighted sum). Here
  the normals are made inside a ``jax.lax.cond`` on a predicate that always holds but that XLA
  cannot see through, so they are stored once; under ``jax.vmap`` over keys a custom batching
  rule makes one draw for all the keys, since a batched predicate would turn the cond into a
  select that XLA fuses again. ``jax.lax.optimization_barrier`` around jax's draw, the public
  alternative, left the step 1.14 to 1.98 times as slow (docs/performance.md).

Everything here copies jax's private layout: the counter pair (0, i) per word with the two
output words xor-ed, and the uniform-to-normal construction of ``jax.random.normal``. The tests
compare the bits with ``jax.random.bits`` and the normals with ``jax.random.normal`` (typed,
raw and folded keys, under jit and vmap), so a jax release that changes either fails them, and
`usable_key_words` falls back to jax's draw for any key or layout it does not recognise. Whether
to write the draw out at all is the caller's choice, an argument of every function that draws
(traced with the step, not read from a setting): tests and ``benchmarks/draws.py`` pass it both
ways to compare.

References:
  [1] Salmon, Moraes, Dror & Shaw, *Parallel random numbers: as easy as 1, 2, 3*, SC 2011 (the
  threefry-2x32 counter-based generator that jax's default keys use).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# The threefry-2x32 rotations, in the two alternating groups of four rounds [1].
ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry_words(key_words: jax.Array, length: int) -> jax.Array:
    """``jax.random.bits(key, (length,))`` for each threefry key, written out.

    The bits of jax's partitionable threefry (``jax_threefry_partitionable``, jax's default):
    counter i goes through threefry-2x32 [1] as the pair (0, i), and the two output words are
    xor-ed. Written out, the 20 rounds fuse into one elementwise pass.

    Args:
      key_words: uint32[..., 2], the keys' data (``jax.random.key_data``).
      length: how many words per key, below 2³².

    Returns:
      uint32[..., length].
    """
    k0, k1 = key_words[..., 0:1], key_words[..., 1:2]
    keys = (k0, k1, k0 ^ k1 ^ jnp.uint32(0x1BD11BDA))

    def rotate_left(x: jax.Array, bits: int) -> jax.Array:
        left = jax.lax.shift_left(x, jnp.uint32(bits))
        return left | jax.lax.shift_right_logical(x, jnp.uint32(32 - bits))

    shape = (*key_words.shape[:-1], length)
    x0 = jnp.zeros(shape, jnp.uint32) + keys[0]
    x1 = jax.lax.broadcasted_iota(jnp.uint32, shape, len(shape) - 1) + keys[1]
    for step in range(5):
        for bits in ROTATIONS[step % 2]:
            x0 = x0 + x1
            x1 = x0 ^ rotate_left(x1, bits)
        x0 = x0 + keys[(step + 1) % 3]
        x1 = x1 + keys[(step + 2) % 3] + jnp.uint32(step + 1)
    return x0 ^ x1


def normals_from_bits(words: jax.Array) -> jax.Array:
    """Float32 normals from uint32 words, as ``jax.random.normal`` makes them.

    A uniform on (-1, 1) from the top 23 bits of each word, then √2 · erf⁻¹.
    """
    one = jnp.uint32(0x3F800000)  # 1.0f: the top 23 bits become a mantissa in [1, 2).
    mantissa = jax.lax.shift_right_logical(words, jnp.uint32(9)) | one
    floats = jax.lax.bitcast_convert_type(mantissa, jnp.float32) - jnp.float32(1.0)
    low = np.nextafter(np.float32(-1.0), np.float32(0.0))
    uniform = jax.lax.max(low, floats * (np.float32(1.0) - low) + low)
    return np.float32(np.sqrt(2.0)) * jax.lax.erf_inv(uniform)


def threefry_normals(key_words: jax.Array, length: int) -> jax.Array:
    """``jax.random.normal(key, (length,))`` for each of m threefry keys, bit for bit.

    The bits come from `threefry_words`, and the normals are made inside a ``jax.lax.cond`` on
    a predicate that always holds but that the compiler cannot see through: the branch is one
    parallel elementwise pass, and its result is stored once for all the consumers of the
    normals. Without the cond, XLA fused the draw into every consumer and computed it again in
    each.

    Args:
      key_words: uint32[m, 2], the keys' data.
      length: normals per key.

    Returns:
      float32[m, length].
    """
    count = key_words.shape[0]
    always = jnp.all((key_words[:, 0] | jnp.uint32(1)) != 0)  # x | 1 is never 0.

    def never(words: jax.Array) -> jax.Array:  # zeros with the draw's type (and sharding).
        return jnp.broadcast_to(jnp.zeros_like(words[:, :1], jnp.float32), (count, length))

    return jax.lax.cond(
        always, lambda words: normals_from_bits(threefry_words(words, length)), never, key_words
    )


def usable_key_words(key: jax.Array, length: int) -> jax.Array | None:
    """The key's uint32[2] data where `threefry_normals` can make the draw, else None.

    For a threefry key with jax's partitionable stream and an even length below 2³².
    """
    if not jax.config.jax_threefry_partitionable or not 0 < length < 2**32 or length % 2:
        return None
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != () or str(jax.random.key_impl(key)) != "threefry2x32":
            return None
        return jax.random.key_data(key)
    if key.shape != (2,) or jax.config.jax_default_prng_impl != "threefry2x32":
        return None
    return key.astype(jnp.uint32)


def standard_normal(key: jax.Array, length: int, *, written_out: bool) -> jax.Array:
    """``jax.random.normal(key, (length,), jnp.float32)``, bit for bit; faster on CPU.

    With ``written_out``, where `usable_key_words` allows it (a threefry key, an even length),
    the draw goes through `threefry_normals`. Under ``jax.vmap`` over keys, it draws for all
    the keys at once (a custom batching rule), so that the normals of all of them are stored
    once: a batched predicate would turn the cond into a select, which XLA fuses into the
    consumers again.

    Args:
      key: a typed key or a raw ``PRNGKey``.
      length: how many normals.
      written_out: whether to write the draw out where the key allows it (a static bool, which
        the caller chooses for the backend: `mlesearch.mgs` on CPU); else, or where
        it does not, the draw is ``jax.random.normal``'s.

    Returns:
      float32[length].
    """
    words = usable_key_words(key, length) if written_out else None
    if words is None:
        return jax.random.normal(key, (length,), jnp.float32)

    @jax.custom_batching.custom_vmap
    def draw(words: jax.Array) -> jax.Array:
        return threefry_normals(words[None], length)[0]

    @draw.def_vmap
    def draw_for_each(
        axis_size: int, in_batched: list[bool], words: jax.Array
    ) -> tuple[jax.Array, bool]:
        del axis_size, in_batched  # one argument: the rule only runs when it is batched.
        return threefry_normals(words, length), True

    return draw(words)
