"""Small private helpers shared by the transformations: PRNG keys and extra-argument routing.

Nothing here is public API. The maths lives in `sampling.py`, the plumbing of the MGS transformation
in `transform.py`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def canonicalize_key(key: jax.Array | int) -> jax.Array:
    """Returns a typed PRNG key from an int seed, a typed key or a legacy raw ``uint32[2]`` key.

    Args:
      key: an integer seed, a typed key from ``jax.random.key``, or a raw key from
        ``jax.random.PRNGKey`` (dtype uint32, shape ``(2,)``).

    Returns:
      A typed PRNG key of shape ``()``.

    Raises:
      ValueError: if ``key`` is none of the above.
    """
    if isinstance(key, jax.Array | np.ndarray) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(
                f"Expected a single PRNG key, got a batch of keys of shape {key.shape}."
            )
        return key
    if isinstance(key, jax.Array | np.ndarray) and key.dtype == jnp.uint32:
        if key.shape != (2,):
            raise ValueError(
                f"A raw PRNG key must have shape (2,) and dtype uint32, got shape {key.shape}. "
                "Pass jax.random.key(seed) or an int seed instead."
            )
        return jax.random.wrap_key_data(key)
    if isinstance(key, bool) or not (
        isinstance(key, int | np.integer)
        or (
            isinstance(key, jax.Array | np.ndarray)
            and key.shape == ()
            and jnp.issubdtype(key.dtype, jnp.integer)
        )
    ):
        raise ValueError(
            "key must be an int seed, jax.random.key(seed) or jax.random.PRNGKey(seed); "
            f"got {key!r}."
        )
    return jax.random.key(key)


def route_kwargs(fn: Callable[..., Any], extra_args: Mapping[str, Any]) -> dict[str, Any]:
    """Selects the extra arguments that ``fn`` can take, by its signature.

    ``optax.chain`` hands every extra argument to every transformation, so a transformation passes
    on to a user's function only those that its signature names. A function with ``**kwargs`` takes
    them all.

    Args:
      fn: the user's function.
      extra_args: the extra keyword arguments given to ``update``.

    Returns:
      The subset of ``extra_args`` to pass to ``fn`` as keyword arguments.
    """
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(extra_args)
    accepted = {
        name
        for name, p in parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return {k: v for k, v in extra_args.items() if k in accepted}
