r"""The paper's placement of MGS as a ready-made optimiser: :func:`with_mgs` and :func:`mgs_adamw`.

The released code of [1] does not apply MGS's direction directly. It probes around the clipped
negative gradient, :math:`u = -\eta\,\mathrm{clip}(g)`, weights the candidates by the task loss, and
hands the weighted direction to AdamW as if it were a gradient. The probe size :math:`\eta` and the
optimiser's step size are then separate, and the optimiser's moments average the selected
directions over steps. This module writes that placement as an optax chain around
:func:`mlesearch.mgs`; the maths is in `sampling.py` and the transformation in `transform.py`.

References:
  [1] Welleck & Cho, `MLE-guided parameter search for task loss minimization in neural sequence
  modeling <https://arxiv.org/abs/2006.03158>`_, AAAI 2021; code at
  https://github.com/wellecks/mgs (``seq_level/gpt2/guided``).
  [2] Loshchilov & Hutter, `Decoupled weight decay regularization
  <https://arxiv.org/abs/1711.05101>`_, ICLR 2019 (AdamW).
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from mlesearch import _checks
from mlesearch.transform import DEFAULT_MEMORY_BUDGET, mgs

# The learning rate of AdamW in the released code's fine-tuning of GPT-2 (``--lr``).
PAPER_LEARNING_RATE = 6.25e-5


def with_mgs(
    optimizer: optax.GradientTransformation,
    *,
    probe_scale: float | jax.Array = 1.0,
    clip_norm: float | jax.Array | None = 1.0,
    num_candidates: int = 4,
    sigma: float | jax.Array = 1.0,
    temperature: float | jax.Array | str = "auto",
    mix: float = 0.5,
    weighting: str = "tilted",
    noise: str = "relative",
    antithetic: bool = False,
    chunk_size: int | str | None = None,
    key: jax.Array | int = 0,
    target_ess: float | jax.Array = 0.25,
    mesh: jax.sharding.Mesh | None = None,
    candidate_axis: str | tuple[str, ...] | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> optax.GradientTransformationExtraArgs:
    r"""MGS in the placement of the paper's released code: probe at the clipped gradient, feed
    the weighted direction to ``optimizer`` as a pseudo-gradient.

    With raw gradients :math:`g`, probe scale :math:`\eta` and clip norm :math:`c`, one step is

    .. math::
        u = -\eta\,\mathrm{clip}_c(g), \qquad
        \Delta^* = \mathrm{MGS}(u), \qquad
        \tilde g = \mathrm{clip}_c(-\Delta^* / \eta),

    and the update is ``optimizer``'s update for the pseudo-gradient :math:`\tilde g`. Exactly::

        optax.chain(optax.clip_by_global_norm(clip_norm), optax.scale(-probe_scale),
                    mlesearch.mgs(**mgs_kwargs), optax.scale(-1 / probe_scale),
                    optax.clip_by_global_norm(clip_norm), optimizer)

    The candidates probe around :math:`u`, whose size :math:`\eta` sets how far they look; the
    optimiser's learning rate sets how far the parameters move. When every candidate is the guide
    (``sigma`` → 0 with ``mix=0``), :math:`\tilde g = \mathrm{clip}_c(g)` and this is ``optimizer``
    on clipped gradients.

    Args:
      optimizer: any optax transformation, e.g. ``optax.adamw(6.25e-5)``. It receives the
        pseudo-gradient and the parameters.
      probe_scale: η > 0, the size of the guide relative to the clipped gradient. May be traced
        (``optax.inject_hyperparams``). Raise it until the candidates' task losses differ within
        a step; docs/guide.md gives the values the built-in experiments chose.
      clip_norm: c > 0, the global norm to which the gradient and the pseudo-gradient are
        clipped; None drops both clips. May be traced.

    The other arguments, ``num_candidates`` to ``memory_budget``, are those of
    :func:`mlesearch.mgs`. The defaults differ from ``mgs``'s in four places: relative noise
    and tilted weights, as in the released code; ``temperature="auto"``, because task losses
    come on every scale (1 - F1 lies in [0, 1], a summed NLL in the tens) and a fixed α suits
    only one of them; and ``target_ess=0.25``, which both built-in fine-tuning experiments chose
    on validation. With ``optax.inject_hyperparams``, list ``num_candidates``, ``mix``,
    ``key`` (and ``chunk_size`` if set) in ``static_args``; ``probe_scale``, ``clip_norm``,
    ``sigma``, ``temperature`` and ``target_ess`` may then change between steps.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. Its ``update(grads, state, params,
      task_loss_fn=f, **extra_args)`` takes raw gradients, as any optax optimiser does, and needs
      ``params`` and the task loss as :func:`mlesearch.mgs` does. Its state is the chain's tuple
      of states; ``optax.tree.get(state, "ess")`` reads MGS's diagnostics.

    Raises:
      ValueError: if ``optimizer`` is not an optax transformation, ``probe_scale`` is not positive
        and finite, ``clip_norm`` is not positive and finite (or None), or an argument of
        :func:`mlesearch.mgs` is invalid.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> import mlesearch as mls
      >>> params = jnp.array([1.0, -2.0])
      >>> task_loss = lambda p: jnp.sum(jnp.abs(p) > 0.5).astype(jnp.float32)
      >>> tx = mls.with_mgs(optax.adam(0.1), probe_scale=0.2, num_candidates=8, key=0)
      >>> state = tx.init(params)
      >>> grads = 2 * params  # the gradient of a differentiable surrogate, sum(p**2)
      >>> updates, state = tx.update(grads, state, params, task_loss_fn=task_loss)
      >>> print(updates.shape, optax.tree.get(state, "candidate_losses").shape)
      (2,) (8,)

    References:
      [1] Welleck & Cho 2020, arXiv 2006.03158, and its released code (``ggs`` in
      ``seq_level/gpt2/guided/train.py``).
    """
    if not isinstance(optimizer, optax.GradientTransformation):
        raise ValueError(
            "optimizer must be an optax transformation such as optax.adamw(6.25e-5), got "
            f"{type(optimizer).__name__}. Pass the optimiser itself, not its factory."
        )
    _checks.check_positive(probe_scale, "probe_scale", "It sets the size of the guide; start at 1.")
    if clip_norm is not None:
        _checks.check_positive(
            clip_norm, "clip_norm", "Give the global norm to clip to, or None for no clipping."
        )
    search = mgs(
        num_candidates=num_candidates,
        sigma=sigma,
        temperature=temperature,
        mix=mix,
        weighting=weighting,
        noise=noise,
        antithetic=antithetic,
        chunk_size=chunk_size,
        key=key,
        target_ess=target_ess,
        mesh=mesh,
        candidate_axis=candidate_axis,
        memory_budget=memory_budget,
    )
    clip = () if clip_norm is None else (optax.clip_by_global_norm(clip_norm),)
    return optax.chain(
        *clip,
        optax.scale(-probe_scale),
        search,
        optax.scale(-1.0 / probe_scale),
        *clip,
        optimizer,
    )


def mgs_adamw(
    learning_rate: float | jax.Array | optax.Schedule = PAPER_LEARNING_RATE,
    *,
    weight_decay: float = 0.01,
    **with_mgs_kwargs: Any,
) -> optax.GradientTransformationExtraArgs:
    r"""MGS with AdamW, as the paper's released code trains: ``with_mgs(optax.adamw(...))``.

    Args:
      learning_rate: AdamW's learning rate, a float or an optax schedule. The released code
        fine-tunes GPT-2 with ``6.25e-5`` (``PAPER_LEARNING_RATE``), the default here.
      weight_decay: AdamW's decoupled weight decay; 0.01 as in the released code.
      **with_mgs_kwargs: ``probe_scale``, ``clip_norm`` and the arguments of
        :func:`mlesearch.mgs`; see :func:`with_mgs`.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` that takes raw gradients; see
      :func:`with_mgs`.

    Raises:
      ValueError: as :func:`with_mgs`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import mlesearch as mls
      >>> params = {"w": jnp.ones(3)}
      >>> tx = mls.mgs_adamw(1e-3, probe_scale=0.1, key=0)
      >>> state = tx.init(params)
      >>> task_loss = lambda p: jnp.sum(p["w"] > 0.5).astype(jnp.float32)
      >>> updates, state = tx.update({"w": jnp.ones(3)}, state, params, task_loss_fn=task_loss)
      >>> print(updates["w"].shape)
      (3,)

    References:
      [1] Welleck & Cho 2020, arXiv 2006.03158.
      [2] Loshchilov & Hutter 2019, arXiv 1711.05101.
    """
    return with_mgs(optax.adamw(learning_rate, weight_decay=weight_decay), **with_mgs_kwargs)
