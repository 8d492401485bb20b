"""Long-tailed digits: a classifier trained on imbalanced data, judged by macro-F1 on balanced data.

What lives here: the ``digits_lt`` task, ``make_task(config) -> Task``. scikit-learn's 8x8 digits
(10 classes, about 180 images each) are split once, with a fixed NumPy seed, into a balanced test
split (``num_test_per_class`` images of every class), a balanced validation split
(``num_valid_per_class``) and a long-tailed training split: class ``c`` keeps
``round(n_max * imbalance_ratio ** (-c / 9))`` of its remaining images, as CIFAR-10-LT is built
[2], so digit 0 is the head and digit 9 the tail (94 against 2 images at the defaults).

The model is a one-hidden-layer ReLU MLP, pretrained by MLE on the whole network. Fine-tuning
changes only its last layer by default (``finetune="head"``), as decoupled long-tail methods do
[3]: the representation stays as MLE learned it and the classifier is re-fitted for the metric.

How the task loss still sees errors. An MLP fits its few training images exactly, so the task
loss on clean training images would tie for every candidate. Every training batch is therefore
augmented (a random shift of up to ``shift`` pixels and Gaussian pixel noise of scale ``noise``),
for the MLE loss and the task loss alike. And the judge is macro-F1 on *balanced* data, whose
best estimate from the training split is macro-F1 on a *class-balanced* resample of it: each
batch holds, besides ``B`` images drawn as the data come (for the MLE loss), ``B`` images drawn
class-balanced (a class uniformly, then an image of it) for the task loss
(``task_loss_batch="balanced"``). On the natural, long-tailed batch, macro-F1 would prefer the
head classes (a head class's precision barely suffers from a few misclassified tail images), the
opposite of what the balanced test rewards; ``task_loss_batch="natural"`` keeps that variant.

Post-hoc logit adjustment [1], the standard strong baseline for label shift, is offered as
``post_hoc["logit_adjustment"]``: the last layer's bias minus ``tau * log(prior)``, with the
training split's class frequencies as prior and ``tau`` chosen on the validation split's
macro-F1.

The controls. MGS's task loss reads a class-balanced batch, which the natural cross-entropy
never sees, so a win over plain MLE may come from that batch rather than from search. The
task's ``surrogates`` (``config.surrogate``) are the standard long-tail losses, each
differentiable, to fine-tune the same layer with:

- ``"balanced"``: cross-entropy on the class-balanced batch that the task loss reads
  (classifier re-training, cRT [3]);
- ``"class_weighted"``: cross-entropy on the natural batch with each class weighted by the
  inverse of its effective number of images, ``(1 - beta) / (1 - beta ** n_c)`` with
  ``beta = CLASS_BALANCED_BETA`` [2] (within 5% of inverse frequency at these counts);
- ``"logit_adjusted"``: the logit-adjusted cross-entropy [1], ``CE(z + tau * log(prior), y)``
  with ``tau = 1``, on the natural batch.

What does not live here: the training loop (`mlesearch.experiments.train`) and the experiment config
(``configs/digits_lt.py``).

References:
  [1] Menon et al., `Long-tail learning via logit adjustment <https://arxiv.org/abs/2007.07314>`_,
  ICLR 2021.
  [2] Cui et al., `Class-balanced loss based on effective number of samples
  <https://arxiv.org/abs/1901.05555>`_, CVPR 2019 (the long-tailed CIFAR construction).
  [3] Kang et al., `Decoupling representation and classifier for long-tailed recognition
  <https://arxiv.org/abs/1910.09217>`_, ICLR 2020.
  [4] Welleck & Cho, `MLE-guided parameter search for task loss minimization in neural sequence
  modeling <https://arxiv.org/abs/2006.03158>`_, AAAI 2021.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlesearch.experiments.tasks.base import Metric, Samples, Task
from mlesearch.experiments.tasks.digits import MLP, NUM_CLASSES, NUM_FEATURES
from mlesearch.seq import metrics

SPLITS = ("train", "valid", "test")
FINETUNE = ("head", "all")
TASK_LOSS_BATCHES = ("balanced", "natural")
IMAGE_SIDE = 8
# The grid of tau for post-hoc logit adjustment: 0 (none) to 3 in steps of 0.25.
LOGIT_ADJUSTMENT_TAUS = tuple(0.25 * i for i in range(13))
# beta of the class-balanced loss of [2] (their CIFAR-LT choice).
CLASS_BALANCED_BETA = 0.999
# tau of the logit-adjusted loss of [1] (their default).
LOGIT_ADJUSTED_LOSS_TAU = 1.0
SURROGATES = ("balanced", "class_weighted", "logit_adjusted")
# Fields that only fine-tuning reads: which layers move, and how the task loss's images are
# drawn (the MLE images of a batch, which pretraining reads, come first and do not depend on it).
FINE_TUNING_FIELDS = ("finetune", "task_loss_batch")

DEFAULTS: dict[str, Any] = {
    "imbalance_ratio": 50.0,
    "num_test_per_class": 50,
    "num_valid_per_class": 30,
    "split_seed": 0,
    "hidden_size": 32,
    "batch_size": 512,
    "shift": 1,
    "noise": 0.1,
    "finetune": "head",
    "task_loss_batch": "balanced",
}


def load_long_tailed_splits(
    imbalance_ratio: float = 50.0,
    num_test_per_class: int = 50,
    num_valid_per_class: int = 30,
    split_seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Splits the digits into a long-tailed training split and balanced validation and test splits.

    Args:
      imbalance_ratio: ρ >= 1, the ratio of the head class's training images to the tail's.
      num_test_per_class: test images of each class.
      num_valid_per_class: validation images of each class.
      split_seed: seed of the NumPy permutation that assigns images to splits.

    Returns:
      ``{"train": (x, y), "valid": (x, y), "test": (x, y)}``, ``x`` of shape ``(m, 64)``, float32
      in [0, 1], ``y`` of shape ``(m,)``, int32; each split sorted by class. Class ``c`` has
      ``max(1, round(n_max * ρ ** (-c / 9)))`` training images, where ``n_max`` is the fewest
      images any class has left after the test and validation splits.

    Raises:
      ValueError: if the ratio is below 1 or the held-out splits leave a class no image.
    """
    from sklearn.datasets import load_digits

    if not imbalance_ratio >= 1.0:
        raise ValueError(f"imbalance_ratio must be at least 1, got {imbalance_ratio}.")
    digits = load_digits()
    inputs = (digits.data / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int32)
    rng = np.random.default_rng(split_seed)
    held_out = num_test_per_class + num_valid_per_class
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    pools = []
    for label in range(NUM_CLASSES):
        index = rng.permutation(np.flatnonzero(labels == label))
        if len(index) <= held_out or min(num_test_per_class, num_valid_per_class) < 1:
            raise ValueError(
                f"Class {label} has {len(index)} images; num_test_per_class and "
                f"num_valid_per_class must be at least 1 and leave some for training, got "
                f"{num_test_per_class} and {num_valid_per_class}."
            )
        parts["test"].append(index[:num_test_per_class])
        parts["valid"].append(index[num_test_per_class:held_out])
        pools.append(index[held_out:])
    most = min(len(pool) for pool in pools)
    for label, pool in enumerate(pools):
        count = max(1, round(most * imbalance_ratio ** (-label / (NUM_CLASSES - 1))))
        parts["train"].append(pool[:count])
    return {
        name: (inputs[np.concatenate(index)], labels[np.concatenate(index)])
        for name, index in parts.items()
    }


