"""Task losses of flax NNX models, for `mlesearch.mgs` and `mlesearch.with_mgs`."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx


def nnx_task_loss(
    fn: Callable[..., jax.Array],
    model: nnx.Module,
    wrt: Any = nnx.Param,
    *,
    eval_mode: bool = True,
) -> Callable[..., jax.Array]:
    """Turns a task loss of an NNX model into one of its parameters, as `mgs` scores candidates.

    ``nnx.Optimizer(model, tx, wrt=nnx.Param).update(model, grads, task_loss_fn=f, **extra)``
    hands ``tx`` the model's parameters as a pure ``nnx.State``, and `mgs` calls ``f`` on each
    candidate's parameters, not on a model. This returns that ``f``: it rebuilds the model
    around the candidate's parameters with ``nnx.merge``, keeping the model's other state (batch
    statistics, RNG streams, any variable that ``wrt`` does not select) as it is when
    ``nnx_task_loss`` is called, and calls ``fn`` on it. Call it inside the training step, after
    the MLE update of any non-parameter state, so that candidates see the current state:

    .. code-block:: python

        @nnx.jit
        def train_step(model, optimizer, x, y):
            grads = nnx.grad(cross_entropy)(model, x, y)
            task_loss = mls.nnx_task_loss(zero_one_error, model)  # error(model, x, y)
            optimizer.update(model, grads, task_loss_fn=task_loss, x=x, y=y)

    Nothing a candidate does reaches ``model``: each candidate is a separate copy, scored in
    evaluation mode by default (``model.eval()``: dropout off, batch norm on its running
    averages), so the search neither draws from the model's RNG streams nor moves its batch
    statistics, and candidates differ only in their parameters.

    Args:
      fn: the task loss, ``fn(model, *args, **kwargs) -> scalar``. Its signature, with its first
        parameter taken as the parameters, routes the extra arguments of ``update`` as `mgs`
        routes them for any task loss (those it names, or all with ``**kwargs``).
      model: the model being trained, as it is at this step.
      wrt: the filter of the searched variables; the same as the ``wrt`` of ``nnx.Optimizer``.
      eval_mode: whether candidates are scored in evaluation mode. With ``False`` they run as
        ``model`` is set (training mode: dropout draws from a copy of the RNG state, the same
        copy for every candidate, and batch norm uses the batch's statistics).

    Returns:
      ``f(params, *args, **kwargs) -> fn(candidate_model, *args, **kwargs)``, where ``params``
      is an ``nnx.State`` (or the same nested dict of arrays) of the variables ``wrt`` selects,
      with the leaves of ``model``'s; the output is ``fn``'s, a float32 scalar for `mgs`.
    """
    # The signature routes update's extra arguments: fn's own, its first parameter the params.
    signature = inspect.signature(fn)
    parameters = list(signature.parameters.values())
    if not parameters or parameters[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        raise TypeError(
            f"nnx_task_loss: fn must take the model as its first positional argument; "
            f"its signature is {signature}"
        )
    parameters[0] = parameters[0].replace(name="params", annotation=inspect.Parameter.empty)
    graphdef, _, rest = nnx.split(model, wrt, ...)

    def task_loss(params: Any, *args: Any, **kwargs: Any) -> jax.Array:
        candidate = nnx.merge(graphdef, params, rest)
        if eval_mode:
            candidate.eval()
        return fn(candidate, *args, **kwargs)

    functools.update_wrapper(task_loss, fn)
    task_loss.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return task_loss
