"""Fields shared by every experiment config. Task configs start from `base_config()`."""

import ml_collections

METHODS = (
    "pretrained",
    "mle",
    "mgs",
    "mgs_after",
    "pg",
    "mrt",
    "grpo",
    "random_search",
    "guided_es",
    "open_es",
)


def base_config() -> ml_collections.ConfigDict:
    """The fields that every experiment has, with defaults; a task config overrides them.

    Returns:
      A ConfigDict with:
        task: the task module name in ``mlesearch.experiments.tasks``.
        method: one of ``METHODS`` (``pretrained`` evaluates the MLE checkpoint without
          fine-tuning).
        seed: seed of the fine-tuning run (data order, candidates, samples).
        pretrain: MLE pretraining that every method starts from (``steps``, ``learning_rate``,
          ``batch_size``, ``eval_every``, ``patience``: evaluations without improvement of the
          validation MLE loss before stopping early, ``seed``).
        steps, learning_rate, batch_size: fine-tuning length, Adam's learning rate, batch size.
        eval_every, checkpoint_every: in fine-tuning steps.
        select_checkpoint: report on the test split the parameters of the evaluation with the
          best validation task loss (as the paper's released code does) rather than the last;
          both are recorded either way.
        post_hoc: the name of a post-hoc correction of the task's (``task.post_hoc``) applied to
          the fine-tuned parameters before testing, e.g. ``"logit_adjustment"``; "" for none.
        surrogate: the differentiable loss that fine-tuning differentiates: "" for the task's
          MLE loss, or the name of one of ``task.surrogates`` (e.g. ``"balanced"`` on
          ``digits_lt``: cross-entropy on the class-balanced batch). Every method that uses the
          MLE loss (MLE itself, the guide of MGS, the MLE term of PG, MRT and GRPO) uses it;
          pretraining always uses the task's MLE loss.
        mgs: hyperparameters of ``mgs`` (``mlesearch.with_mgs``: ``probe_scale`` and
          ``clip_norm``, then those of `mlesearch.mgs`; ``auto_temperature`` selects
          ``temperature="auto"``). ``random_search`` is ``mgs`` with ``mix=1``; ``mgs_after``
          applies `mlesearch.mgs` to Adam's update instead (``optax.chain(adam, mgs)``), without
          ``probe_scale`` and ``clip_norm``.
        pg: REINFORCE (``num_samples`` per input, ``baseline_decay``, ``mle_weight``).
        mrt: minimum risk training (``num_samples``, ``alpha``, ``mle_weight``).
        grpo: group-relative policy optimisation (``num_samples``: the group size k >= 2 per
          input; ``advantage``: ``"grpo"`` (normalised by the group's std) or ``"rloo"``
          (leave-one-out); ``clip_epsilon``; ``mle_weight``).
        es: the evosax baselines (``num_candidates``, ``sigma``, ``learning_rate``, and
          GuidedES's ``alpha``).
        task_config: the task's own fields (data sizes, model size, task loss).
        rows: the rows of ``mlesearch compare`` when ``--methods`` is not given: a group whose
          fields are row names, each a group of overrides of this config that names at least
          ``method`` (e.g. ``rows.mle_half_lr = {"method": "mle", "learning_rate": 5e-4}``).
          A row name may be given to ``--methods`` as well. A row may also hold ``grid``: a
          group of fields (nested as in the config) whose values are tuples, the settings that
          were searched for the row; its own fields hold the values chosen, on the validation
          split, from that grid.
        tune: whether ``mlesearch compare`` searches each row's ``grid`` (every combination,
          over the seeds of the comparison) and reports the combination with the best mean
          validation score of the primary metric, instead of running the row's shipped
          values.
        compare_methods: the rows (methods or names in ``rows``) that ``mlesearch compare``
          runs when ``--methods`` is not given, comma-separated, in the order of the table; ""
          for ``mle,mgs,pg,mrt``.
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
    config.select_checkpoint = True
    config.post_hoc = ""
    config.surrogate = ""

    config.mgs = ml_collections.ConfigDict(
        dict(
            probe_scale=0.1,
            clip_norm=1.0,  # 0: no clipping.
            num_candidates=4,
            sigma=1.0,
            temperature=1.0,
            auto_temperature=True,
            target_ess=0.5,
            mix=0.5,
            weighting="tilted",
            noise="relative",
            antithetic=False,
            chunk_size=0,  # 0: all candidates at once.
        )
    )
    config.pg = ml_collections.ConfigDict(dict(num_samples=4, baseline_decay=0.9, mle_weight=0.0))
    config.mrt = ml_collections.ConfigDict(dict(num_samples=4, alpha=5e-3, mle_weight=0.0))
    config.grpo = ml_collections.ConfigDict(
        dict(num_samples=8, advantage="grpo", clip_epsilon=0.2, mle_weight=0.0)
    )
    config.es = ml_collections.ConfigDict(
        dict(num_candidates=4, sigma=0.01, learning_rate=1.0, alpha=0.5)
    )
    config.task_config = ml_collections.ConfigDict()
    config.rows = ml_collections.ConfigDict()
    config.compare_methods = ""
    config.tune = False
    return config
