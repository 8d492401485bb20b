"""One training loop for every method of the paper's comparison, with checkpoints and resumption.

What lives here: `pretrain` (MLE with Adam and early stopping, saved once and reused by every
method and seed), `run` (fine-tuning one method for one seed from that checkpoint, evaluating,
checkpointing and resuming), and `make_train_step` (the jitted step of each method in
``configs.common.METHODS``):

- ``pretrained``: no fine-tuning; the MLE checkpoint itself, evaluated.
- ``mle``: Adam on the MLE loss.
- ``mgs``: ``mlesearch.with_mgs(optax.adam(lr), ...)``, the placement of the paper's released
  code [1]: candidates probe around ``-probe_scale * clip(g)`` for the MLE gradient ``g``, are
  weighted by ``task.task_loss`` on the batch, and the weighted direction goes to Adam as a
  pseudo-gradient.
- ``mgs_after``: ``optax.chain(optax.adam(lr), mlesearch.mgs(...))``: the candidates probe around
  Adam's update, and the weighted one is applied as it is.
- ``random_search``: ``mgs`` with ``mix=1``: every candidate is zero-mean noise (still scaled by
  the guide when ``noise="relative"``).
- ``pg``: Adam on the REINFORCE surrogate with a moving-average baseline [2], optionally mixed with
  the MLE loss.
- ``mrt``: Adam on the minimum risk training objective [3], optionally mixed with the MLE loss.
- ``grpo``: Adam on the group-relative policy optimisation objective [6]: ``grpo.num_samples``
  samples per input, each sample's advantage its cost against the others of its group
  (normalised by the group's standard deviation, or leave-one-out with ``advantage="rloo"``
  [7]), optionally mixed with the MLE loss.
- ``guided_es`` / ``open_es``: the evosax adapters of `mlesearch.baselines` on the same task loss,
  their estimate of the task-loss gradient handed to Adam. Guided ES is guided, as MGS is, by
  Adam's update of the MLE gradient.

Checkpoint selection: every evaluation on the validation split is a candidate checkpoint; the run
keeps the parameters with the lowest validation task loss and, with ``config.select_checkpoint``,
reports those on the test split (as the paper's released code does). The last parameters are
tested too, so both are in the result.

Frozen parameters: a task whose ``trainable`` says so fine-tunes only some leaves (for example a
classifier's last layer). Every method's updates of the other leaves are set to zero, and the task
loss sees them at their pretrained values, so that perturbation-based methods (MGS, the evolution
strategies) search only the trainable leaves.

What does not: tasks (`tasks`), configs (``configs/``), the command line (`cli`), the results
table and plots (`report`).

Exact resumption: the random numbers of step ``t`` (data batches, sampled outputs) come from
``fold_in(key, t)`` for a key made from the seed, and those of MGS and the evolution strategies
from the PRNG keys carried in the optimiser state; the checkpoints hold both keys. A run stopped
and restarted with the same work directory ends with the same parameters, bit for bit, as a run
that was never stopped.

Batches: the loop draws ``config.batch_size`` examples per fine-tuning step and
``config.pretrain.batch_size`` per pretraining step. When ``task.train_batch`` returns another
number, it is called on as many keys as needed, and the batches are concatenated along their
leading axis and cut to size.

Time: the wall-clock seconds recorded exclude compilation (each step function is compiled ahead
of time), evaluation and checkpointing.

References:
  [1] Welleck & Cho, `MLE-guided parameter search for task loss minimization in neural sequence
  modeling <https://arxiv.org/abs/2006.03158>`_, AAAI 2021.
  [2] Williams, `Simple statistical gradient-following algorithms for connectionist reinforcement
  learning <https://doi.org/10.1007/BF00992696>`_, Machine Learning, 1992.
  [3] Shen et al., `Minimum risk training for neural machine translation
  <https://arxiv.org/abs/1512.02433>`_, ACL 2016.
  [4] Maheswaranathan et al., `Guided evolutionary strategies
  <https://arxiv.org/abs/1806.10230>`_, ICML 2019.
  [5] Salimans et al., `Evolution strategies as a scalable alternative to reinforcement learning
  <https://arxiv.org/abs/1703.03864>`_, 2017.
  [6] Shao et al., `DeepSeekMath: pushing the limits of mathematical reasoning in open language
  models <https://arxiv.org/abs/2402.03300>`_, 2024.
  [7] Ahmadian et al., `Back to basics: revisiting REINFORCE style optimization for learning
  from human feedback in LLMs <https://arxiv.org/abs/2402.14740>`_, ACL 2024.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mlesearch import baselines
from mlesearch.experiments.configs.common import METHODS
from mlesearch.experiments.tasks import TASKS, Task, fine_tuning_fields, make_task
from mlesearch.recipes import with_mgs
from mlesearch.transform import mgs

logger = logging.getLogger(__name__)

# Independent random streams, folded into the seed's key.
_INIT_STREAM = 0
_PRETRAIN_STREAM = 1
_FINETUNE_STREAM = 2
_OPTIMIZER_STREAM = 3

# Keys of ``task.evaluate`` that early stopping of pretraining watches, in order of preference.
VALID_MLE_KEYS = ("nll", "mle_loss")

PRETRAINED_DIR = "pretrained"
RESULT_FILE = "result.json"
GRPO_ADVANTAGES = ("grpo", "rloo")


class TrainState(NamedTuple):
    """What one fine-tuning step carries to the next; all of it is checkpointed.

    Attributes:
      step: () int32, the number of steps taken.
      key: () typed PRNG key of the run; step ``t`` draws its batch and samples from
        ``fold_in(key, t)``.
      params: the model parameters.
      opt_state: the optimiser state (with the PRNG keys of MGS and the evolution strategies).
      baseline: () float32, the REINFORCE baseline (``pg``; 0 for the other methods).
    """

    step: jax.Array
    key: jax.Array
    params: Any
    opt_state: Any
    baseline: jax.Array


# ---------------------------------------------------------------------------------------------
# Checks and small helpers.


def check_config(config: ml_collections.ConfigDict) -> None:
    """Checks the fields that the training loop reads, with messages that name the fix.

    Args:
      config: an experiment config (see ``configs.common.base_config``).

    Raises:
      ValueError: for an unknown task or method, or a size, step count or weight out of range.
    """
    if config.task not in TASKS:
        raise ValueError(f"Unknown task {config.task!r}; choose one of {', '.join(TASKS)}.")
    if config.method not in METHODS:
        raise ValueError(f"Unknown method {config.method!r}; choose one of {', '.join(METHODS)}.")
    positive = {
        "steps": config.steps,
        "batch_size": config.batch_size,
        "eval_every": config.eval_every,
        "checkpoint_every": config.checkpoint_every,
        "pretrain.steps": config.pretrain.steps,
        "pretrain.batch_size": config.pretrain.batch_size,
        "pretrain.eval_every": config.pretrain.eval_every,
        "pg.num_samples": config.pg.num_samples,
        "mrt.num_samples": config.mrt.num_samples,
    }
    for name, value in positive.items():
        if int(value) < 1:
            raise ValueError(f"config.{name} must be at least 1, got {value}.")
    for name in ("pg", "mrt", "grpo"):
        weight = float(config[name].mle_weight)
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"config.{name}.mle_weight must be in [0, 1], got {weight}.")
    grpo = config.grpo
    if int(grpo.num_samples) < 2:
        raise ValueError(
            f"config.grpo.num_samples is the group size and must be at least 2 (a group of one "
            f"sample has no advantage), got {grpo.num_samples}."
        )
    if grpo.advantage not in GRPO_ADVANTAGES:
        raise ValueError(
            f"config.grpo.advantage must be one of {GRPO_ADVANTAGES}, got {grpo.advantage!r}."
        )
    if not float(grpo.clip_epsilon) > 0:
        raise ValueError(f"config.grpo.clip_epsilon must be > 0, got {grpo.clip_epsilon}.")
    if config.method in ("mgs", "mgs_after", "random_search"):
        # Builds the transformation once, so that a bad setting fails here with the field named,
        # not after pretraining.
        try:
            make_optimizer(config, check=False)
        except ValueError as error:
            raise ValueError(f"config.mgs: {error}") from None


def _key_stream(seed: int, stream: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), stream)


def _config_json(config: ml_collections.ConfigDict | Mapping[str, Any]) -> str:
    as_dict = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    return json.dumps(as_dict, sort_keys=True, default=str)


def _pretrain_fingerprint(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The fields that determine the pretrained checkpoint: the task's config without the
    fields that only fine-tuning reads (`tasks.fine_tuning_fields`), and ``pretrain``."""
    skipped = fine_tuning_fields(config.task)
    task_config = {k: v for k, v in config.task_config.to_dict().items() if k not in skipped}
    return json.loads(
        _config_json(
            {"task": config.task, "task_config": task_config, "pretrain": config.pretrain.to_dict()}
        )
    )


