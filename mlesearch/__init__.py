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

import importlib
from typing import Any

from mlesearch import baselines, metrics
from mlesearch.host import host_task_loss
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
from mlesearch.transform import MGSInfo, MGSState, mgs

__version__ = "0.1.0"

# Imported on first use: they need flax, which the transformation itself does not.
_LAZY_SUBMODULES = ("decoding", "models")


def __getattr__(name: str) -> Any:
    """``mlesearch.decoding`` and ``mlesearch.models``, imported when first read."""
    if name in _LAZY_SUBMODULES:
        module = importlib.import_module(f"mlesearch.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'mlesearch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_SUBMODULES})


__all__ = [
    "MGSInfo",
    "MGSState",
    "auto_temperature",
    "baselines",
    "decoding",
    "host_task_loss",
    "metrics",
    "models",
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
