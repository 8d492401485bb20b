"""Argument checks shared by the search transformations (`mgs` and the ES baselines).

Each check raises `ValueError` with the fix in its message. Hyperparameters that may be traced
(under `optax.inject_hyperparams`) pass unchecked when they are; those that shape arrays must be
static.
What does not live here: checks that belong to one function only, which stay beside it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_tracer(value: Any) -> bool:
    """Whether ``value`` is traced (so cannot be read as a Python number)."""
    return isinstance(value, jax.core.Tracer)


def static_int(value: Any, name: str, minimum: int | None = None) -> int:
    """Reads a hyperparameter that shapes arrays, so must be known at trace time."""
    if is_tracer(value):
        raise ValueError(
            f"{name} must be a static Python number, not a traced value. With "
            f'optax.inject_hyperparams, list "{name}" in static_args, with the other integer '
            'hyperparameters and "key".'
        )
    array = (
        np.asarray(value) if isinstance(value, int | np.integer | jax.Array | np.ndarray) else None
    )
    if (
        isinstance(value, bool | np.bool_)
        or array is None
        or array.shape != ()
        or not np.issubdtype(array.dtype, np.integer)
    ):
        raise ValueError(f"{name} must be an integer, got {value!r}.")
    if minimum is not None and int(array) < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {int(array)}.")
    return int(array)


def check_positive(value: Any, name: str, fix: str = "") -> None:
    """Checks that a float hyperparameter is positive and finite when it is concrete; traced values
    pass unchecked. ``fix``, if given, ends the error message."""
    if is_tracer(value):
        return
    fix = f" {fix}" if fix else ""
    try:
        number = float(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a positive number, got {value!r}.{fix}") from error
    if not (number > 0 and math.isfinite(number)):
        raise ValueError(f"{name} must be positive and finite, got {number}.{fix}")


def concrete_float(value: Any, name: str) -> float | None:
    """Returns ``value`` as a float, or None when it is traced (and so cannot be checked)."""
    if is_tracer(value):
        return None
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a real number, got {value!r}.") from error
    if array.shape != ():
        raise ValueError(f"{name} must be a scalar, got shape {array.shape}.")
    return float(array)


def check_in_range(value: Any, name: str, low: float, high: float, *, open_low: bool) -> None:
    """Checks that a concrete ``value`` is in ``[low, high]`` (``(low, high]`` if ``open_low``)."""
    number = concrete_float(value, name)
    if number is None:
        return
    above_low = number > low if open_low else number >= low
    if not (above_low and number <= high):
        interval = f"{'(' if open_low else '['}{low}, {high}]"
        raise ValueError(f"{name} must be in {interval}, got {number}.")


def check_update_arguments(
    params: Any, task_loss_fn: Callable[..., Any] | None, transform_name: str
) -> None:
    """Checks that ``tx.update`` got the params and the task loss that a search needs."""
    if params is None:
        raise ValueError(
            f"{transform_name} needs the current parameters: call tx.update(updates, state, "
            "params, task_loss_fn=...)."
        )
    if task_loss_fn is None:
        raise ValueError(
            f"{transform_name} needs a task loss: call tx.update(updates, state, params, "
            "task_loss_fn=f), where f(params, **kwargs) returns a scalar."
        )


def check_params(params: Any, transform_name: str = "mgs") -> None:
    """Checks that there is something to search over, and that all of it is floating point."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    if not leaves:
        raise ValueError(
            f"{transform_name} got params with no array leaves: there is nothing to search over. "
            "Pass the parameter pytree that the task loss takes."
        )
    for path, leaf in leaves:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"{transform_name} perturbs floating-point parameters, but the leaf "
                f"{jax.tree_util.keystr(path)} has dtype {dtype}: adding Gaussian noise to it "
                "would be rounded away. Keep integer leaves out of the searched tree, e.g. with "
                "optax.partition or optax.masked."
            )


def check_guide_matches_params(guide: Any, params: Any, transform_name: str = "mgs") -> None:
    """Checks that the guide (the incoming updates) has the structure and shapes of params."""
    guide_structure = jax.tree.structure(guide)
    params_structure = jax.tree.structure(params)
    if guide_structure != params_structure:
        raise ValueError(
            f"The guide (the updates passed to {transform_name}) must have the tree structure of "
            f"params, got {guide_structure} for the guide and {params_structure} for params. "
            f"Place {transform_name} in an optax.chain after transformations that keep the "
            "structure of params."
        )
    for path_and_guide, param in zip(
        jax.tree_util.tree_leaves_with_path(guide), jax.tree.leaves(params), strict=True
    ):
        path, leaf = path_and_guide
        if jnp.shape(leaf) != jnp.shape(param):
            raise ValueError(
                f"The guide's leaf {jax.tree_util.keystr(path)} has shape {jnp.shape(leaf)}, but "
                f"the parameter has shape {jnp.shape(param)}."
            )


def check_task_loss(loss_fn: Callable[[Any], Any], params: Any) -> None:
    """Traces the task loss once on abstract params, to report misuse with a clear message."""
    try:
        out = jax.eval_shape(loss_fn, params)
    except Exception as error:  # noqa: BLE001 - re-raised with the fix named.
        raise ValueError(
            "Calling task_loss_fn(params, **kwargs) failed. It must take the parameter pytree as "
            "its first positional argument, and the keyword arguments it names are taken from "
            f"tx.update(..., name=value). The error was: {type(error).__name__}: {error}"
        ) from error
    shape = getattr(out, "shape", None)
    dtype = getattr(out, "dtype", None)
    if (
        shape != ()
        or dtype is None
        or not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer))
    ):
        raise ValueError(
            "task_loss_fn must return a real scalar (shape ()), got "
            f"{jax.tree.map(lambda x: (x.shape, x.dtype), out)}. Reduce over the batch, for "
            "example with jnp.mean."
        )
