"""The training loop: every method runs from the shared MLE checkpoint, and resumption is exact.

Everything runs on the digits task at a tiny size. XLA's optimisations are turned off while these
tests run: they change nothing in what is computed, and halve the compilation time that dominates
such short runs.
"""

import json
import math

import chex
import jax
import optax
import pytest

from mlesearch import train
from mlesearch.configs import digits
from mlesearch.configs.common import METHODS

# Small enough to compile and run in seconds; the pretrained model is left far from converged, so
# that fine-tuning has room to lower the task loss within 30 steps.
TINY = {
    "task_config.hidden_size": 8,
    "pretrain.steps": 40,
    "pretrain.eval_every": 20,
    "steps": 30,
    "eval_every": 10,
    "checkpoint_every": 10,
    "batch_size": 64,
    "learning_rate": 1e-2,
    "mgs.num_candidates": 4,
    "es.num_candidates": 4,
    "pg.num_samples": 4,
    "mrt.num_samples": 4,
}

# Methods that must lower the validation task loss (0/1 error) of the tiny pretrained model.
IMPROVING = ("mle", "mgs", "pg", "mrt")


def tiny_config(method: str, **changes):
    config = digits.get_config()
    config.method = method
    for name, value in {**TINY, **changes}.items():
        node = config
        *parents, leaf = name.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


@pytest.fixture(scope="module", autouse=True)
def fast_compilation():
    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("shared") / "pretrained"
    train.pretrain(tiny_config("mle"), directory, progress=False)
    return directory


@pytest.mark.parametrize("method", METHODS)
def test_every_method_fine_tunes_and_resumes_exactly(method, pretrained_dir, tmp_path):
    config = tiny_config(method)
    result = train.run(config, tmp_path / "whole", pretrained_dir=pretrained_dir, progress=False)

    assert result["finished"] and result["steps"] == 30
    assert [h["step"] for h in result["history"]] == [0, 10, 20, 30]
    start, end = result["history"][0], result["history"][-1]
    # Step 0 is the shared pretrained model itself.
    reference, _ = train.pretrain(config, pretrained_dir, progress=False)
    assert start["valid"] == train.get_task(config).evaluate(reference, reference, "valid")
    assert start["seconds"] == 0.0 and start["task_loss_evaluations"] == 0
    assert end["seconds"] == result["seconds"] > 0
    assert end["task_loss_evaluations"] == result["task_loss_evaluations"]
    assert result["task_loss_evaluations"] == 30 * train.evaluations_per_step(config)
    assert set(result["test"]) == {"error", "f1", "nll", "task_loss"}
    assert all(math.isfinite(v) for v in result["test"].values())
    if method in ("mgs", "random_search"):
        assert 1.0 <= end["train"]["ess"] <= 4.0
    if method == "random_search":
        assert end["train"]["guide_weight"] == 0.0
    if method in IMPROVING:
        assert end["valid"]["task_loss"] < start["valid"]["task_loss"] - 0.1, result["history"]
    # The run directory holds the JSON result (without parameters) and the last checkpoint.
    saved = json.loads((tmp_path / "whole" / method / "seed_0" / train.RESULT_FILE).read_text())
    assert saved["test"] == result["test"] and "params" not in saved
    assert (tmp_path / "whole" / method / "seed_0" / "30").is_dir()

    # Interrupted after step 15, the last checkpoint is that of step 10; the restarted run redoes
    # steps 11 to 30 and ends exactly where the uninterrupted one did.
    stopped = train.run(
        config, tmp_path / "resumed", pretrained_dir=pretrained_dir, progress=False, max_steps=15
    )
    assert not stopped["finished"] and stopped["steps"] == 15 and stopped["test"] is None
    resumed = train.run(config, tmp_path / "resumed", pretrained_dir=pretrained_dir, progress=False)
    assert resumed["finished"] and resumed["steps"] == 30
    chex.assert_trees_all_equal(resumed["params"], result["params"])
    assert resumed["test"] == result["test"]
    assert without_time(resumed["history"]) == without_time(result["history"])

    # Another seed takes other steps.
    other_seed = train.run(
        tiny_config(method, seed=1),
        tmp_path / "other_seed",
        pretrained_dir=pretrained_dir,
        progress=False,
        max_steps=15,
    )
    assert optax.tree.norm(optax.tree.sub(other_seed["params"], stopped["params"])) > 0

    # A run directory is resumed only by the config that made it.
    with pytest.raises(ValueError, match="another config"):
        train.run(
            tiny_config(method, learning_rate=0.02),
            tmp_path / "whole",
            pretrained_dir=pretrained_dir,
            progress=False,
        )


def without_time(history):
    return [{k: v for k, v in entry.items() if k != "seconds"} for entry in history]


def test_pretraining_is_reused_and_guarded(pretrained_dir):
    config = tiny_config("mle")
    first, record = train.pretrain(config, pretrained_dir, progress=False)
    again, record_again = train.pretrain(config, pretrained_dir, progress=False)
    chex.assert_trees_all_equal(first, again)
    assert record == record_again
    assert record["steps"] == 40 and record["best_step"] in (20, 40)
    assert [h["step"] for h in record["history"]] == [20, 40]

    with pytest.raises(ValueError, match="pretrained with another"):
        train.pretrain(tiny_config("mle", **{"pretrain.steps": 50}), pretrained_dir)


def test_unknown_method_and_task_are_reported():
    with pytest.raises(ValueError, match="Unknown method 'sgd'"):
        train.check_config(tiny_config("sgd"))
    config = tiny_config("mgs")
    config.task = "chess"
    with pytest.raises(ValueError, match="Unknown task 'chess'"):
        train.check_config(config)


def test_batch_sampler_concatenates_task_batches():
    task = train.get_task(tiny_config("mle"))
    draw = train.batch_sampler(task, 80)  # The digits task draws 32 per call: 3 calls, cut.
    batch = jax.eval_shape(draw, jax.random.key(0))
    assert batch["inputs"].shape == (80, 64) and batch["labels"].shape == (80,)
    assert train.batch_sampler(task, 32) is task.train_batch
