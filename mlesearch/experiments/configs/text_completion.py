"""Text completion: fine-tune a small language model against degenerate greedy continuations.

The language-modelling experiment of Welleck & Cho, "MLE-guided parameter search for task loss
minimization in neural sequence modeling" (AAAI 2021, arXiv 2006.03158), at laptop scale: a small
transformer is pretrained by MLE on prose paragraphs of CPython's help texts and standard-library
docstrings, then fine-tuned so that its greedy continuations of 10-token prefixes repeat less,
end, and keep the length of human ones: the task loss is
``"degeneration"`` (seq-rep-4 + non-termination + 2 x the relative gap of mean lengths; see
`tasks.text_completion`). The paper's own task loss, the summed NLL of the continuation under the
MLE model, is the row ``mgs_lm``. During fine-tuning continuations are cut at 1.3 times the
batch's longest reference; evaluation decodes twice the longest possible reference, on 500
validation and 690 test prefixes.

Sized for two CPU cores: pretraining takes about half a minute, a fine-tuning run of MGS about
30 seconds and one of PG or MRT about 45. ``mlesearch compare text_completion --seeds 5`` runs
every row (docs/experiments.md has its table); the bare ``mlesearch`` command runs
``cli.MAIN_JOB_METHODS`` over 2 seeds.
"""

import ml_collections

from mlesearch.experiments.configs.common import base_config


