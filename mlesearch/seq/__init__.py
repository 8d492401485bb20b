"""The sequence toolkit: task metrics, transformer models, decoding, and host-side task losses.

- `metrics`: task losses and metrics in JAX (repetition, BLEU, edit distance, F1, ...);
- `models`: a decoder-only transformer LM on flax, with a key/value cache and its MLE loss;
- `decoding`: greedy and sampled decoding with that cache;
- `host`: `host_task_loss`, to call a Python task loss from jitted code.

It builds on the core (`mlesearch._utils`) and never imports the baselines or the experiments.
The short names ``mlesearch.metrics``, ``mlesearch.models``, ``mlesearch.decoding`` and
``mlesearch.host_task_loss`` load these modules on first use. This package imports none of them
itself, so that `metrics` and `host` load without flax.
"""
