"""scikit-learn's digits with a small MLP: MGS and its baselines on a classification task loss.

What lives here: the digits task, ``make_task(config) -> Task``. The 1797 8x8 grey-level images of
`sklearn.datasets.load_digits` (10 classes) are split once, with a fixed NumPy seed, into train,
validation and test sets (60/20/20 by default), scaled to [0, 1], and classified by a flax MLP.
The surrogate is softmax cross-entropy; the task loss is the 0/1 error of the argmax predictions on
the batch, or 1 - macro-F1. For policy gradient and minimum risk training, each input gets ``k``
labels sampled from the softmax, each scored by its 0/1 error.

What does not: the training loop (`mlesearch.experiments.train`) and the experiment config
(`configs/digits.py`).

References:
  [1] Welleck & Cho, `MLE-guided parameter search for task loss minimization in neural sequence
  modeling <https://arxiv.org/abs/2006.03158>`_, AAAI 2021.
  [2] Alpaydin & Kaynak, *Optical recognition of handwritten digits*, UCI Machine Learning
  Repository, 1998 (the data behind `sklearn.datasets.load_digits`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlesearch.experiments.tasks.base import Metric, Samples, Task
from mlesearch.seq import metrics

NUM_CLASSES = 10
NUM_FEATURES = 64
TASK_LOSSES = ("error", "f1")
SPLITS = ("train", "valid", "test")


class MLP(nn.Module):
    """A ReLU multilayer perceptron that maps flat images to class logits.

    Attributes:
      hidden_sizes: the width of each hidden layer; empty for a linear classifier.
      num_classes: the number of output logits.
    """

    hidden_sizes: Sequence[int]
    num_classes: int = NUM_CLASSES

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Computes the logits.

        Args:
          inputs: flat images, shape ``(batch, 64)``, float32 in [0, 1].

        Returns:
          Logits, shape ``(batch, num_classes)``, float32.
        """
        hidden = inputs
        for size in self.hidden_sizes:
            hidden = nn.relu(nn.Dense(size)(hidden))
        return nn.Dense(self.num_classes)(hidden)