def get_config() -> ml_collections.ConfigDict:
    """Returns the text completion config: `base_config()` plus the task's own fields.

    ``task_config`` fields:
      unit: ``"paragraph"`` (the paper's setting) or ``"sentence"``: what one example is.
      sources: ``"topics+docstrings"`` (CPython's help topics and the standard library's
        docstrings) or ``"topics"``; paragraphs only.
      min_sentences: the fewest sentences a kept paragraph has.
      prefix_offsets: the token offsets at which held-out paragraphs are cut into prefixes (one
        validation or test example per offset; training paragraphs start at 0).
      vocab_size: byte-pair-encoding vocabulary size, ``<pad>`` and ``<eos>`` included.
      min_words: the fewest words a corpus sentence needs to be kept.
      min_tokens, max_tokens: the token-length range of kept examples (EOS excluded).
      heldout_fraction: the expected share held out for ``valid`` and ``test``: of sentences by
        a hash of their text, or of documents by a hash of their name (paragraphs; half of them
        each, so that no document is in two splits).
      num_train: training examples to keep (0: all that pass the length filter).
      num_valid: validation examples (the periodic evaluations and checkpoint selection).
      num_test: test examples (0: every held-out one after the validation ones).
      cache_dir: where the trained tokenizer is cached ("": ``~/.cache/mlesearch/...``).
      prefix_len: tokens of each example given as the prompt.
      max_decode_len: the most tokens generated after a prefix at evaluation time; at least the
        longest reference continuation, ``max_tokens + 1 - prefix_len`` (here twice it).
      train_decode_scale: during fine-tuning, decode at most this multiple of the longest
        reference continuation of the batch, as the paper's released code does (0: decode
        ``max_decode_len`` tokens).
      num_layers, num_heads, embed_dim, mlp_dim: the `mlesearch.models.TransformerLM`.
      batch_size: sentences per batch of ``train_batch`` (the training loop draws as many batches
        as ``config.batch_size`` and ``config.pretrain.batch_size`` need).
      task_loss: ``"lm"``: summed negative log-likelihood of the greedy continuation under the
        MLE checkpoint (the paper's MGS-LM); ``"repetition"``: seq-rep-n plus non-termination of
        the greedy continuation; ``"degeneration"``: the repetition loss plus ``length_weight``
        times the relative gap between the mean lengths of the greedy continuations and of the
        human ones, ``|mean(len) - mean(ref_len)| / mean(ref_len)``, so that neither ending
        early nor running long pays (PG, MRT and GRPO, which need a cost per sample, get the
        per-sample shortfall ``max(0, 1 - len / ref_len)`` instead). Evaluation reports all
        three (``lm_nll``, ``repetition_loss``, ``degeneration``) whichever trains.
      rep_n: n of seq-rep-n in the ``"repetition"`` and ``"degeneration"`` task losses.
      length_weight: the weight of the length term of ``"degeneration"`` (and of the
        ``degeneration`` metric). At 2, a model that ends every continuation at once costs about
        1.9, as much as one that repeats a token and never ends (about 2), and being 10% short
        or long costs 0.2.
      sample_temperature: temperature of the samples drawn for ``pg`` and ``mrt``.
      dedupe_samples: whether ``sample`` masks out repeated samples of an input.
      eval_batch_size: the most examples per jitted evaluation chunk (the validation rows are
        cut into equal chunks, and every split is decoded in chunks of that size).

    The fields that only fine-tuning and evaluation read are listed in
    ``tasks.text_completion.FINE_TUNING_FIELDS``: changing them reuses the pretrained model.
    """
    config = base_config()
    config.task = "text_completion"
    config.method = "mgs"

    # Pretraining stops early, at the best validation MLE loss (after about 200 steps).
    config.pretrain.steps = 1000
    config.pretrain.learning_rate = 3e-3
    config.pretrain.batch_size = 32
    config.pretrain.eval_every = 50
    config.pretrain.patience = 3

    config.steps = 100
    config.learning_rate = 1e-4
    config.batch_size = 16
    # Six evaluations (steps 0, 20, ..., 100) to select the checkpoint from.
    config.eval_every = 20
    config.checkpoint_every = 150

    # MGS in the released code's placement (mlesearch.with_mgs): candidates probe around
    # -probe_scale * clip(g), with relative noise of the same size, weighted by the tilted
    # weights at the temperature that keeps a quarter of them effective (probe scale and target
    # ESS chosen on validation, rows.mgs.grid); with n = 4 that is an ESS of 1, the alpha -> 0
    # limit: all the weight on the best candidate, ties shared. The weighted direction goes to
    # Adam as a pseudo-gradient. Candidates come in antithetic pairs (u +- sigma * eps): the
    # lowest mean validation degeneration of the one-knob ablation over seeds 100 to 104
    # (benchmarks/results/experiments/text_completion_ablation_valid.md). mgs_after
    # (chain(adam, mgs)) needed noise 30 times Adam's step to change greedy continuations: set
    # mgs.sigma=30 for that method.
    config.mgs.probe_scale = 0.3
    config.mgs.clip_norm = 1.0
    config.mgs.num_candidates = 4
    config.mgs.sigma = 1.0
    config.mgs.noise = "relative"
    config.mgs.weighting = "tilted"
    config.mgs.auto_temperature = True
    config.mgs.target_ess = 0.25
    config.mgs.antithetic = True
    config.mgs.mix = 0.5

    config.task_config = ml_collections.ConfigDict(
        dict(
            unit="paragraph",
            sources="topics+docstrings",
            min_sentences=2,
            prefix_offsets=(0, 8, 16),
            vocab_size=1024,
            min_words=4,
            min_tokens=20,
            max_tokens=64,
            heldout_fraction=0.3,
            num_train=0,
            num_valid=500,
            num_test=0,
            cache_dir="",
            prefix_len=10,
            max_decode_len=110,
            train_decode_scale=1.3,
            num_layers=2,
            num_heads=4,
            embed_dim=64,
            mlp_dim=256,
            batch_size=16,
            task_loss="degeneration",
            rep_n=4,
            # Weight of the "degeneration" task loss's length term, the relative gap of the mean
            # lengths of the continuations and of the human ones.
            length_weight=2.0,
            sample_temperature=1.0,
            dedupe_samples=False,
            eval_batch_size=256,
        )
    )

    # Policy-gradient baselines: 4 samples per prefix (GRPO's group), as many task-loss
    # evaluations per step as MGS's 4 candidates.
    config.pg.num_samples = 4
    config.mrt.num_samples = 4
    config.grpo.num_samples = 4

    # The rows. A row's grid holds the settings searched for it; its own fields hold the values
    # with the best validation degeneration on seed 100 (its own pretrained model), which the
    # comparison does not report: ``mlesearch compare text_completion --config.tune=true
    # --seeds 100,`` (benchmarks/results/experiments/text_completion_tuning.md).
    lr = config.learning_rate
    rl_grid = {"learning_rate": (lr / 8, lr / 4, lr / 2, lr, lr * 2)}

    def rl_row(method, **fields):
        grid = {**rl_grid, method: {"mle_weight": (0.0, 0.5)}}
        return {"method": method, "grid": grid, **fields}

    config.rows = ml_collections.ConfigDict(
        {
            "pretrained": {"method": "pretrained"},
            "mle": {
                "method": "mle",
                "learning_rate": lr * 4,
                "grid": {"learning_rate": (lr / 4, lr / 2, lr, lr * 2, lr * 4, lr * 8)},
            },
            # MLE at the same rate for about as long as MGS takes (a step of MLE costs about a
            # fifth of one of MGS), with as many evaluations to select from.
            "mle_long": {
                "method": "mle",
                "learning_rate": lr * 4,
                "steps": 500,
                "eval_every": 100,
                "checkpoint_every": 500,
            },
            "mgs": {
                "method": "mgs",
                "grid": {"mgs": {"probe_scale": (0.1, 0.3, 1.0), "target_ess": (0.25, 0.5)}},
            },
            # MGS on the paper's task loss, the summed NLL of the continuation, which rewards
            # ending early.
            "mgs_lm": {"method": "mgs", "task_config": {"task_loss": "lm"}},
            "mgs_uniform": {"method": "mgs", "mgs": {"weighting": "uniform"}},
            "random_search": {"method": "random_search"},
            "pg": rl_row("pg", learning_rate=lr / 4, pg={"mle_weight": 0.5}),
            "mrt": rl_row("mrt", learning_rate=lr / 4, mrt={"mle_weight": 0.0}),
            "grpo": rl_row("grpo", learning_rate=lr / 2, grpo={"mle_weight": 0.0}),
        }
    )
    config.compare_methods = (
        "pretrained,mle,mle_long,mgs,mgs_lm,mgs_uniform,random_search,pg,mrt,grpo"
    )
    return config
