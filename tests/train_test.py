"""The training loop: every method runs from the shared MLE checkpoint, and resumption is exact.

Everything runs on the digits task at a tiny size. XLA's optimisations are turned off while these
tests run: they change nothing in what is computed, and halve the compilation time that dominates
such short runs.
"""

import dataclasses
import json
import math

import chex
import jax
import optax
import pytest

from mlesearch.experiments import train
from mlesearch.experiments.configs import digits, digits_lt
from mlesearch.experiments.configs.common import METHODS
from mlesearch.experiments.tasks.digits_lt import LOGIT_ADJUSTMENT_TAUS

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


def tiny_config(method: str, experiment=digits, **changes):
    config = experiment.get_config()
    config.method = method
    for name, value in {**TINY, **changes}.items():
        node = config
        *parents, leaf = name.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


pytestmark = pytest.mark.usefixtures("fast_compilation")


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("shared") / "pretrained"
    train.pretrain(tiny_config("mle"), directory, progress=False)
    return directory


FINE_TUNING = tuple(m for m in METHODS if m != "pretrained")


@pytest.mark.parametrize("method", FINE_TUNING)
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
    if method in ("mgs", "mgs_after", "random_search"):
        # temperature="auto" with target_ess 0.5 of 4 candidates: the ESS reaches 2 (more only
        # when the best candidates tie).
        assert 2.0 * (1 - 1e-3) <= end["train"]["ess"] <= 4.0
    if method == "random_search":
        assert end["train"]["guide_weight"] == 0.0
    if method in IMPROVING:
        assert end["valid"]["task_loss"] < start["valid"]["task_loss"] - 0.1, result["history"]
    # The run directory holds the JSON result (without parameters) and the last checkpoint.
    saved = json.loads((tmp_path / "whole" / method / "seed_0" / train.RESULT_FILE).read_text())
    assert saved["test"] == result["test"] and "params" not in saved
    # The reported parameters are those of the evaluation with the best validation task loss.
    losses = [h["valid"]["task_loss"] for h in result["history"]]
    assert result["selected_step"] == result["history"][losses.index(min(losses))]["step"]
    assert result["test"] == result["test_selected"]
    task = train.get_task(config)
    assert task.evaluate(result["params"], None, "test") == result["test"]
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


def test_pretrained_method_evaluates_the_checkpoint_without_a_step(pretrained_dir, tmp_path):
    config = tiny_config("pretrained")
    result = train.run(config, tmp_path, pretrained_dir=pretrained_dir, progress=False)
    reference, _ = train.pretrain(config, pretrained_dir, progress=False)
    assert result["steps"] == 0 and result["selected_step"] == 0
    assert result["test"] == train.get_task(config).evaluate(reference, reference, "test")
    chex.assert_trees_all_equal(result["params"], reference)


def test_without_selection_the_last_parameters_are_reported(pretrained_dir, tmp_path):
    config = tiny_config("mle", select_checkpoint=False)
    result = train.run(config, tmp_path, pretrained_dir=pretrained_dir, progress=False)
    assert result["test"] == result["test_last"]
    assert train.get_task(config).evaluate(result["params"], None, "test") == result["test_last"]


LT_TINY = {
    "task_config.hidden_size": 8,
    "task_config.batch_size": 64,
    "pretrain.batch_size": 64,
    "pretrain.steps": 60,
    "pretrain.eval_every": 30,
    "steps": 10,
    "eval_every": 5,
    "checkpoint_every": 10,
    "batch_size": 64,
    "mgs.num_candidates": 4,
    "es.num_candidates": 4,
    "pg.num_samples": 2,
    "mrt.num_samples": 2,
}


@pytest.fixture(scope="module")
def lt_pretrained_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("lt") / "pretrained"
    train.pretrain(tiny_config("mle", digits_lt, **LT_TINY), directory, progress=False)
    return directory


@pytest.mark.parametrize("method", ["mle", "mgs", "pg", "open_es", "guided_es"])
def test_frozen_layers_stay_at_their_pretrained_values(method, lt_pretrained_dir, tmp_path):
    config = tiny_config(method, digits_lt, select_checkpoint=False, **LT_TINY)
    result = train.run(config, tmp_path, pretrained_dir=lt_pretrained_dir, progress=False)
    reference, _ = train.pretrain(config, lt_pretrained_dir, progress=False)
    chex.assert_trees_all_equal(result["params"]["Dense_0"], reference["Dense_0"])
    moved = optax.tree.norm(optax.tree.sub(result["params"]["Dense_1"], reference["Dense_1"]))
    assert moved > 0


