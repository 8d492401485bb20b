"""Digits: an MLP on scikit-learn's 8x8 digits, fine-tuned for the 0/1 error (or macro-F1).

Sized so that ``mlesearch compare digits --methods mle,mgs,pg,mrt --seeds 3`` takes a couple of
minutes on two CPU cores.
"""

import ml_collections

from mlesearch.experiments.configs.common import base_config


def get_config() -> ml_collections.ConfigDict:
    """The digits experiment: `configs.common.base_config` with task-specific sizes.

    Returns:
      A ConfigDict; ``task_config`` holds the fields that `tasks.digits.make_task`
      reads.
    """
    config = base_config()
    config.task = "digits"
    config.method = "mgs"

    # MLE pretraining, shared by every method and seed. Early stopping on the validation NLL.
    config.pretrain.steps = 3000
    config.pretrain.learning_rate = 3e-3
    config.pretrain.batch_size = 32
    config.pretrain.eval_every = 100
    config.pretrain.patience = 3

    # Fine-tuning from the pretrained model.
    config.steps = 300
    config.learning_rate = 1e-3
    config.batch_size = 256  # The task loss is computed on the batch: larger is less noisy.
    config.eval_every = 25
    config.checkpoint_every = 100

    # MGS and random search in the released code's placement (mlesearch.with_mgs): candidates
    # around -probe_scale * clip(g) with noise on the scale of that guide; the weighted direction
    # goes to Adam as a pseudo-gradient. mgs_after probes around Adam's update instead.
    config.mgs.probe_scale = 0.1
    config.mgs.num_candidates = 8
    config.mgs.sigma = 1.0
    config.mgs.auto_temperature = True
    config.mgs.target_ess = 0.5
    config.mgs.weighting = "tilted"
    config.mgs.noise = "relative"

    # Policy gradient and minimum risk training: 8 sampled labels per input.
    config.pg.num_samples = 8
    config.pg.baseline_decay = 0.9
    config.mrt.num_samples = 8
    config.mrt.alpha = 1.0  # Q is the model's own distribution, renormalised over the samples.

    # Evolution strategies: as many task-loss evaluations per step as MGS.
    config.es.num_candidates = 8
    config.es.sigma = 0.01
    config.es.learning_rate = (
        1.0  # The ES estimate goes to Adam, whose learning rate sets the step.
    )
    config.es.alpha = 0.5

    # The task itself.
    config.task_config.hidden_size = 16  # Width of each hidden layer of the MLP.
    config.task_config.num_layers = 1  # Hidden layers; 0 is a linear classifier.
    config.task_config.task_loss = "error"  # "error" (0/1 error) or "f1" (1 - macro-F1).
    config.task_config.split_seed = 0  # Seed of the fixed 60/20/20 train/valid/test split.
    return config
