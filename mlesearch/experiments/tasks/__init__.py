"""Experiment tasks: one module each, every one exposing ``make_task(config) -> Task``.

- ``text_completion``: continue English prose; repetition and non-termination.
- ``digits``: scikit-learn's digits with a small MLP; 0/1 error or macro-F1.
- ``digits_lt``: the digits made long-tailed for training, balanced for testing; macro-F1.
- ``translation``: English to German dates (CLDR, via babel); 1 - sentence BLEU.
"""

from __future__ import annotations

import importlib
from typing import Any

from mlesearch.experiments.tasks.base import Batch, Metric, Params, Samples, Task

#: The names of the built-in tasks, for :func:`make_task`.
TASKS = ("text_completion", "digits", "digits_lt", "translation")


def make_task(name: str, config: Any) -> Task:
    """Builds the task called ``name`` from its config.

    Args:
      name: one of ``TASKS``.
      config: the task's config (``config.task_config`` of an experiment config).

    Returns:
      The `Task`.

    Raises:
      ValueError: for an unknown name.
    """
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}; choose one of {TASKS}.")
    module = importlib.import_module(f"mlesearch.experiments.tasks.{name}")
    return module.make_task(config)


def fine_tuning_fields(name: str) -> tuple[str, ...]:
    """The fields of task ``name``'s config that only fine-tuning and evaluation read.

    A task module lists them in ``FINE_TUNING_FIELDS`` (for example which task loss fine-tuning
    minimises). Changing them leaves pretraining as it was, so the pretrained checkpoint is
    reused rather than trained again.

    Args:
      name: one of ``TASKS``.

    Returns:
      The field names; empty for a task that lists none.

    Raises:
      ValueError: for an unknown name.
    """
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}; choose one of {TASKS}.")
    module = importlib.import_module(f"mlesearch.experiments.tasks.{name}")
    return tuple(getattr(module, "FINE_TUNING_FIELDS", ()))


__all__ = [
    "TASKS",
    "Batch",
    "Metric",
    "Params",
    "Samples",
    "Task",
    "fine_tuning_fields",
    "make_task",
]
