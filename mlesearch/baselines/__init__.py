"""Baselines that MGS is compared with, under the names the experiments and README use.

- `objectives`: policy gradient (`policy_gradient_loss`, `update_baseline`), group-relative
  policy gradient (GRPO or RLOO: `grpo_loss`, `group_advantages`) and minimum risk training
  (`minimum_risk_loss`, `unique_sample_mask`), pure functions of arrays;
- `es`: the evolution strategies `open_es` and `guided_es`, optax transformations with the calling
  convention of `mlesearch.mgs`, built on evosax (the ``es`` extra, imported only when one is
  built).

The baselines use the core (`mlesearch._checks`, `mlesearch._utils`) and never the experiments.
"""

from mlesearch.baselines.es import ESState, guided_es, open_es
from mlesearch.baselines.objectives import (
    ADVANTAGE_KINDS,
    MLE_MIXES,
    group_advantages,
    grpo_loss,
    minimum_risk_loss,
    policy_gradient_loss,
    unique_sample_mask,
    update_baseline,
)

__all__ = [
    "ADVANTAGE_KINDS",
    "MLE_MIXES",
    "ESState",
    "group_advantages",
    "grpo_loss",
    "guided_es",
    "minimum_risk_loss",
    "open_es",
    "policy_gradient_loss",
    "unique_sample_mask",
    "update_baseline",
]