def augment(key: jax.Array, inputs: jax.Array, shift: int, noise: float) -> jax.Array:
    """Shifts each image by up to ``shift`` pixels (zero fill) and adds Gaussian pixel noise.

    Args:
      key: PRNG key.
      inputs: flat 8x8 images, shape ``(B, 64)``.
      shift: the largest shift, in pixels, along each axis (0: none).
      noise: the standard deviation of the added noise (0: none).

    Returns:
      The augmented images, shape ``(B, 64)``, float32.
    """
    batch = inputs.shape[0]
    images = inputs.reshape(batch, IMAGE_SIDE, IMAGE_SIDE)
    shift_key, noise_key = jax.random.split(key)
    if shift:
        padded = jnp.pad(images, ((0, 0), (shift, shift), (shift, shift)))
        offsets = jax.random.randint(shift_key, (batch, 2), 0, 2 * shift + 1)
        images = jax.vmap(
            lambda image, offset: jax.lax.dynamic_slice(
                image, (offset[0], offset[1]), (IMAGE_SIDE, IMAGE_SIDE)
            )
        )(padded, offsets)
    flat = images.reshape(batch, NUM_FEATURES)
    if noise:
        flat = flat + noise * jax.random.normal(noise_key, flat.shape)
    return flat


def make_task(config: Mapping[str, Any]) -> Task:
    """Builds the long-tailed digits task.

    Args:
      config: the task config (``config.task_config``); every field is optional, with the
        defaults of ``DEFAULTS``: ``imbalance_ratio``, ``num_test_per_class``,
        ``num_valid_per_class``, ``split_seed`` (see `load_long_tailed_splits`),
        ``hidden_size`` (the MLP's hidden width), ``batch_size`` (B, images per call of
        ``train_batch``), ``shift`` and ``noise`` (augmentation, see `augment`), ``finetune``
        (``"head"``: only the last layer; ``"all"``) and ``task_loss_batch`` (``"balanced"`` or
        ``"natural"``: how the task loss's images are drawn).

    Returns:
      The `Task`. Batches are ``{"inputs": (B, 64), "labels": (B,)}`` drawn as the data come,
      for the MLE loss, and ``{"task_inputs", "task_labels"}`` of the same shapes for the task
      loss (1 - macro-F1 of the argmax predictions) and for the samples of PG and MRT (each
      sampled label costs its 0/1 error). ``evaluate`` returns ``"macro_f1"``,
      ``"balanced_accuracy"``, ``"nll"`` and ``"task_loss"`` (1 - macro-F1) on clean images.
      ``surrogates`` holds the control losses of the module docstring, by name
      (``SURROGATES``).

    Raises:
      ValueError: for unknown fields or values out of range.
    """
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(
            f"Unknown digits_lt task_config fields {unknown}; known: {sorted(DEFAULTS)}."
        )
    cfg = {**DEFAULTS, **dict(config)}
    hidden_size, batch_size = int(cfg["hidden_size"]), int(cfg["batch_size"])
    shift, noise = int(cfg["shift"]), float(cfg["noise"])
    finetune, task_loss_batch = str(cfg["finetune"]), str(cfg["task_loss_batch"])
    if hidden_size < 1 or batch_size < 1 or shift < 0 or not noise >= 0:
        raise ValueError(
            "hidden_size and batch_size must be at least 1, shift and noise at least 0; got "
            f"{hidden_size}, {batch_size}, {shift} and {noise}."
        )
    if finetune not in FINETUNE:
        raise ValueError(f"finetune must be one of {FINETUNE}, got {finetune!r}.")
    if task_loss_batch not in TASK_LOSS_BATCHES:
        raise ValueError(
            f"task_loss_batch must be one of {TASK_LOSS_BATCHES}, got {task_loss_batch!r}."
        )
    splits = load_long_tailed_splits(
        float(cfg["imbalance_ratio"]),
        int(cfg["num_test_per_class"]),
        int(cfg["num_valid_per_class"]),
        int(cfg["split_seed"]),
    )
    data = {name: (jnp.asarray(x), jnp.asarray(y)) for name, (x, y) in splits.items()}
    train_inputs, train_labels = data["train"]
    counts = np.bincount(splits["train"][1], minlength=NUM_CLASSES)
    log_prior = jnp.asarray(np.log(counts / counts.sum()), jnp.float32)
    class_counts = jnp.asarray(counts, jnp.int32)
    class_starts = jnp.asarray(np.cumsum(counts) - counts, jnp.int32)
    model = MLP(hidden_sizes=(hidden_size,))
    head = f"Dense_{len(model.hidden_sizes)}"

    def logits_fn(params: Any, inputs: jax.Array) -> jax.Array:
        return model.apply({"params": params}, inputs)

    def init_params(key: jax.Array) -> Any:
        return model.init(key, jnp.zeros((1, NUM_FEATURES), jnp.float32))["params"]

    def train_batch(key: jax.Array) -> dict[str, jax.Array]:
        natural_key, class_key, member_key, augment_key = jax.random.split(key, 4)
        natural = jax.random.randint(natural_key, (batch_size,), 0, train_labels.shape[0])
        if task_loss_batch == "balanced":
            classes = jax.random.randint(class_key, (batch_size,), 0, NUM_CLASSES)
            member = jax.random.uniform(member_key, (batch_size,)) * class_counts[classes]
            scored = class_starts[classes] + member.astype(jnp.int32)
        else:
            scored = jax.random.randint(class_key, (batch_size,), 0, train_labels.shape[0])
        index = jnp.concatenate([natural, scored])
        inputs = augment(augment_key, train_inputs[index], shift, noise)
        return {
            "inputs": inputs[:batch_size],
            "labels": train_labels[natural],
            "task_inputs": inputs[batch_size:],
            "task_labels": train_labels[scored],
        }

    def mle_loss(params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
        logits = logits_fn(params, batch["inputs"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()

    def balanced_loss(params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
        logits = logits_fn(params, batch["task_inputs"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["task_labels"]).mean()

    effective_number = (1.0 - CLASS_BALANCED_BETA**counts) / (1.0 - CLASS_BALANCED_BETA)
    class_weights = jnp.asarray(1.0 / effective_number, jnp.float32)

    def class_weighted_loss(params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
        logits = logits_fn(params, batch["inputs"])
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
        weights = class_weights[batch["labels"]]
        return jnp.sum(weights * losses) / jnp.sum(weights)

    def logit_adjusted_loss(params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
        logits = logits_fn(params, batch["inputs"]) + LOGIT_ADJUSTED_LOSS_TAU * log_prior
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()

    def task_loss(params: Any, batch: Mapping[str, jax.Array], reference: Any) -> jax.Array:
        del reference
        predictions = jnp.argmax(logits_fn(params, batch["task_inputs"]), axis=-1)
        return 1.0 - metrics.f1(predictions, batch["task_labels"], NUM_CLASSES, average="macro")

    def sample(
        params: Any,
        batch: Mapping[str, jax.Array],
        key: jax.Array,
        num_samples: int,
        reference: Any,
    ) -> Samples:
        del reference
        log_probs_all = jax.nn.log_softmax(logits_fn(params, batch["task_inputs"]), axis=-1)
        labels = jax.random.categorical(
            key, jax.lax.stop_gradient(log_probs_all), shape=(num_samples, log_probs_all.shape[0])
        ).T
        log_probs = jnp.take_along_axis(log_probs_all, labels, axis=-1)
        costs = (labels != batch["task_labels"][:, None]).astype(jnp.float32)
        return Samples(log_probs=log_probs, costs=costs, mask=jnp.ones(labels.shape, bool))

    @jax.jit
    def _evaluate_arrays(params: Any, inputs: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
        logits = logits_fn(params, inputs)
        predictions = jnp.argmax(logits, axis=-1)
        macro_f1 = metrics.f1(predictions, labels, NUM_CLASSES, average="macro")
        return {
            "macro_f1": macro_f1,
            "balanced_accuracy": metrics.balanced_accuracy(predictions, labels, NUM_CLASSES),
            "nll": optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(),
            "task_loss": 1.0 - macro_f1,
        }

    def evaluate(params: Any, reference: Any, split: str) -> dict[str, float]:
        del reference
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
        return {
            name: float(value) for name, value in _evaluate_arrays(params, *data[split]).items()
        }

    def adjust_logits(params: Any, tau: jax.Array) -> Any:
        layer = dict(params[head])
        layer["bias"] = layer["bias"] - tau * log_prior
        return {**params, head: layer}

    @jax.jit
    def _valid_f1_per_tau(params: Any) -> jax.Array:
        inputs, labels = data["valid"]

        def score(tau: jax.Array) -> jax.Array:
            predictions = jnp.argmax(logits_fn(adjust_logits(params, tau), inputs), axis=-1)
            return metrics.f1(predictions, labels, NUM_CLASSES, average="macro")

        return jax.vmap(score)(jnp.asarray(LOGIT_ADJUSTMENT_TAUS, jnp.float32))

    def logit_adjustment(params: Any, reference: Any) -> tuple[Any, dict[str, Any]]:
        del reference
        scores = np.asarray(_valid_f1_per_tau(params))
        best = int(np.argmax(scores))  # the first of equals: the smallest tau
        tau = LOGIT_ADJUSTMENT_TAUS[best]
        return adjust_logits(params, jnp.float32(tau)), {
            "tau": tau,
            "valid_macro_f1": float(scores[best]),
        }

    def trainable(params: Any) -> Any:
        def layer_mask(name: str, layer: Any) -> Any:
            return jax.tree.map(lambda _: finetune == "all" or name == head, layer)

        return {name: layer_mask(name, layer) for name, layer in params.items()}

    @jax.jit
    def _recalls(params: Any, inputs: jax.Array, labels: jax.Array) -> jax.Array:
        predictions = jnp.argmax(logits_fn(params, inputs), axis=-1)
        hits = jnp.zeros(NUM_CLASSES).at[labels].add((predictions == labels).astype(jnp.float32))
        return hits / jnp.maximum(jnp.bincount(labels, length=NUM_CLASSES), 1)

    def describe(params: Any, reference: Any, split: str, num_examples: int) -> str:
        del reference, num_examples
        recalls = np.asarray(_recalls(params, *data[split]))
        return "\n".join(
            f"digit {label} ({counts[label]} training images): recall {recall:.2f}"
            for label, recall in enumerate(recalls)
        )

    return Task(
        name="digits_lt",
        init_params=init_params,
        train_batch=train_batch,
        mle_loss=mle_loss,
        task_loss=task_loss,
        sample=sample,
        evaluate=evaluate,
        metrics=(
            Metric("macro_f1", lower_is_better=False, label="macro-F1"),
            Metric("balanced_accuracy", lower_is_better=False, label="balanced acc."),
            Metric("nll", lower_is_better=True, label="NLL"),
        ),
        primary_metric="macro_f1",
        describe=describe,
        trainable=trainable,
        post_hoc={"logit_adjustment": logit_adjustment},
        surrogates={
            "balanced": balanced_loss,
            "class_weighted": class_weighted_loss,
            "logit_adjusted": logit_adjusted_loss,
        },
    )
