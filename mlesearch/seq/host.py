"""Task losses computed on the host, in Python, called from jitted JAX code.

`host_task_loss` wraps a NumPy-level function (a metric that only exists in Python, such as
sacrebleu's BLEU on detokenised text) with `jax.pure_callback`, so that it can serve as the
`task_loss_fn` of `mlesearch.mgs` or of the evolution-strategy baselines: inside `jax.jit`, and
under the `jax.vmap` over candidates that those transformations apply.

The metrics themselves live elsewhere: jit-able ones on token arrays in `metrics.py`. Nothing here
imports an optional dependency; the wrapped function brings its own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.typing import DTypeLike

_VMAP_METHODS = ("sequential", "sequential_unrolled", "expand_dims", "broadcast_all")


def host_task_loss(
    py_fn: Callable[..., Any],
    result_shape: Sequence[int] = (),
    dtype: DTypeLike = np.float32,
    *,
    vmap_method: str = "sequential",
) -> Callable[..., jax.Array]:
    r"""Wraps a Python function of NumPy arrays as a JAX-callable, jit- and vmap-able task loss.

    The returned function takes JAX arrays (for example, token arrays decoded inside a jitted loss),
    hands them to ``py_fn`` on the host as NumPy arrays through `jax.pure_callback`, and returns
    ``py_fn``'s result as a JAX array of shape ``result_shape`` and dtype ``dtype``. Keyword
    arguments are passed through the same way. Any pytree of arrays may be passed.

    ``py_fn`` must be pure: JAX may call it more than once for the same inputs, or not at all when
    its result is unused. It must not raise for valid inputs. The result is not differentiable;
    `jax.grad` through it raises. MGS and the evolution strategies never differentiate the task
    loss, so this is no restriction for them.

    How `jax.vmap` (the transformations evaluate candidates with it) reaches ``py_fn`` depends on
    ``vmap_method``:

    - ``"sequential"`` (default): ``py_fn`` sees one example at a time, with the shapes it would see
      without vmap, and is called once per batch element in a `jax.lax.map` loop. Write ``py_fn``
      for a single example. ``"sequential_unrolled"`` is the same with the loop unrolled.
    - ``"expand_dims"``: ``py_fn`` is called once for the whole batch. Batched arguments carry a
      leading batch axis; unbatched ones get a leading axis of size 1. ``py_fn`` must broadcast
      and return an array with the leading batch axis, ``(batch, *result_shape)``. Nested vmaps add
      one leading axis each. Fastest when ``py_fn`` is itself vectorised.
    - ``"broadcast_all"``: as ``"expand_dims"``, but unbatched arguments are tiled to the full batch
      size, so every argument has the same leading axis.

    Args:
      py_fn: a pure Python function ``py_fn(*arrays, **arrays) -> array-like``. Its arguments are
        NumPy arrays (``np.ndarray``); it may return a Python number or anything `np.asarray`
        accepts, of shape ``result_shape`` (with leading batch axes under the batched vmap methods).
      result_shape: the shape of one result; ``()`` for a scalar loss.
      dtype: the dtype of the result. It is canonicalised by JAX, so ``float64`` becomes
        ``float32`` unless ``jax_enable_x64`` is set.
      vmap_method: ``"sequential"``, ``"sequential_unrolled"``, ``"expand_dims"`` or
        ``"broadcast_all"``, as above.

    Returns:
      A function ``loss(*args, **kwargs) -> jax.Array`` of shape ``result_shape``, traceable by
      `jax.jit` and `jax.vmap`.

    Raises:
      ValueError: if ``py_fn`` is not callable, ``result_shape`` is not a sequence of non-negative
        ints, or ``vmap_method`` is unknown.

    Examples:
      >>> import collections
      >>> import jax, jax.numpy as jnp
      >>> from mlesearch.seq import host
      >>> def distinct_ratio(tokens):  # plain Python on a NumPy array
      ...   return 1.0 - len(collections.Counter(tokens.tolist())) / tokens.size
      >>> loss = host.host_task_loss(distinct_ratio)
      >>> print(jax.jit(loss)(jnp.array([1, 1, 2, 3])))
      0.25
      >>> print(jax.vmap(loss)(jnp.array([[1, 1, 1, 1], [1, 2, 3, 4]])))
      [0.75 0.  ]

    References:
      JAX documentation, "External callbacks", https://docs.jax.dev/en/latest/external-callbacks.html
    """
    if not callable(py_fn):
        raise ValueError(f"py_fn must be a callable on NumPy arrays, got {py_fn!r}.")
    if vmap_method not in _VMAP_METHODS:
        raise ValueError(f"vmap_method must be one of {_VMAP_METHODS}, got {vmap_method!r}.")
    try:
        shape = tuple(int(d) for d in result_shape)
    except TypeError:
        raise ValueError(
            f"result_shape must be a tuple of ints, such as () for a scalar, got {result_shape!r}."
        ) from None
    if any(d < 0 for d in shape):
        raise ValueError(f"result_shape must have non-negative sizes, got {shape}.")
    result_dtype = jax.dtypes.canonicalize_dtype(dtype)
    result_shape_dtype = jax.ShapeDtypeStruct(shape, result_dtype)

    def host_fn(*args: Any, **kwargs: Any) -> np.ndarray:
        # pure_callback hands over jax.Arrays on the host CPU; py_fn is promised NumPy.
        np_args, np_kwargs = jax.tree.map(np.asarray, (args, kwargs))
        return np.asarray(py_fn(*np_args, **np_kwargs), dtype=result_dtype)

    @functools.wraps(py_fn)
    def loss(*args: Any, **kwargs: Any) -> jax.Array:
        return jax.pure_callback(
            host_fn, result_shape_dtype, *args, vmap_method=vmap_method, **kwargs
        )

    return loss
