"""What MGS's candidates look like during one fine-tuning run: ties, spread, and the guide's share.

Runs ``method=mgs`` on an experiment from its pretrained model (trained into ``--workdir`` if not
there yet) and records ``MGSInfo`` after every step. It prints how often the candidates' task
losses tie (then the weights carry no signal), their spread, the total weight on the guided
candidates, how often the best candidate is a guided one, and the mean loss of each component.

    python benchmarks/mgs_diagnostics.py text_completion --workdir /tmp/diagnostics
    python benchmarks/mgs_diagnostics.py translation --config.mgs.sigma=10

Any ``--config.FIELD=VALUE`` override of the ``mlesearch`` command applies.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np
import optax

from mlesearch import sampling
from mlesearch.experiments import cli, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="experiment config name, e.g. text_completion")
    parser.add_argument("--workdir", default="mlesearch_runs/diagnostics")
    parser.add_argument("--steps", type=int, default=None, help="default: config.steps")
    args, overrides = parser.parse_known_args()
    config = cli.apply_overrides(cli.load_config(args.config), overrides)
    config.method = "mgs"
    task = train.get_task(config)
    pretrained_dir = Path(args.workdir) / train.PRETRAINED_DIR
    reference, _ = train.pretrain(config, pretrained_dir, task=task, progress=False)
    init, step = train.make_train_step(task, config)
    step = jax.jit(step)
    state = init(reference)
    num_steps = args.steps or int(config.steps)
    losses, guide_weights = [], []
    for _ in range(num_steps):
        state, _ = step(state, reference)
        losses.append(np.asarray(optax.tree.get(state.opt_state, "candidate_losses")))
        guide_weights.append(float(optax.tree.get(state.opt_state, "guide_weight")))
    losses = np.array(losses)  # (steps, n)
    num_zero_mean, _ = sampling.component_sizes(losses.shape[1], float(config.mgs.mix))
    spread = losses.max(axis=1) - losses.min(axis=1)
    print(
        f"{args.config}: {num_steps} MGS steps, n = {losses.shape[1]}, "
        f"{num_zero_mean} zero-mean candidates first"
    )
    print(f"  steps where all candidate losses tie:  {np.mean(spread == 0):.3f}")
    print(
        f"  median spread of the candidate losses: {np.median(spread):.4g} "
        f"(median loss {np.median(losses):.4g})"
    )
    print(f"  mean weight on the guided candidates:  {np.mean(guide_weights):.3f}")
    if 0 < num_zero_mean < losses.shape[1]:
        best_guided = np.mean(losses.argmin(axis=1) >= num_zero_mean)
        print(f"  steps where the best candidate is guided: {best_guided:.3f}")
        print(
            f"  mean loss, zero-mean candidates: {losses[:, :num_zero_mean].mean():.4g}; "
            f"guided: {losses[:, num_zero_mean:].mean():.4g}"
        )


if __name__ == "__main__":
    main()
