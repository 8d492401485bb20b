"""The digits task: a fixed split, and the functions of the Task contract on a tiny MLP."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mlesearch.experiments.tasks.digits import load_splits, make_task


def test_split_is_fixed_disjoint_and_scaled():
    splits = load_splits()
    again = load_splits()
    sizes = {name: len(y) for name, (_, y) in splits.items()}
    assert sizes == {"train": 1079, "valid": 359, "test": 359}
    for name, (x, y) in splits.items():
        np.testing.assert_array_equal(x, again[name][0])
        np.testing.assert_array_equal(y, again[name][1])
        assert x.shape == (len(y), 64) and x.dtype == np.float32 and y.dtype == np.int32
        assert x.min() == 0.0 and x.max() == 1.0 and set(np.unique(y)) == set(range(10))
    # Together the splits hold every image once: the sorted rows match the whole data set's.
    from sklearn.datasets import load_digits

    whole = np.concatenate([x for x, _ in splits.values()])
    expected = (load_digits().data / 16.0).astype(np.float32)
    np.testing.assert_array_equal(np.unique(whole, axis=0), np.unique(expected, axis=0))
    assert len(whole) == len(expected)
    other = load_splits(split_seed=1)
    assert not np.array_equal(other["test"][1], splits["test"][1])


pytestmark = pytest.mark.usefixtures("fast_compilation")


@pytest.fixture(scope="module")
def task():
    return make_task({"hidden_size": 8, "batch_size": 16})


def test_task_functions_have_the_contract_shapes(task):
    params = jax.jit(task.init_params)(jax.random.key(0))

    @jax.jit
    def compute(params, key):
        batch = task.train_batch(key)
        samples = task.sample(params, batch, key, 5, params)
        sample_grad = jax.grad(lambda p: jnp.sum(task.sample(p, batch, key, 5, params).log_probs))(
            params
        )
        losses = task.mle_loss(params, batch), task.task_loss(params, batch, params)
        return batch, samples, *losses, sample_grad

    batch, samples, mle_loss, task_loss, sample_grad = compute(params, jax.random.key(1))
    assert batch["inputs"].shape == (16, 64) and batch["labels"].shape == (16,)
    assert samples.log_probs.shape == samples.costs.shape == samples.mask.shape == (16, 5)
    assert samples.costs.dtype == jnp.float32 and samples.mask.dtype == jnp.bool_
    assert bool(jnp.all(samples.mask)) and bool(jnp.all(samples.log_probs <= 0))
    assert set(np.unique(np.asarray(samples.costs))) <= {0.0, 1.0}
    assert mle_loss.shape == task_loss.shape == ()
    assert 0.0 <= float(task_loss) <= 1.0
    assert float(optax.tree.norm(sample_grad)) > 0  # log-probabilities are differentiable

    metrics = task.evaluate(params, params, "valid")
    assert set(metrics) == {"error", "f1", "nll", "task_loss"}
    assert metrics["task_loss"] == metrics["error"]
    assert {m.name: m.lower_is_better for m in task.metrics} == {
        "error": True,
        "f1": False,
        "nll": True,
    }
    assert task.primary_metric == "error"
    assert "label" in task.describe(params, params, "test", 3)
    with pytest.raises(ValueError, match="split"):
        task.evaluate(params, params, "dev")


def test_f1_task_loss_is_one_minus_macro_f1():
    task = make_task({"hidden_size": 8, "task_loss": "f1"})
    params = jax.jit(task.init_params)(jax.random.key(0))
    metrics = task.evaluate(params, params, "test")
    assert metrics["task_loss"] == pytest.approx(1.0 - metrics["f1"])
    assert task.primary_metric == "f1"


def test_bad_task_config_is_reported():
    with pytest.raises(ValueError, match="task_loss must be one of"):
        make_task({"task_loss": "accuracy"})
    with pytest.raises(ValueError, match="Unknown digits task_config fields"):
        make_task({"hiden_size": 8})