def load_splits(
    valid_share: float = 0.2, test_share: float = 0.2, split_seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Loads the digits and splits them, always the same way for the same arguments.

    Args:
      valid_share: share of the examples in the validation split, in (0, 1).
      test_share: share of the examples in the test split, in (0, 1).
      split_seed: seed of the NumPy permutation that assigns examples to splits.

    Returns:
      ``{"train": (x, y), "valid": (x, y), "test": (x, y)}`` with ``x`` of shape ``(m, 64)``,
      float32 in [0, 1], and ``y`` of shape ``(m,)``, int32 in ``[0, 10)``.

    Raises:
      ValueError: if the shares leave no training example.
    """
    from sklearn.datasets import load_digits

    if not (0 < valid_share < 1 and 0 < test_share < 1 and valid_share + test_share < 1):
        raise ValueError(
            "valid_share and test_share must be in (0, 1) and sum to less than 1, got "
            f"{valid_share} and {test_share}."
        )
    digits = load_digits()
    inputs = (digits.data / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int32)
    order = np.random.default_rng(split_seed).permutation(len(labels))
    num_valid = round(valid_share * len(labels))
    num_test = round(test_share * len(labels))
    parts = {
        "valid": order[:num_valid],
        "test": order[num_valid : num_valid + num_test],
        "train": order[num_valid + num_test :],
    }
    return {name: (inputs[index], labels[index]) for name, index in parts.items()}


def _task_loss_value(predictions: jax.Array, labels: jax.Array, kind: str) -> jax.Array:
    if kind == "error":
        return 1.0 - metrics.accuracy(predictions, labels)
    return 1.0 - metrics.f1(predictions, labels, NUM_CLASSES, average="macro")


def make_task(config: Mapping[str, Any]) -> Task:
    """Builds the digits task.

    Args:
      config: the task config (``config.task_config``), with optional fields
        ``hidden_size`` (width of each hidden layer, default 64), ``num_layers`` (hidden layers,
        default 1; 0 gives a linear classifier), ``task_loss`` (``"error"``, the 0/1 error, or
        ``"f1"``, 1 - macro-F1; default ``"error"``), ``batch_size`` (examples per call of
        ``train_batch``, drawn uniformly with replacement; default 32), ``valid_share`` and
        ``test_share`` (default 0.2 each) and ``split_seed`` (default 0).

    Returns:
      The `Task`. Batches are ``{"inputs": (B, 64) float32, "labels": (B,) int32}``; ``reference``
      is not used. ``evaluate`` returns ``"error"``, ``"f1"`` (macro), ``"nll"`` (mean
      cross-entropy) and ``"task_loss"`` on the split.

    Raises:
      ValueError: for an unknown ``task_loss`` or sizes below 1.
    """
    config = dict(config)
    known = {
        "hidden_size",
        "num_layers",
        "task_loss",
        "batch_size",
        "valid_share",
        "test_share",
        "split_seed",
    }
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"Unknown digits task_config fields {unknown}; known: {sorted(known)}.")
    hidden_size = int(config.get("hidden_size", 64))
    num_layers = int(config.get("num_layers", 1))
    task_loss_kind = str(config.get("task_loss", "error"))
    batch_size = int(config.get("batch_size", 32))
    if task_loss_kind not in TASK_LOSSES:
        raise ValueError(f"task_loss must be one of {TASK_LOSSES}, got {task_loss_kind!r}.")
    if hidden_size < 1 or num_layers < 0 or batch_size < 1:
        raise ValueError(
            "hidden_size and batch_size must be at least 1 and num_layers at least 0, got "
            f"{hidden_size}, {batch_size} and {num_layers}."
        )
    splits = load_splits(
        float(config.get("valid_share", 0.2)),
        float(config.get("test_share", 0.2)),
        int(config.get("split_seed", 0)),
    )
    data = {name: (jnp.asarray(x), jnp.asarray(y)) for name, (x, y) in splits.items()}
    train_inputs, train_labels = data["train"]
    model = MLP(hidden_sizes=(hidden_size,) * num_layers)

    def logits_fn(params: Any, inputs: jax.Array) -> jax.Array:
        return model.apply({"params": params}, inputs)

    def init_params(key: jax.Array) -> Any:
        return model.init(key, jnp.zeros((1, NUM_FEATURES), jnp.float32))["params"]

    def train_batch(key: jax.Array) -> dict[str, jax.Array]:
        index = jax.random.randint(key, (batch_size,), 0, train_labels.shape[0])
        return {"inputs": train_inputs[index], "labels": train_labels[index]}

    def mle_loss(params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
        logits = logits_fn(params, batch["inputs"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()

    def task_loss(params: Any, batch: Mapping[str, jax.Array], reference: Any) -> jax.Array:
        del reference
        predictions = jnp.argmax(logits_fn(params, batch["inputs"]), axis=-1)
        return _task_loss_value(predictions, batch["labels"], task_loss_kind)

    def sample(
        params: Any,
        batch: Mapping[str, jax.Array],
        key: jax.Array,
        num_samples: int,
        reference: Any,
    ) -> Samples:
        del reference
        log_probs_all = jax.nn.log_softmax(logits_fn(params, batch["inputs"]), axis=-1)
        # (k, B) draws from the softmax of each input, then (B, k).
        labels = jax.random.categorical(
            key, jax.lax.stop_gradient(log_probs_all), shape=(num_samples, log_probs_all.shape[0])
        ).T
        log_probs = jnp.take_along_axis(log_probs_all, labels, axis=-1)
        costs = (labels != batch["labels"][:, None]).astype(jnp.float32)
        return Samples(log_probs=log_probs, costs=costs, mask=jnp.ones(labels.shape, bool))

    @jax.jit
    def _evaluate_arrays(params: Any, inputs: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
        logits = logits_fn(params, inputs)
        predictions = jnp.argmax(logits, axis=-1)
        error = 1.0 - metrics.accuracy(predictions, labels)
        f1 = metrics.f1(predictions, labels, NUM_CLASSES, average="macro")
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return {
            "error": error,
            "f1": f1,
            "nll": nll,
            "task_loss": error if task_loss_kind == "error" else 1.0 - f1,
        }

    def evaluate(params: Any, reference: Any, split: str) -> dict[str, float]:
        del reference
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
        inputs, labels = data[split]
        return {
            name: float(value) for name, value in _evaluate_arrays(params, inputs, labels).items()
        }

    @jax.jit
    def _predict(params: Any, inputs: jax.Array) -> jax.Array:
        return jnp.argmax(logits_fn(params, inputs), axis=-1)

    def describe(params: Any, reference: Any, split: str, num_examples: int) -> str:
        del reference
        inputs, labels = data[split]
        predictions = np.asarray(_predict(params, inputs[:num_examples]))
        return "\n".join(
            f"example {i}: label {int(label)}, predicted {int(prediction)}"
            for i, (label, prediction) in enumerate(
                zip(np.asarray(labels[:num_examples]), predictions, strict=True)
            )
        )

    return Task(
        name="digits",
        init_params=init_params,
        train_batch=train_batch,
        mle_loss=mle_loss,
        task_loss=task_loss,
        sample=sample,
        evaluate=evaluate,
        metrics=(
            Metric("error", lower_is_better=True, label="0/1 error"),
            Metric("f1", lower_is_better=False, label="macro-F1"),
            Metric("nll", lower_is_better=True, label="NLL"),
        ),
        primary_metric="error" if task_loss_kind == "error" else "f1",
        describe=describe,
    )
