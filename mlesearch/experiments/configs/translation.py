"""Translation: English to German dates (CLDR data, through babel), fine-tuned for sentence BLEU.

A small transformer prefix language model is pretrained by MLE for a limited number of steps, so
that it translates most dates but not all of them (about 84 test BLEU, 60% exact), and each method
then fine-tunes it for the task loss 1 - sentence BLEU / 100 of its greedy translations. On two
CPU cores pretraining takes about 10 s and a fine-tuning run 2 s (mle) to 20 s (pg), plus
compilation, so that four methods with three seeds each take about five minutes in all.

References:
  Welleck and Cho, MLE-guided parameter search for task loss minimization in neural sequence
  modeling, AAAI 2021, https://arxiv.org/abs/2006.03158.
"""

import ml_collections

from mlesearch.experiments.configs.common import base_config


def get_config() -> ml_collections.ConfigDict:
    """The translation experiment: `configs.common.base_config` with task-specific sizes.

    Returns:
      A ConfigDict; ``task_config`` holds every field that
      `mlesearch.experiments.tasks.translation.make_task` reads.
    """
    config = base_config()
    config.task = "translation"
    config.method = "mgs"

    # MLE pretraining, shared by every method and seed: deliberately short, so that the model
    # still makes mistakes that fine-tuning can fix.
    config.pretrain.steps = 800
    config.pretrain.learning_rate = 3e-4
    config.pretrain.batch_size = 32
    config.pretrain.eval_every = 100
    config.pretrain.patience = 3

    # Fine-tuning from the pretrained model.
    config.steps = 200
    config.learning_rate = 1e-4
    config.batch_size = 32
    config.eval_every = 50
    config.checkpoint_every = 100

    # MGS and random search in the released code's placement (mlesearch.with_mgs): candidates
    # around -probe_scale * clip(g) with noise on the scale of that guide; the weighted direction
    # goes to Adam as a pseudo-gradient. mgs_after probes around Adam's update instead.
    config.mgs.probe_scale = 0.1
    config.mgs.num_candidates = 4
    config.mgs.sigma = 1.0
    config.mgs.auto_temperature = True
    config.mgs.target_ess = 0.5
    config.mgs.weighting = "tilted"
    config.mgs.noise = "relative"

    # Policy gradient and minimum risk training: 4 sampled translations per input.
    config.pg.num_samples = 4
    config.pg.baseline_decay = 0.9
    config.mrt.num_samples = 4
    config.mrt.alpha = 1.0

    # Evolution strategies: as many task-loss evaluations per step as MGS.
    config.es.num_candidates = 4
    config.es.sigma = 0.01
    config.es.learning_rate = 1.0
    config.es.alpha = 0.5

    # The task itself (see mlesearch/experiments/tasks/translation.py).
    task = config.task_config
    task.source_locale = "en"  # CLDR locale of the sources.
    task.target_locale = "de"  # CLDR locale of the targets.
    task.formats = ("full", "long", "medium", "short")  # CLDR lengths or date patterns.
    task.first_year = 1950  # Dates are drawn from first_year-01-01 to last_year-12-31.
    task.last_year = 2049
    task.num_train = 4000  # Examples per split; the splits hold disjoint dates.
    task.num_valid = 250
    task.num_test = 500
    task.data_seed = 0  # Seed of the NumPy generator that draws dates and formats.
    task.batch_size = 32  # Examples per call of train_batch.
    task.num_layers = 2  # The TransformerLM.
    task.num_heads = 4
    task.embed_dim = 64
    task.mlp_dim = 128
    task.max_order = 4  # BLEU's largest n-gram order.
    task.smooth = "exp"  # Sentence BLEU smoothing, as sacrebleu: "exp", "floor", "add-k", "none".
    task.smooth_value = None  # For "floor" (default 0.1) or "add-k" (default 1).
    task.sample_temperature = 1.0  # Temperature of the translations sampled for pg and mrt.
    task.eval_batch_size = 250  # Rows per jitted evaluation chunk.
    return config
