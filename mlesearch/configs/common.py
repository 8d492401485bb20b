"""Fields shared by every experiment config. Task configs start from `base_config()`."""

import ml_collections

METHODS = ("mle", "mgs", "pg", "mrt", "random_search", "guided_es", "open_es")


def base_config() -> ml_collections.ConfigDict:
    """The fields that every experiment has, with defaults; a task config overrides them.

    Returns:
      A ConfigDict with:
        task: the task module name in ``mlesearch.tasks``.
        method: one of ``METHODS``.
        seed: seed of the fine-tuning run (data order, candidates, samples).
        pretrain: MLE pretraining that every method starts from (``steps``, ``learning_rate``,
          ``batch_size``, ``eval_every``, ``patience``: evaluations without improvement of the
          validation MLE loss before stopping early, ``seed``).
        steps, learning_rate, batch_size: fine-tuning length, Adam's learning rate, batch size.
        eval_every, checkpoint_every: in fine-tuning steps.
        mgs: hyperparameters of `mlesearch.mgs` (``auto_temperature`` selects
          ``temperature="auto"``). ``random_search`` is ``mgs`` with ``mix=1``.
        pg: REINFORCE (``num_samples`` per input, ``baseline_decay``, ``mle_weight``).
        mrt: minimum risk training (``num_samples``, ``alpha``, ``mle_weight``).
        es: the evosax baselines (``num_candidates``, ``sigma``, ``learning_rate``, and
          GuidedES's ``alpha``).
        task_config: the task's own fields (data sizes, model size, task loss).
    """
    config = ml_collections.ConfigDict()
    config.task = ""
    config.method = "mgs"
    config.seed = 0

    config.pretrain = ml_collections.ConfigDict(
        dict(steps=500, learning_rate=1e-3, batch_size=32, eval_every=100, patience=3, seed=0)
    )

    config.steps = 200
    config.learning_rate = 1e-4
    config.batch_size = 32
    config.eval_every = 50
    config.checkpoint_every = 50

    config.mgs = ml_collections.ConfigDict(
        dict(
            num_candidates=4,
            sigma=1.0,
            temperature=1.0,
            auto_temperature=False,
            target_ess=0.5,
            mix=0.5,
            weighting="importance",
            noise="relative",
            antithetic=False,
            chunk_size=0,  # 0: all candidates at once.
        )
    )
    config.pg = ml_collections.ConfigDict(dict(num_samples=4, baseline_decay=0.9, mle_weight=0.0))
    config.mrt = ml_collections.ConfigDict(dict(num_samples=4, alpha=5e-3, mle_weight=0.0))
    config.es = ml_collections.ConfigDict(
        dict(num_candidates=4, sigma=0.01, learning_rate=1.0, alpha=0.5)
    )
    config.task_config = ml_collections.ConfigDict()
    return config
