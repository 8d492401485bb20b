"""Does the task loss of digits_lt point where the balanced test split does?

Loads (or trains) the pretrained model of the ``digits_lt`` experiment, shifts its last layer's
bias by ``-tau * log(prior)`` (post-hoc logit adjustment) for a few values of tau, and prints the
mean macro-F1 over 20 augmented training batches drawn class-balanced (the task loss's batches)
and drawn as the data come (the MLE loss's batches), beside macro-F1 on the balanced validation
and test splits. A task loss that rises where the test metric falls would steer any method that
minimises it the wrong way.

    python benchmarks/digits_lt_alignment.py --workdir /tmp/digits_lt

Any ``--config.FIELD=VALUE`` override of the ``mlesearch`` command applies.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mlesearch import metrics
from mlesearch.experiments import cli, train
from mlesearch.experiments.tasks import digits_lt

TAUS = (0.0, 0.5, 1.0, 1.5)
NUM_BATCHES = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="mlesearch_runs/digits_lt")
    args, overrides = parser.parse_known_args()
    config = cli.apply_overrides(cli.load_config("digits_lt"), overrides)
    task = train.get_task(config)
    reference, _ = train.pretrain(
        config, Path(args.workdir) / train.PRETRAINED_DIR, task=task, progress=False
    )
    hidden = int(config.task_config.hidden_size)
    model = digits_lt.MLP(hidden_sizes=(hidden,))
    counts = np.bincount(digits_lt.load_long_tailed_splits()["train"][1], minlength=10)
    log_prior = jnp.log(counts / counts.sum())
    batches = [jax.jit(task.train_batch)(jax.random.key(i)) for i in range(NUM_BATCHES)]

    def macro_f1(params, inputs, labels):
        predictions = jnp.argmax(model.apply({"params": params}, inputs), -1)
        return float(metrics.f1(predictions, labels, 10, average="macro"))

    print("tau   balanced batches   natural batches   valid    test   (macro-F1)")
    for tau in TAUS:
        layer = dict(reference["Dense_1"])
        layer["bias"] = layer["bias"] - tau * log_prior
        params = {**reference, "Dense_1": layer}
        balanced = np.mean([macro_f1(params, b["task_inputs"], b["task_labels"]) for b in batches])
        natural = np.mean([macro_f1(params, b["inputs"], b["labels"]) for b in batches])
        valid = task.evaluate(params, params, "valid")["macro_f1"]
        test = task.evaluate(params, params, "test")["macro_f1"]
        print(f"{tau:<5} {balanced:16.3f} {natural:17.3f} {valid:7.3f} {test:7.3f}")


if __name__ == "__main__":
    main()