def test_post_hoc_correction_is_applied_before_testing(lt_pretrained_dir, tmp_path):
    config = tiny_config(
        "mle", digits_lt, post_hoc="logit_adjustment", select_checkpoint=False, **LT_TINY
    )
    result = train.run(config, tmp_path, pretrained_dir=lt_pretrained_dir, progress=False)
    task = train.get_task(config)
    adjusted, info = task.post_hoc["logit_adjustment"](result["params"], None)
    assert result["post_hoc"]["last"] == info and info["tau"] in LOGIT_ADJUSTMENT_TAUS
    assert result["test"] == task.evaluate(adjusted, None, "test")

    with pytest.raises(ValueError, match="it has: logit_adjustment"):
        train.run(
            tiny_config("mle", digits_lt, post_hoc="temperature_scaling", **LT_TINY),
            tmp_path / "other",
            pretrained_dir=lt_pretrained_dir,
            progress=False,
        )


def test_a_surrogate_replaces_the_mle_loss_of_fine_tuning(lt_pretrained_dir, tmp_path):
    config = tiny_config("mle", digits_lt, surrogate="balanced", **LT_TINY)
    task = train.get_task(config)
    reference, _ = train.pretrain(config, lt_pretrained_dir, progress=False)
    init, step = train.make_train_step(task, config)
    _, diagnostics = jax.jit(step)(init(reference), reference)
    batch = train.batch_sampler(task, config.batch_size)(
        jax.random.split(jax.random.fold_in(init(reference).key, 0))[0]
    )
    expected = task.surrogates["balanced"](reference, batch)
    assert float(diagnostics["mle_loss"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(expected) != pytest.approx(float(task.mle_loss(reference, batch)), rel=1e-3)
    result = train.run(config, tmp_path, pretrained_dir=lt_pretrained_dir, progress=False)
    assert result["surrogate"] == "balanced" and result["split_seed"] == 0

    with pytest.raises(ValueError, match="it has: balanced, class_weighted, logit_adjusted"):
        train.run(
            tiny_config("mle", digits_lt, surrogate="focal", **LT_TINY),
            tmp_path / "other",
            pretrained_dir=lt_pretrained_dir,
            progress=False,
        )


def test_fields_that_only_fine_tuning_reads_keep_the_pretrained_model(monkeypatch):
    config = tiny_config("mle")
    fingerprint = train._pretrain_fingerprint(config)
    config.task_config.task_loss = "f1"
    assert train._pretrain_fingerprint(config) != fingerprint
    monkeypatch.setattr(train, "fine_tuning_fields", lambda name: ("task_loss",))
    assert train._pretrain_fingerprint(config) == train._pretrain_fingerprint(tiny_config("mle"))


def test_bad_mgs_settings_are_reported_before_pretraining():
    with pytest.raises(ValueError, match="config.mgs: probe_scale must be positive"):
        train.check_config(tiny_config("mgs", **{"mgs.probe_scale": 0.0}))
    with pytest.raises(ValueError, match="config.mgs: weighting must be one of"):
        train.check_config(tiny_config("random_search", **{"mgs.weighting": "best"}))


def test_evaluations_of_equal_parameters_are_computed_once(pretrained_dir):
    config = tiny_config("mle")
    task = train.get_task(config)
    reference, _ = train.pretrain(config, pretrained_dir, progress=False)
    calls = []

    def counting_evaluate(params, ref, split):
        calls.append(split)
        return task.evaluate(params, ref, split)

    counted = dataclasses.replace(task, evaluate=counting_evaluate)
    first = train.evaluate(counted, reference, reference, "valid")
    copy = jax.tree.map(lambda x: x + 0, reference)  # equal values, other arrays
    assert train.evaluate(counted, copy, reference, "valid") == first
    assert calls == ["valid"]
    train.evaluate(counted, reference, reference, "test")
    moved = jax.tree.map(lambda x: x + 1e-3, reference)
    assert train.evaluate(counted, moved, reference, "valid") != first
    assert calls == ["valid", "test", "valid"]


def test_checkpoints_by_time_lose_little_and_resume_says_so(pretrained_dir, tmp_path, capsys):
    # checkpoint_every past the end: only the time-based checkpoints can save the first 7 steps.
    config = tiny_config("mle", checkpoint_every=1000, steps=12)
    whole = train.run(
        config,
        tmp_path / "whole",
        pretrained_dir=pretrained_dir,
        progress=False,
        checkpoint_seconds=0,
    )
    stopped = train.run(
        config,
        tmp_path / "timed",
        pretrained_dir=pretrained_dir,
        progress=False,
        max_steps=7,
        checkpoint_seconds=1e-9,
    )
    assert not stopped["finished"]
    capsys.readouterr()
    resumed = train.run(config, tmp_path / "timed", pretrained_dir=pretrained_dir, progress=False)
    assert "Resuming mle seed 0 from step 7" in capsys.readouterr().err
    assert resumed["finished"]
    chex.assert_trees_all_equal(resumed["params"], whole["params"])
    # Without time-based checkpoints the same interruption would have lost all 7 steps.
    untimed = train.run(
        config,
        tmp_path / "untimed",
        pretrained_dir=pretrained_dir,
        progress=False,
        max_steps=7,
        checkpoint_seconds=0,
    )
    assert not untimed["finished"]
    capsys.readouterr()
    train.run(config, tmp_path / "untimed", pretrained_dir=pretrained_dir, progress=False)
    assert "Resuming" not in capsys.readouterr().err
