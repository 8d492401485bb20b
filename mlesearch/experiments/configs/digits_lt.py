"""Long-tailed digits: re-fit a classifier's last layer for macro-F1 on balanced data.

The evidence that MGS optimises the metric it is given: an MLP pretrained by MLE on digits made
long-tailed (imbalance ratio 50), fine-tuned against 1 - macro-F1 of a class-balanced, augmented
training batch, and judged by macro-F1 on a balanced test split (see `tasks.digits_lt`
for how the task is built and why). ``mlesearch compare digits_lt`` runs every row of ``rows``:
the pretrained model; MLE, alone and with post-hoc logit adjustment; the controls that see the
class-balanced data too (cross-entropy on the class-balanced batch, class-balanced and
logit-adjusted losses); MGS in the paper's placement, with logit adjustment after it, with
uniform weights, and as random search; MGS after Adam; policy gradient, minimum risk training
and GRPO; OpenES and GuidedES. Every row selects its checkpoint on the validation task loss.

Tuning: the settings of every row with a ``grid`` (the learning rates of the MLE rows and the
controls; MGS's probe scale and target ESS; the learning rate and MLE weight of PG, MRT and
GRPO) are those with the best mean validation macro-F1 over seeds 100, 101 and 102, each with
its own pretrained model and split, none of which the comparison reports:
``mlesearch compare digits_lt --config.tune=true --seeds 100,101,102``. Every point's score is
in ``benchmarks/results/experiments/digits_lt_tuning.md``.
"""

import ml_collections

from mlesearch.experiments.configs.common import base_config


def get_config() -> ml_collections.ConfigDict:
    """The digits_lt experiment: `configs.common.base_config` with the task's sizes and rows.

    Returns:
      A ConfigDict; ``task_config`` holds the fields that `tasks.digits_lt.make_task`
      reads, ``rows`` the rows of the comparison.
    """
    config = base_config()
    config.task = "digits_lt"
    config.method = "mgs"

    # MLE pretraining of the whole MLP, with early stopping on the validation NLL.
    config.pretrain.steps = 3000
    config.pretrain.learning_rate = 3e-3
    config.pretrain.batch_size = 256
    config.pretrain.eval_every = 100
    config.pretrain.patience = 3

    # Fine-tuning of the last layer (task_config.finetune), checkpoint chosen on validation.
    config.steps = 600
    config.learning_rate = 5e-3
    config.batch_size = 512  # images for the MLE loss, and as many for the task loss
    config.eval_every = 10
    config.checkpoint_every = 600

    # MGS in the released code's placement: candidates probe around ten times the clipped
    # negative gradient, with relative noise of the same size. The MLE gradient of a pretrained
    # model is small, and probes at a tenth of its size or less flip almost no prediction, so
    # that the candidates tie. 8 candidates, tilted weights at the temperature that keeps a
    # quarter of them effective. Probe scale and target ESS chosen on validation (Tuning).
    config.mgs.probe_scale = 10.0
    config.mgs.clip_norm = 1.0
    config.mgs.num_candidates = 8
    config.mgs.sigma = 1.0
    config.mgs.noise = "relative"
    config.mgs.mix = 0.5
    config.mgs.weighting = "tilted"
    config.mgs.auto_temperature = True
    config.mgs.target_ess = 0.25

    # Policy gradient and minimum risk training: 8 sampled labels per class-balanced image.
    config.pg.num_samples = 8
    config.mrt.num_samples = 8
    config.mrt.alpha = 1.0

    # Evolution strategies: as many task-loss evaluations per step as MGS.
    config.es.num_candidates = 8
    config.es.sigma = 0.01
    config.es.learning_rate = 1.0  # the ES estimate goes to Adam, whose learning rate sets the step
    config.es.alpha = 0.5

    config.task_config = ml_collections.ConfigDict(
        dict(
            imbalance_ratio=50.0,  # head-class over tail-class training images
            num_test_per_class=50,  # balanced test split: 500 images
            num_valid_per_class=30,  # balanced validation split: 300 images
            split_seed=0,
            hidden_size=32,
            batch_size=512,
            shift=1,  # augmentation: random shift of up to one pixel
            noise=0.1,  # augmentation: Gaussian pixel noise
            finetune="head",  # "head": only the last layer; "all"
            task_loss_batch="balanced",  # "balanced" or "natural" images for the task loss
        )
    )

    # The rows. Every row fine-tunes the same layer for the same steps and selects its
    # checkpoint on validation. A row's grid holds the settings searched for it; its own fields
    # hold the values chosen from that grid on the validation split (see TUNING), which
    # ``mlesearch compare digits_lt --config.tune=true`` searches again.
    lr = config.learning_rate
    rates = (lr / 2, lr, lr * 2, lr * 4)
    mle_rates = (*rates, lr * 8, lr * 16)
    mle_weights = (0.0, 0.25, 0.5)
    mgs_grid = {"probe_scale": (1.0, 3.0, 10.0, 30.0), "target_ess": (0.125, 0.25, 0.5)}

    def mle_row(**fields):
        return {"method": "mle", "grid": {"learning_rate": mle_rates}, **fields}

    def rl_row(method, **fields):
        grid = {"learning_rate": rates, method: {"mle_weight": mle_weights}}
        return {"method": method, "grid": grid, **fields}

    config.rows = ml_collections.ConfigDict(
        {
            "pretrained": {"method": "pretrained"},
            # MLE on the natural (long-tailed) batch, and with post-hoc logit adjustment [1].
            "mle": mle_row(
                learning_rate=lr * 32, grid={"learning_rate": (*mle_rates, lr * 32, lr * 64)}
            ),
            "mle_logit_adjusted": mle_row(learning_rate=lr / 2, post_hoc="logit_adjustment"),
            # The controls: the same layer fine-tuned by the standard long-tail losses.
            "mle_balanced": mle_row(learning_rate=lr, surrogate="balanced"),
            "mle_class_weighted": mle_row(learning_rate=lr * 2, surrogate="class_weighted"),
            "mle_la_loss": mle_row(learning_rate=lr * 4, surrogate="logit_adjusted"),
            # MGS, and what it is made of.
            "mgs": {"method": "mgs", "grid": {"mgs": mgs_grid}},
            "mgs_logit_adjusted": {"method": "mgs", "post_hoc": "logit_adjustment"},
            "mgs_uniform": {"method": "mgs", "mgs": {"weighting": "uniform"}},
            "random_search": {"method": "random_search"},
            "mgs_after": {"method": "mgs_after", "mgs": {"sigma": 1.0}},
            # Policy-gradient baselines on the same balanced batch; mixing in the MLE term
            # (weights 0.25 and 0.5) scored lower on validation than without it.
            "pg": rl_row("pg", learning_rate=lr, pg={"mle_weight": 0.0}),
            "mrt": rl_row("mrt", learning_rate=lr, mrt={"mle_weight": 0.0}),
            "grpo": rl_row("grpo", learning_rate=lr, grpo={"mle_weight": 0.0}),
            "open_es": {"method": "open_es"},
            "guided_es": {"method": "guided_es"},
        }
    )
    config.compare_methods = (
        "pretrained,mle,mle_logit_adjusted,mle_balanced,mle_class_weighted,mle_la_loss,mgs,"
        "mgs_logit_adjusted,mgs_uniform,random_search,mgs_after,pg,mrt,grpo,open_es,guided_es"
    )
    return config
