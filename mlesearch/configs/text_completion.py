"""Text completion: fine-tune a small language model against degenerate greedy continuations.

The language-modelling experiment of Welleck & Cho, "MLE-guided parameter search for task loss
minimization in neural sequence modeling" (AAAI 2021, arXiv 2006.03158), at laptop scale: a small
transformer is pretrained by MLE on English sentences from CPython's help texts, then fine-tuned
so that its greedy continuations of sentence prefixes repeat less and end (seq-rep-4 and
non-termination), scored by the task loss of `mlesearch.tasks.text_completion`.

Sized for two CPU cores: pretraining stops after a few hundred steps (under a minute), a fine-tuning
run of MGS takes about 22 seconds and one of PG or MRT about 38, and the default comparison
(``mlesearch``: mle, mgs, pg and mrt over 3 seeds) took 361 seconds on a 2-core machine.
"""

import ml_collections

from mlesearch.configs.common import base_config


def get_config() -> ml_collections.ConfigDict:
    """Returns the text completion config: `base_config()` plus the task's own fields.

    ``task_config`` fields:
      vocab_size: byte-pair-encoding vocabulary size, ``<pad>`` and ``<eos>`` included.
      min_words: the fewest words a corpus sentence needs to be kept.
      min_tokens, max_tokens: the token-length range of kept sentences (EOS excluded).
      heldout_fraction: the expected share of sentences held out (by a hash of their text) for
        ``valid`` and ``test``.
      num_train: training sentences to keep (0: all that pass the length filter).
      num_valid: validation sentences (the periodic evaluations; keep it small).
      num_test: test sentences (0: every held-out sentence after the validation ones).
      cache_dir: where the trained tokenizer is cached ("": ``~/.cache/mlesearch/...``).
      prefix_len: tokens of each sentence given as the prompt.
      max_decode_len: the most tokens generated after a prefix, at training and evaluation time
        alike; at least the longest reference continuation, ``max_tokens + 1 - prefix_len``.
      num_layers, num_heads, embed_dim, mlp_dim: the `mlesearch.models.TransformerLM`.
      batch_size: sentences per batch of ``train_batch`` (the training loop draws as many batches
        as ``config.batch_size`` and ``config.pretrain.batch_size`` need).
      task_loss: ``"lm"``: summed negative log-likelihood of the greedy continuation under the
        MLE checkpoint (the paper's MGS-LM); ``"repetition"``: seq-rep-n plus non-termination of
        the greedy continuation.
      rep_n: n of seq-rep-n in the ``"repetition"`` task loss.
      sample_temperature: temperature of the samples drawn for ``pg`` and ``mrt``.
      dedupe_samples: whether ``sample`` masks out repeated samples of an input.
      eval_batch_size: sentences per jitted evaluation chunk.
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

    config.steps = 150
    config.learning_rate = 1e-4
    config.batch_size = 16
    config.eval_every = 50
    config.checkpoint_every = 150

    # MGS in the released code's placement (mlesearch.with_mgs): candidates probe around
    # -probe_scale * clip(g), with relative noise of the same size, weighted by the tilted
    # weights at the temperature that keeps half of them effective; the weighted direction goes
    # to Adam as a pseudo-gradient. mgs_after (chain(adam, mgs)) needed noise 30 times Adam's
    # step to change greedy continuations: set mgs.sigma=30 for that method.
    config.mgs.probe_scale = 0.3
    config.mgs.clip_norm = 1.0
    config.mgs.num_candidates = 4
    config.mgs.sigma = 1.0
    config.mgs.noise = "relative"
    config.mgs.weighting = "tilted"
    config.mgs.auto_temperature = True
    config.mgs.target_ess = 0.5
    config.mgs.mix = 0.5

    config.task_config = ml_collections.ConfigDict(
        dict(
            vocab_size=1024,
            min_words=4,
            min_tokens=8,
            max_tokens=28,
            heldout_fraction=0.25,
            num_train=0,
            num_valid=64,
            num_test=0,
            cache_dir="",
            prefix_len=5,
            max_decode_len=48,
            num_layers=2,
            num_heads=4,
            embed_dim=64,
            mlp_dim=256,
            batch_size=16,
            task_loss="lm",
            rep_n=4,
            sample_temperature=1.0,
            dedupe_samples=False,
            eval_batch_size=64,
        )
    )
    return config