def _progress_disabled(progress: bool | None) -> bool | None:
    """tqdm's ``disable``: None shows the bar only on a terminal."""
    return None if progress is None else not progress


def _is_key(leaf: Any) -> bool:
    return hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _unwrap_keys(tree: Any) -> Any:
    """Replaces typed PRNG keys by their raw data, which checkpoints can store."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _rewrap_keys(tree: Any, template: Any) -> Any:
    """Undoes `_unwrap_keys`, with ``template`` saying which leaves were keys of which kind."""
    return jax.tree.map(
        lambda x, t: jax.random.wrap_key_data(x, impl=jax.random.key_impl(t)) if _is_key(t) else x,
        tree,
        template,
    )


def batch_sampler(task: Task, batch_size: int) -> Callable[[jax.Array], Any]:
    """Returns ``draw(key) -> batch`` with ``batch_size`` examples, from ``task.train_batch``.

    Args:
      task: the task.
      batch_size: the number of examples wanted per batch.

    Returns:
      ``task.train_batch`` itself when its batches already have ``batch_size`` examples (the
      leading axis of every leaf), else a function that calls it on ``ceil(batch_size / b)``
      keys split from ``key``, concatenates and cuts. A task whose batch leaves do not share a
      leading axis is used as it is, with a warning.
    """
    shapes = jax.eval_shape(task.train_batch, jax.random.key(0))
    leading = {leaf.shape[0] if leaf.ndim else None for leaf in jax.tree.leaves(shapes)}
    if len(leading) != 1 or None in leading:
        logger.warning(
            "The batches of task %r have no common leading axis; using them as they are and "
            "ignoring batch_size=%d.",
            task.name,
            batch_size,
        )
        return task.train_batch
    task_batch_size = leading.pop()
    if task_batch_size == batch_size:
        return task.train_batch
    num_calls = math.ceil(batch_size / task_batch_size)

    def draw(key: jax.Array) -> Any:
        batches = jax.vmap(task.train_batch)(jax.random.split(key, num_calls))
        return jax.tree.map(
            lambda x: x.reshape(num_calls * task_batch_size, *x.shape[2:])[:batch_size], batches
        )

    return draw


class _CheckpointStore:
    """A thin wrapper around ``orbax.checkpoint.CheckpointManager`` for one directory.

    Each checkpoint holds an array tree (``state``, typed keys stored as raw data) and a JSON
    document (``meta``).
    """

    def __init__(self, directory: Path, max_to_keep: int = 2) -> None:
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = directory
        self.manager = ocp.CheckpointManager(
            directory.resolve(),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, enable_async_checkpointing=False, create=True
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: Mapping[str, Any]) -> None:
        ocp = self._ocp
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_unwrap_keys(state)), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self.manager.wait_until_finished()

    def restore_meta(self, step: int) -> dict[str, Any]:
        ocp = self._ocp
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def restore(self, step: int, template: Any) -> tuple[Any, dict[str, Any]]:
        ocp = self._ocp
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _unwrap_keys(template))
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        # Through host memory, so that the arrays are placed as freshly made ones are (orbax's
        # are committed to a device); otherwise the training step would compile once more.
        leaves = [jnp.asarray(np.asarray(leaf)) for leaf in jax.tree.leaves(restored["state"])]
        state = jax.tree.unflatten(jax.tree.structure(template), leaves)
        return _rewrap_keys(state, template), dict(restored["meta"])

    def close(self) -> None:
        self.manager.close()


# ---------------------------------------------------------------------------------------------
# Pretraining.


def _valid_mle_key(valid_metrics: Mapping[str, float]) -> str | None:
    return next((name for name in VALID_MLE_KEYS if name in valid_metrics), None)


def pretrain(
    config: ml_collections.ConfigDict,
    directory: str | Path,
    *,
    task: Task | None = None,
    progress: bool | None = None,
) -> tuple[Any, dict[str, Any]]:
    """MLE pretraining with Adam and early stopping, saved once in ``directory`` and then reused.

    Every ``config.pretrain.eval_every`` steps the validation MLE loss (``"nll"`` or
    ``"mle_loss"`` of ``task.evaluate(params, params, "valid")``, or ``task.evaluate_mle`` when
    the task has it) is computed; training stops
    when it has not improved for ``config.pretrain.patience`` evaluations (0 disables early
    stopping), and the parameters of the best evaluation are kept. A task that reports neither
    key trains for all ``config.pretrain.steps`` steps and keeps the last parameters.

    If ``directory`` already holds a pretrained checkpoint, it is loaded instead, provided it was
    made with the same ``task``, ``task_config`` and ``pretrain`` fields.

    Args:
      config: the experiment config.
      directory: where the pretrained checkpoint lives, e.g. ``<workdir>/pretrained``.
      task: the task, if already built from ``config``.
      progress: show a progress bar: True, False, or None for only on a terminal.

    Returns:
      ``(params, record)``: the pretrained parameters, and a JSON-able record with
      ``"history"`` (per evaluation: ``step`` and the validation metrics), ``"best_step"``,
      ``"steps"`` (steps taken), ``"seconds"`` and ``"valid"`` (metrics of the kept params).

    Raises:
      ValueError: if ``directory`` holds a checkpoint pretrained with another config.
    """
    from tqdm.auto import tqdm

    check_config(config)
    task = get_task(config) if task is None else task
    directory = Path(directory)
    fingerprint = _pretrain_fingerprint(config)
    init_key = _key_stream(int(config.pretrain.seed), _INIT_STREAM)
    store = _CheckpointStore(directory, max_to_keep=1)
    try:
        saved_step = store.latest_step()
        if saved_step is not None:
            record = store.restore_meta(saved_step)
            if record.get("fingerprint") != fingerprint:
                raise ValueError(
                    f"{directory} holds a model pretrained with another task, task_config or "
                    f"pretrain config ({record.get('fingerprint')}); this run needs "
                    f"{fingerprint}. Use another work directory, or delete {directory}."
                )
            params, _ = store.restore(saved_step, jax.eval_shape(task.init_params, init_key))
            logger.info("Loaded the pretrained model from %s.", directory)
            return params, record

        pre = config.pretrain
        tx = optax.adam(pre.learning_rate)
        draw = batch_sampler(task, int(pre.batch_size))
        data_key = _key_stream(pre.seed, _PRETRAIN_STREAM)

        def step_fn(params: Any, opt_state: Any, step: jax.Array) -> tuple[Any, Any, jax.Array]:
            batch = draw(jax.random.fold_in(data_key, step))
            loss, grads = jax.value_and_grad(task.mle_loss)(params, batch)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        # One compiled program, rather than one per operation of the initialisers.
        params = jax.jit(task.init_params)(init_key)
        opt_state = tx.init(params)
        step_fn = jax.jit(step_fn).lower(params, opt_state, jnp.zeros((), jnp.int32)).compile()

        history: list[dict[str, Any]] = []
        best_params, best_loss, best_step, since_best = params, math.inf, 0, 0
        patience = int(pre.patience)
        seconds = 0.0
        steps_taken = 0
        bar = tqdm(
            total=int(pre.steps),
            desc="pretraining (MLE)",
            disable=_progress_disabled(progress),
            leave=False,
            file=sys.stderr,
        )
        tic = time.perf_counter()
        for step in range(int(pre.steps)):
            params, opt_state, loss = step_fn(params, opt_state, jnp.asarray(step, jnp.int32))
            steps_taken = step + 1
            bar.update()
            if steps_taken % int(pre.eval_every) and steps_taken != int(pre.steps):
                continue
            jax.block_until_ready(params)
            seconds += time.perf_counter() - tic
            if task.evaluate_mle is not None:
                valid = {"mle_loss": float(task.evaluate_mle(params, "valid"))}
            else:
                valid = dict(task.evaluate(params, params, "valid"))
            history.append({"step": steps_taken, "train_mle_loss": float(loss), "valid": valid})
            watched = _valid_mle_key(valid)
            bar.set_postfix({watched or "train_mle_loss": valid.get(watched, float(loss))})
            if watched is None:
                best_params, best_step = params, steps_taken
            elif valid[watched] < best_loss:
                best_params, best_loss, best_step, since_best = (
                    params,
                    valid[watched],
                    steps_taken,
                    0,
                )
            else:
                since_best += 1
                if patience > 0 and since_best >= patience:
                    break
            tic = time.perf_counter()
        bar.close()
        best_valid = (
            evaluate(task, best_params, best_params, "valid")
            if task.evaluate_mle is not None
            else next(h["valid"] for h in history if h["step"] == best_step)
        )
        record = {
            "fingerprint": fingerprint,
            "history": history,
            "best_step": best_step,
            "steps": steps_taken,
            "seconds": seconds,
            "valid": best_valid,
        }
        store.save(steps_taken, best_params, record)
        logger.info(
            "Pretrained for %d steps (best at %d) in %.1f s; saved to %s.",
            steps_taken,
            best_step,
            seconds,
            directory,
        )
        return best_params, record
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------
# Fine-tuning steps.


def evaluations_per_step(config: ml_collections.ConfigDict) -> int:
    """Batch-sized task-loss evaluations that one step of ``config.method`` makes.

    MGS, random search and the evolution strategies evaluate the task loss on the batch once per
    candidate; policy gradient, minimum risk training and GRPO score ``num_samples`` sampled
    outputs per input, which is ``num_samples`` batches' worth; MLE makes none.

    Args:
      config: the experiment config.

    Returns:
      The count, a Python int.
    """
    return {
        "pretrained": 0,
        "mle": 0,
        "mgs": int(config.mgs.num_candidates),
        "mgs_after": int(config.mgs.num_candidates),
        "random_search": int(config.mgs.num_candidates),
        "pg": int(config.pg.num_samples),
        "mrt": int(config.mrt.num_samples),
        "grpo": int(config.grpo.num_samples),
        "guided_es": int(config.es.num_candidates),
        "open_es": int(config.es.num_candidates),
    }[config.method]


def _mgs_kwargs(config: ml_collections.ConfigDict, key: jax.Array, mix: float) -> dict[str, Any]:
    cfg = config.mgs
    return dict(
        num_candidates=int(cfg.num_candidates),
        sigma=float(cfg.sigma),
        temperature="auto" if cfg.auto_temperature else float(cfg.temperature),
        mix=mix,
        weighting=cfg.weighting,
        noise=cfg.noise,
        antithetic=bool(cfg.antithetic),
        chunk_size=int(cfg.chunk_size) or None,
        key=key,
        target_ess=float(cfg.target_ess),
    )


def make_optimizer(
    config: ml_collections.ConfigDict, *, check: bool = True
) -> optax.GradientTransformationExtraArgs:
    """The optimiser of ``config.method``, fed the gradient of the method's differentiable loss.

    Args:
      config: the experiment config.
      check: check the config first with `check_config`.

    Returns:
      An optax transformation. For ``mgs``, ``mgs_after``, ``random_search`` and the evolution
      strategies its ``update`` needs ``params``, ``task_loss_fn``, and the ``batch`` and
      ``reference`` extra arguments. The PRNG keys of MGS and the evolution strategies come from
      ``config.seed``.
    """
    if check:
        check_config(config)
    learning_rate = float(config.learning_rate)
    key = _key_stream(int(config.seed), _OPTIMIZER_STREAM)
    method = config.method
    if method == "pretrained":
        return optax.with_extra_args_support(optax.set_to_zero())
    if method in ("mle", "pg", "mrt", "grpo"):
        return optax.with_extra_args_support(optax.adam(learning_rate))
    if method in ("mgs", "random_search"):
        mix = 1.0 if method == "random_search" else float(config.mgs.mix)
        clip_norm = float(config.mgs.clip_norm)
        return with_mgs(
            optax.adam(learning_rate),
            probe_scale=float(config.mgs.probe_scale),
            clip_norm=clip_norm if clip_norm > 0 else None,
            **_mgs_kwargs(config, key, mix),
        )
    if method == "mgs_after":
        return optax.chain(
            optax.adam(learning_rate), mgs(**_mgs_kwargs(config, key, float(config.mgs.mix)))
        )
    es = config.es
    # The ES return -(estimated task-loss gradient), which Adam then takes as a gradient.
    adam_on_estimate = (optax.scale(-1.0), optax.adam(learning_rate))
    if method == "guided_es":
        return optax.chain(
            optax.adam(learning_rate),
            baselines.guided_es(
                num_candidates=int(es.num_candidates),
                sigma=float(es.sigma),
                learning_rate=float(es.learning_rate),
                alpha=float(es.alpha),
                key=key,
            ),
            *adam_on_estimate,
        )
    return optax.chain(
        baselines.open_es(
            num_candidates=int(es.num_candidates),
            sigma=float(es.sigma),
            learning_rate=float(es.learning_rate),
            key=key,
        ),
        *adam_on_estimate,
    )


_MGS_METHODS = ("mgs", "mgs_after", "random_search")
_SAMPLING_METHODS = ("pg", "mrt", "grpo")


def check_task_settings(task: Task, config: ml_collections.ConfigDict) -> None:
    """Checks the fields of ``config`` that name something of the task's.

    Args:
      task: the task.
      config: the experiment config; ``post_hoc`` and ``surrogate`` are read.

    Raises:
      ValueError: for a post-hoc correction or a surrogate loss that the task does not have.
    """
    _post_hoc(task, config)
    surrogate_loss(task, config)


def surrogate_loss(task: Task, config: ml_collections.ConfigDict) -> Callable[[Any, Any], Any]:
    """The differentiable loss that fine-tuning uses: ``task.mle_loss`` or a named surrogate.

    Args:
      task: the task.
      config: the experiment config; ``config.surrogate`` names one of ``task.surrogates``, or
        is "" for ``task.mle_loss``.

    Returns:
      ``loss(params, batch) -> ()``.

    Raises:
      ValueError: for a name the task does not have.
    """
    name = str(config.get("surrogate", ""))
    if not name:
        return task.mle_loss
    if name not in task.surrogates:
        known = ", ".join(sorted(task.surrogates)) or "none"
        raise ValueError(
            f"config.surrogate={name!r} is not a surrogate loss of task {task.name!r} (it has: "
            f"{known}). Use one of those, or '' for the MLE loss."
        )
    return task.surrogates[name]


def make_train_step(
    task: Task, config: ml_collections.ConfigDict
) -> tuple[Callable[[Any], TrainState], Callable[[TrainState, Any], tuple[TrainState, dict]]]:
    """Builds the fine-tuning step of ``config.method``.

    Args:
      task: the task.
      config: the experiment config.

    Returns:
      ``(init, step)``. ``init(params) -> TrainState`` starts from the given parameters (the
      pretrained ones), with the keys of ``config.seed``. ``step(state, reference) -> (state,
      diagnostics)`` is pure and jit-able: ``reference`` is the frozen pretrained parameters,
      and ``diagnostics`` is a dict of ``()`` float32 arrays (``mle_loss`` on the batch, and per
      method: ``ess``, ``guide_weight``, ``temperature`` and ``candidate_loss`` for MGS and random
      search; ``candidate_loss`` for the evolution strategies; ``cost``, ``baseline`` or
      ``risk`` for PG and MRT; ``cost`` for GRPO). ``mle_loss`` is the loss that fine-tuning
      differentiates (`surrogate_loss`). All its randomness comes from the keys in ``state``
      (``fold_in(state.key, state.step)``, and those in the optimiser state), so one ``step``
      serves every seed.
    """
    check_config(config)
    method = config.method
    tx = make_optimizer(config)
    draw = batch_sampler(task, int(config.batch_size))
    mle_loss_fn = surrogate_loss(task, config)
    if task.trainable is not None:
        frozen = lambda params: jax.tree.map(lambda t: not t, task.trainable(params))
        freeze = optax.masked(optax.set_to_zero(), frozen)
        tx = optax.chain(freeze, tx, freeze)

    def task_loss_fn(params: Any, batch: Any, reference: Any) -> jax.Array:
        if task.trainable is not None:
            # Frozen leaves keep their pretrained values, whatever a candidate proposes for them.
            params = jax.tree.map(
                lambda keep, p, r: p if keep else r, task.trainable(params), params, reference
            )
        return task.task_loss(params, batch, reference)

    def init(params: Any) -> TrainState:
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            key=_key_stream(int(config.seed), _FINETUNE_STREAM),
            params=params,
            opt_state=tx.init(params),
            baseline=jnp.zeros((), jnp.float32),
        )

    def sampled_loss(
        params: Any, batch: Any, key: jax.Array, reference: Any, baseline: jax.Array, first: Any
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        cfg = config[method]
        samples = task.sample(params, batch, key, int(cfg.num_samples), reference)
        costs = jax.lax.stop_gradient(samples.costs.astype(jnp.float32))
        mask = samples.mask
        mle_weight = float(cfg.mle_weight)
        mle_loss = mle_loss_fn(params, batch)
        cost = jnp.sum(jnp.where(mask, costs, 0.0)) / jnp.maximum(jnp.sum(mask), 1)
        aux = {"mle_loss": mle_loss, "cost": cost}
        if method == "grpo":
            loss = baselines.grpo_loss(
                samples.log_probs,
                costs,
                mask=mask,
                clip_epsilon=float(cfg.clip_epsilon),
                advantage=str(cfg.advantage),
                mle_loss=mle_loss if mle_weight else None,
                mle_weight=mle_weight,
            )
            return loss, aux
        if method == "pg":
            # The first step has no running baseline yet: start from the batch's mean cost.
            baseline = jnp.where(first, cost, baseline)
            loss = baselines.policy_gradient_loss(
                samples.log_probs,
                costs,
                baseline,
                mask=mask,
                mle_loss=mle_loss if mle_weight else None,
                mle_weight=mle_weight,
            )
            aux["baseline"] = baselines.update_baseline(
                baseline, costs, float(config.pg.baseline_decay), mask=mask
            )
            return loss, aux
        risk = baselines.minimum_risk_loss(
            samples.log_probs, costs, float(config.mrt.alpha), mask=mask
        )
        aux["risk"] = risk
        return (1.0 - mle_weight) * risk + mle_weight * mle_loss, aux

    def step(state: TrainState, reference: Any) -> tuple[TrainState, dict[str, jax.Array]]:
        batch_key, sample_key = jax.random.split(jax.random.fold_in(state.key, state.step))
        batch = draw(batch_key)
        params = state.params
        baseline = state.baseline
        if method in _SAMPLING_METHODS:
            (_, diagnostics), grads = jax.value_and_grad(sampled_loss, has_aux=True)(
                params, batch, sample_key, reference, baseline, state.step == 0
            )
            baseline = diagnostics.get("baseline", baseline)
        else:
            mle_loss, grads = jax.value_and_grad(mle_loss_fn)(params, batch)
            diagnostics = {"mle_loss": mle_loss}
        updates, opt_state = tx.update(
            grads,
            state.opt_state,
            params,
            task_loss_fn=task_loss_fn,
            batch=batch,
            reference=reference,
        )
        if method in _MGS_METHODS:
            for name in ("ess", "guide_weight", "temperature"):
                diagnostics[name] = optax.tree.get(opt_state, name)
        if method in (*_MGS_METHODS, "guided_es", "open_es"):
            diagnostics["candidate_loss"] = jnp.mean(optax.tree.get(opt_state, "candidate_losses"))
        new_state = TrainState(
            step=state.step + 1,
            key=state.key,
            params=optax.apply_updates(params, updates),
            opt_state=opt_state,
            baseline=jnp.asarray(baseline, jnp.float32),
        )
        return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in diagnostics.items()}

    return init, step


# The fields of a config that do not change what one fine-tuning step computes, with the values
# that stand in for them in the key of `_cached_train_step`.
# Wall-clock seconds between checkpoints of a fine-tuning run, on top of
# ``config.checkpoint_every``: an interrupted run loses at most about this much work.
CHECKPOINT_SECONDS = 60.0

_OUTSIDE_STEP = {"seed": 0, "steps": 1, "eval_every": 1, "checkpoint_every": 1}


@functools.lru_cache(maxsize=16)
def _cached_train_step(
    task: Task, step_config_json: str
) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
    """The step of `make_train_step`, shared by every config that differs only in
    ``_OUTSIDE_STEP``: reusing one function object lets jit reuse its compilation, for every
    seed of a comparison."""
    return make_train_step(task, ml_collections.ConfigDict(json.loads(step_config_json)))[1]


def _step_config_json(config: ml_collections.ConfigDict) -> str:
    as_dict = {**config.to_dict(), **_OUTSIDE_STEP}
    as_dict["pretrain"] = {**as_dict["pretrain"], "steps": 1, "eval_every": 1, "patience": 0}
    return _config_json(as_dict)


_TASK_CACHE: collections.OrderedDict[tuple[str, str], Task] = collections.OrderedDict()
_TASK_CACHE_SIZE = 4


def get_task(config: ml_collections.ConfigDict) -> Task:
    """Builds the task of ``config``, or returns the one built for an equal task config.

    Reusing the task object lets the jitted functions it holds (and the training steps built on
    it) keep their compilations from one run to the next in the same process.

    Args:
      config: the experiment config; ``config.task`` and ``config.task_config`` are read.

    Returns:
      The `Task`.

    Raises:
      ValueError: for an unknown task.
    """
    key = (str(config.task), _config_json(config.task_config))
    if key in _TASK_CACHE:
        _TASK_CACHE.move_to_end(key)
        return _TASK_CACHE[key]
    task = make_task(config.task, config.task_config)
    _TASK_CACHE[key] = task
    while len(_TASK_CACHE) > _TASK_CACHE_SIZE:
        _TASK_CACHE.popitem(last=False)
    return task


# ---------------------------------------------------------------------------------------------
# The run.


def _split_seed(config: ml_collections.ConfigDict) -> int | None:
    seed = config.task_config.get("split_seed")
    return None if seed is None else int(seed)


def run_directory(workdir: str | Path, name: str, seed: int) -> Path:
    """Where the checkpoints and result of one run live: ``<workdir>/<name>/seed_<seed>``.

    ``name`` is the method, or the row of a comparison (``mle_half_lr``).
    """
    return Path(workdir) / name / f"seed_{seed}"


def _post_hoc(
    task: Task, config: ml_collections.ConfigDict
) -> Callable[[Any, Any], tuple[Any, dict[str, Any]]] | None:
    """The post-hoc correction that ``config.post_hoc`` names, checked against the task."""
    name = str(config.post_hoc)
    if not name:
        return None
    if name not in task.post_hoc:
        known = ", ".join(sorted(task.post_hoc)) or "none"
        raise ValueError(
            f"config.post_hoc={name!r} is not a post-hoc correction of task {task.name!r} "
            f"(it has: {known}). Use one of those, or '' for none."
        )
    return task.post_hoc[name]


_EVALUATIONS: collections.OrderedDict[tuple[Task, str, str, str], dict[str, float]] = (
    collections.OrderedDict()
)
_EVALUATIONS_SIZE = 16


def _digest(tree: Any) -> str:
    """A hash of the values, shapes and dtypes of an array tree."""
    digest = hashlib.sha1()
    for leaf in jax.tree.leaves(_unwrap_keys(tree)):
        array = np.asarray(leaf)
        digest.update(f"{array.shape}{array.dtype}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def evaluate(task: Task, params: Any, reference: Any, split: str) -> dict[str, float]:
    """``task.evaluate(params, reference, split)``, remembered for the same values.

    Every run of a comparison starts from the pretrained parameters, and many keep them (or end
    where they selected): evaluating each set of parameters once saves the decoding that text
    tasks spend most of their evaluation time on. The last 16 evaluations are kept, keyed by the
    task and a hash of the parameters' and the reference's values.

    Args:
      task: the task.
      params: the parameters to evaluate.
      reference: the pretrained parameters.
      split: ``"valid"`` or ``"test"``.

    Returns:
      A new dict of the metrics.
    """
    key = (task, split, _digest(params), _digest(reference))
    if key not in _EVALUATIONS:
        _EVALUATIONS[key] = dict(task.evaluate(params, reference, split))
        while len(_EVALUATIONS) > _EVALUATIONS_SIZE:
            _EVALUATIONS.popitem(last=False)
    _EVALUATIONS.move_to_end(key)
    return dict(_EVALUATIONS[key])


def _test(
    task: Task, params: Any, reference: Any, post_hoc: Callable[..., Any] | None
) -> tuple[dict[str, float], dict[str, Any] | None]:
    """Test metrics of ``params``, after the post-hoc correction if there is one."""
    info = None
    if post_hoc is not None:
        params, info = post_hoc(params, reference)
    return evaluate(task, params, reference, "test"), info


def run(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    pretrained_dir: str | Path | None = None,
    task: Task | None = None,
    progress: bool | None = None,
    max_steps: int | None = None,
    name: str | None = None,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
) -> dict[str, Any]:
    """Fine-tunes ``config.method`` for ``config.steps`` steps from the pretrained model.

    Pretrains first (see `pretrain`) unless ``pretrained_dir`` already holds the checkpoint.
    Every ``config.eval_every`` steps (and at steps 0 and ``config.steps``) it records the
    validation metrics and keeps the parameters with the lowest validation ``task_loss`` so far
    (checkpoint selection); every ``config.checkpoint_every`` steps, at the first step after
    ``checkpoint_seconds`` of wall-clock time without a save, and at the end, it saves a
    checkpoint, the kept parameters included, in ``run_directory(workdir, name, seed)``. If that
    directory holds checkpoints of the same config, the run resumes from the latest (and says so
    on stderr), and ends as a run never stopped would: an interruption loses at most about
    ``checkpoint_seconds`` of fine-tuning. At the end it evaluates the kept and the last
    parameters on the test split (after ``config.post_hoc``, if set) and writes ``result.json``
    beside the checkpoints. Method ``pretrained`` takes no step: it evaluates the pretrained model.

    Args:
      config: the experiment config.
      workdir: the work directory of the experiment.
      pretrained_dir: where the pretrained checkpoint lives (shared between runs); default
        ``<workdir>/pretrained``.
      task: the task, if already built from ``config``.
      progress: show progress bars: True, False, or None for only on a terminal.
      max_steps: stop once this many steps in total have been taken, without the final
        evaluation, as if the run had been interrupted; None runs to the end.
      name: the run's name in ``workdir`` (a comparison's row); default ``config.method``.
      checkpoint_seconds: save a checkpoint once this much time has passed since the last save
        (0: only every ``config.checkpoint_every`` steps and at the end). Where the run stops
        does not change its result: the random numbers of a step depend only on its number.

    Returns:
      A dict: ``method`` (``name``), ``base_method`` (``config.method``), ``seed``,
      ``finished`` (False when stopped by ``max_steps``), ``steps`` (taken), ``seconds``
      (fine-tuning wall-clock time), ``task_loss_evaluations`` (batch-sized, see
      `evaluations_per_step`), ``history`` (per evaluation: ``step``, ``seconds``,
      ``task_loss_evaluations``, ``valid`` metrics and ``train`` diagnostics of the last step),
      ``selected_step`` (the step of the kept parameters), ``test`` (test metrics of the kept
      parameters with ``config.select_checkpoint``, else of the last; None when not finished),
      ``test_selected`` and ``test_last`` (both), ``post_hoc`` (what the correction chose, per
      ``"selected"`` and ``"last"``; None without one), ``pretrain`` (the record of `pretrain`),
      ``surrogate`` (``config.surrogate``), ``pretrain_seed`` and ``split_seed`` (the task's
      data split seed, None for tasks without one), and ``directory``; and ``params``, the
      parameters that ``test`` scored before any post-hoc correction, which ``result.json``
      leaves out.

    Raises:
      ValueError: for an invalid config, or a run directory holding checkpoints of another
        config.
    """
    from tqdm.auto import tqdm

    check_config(config)
    task = get_task(config) if task is None else task
    check_task_settings(task, config)  # an unknown name fails before pretraining
    post_hoc = _post_hoc(task, config)
    workdir = Path(workdir)
    pretrained_dir = workdir / PRETRAINED_DIR if pretrained_dir is None else Path(pretrained_dir)
    reference, pretrain_record = pretrain(config, pretrained_dir, task=task, progress=progress)

    method, seed = config.method, int(config.seed)
    name = method if name is None else str(name)
    num_steps = 0 if method == "pretrained" else int(config.steps)
    eval_every = int(config.eval_every)
    checkpoint_every = int(config.checkpoint_every)
    per_step = evaluations_per_step(config)
    init, _ = make_train_step(task, config)
    step_fn = _cached_train_step(task, _step_config_json(config))
    state = init(reference)
    directory = run_directory(workdir, name, seed)
    config_json = json.loads(_config_json(config))
    store = _CheckpointStore(directory)
    try:
        history: list[dict[str, Any]] = []
        seconds = 0.0
        best_params, best_step, best_loss = reference, 0, math.inf
        saved_step = store.latest_step()
        if saved_step is not None:
            if store.restore_meta(saved_step).get("config") != config_json:
                raise ValueError(
                    f"{directory} holds checkpoints of a run with another config. Use another "
                    f"work directory, or delete {directory} to start this run afresh."
                )
            (state, best_params), meta = store.restore(saved_step, (state, best_params))
            history, seconds = list(meta["history"]), float(meta["seconds"])
            best_step, best_loss = int(meta["best_step"]), float(meta["best_loss"])
            print(
                f"Resuming {name} seed {seed} from step {saved_step} (checkpoint in {directory}).",
                file=sys.stderr,
                flush=True,
            )

        def record(done: int, diagnostics: Mapping[str, jax.Array]) -> None:
            nonlocal best_params, best_step, best_loss
            valid = evaluate(task, state.params, reference, "valid")
            history.append(
                {
                    "step": done,
                    "seconds": seconds,
                    "task_loss_evaluations": done * per_step,
                    "valid": valid,
                    "train": {k: float(v) for k, v in diagnostics.items()},
                }
            )
            loss = valid.get("task_loss", math.nan)
            # Strictly lower: on ties the earlier (less fine-tuned) parameters stay.
            if loss < best_loss:
                best_params, best_step, best_loss = state.params, done, loss

        start = int(state.step)
        if start == 0 and not history:
            record(0, {})
        end = num_steps if max_steps is None else min(num_steps, int(max_steps))
        if start < end:
            compiled = jax.jit(step_fn).lower(state, reference).compile()
        bar = tqdm(
            total=num_steps,
            initial=start,
            desc=f"{name} seed {seed}",
            disable=_progress_disabled(progress),
            leave=False,
            file=sys.stderr,
        )
        tic = last_save = time.perf_counter()
        for done in range(start + 1, end + 1):
            state, diagnostics = compiled(state, reference)
            bar.update()
            evaluate_now = done % eval_every == 0 or done == num_steps
            save_now = (
                done % checkpoint_every == 0
                or done == num_steps
                or 0 < checkpoint_seconds <= time.perf_counter() - last_save
            )
            if not (evaluate_now or save_now):
                continue
            jax.block_until_ready(state)
            seconds += time.perf_counter() - tic
            if evaluate_now:
                record(done, diagnostics)
                primary = history[-1]["valid"].get(task.primary_metric)
                if primary is not None:
                    bar.set_postfix({f"valid {task.primary_metric}": f"{primary:.4g}"})
            if save_now:
                store.save(
                    done,
                    (state, best_params),
                    {
                        "config": config_json,
                        "history": history,
                        "seconds": seconds,
                        "best_step": best_step,
                        "best_loss": best_loss,
                    },
                )
                last_save = time.perf_counter()
            tic = time.perf_counter()
        bar.close()
        done = int(state.step)
        finished = done >= num_steps
        select = bool(config.select_checkpoint)
        test_selected = test_last = post_hoc_info = None
        if finished:
            test_selected, selected_info = _test(task, best_params, reference, post_hoc)
            test_last, last_info = _test(task, state.params, reference, post_hoc)
            if post_hoc is not None:
                post_hoc_info = {"selected": selected_info, "last": last_info}
        result = {
            "method": name,
            "base_method": method,
            "seed": seed,
            "finished": finished,
            "steps": done,
            "seconds": seconds,
            "task_loss_evaluations": done * per_step,
            "history": history,
            "selected_step": best_step,
            "test": test_selected if select else test_last,
            "test_selected": test_selected,
            "test_last": test_last,
            "post_hoc": post_hoc_info,
            "pretrain": {k: v for k, v in pretrain_record.items() if k != "fingerprint"},
            "surrogate": str(config.get("surrogate", "")),
            "pretrain_seed": int(config.pretrain.seed),
            "split_seed": _split_seed(config),
            "directory": str(directory),
        }
        if finished:
            (directory / RESULT_FILE).write_text(json.dumps(result, indent=2, default=float))
        result["params"] = best_params if select else state.params
        return result
    finally:
        store.close()
