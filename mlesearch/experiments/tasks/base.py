"""The interface between an experiment task and the training loop in :mod:`train`.

A task bundles data, a model, a differentiable surrogate (the MLE loss), a task loss that cannot be
differentiated, a way to sample outputs for policy-gradient methods, and an evaluation. Every task
module in :mod:`tasks` exposes ``make_task(config) -> Task``, where ``config`` is the
task's part of the experiment config (``config.task_config``).

Shapes: a *batch* is any pytree of arrays with fixed shapes (so that one jitted training step
serves every step). ``B`` is the batch size and ``k`` the number of sampled outputs per input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax

#: A model's parameter pytree, as its ``init`` returns it.
Params = Any
#: A batch of a task's data: a pytree of arrays whose leading axis is the examples.
Batch = Any


class Samples(NamedTuple):
    """Outputs sampled from the model, for policy gradient and minimum risk training.

    Attributes:
      log_probs: summed log-probability of each sampled output under ``params``, shape ``(B, k)``,
        differentiable in ``params``.
      costs: the task cost of each sample (lower is better), shape ``(B, k)``, float32; the
        training loop stops its gradient.
      mask: which samples count, bool, shape ``(B, k)`` (for example, duplicates removed for
        minimum risk training).
    """

    log_probs: jax.Array
    costs: jax.Array
    mask: jax.Array


@dataclasses.dataclass(frozen=True)
class Metric:
    """A column of the results table.

    Attributes:
      name: the key in the dictionary that ``Task.evaluate`` returns.
      lower_is_better: whether smaller values are better (marks the best method per column);
        None for a column with no better direction, such as a length, which is not marked.
      label: a short column header.
    """

    name: str
    lower_is_better: bool | None = True
    label: str | None = None


@dataclasses.dataclass(frozen=True)
class Task:
    """Everything the training loop needs to know about one experiment.

    Every function must be pure and traceable by JAX, except ``evaluate``, which may run jitted
    code over a whole split and returns Python floats.

    Attributes:
      name: the task's name, as in ``config.task``.
      init_params: ``init_params(key) -> params``, fresh model parameters.
      train_batch: ``train_batch(key) -> batch``, a random training batch of fixed shapes, drawn
        inside jit from arrays the task holds.
      mle_loss: ``mle_loss(params, batch) -> ()``, the differentiable surrogate.
      task_loss: ``task_loss(params, batch, reference) -> ()``, the non-differentiable loss that
        MGS, random search and the evolution strategies minimise. ``reference`` holds the
        parameters of the MLE checkpoint that fine-tuning starts from (frozen), for task losses
        that score outputs with the MLE model; other tasks ignore it.
      sample: ``sample(params, batch, key, num_samples, reference) -> Samples``, sampled outputs
        with their log-probabilities and costs, for ``pg`` and ``mrt``.
      evaluate: ``evaluate(params, reference, split) -> {metric: float}`` on ``"valid"`` or
        ``"test"``. It includes ``"task_loss"``, and should include the MLE loss under
        ``"nll"`` or ``"mle_loss"``: `train.pretrain` stops early on it, and trains for
        all its steps when neither key is there.
      metrics: the table's columns, in order.
      primary_metric: the metric to plot against step and wall-clock time.
      describe: optional ``describe(params, reference, split, num_examples) -> str`` showing a few
        example outputs in plain text.
      trainable: optional ``trainable(params) -> tree of bool`` (the structure of ``params``):
        which leaves fine-tuning may change. None: all of them. Pretraining trains every leaf.
      evaluate_mle: optional ``evaluate_mle(params, split) -> float``, the split's MLE loss
        alone, for tasks whose full ``evaluate`` is costly (decoding); pretraining's early
        stopping then watches it instead of ``evaluate``'s ``"nll"`` or ``"mle_loss"``.
      post_hoc: named post-hoc corrections, ``fn(params, reference) -> (params, info)``, fitted
        on the validation split after fine-tuning (``config.post_hoc`` picks one); ``info`` is a
        JSON-able record of what was chosen.
      surrogates: named alternatives to ``mle_loss`` for fine-tuning,
        ``fn(params, batch) -> ()`` (``config.surrogate`` picks one), such as the controls of a
        long-tailed task (cross-entropy on class-balanced data, class-weighted or
        logit-adjusted cross-entropy). Pretraining always uses ``mle_loss``.
    """

    name: str
    init_params: Callable[[jax.Array], Params]
    train_batch: Callable[[jax.Array], Batch]
    mle_loss: Callable[[Params, Batch], jax.Array]
    task_loss: Callable[[Params, Batch, Params], jax.Array]
    sample: Callable[[Params, Batch, jax.Array, int, Params], Samples]
    evaluate: Callable[[Params, Params, str], Mapping[str, float]]
    metrics: tuple[Metric, ...]
    primary_metric: str = "task_loss"
    describe: Callable[[Params, Params, str, int], str] | None = None
    trainable: Callable[[Params], Any] | None = None
    evaluate_mle: Callable[[Params, str], float] | None = None
    post_hoc: Mapping[str, Callable[[Params, Params], tuple[Params, dict[str, Any]]]] = (
        # Left out of hashing: the training loop caches compiled steps by task.
        dataclasses.field(default_factory=dict, hash=False, compare=False)
    )
    surrogates: Mapping[str, Callable[[Params, Batch], jax.Array]] = dataclasses.field(
        default_factory=dict, hash=False, compare=False
    )
