"""The long-tailed digits task: splits, batches, task loss, frozen layers, logit adjustment."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from mlesearch.experiments.configs import digits_lt as digits_lt_config
from mlesearch.experiments.tasks import digits_lt


@pytest.fixture(scope="module")
def task():
    return digits_lt.make_task(digits_lt_config.get_config().task_config)


@pytest.fixture(scope="module")
def params(task):
    return jax.jit(task.init_params)(jax.random.key(0))


def test_training_split_is_long_tailed_and_held_out_splits_are_balanced():
    splits = digits_lt.load_long_tailed_splits(imbalance_ratio=50.0)
    train_counts = np.bincount(splits["train"][1], minlength=10)
    assert train_counts[0] / train_counts[-1] == pytest.approx(50, rel=0.1)
    assert np.all(np.diff(train_counts) <= 0)  # digit 0 the head, digit 9 the tail
    assert list(np.bincount(splits["test"][1], minlength=10)) == [50] * 10
    assert list(np.bincount(splits["valid"][1], minlength=10)) == [30] * 10
    # No image is in two splits (the digits hold no exact duplicates across these splits).
    rows = {name: {x.tobytes() for x in split[0]} for name, split in splits.items()}
    assert not rows["train"] & rows["test"] and not rows["valid"] & rows["test"]
    assert not rows["train"] & rows["valid"]
    again = digits_lt.load_long_tailed_splits(imbalance_ratio=50.0)
    np.testing.assert_array_equal(again["train"][0], splits["train"][0])


def test_task_batch_is_class_balanced_and_mle_batch_is_not(task):
    batch = jax.jit(task.train_batch)(jax.random.key(1))
    assert batch["inputs"].shape == (512, 64) and batch["task_inputs"].shape == (512, 64)
    natural = np.bincount(np.asarray(batch["labels"]), minlength=10) / 512
    balanced = np.bincount(np.asarray(batch["task_labels"]), minlength=10) / 512
    assert natural[0] > 0.25 and natural[9] < 0.03
    assert np.all(np.abs(balanced - 0.1) < 0.05)


def test_augmentation_shifts_and_adds_noise():
    image = jnp.zeros((1, 64)).at[0, 27].set(1.0)  # one lit pixel at row 3, column 3
    shifted = digits_lt.augment(jax.random.key(0), jnp.repeat(image, 200, 0), shift=1, noise=0.0)
    lit = np.argmax(np.asarray(shifted), axis=1)
    assert set(np.unique(lit)) == {18, 19, 20, 26, 27, 28, 34, 35, 36}
    noisy = digits_lt.augment(jax.random.key(0), image, shift=0, noise=0.1)
    assert 0 < float(jnp.std(noisy - image)) < 0.2


def test_task_loss_is_one_minus_macro_f1_of_the_task_batch(task, params):
    batch = jax.jit(task.train_batch)(jax.random.key(2))
    loss = float(jax.jit(task.task_loss)(params, batch, params))
    logits = digits_lt.MLP(hidden_sizes=(32,)).apply({"params": params}, batch["task_inputs"])
    predictions = np.asarray(jnp.argmax(logits, -1))
    expected = 1 - f1_score(
        np.asarray(batch["task_labels"]), predictions, labels=range(10), average="macro"
    )
    assert loss == pytest.approx(expected, abs=1e-5)


def test_evaluate_reports_the_metrics_on_the_balanced_test_split(task, params):
    metrics = task.evaluate(params, params, "test")
    assert set(metrics) == {"macro_f1", "balanced_accuracy", "nll", "task_loss"}
    inputs, labels = (np.asarray(a) for a in digits_lt.load_long_tailed_splits()["test"])
    logits = digits_lt.MLP(hidden_sizes=(32,)).apply({"params": params}, inputs)
    predictions = np.asarray(jnp.argmax(logits, -1))
    assert metrics["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(labels, predictions), abs=1e-5
    )
    assert metrics["task_loss"] == pytest.approx(1 - metrics["macro_f1"])


def test_only_the_last_layer_is_trainable_by_default(task, params):
    mask = task.trainable(params)
    assert jax.tree.leaves(mask["Dense_1"]) == [True, True]
    assert jax.tree.leaves(mask["Dense_0"]) == [False, False]
    everything = digits_lt.make_task({"finetune": "all"}).trainable(params)
    assert all(jax.tree.leaves(everything))


def test_logit_adjustment_subtracts_tau_log_prior_with_tau_chosen_on_validation(task, params):
    adjusted, info = task.post_hoc["logit_adjustment"](params, params)
    tau = info["tau"]
    assert tau in digits_lt.LOGIT_ADJUSTMENT_TAUS
    counts = np.bincount(digits_lt.load_long_tailed_splits()["train"][1], minlength=10)
    np.testing.assert_allclose(
        adjusted["Dense_1"]["bias"],
        params["Dense_1"]["bias"] - tau * np.log(counts / counts.sum()),
        rtol=1e-5,
        atol=1e-6,
    )
    assert optax.tree.norm(optax.tree.sub(adjusted["Dense_0"], params["Dense_0"])) == 0
    # The chosen tau is the best of the grid on the validation split.
    valid = [
        task.evaluate(_adjust(params, t, counts), params, "valid")["macro_f1"]
        for t in digits_lt.LOGIT_ADJUSTMENT_TAUS
    ]
    assert info["valid_macro_f1"] == pytest.approx(max(valid), abs=1e-6)
    assert digits_lt.LOGIT_ADJUSTMENT_TAUS[int(np.argmax(valid))] == tau


def _adjust(params, tau, counts):
    layer = dict(params["Dense_1"])
    layer["bias"] = layer["bias"] - tau * jnp.log(counts / counts.sum())
    return {**params, "Dense_1": layer}


def test_control_losses_are_the_standard_long_tail_losses(task, params):
    batch = jax.jit(task.train_batch)(jax.random.key(3))
    model = digits_lt.MLP(hidden_sizes=(32,))
    logits = lambda inputs: model.apply({"params": params}, inputs)
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels
    assert set(task.surrogates) == set(digits_lt.SURROGATES)
    # cRT: cross-entropy on the class-balanced batch that the task loss reads.
    balanced = cross_entropy(logits(batch["task_inputs"]), batch["task_labels"]).mean()
    np.testing.assert_allclose(task.surrogates["balanced"](params, batch), balanced, rtol=1e-6)
    # Class-balanced loss: weights 1 / effective number of images, on the natural batch.
    counts = np.bincount(digits_lt.load_long_tailed_splits()["train"][1], minlength=10)
    beta = digits_lt.CLASS_BALANCED_BETA
    class_weights = (1 - beta) / (1 - beta ** counts.astype(np.float64))
    labels = np.asarray(batch["labels"])
    losses = np.asarray(cross_entropy(logits(batch["inputs"]), batch["labels"]))
    weighted = np.sum(class_weights[labels] * losses) / np.sum(class_weights[labels])
    np.testing.assert_allclose(
        task.surrogates["class_weighted"](params, batch), weighted, rtol=1e-5
    )
    # ... which at these counts is inverse frequency within 5%.
    ratio = class_weights[-1] / class_weights[0]
    assert ratio == pytest.approx(counts[0] / counts[-1], rel=0.05)
    # Logit-adjusted loss: cross-entropy of z + tau log(prior) on the natural batch.
    shifted = logits(batch["inputs"]) + np.log(counts / counts.sum())
    adjusted = cross_entropy(shifted, batch["labels"]).mean()
    np.testing.assert_allclose(
        task.surrogates["logit_adjusted"](params, batch), adjusted, rtol=1e-5
    )
    # None of them is the MLE loss.
    mle = float(task.mle_loss(params, batch))
    assert all(abs(float(loss(params, batch)) - mle) > 1e-3 for loss in task.surrogates.values())


def test_fine_tuning_fields_leave_what_pretraining_reads_unchanged(task):
    other = digits_lt.make_task({"finetune": "all", "task_loss_batch": "natural"})
    assert set(digits_lt.FINE_TUNING_FIELDS) == {"finetune", "task_loss_batch"}
    key = jax.random.key(4)
    for leaf, other_leaf in zip(
        jax.tree.leaves(task.init_params(key)), jax.tree.leaves(other.init_params(key)), strict=True
    ):
        np.testing.assert_array_equal(leaf, other_leaf)
    batch, other_batch = task.train_batch(key), other.train_batch(key)
    for name in ("inputs", "labels"):  # what the MLE loss, and so pretraining, reads
        np.testing.assert_array_equal(batch[name], other_batch[name])
    assert not np.array_equal(batch["task_labels"], other_batch["task_labels"])


@pytest.mark.parametrize(
    "config, message",
    [
        ({"finetune": "body"}, "finetune must be one of"),
        ({"task_loss_batch": "mixed"}, "task_loss_batch must be one of"),
        ({"hidden_size": 0}, "hidden_size and batch_size must be at least 1"),
        ({"imbalance_ratio": 0.5}, "imbalance_ratio must be at least 1"),
        ({"num_test_per_class": 200}, "leave some for training"),
        ({"colour": True}, "Unknown digits_lt task_config fields"),
    ],
)
def test_bad_task_config_is_reported(config, message):
    with pytest.raises(ValueError, match=message):
        digits_lt.make_task(config)
