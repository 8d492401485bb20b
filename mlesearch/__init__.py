"""mlesearch: MLE-guided parameter search (MGS) as an optax transformation.

Optimise a metric that you cannot differentiate (accuracy, F1, BLEU, repetition, a reward) with one
more transformation in your optax chain::

    tx = optax.chain(optax.adam(1e-3), mlesearch.mgs(num_candidates=8, sigma=0.1))
    updates, state = tx.update(grads, state, params, task_loss_fn=metric_loss)

or in the placement of the paper's released code, where the weighted direction goes to the
optimiser as a pseudo-gradient::

    tx = mlesearch.with_mgs(optax.adam(1e-3), probe_scale=0.1, num_candidates=8)

References:
  Welleck & Cho, MLE-guided parameter search for task loss minimization in neural sequence
  modeling, AAAI 2021, https://arxiv.org/abs/2006.03158.
"""

from mlesearch.recipes import mgs_adamw, with_mgs
from mlesearch.sampling import (
    auto_temperature,
    candidate_weights,
    component_sizes,
    effective_sample_size,
    log_proposal_density,
    proposal_scales,
    sample_candidate,
    sample_candidates,
)
from mlesearch.transform import MGSInfo, MGSState, auto_chunk_size, mgs

__version__ = "0.1.0"

# The sequence toolkit (mlesearch/seq/) and the baselines (mlesearch/baselines/) are imported on
# first use, under the short names the README documents: the core needs only jax, optax and chex,
# while the models and decoders need flax and the ES baselines need evosax.
_LAZY_MODULES = {
    "baselines": "mlesearch.baselines",
    "decoding": "mlesearch.seq.decoding",
    "metrics": "mlesearch.seq.metrics",
    "models": "mlesearch.seq.models",
}
_LAZY_FUNCTIONS = {
    "host_task_loss": "mlesearch.seq.host",
    "nnx_task_loss": "mlesearch.seq.nnx",
}


def __getattr__(name: str) -> object:
    """The lazily loaded names: the ``seq`` and ``baselines`` modules and two task-loss helpers."""
    import importlib  # here, so that ``dir(mlesearch)`` lists the API only

    if name in _LAZY_MODULES:
        value = importlib.import_module(_LAZY_MODULES[name])
    elif name in _LAZY_FUNCTIONS:
        value = getattr(importlib.import_module(_LAZY_FUNCTIONS[name]), name)
    else:
        raise AttributeError(f"module 'mlesearch' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_MODULES, *_LAZY_FUNCTIONS})


# The API that ``import mlesearch`` loads. The lazily loaded names above stay out, so that
# ``from mlesearch import *`` needs only jax, optax and chex, as the core does; they are in
# ``dir(mlesearch)`` and load on first use.
__all__ = [
    "MGSInfo",
    "MGSState",
    "auto_chunk_size",
    "auto_temperature",
    "candidate_weights",
    "component_sizes",
    "effective_sample_size",
    "log_proposal_density",
    "mgs",
    "mgs_adamw",
    "proposal_scales",
    "sample_candidate",
    "sample_candidates",
    "with_mgs",
]
