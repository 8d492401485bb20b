"""flax NNX models trained with MGS: `nnx.Optimizer` with `with_mgs`, and `mls.nnx_task_loss`."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import mlesearch as mls

NUM_STEPS = 3


class MLP(nnx.Module):
    """An MLP with the non-parameter state that the search must leave alone."""

    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(6, 12, rngs=rngs)
        self.norm = nnx.BatchNorm(12, rngs=rngs)
        self.dropout = nnx.Dropout(0.2, rngs=rngs)
        self.out = nnx.Linear(12, 3, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(self.dropout(nnx.relu(self.norm(self.hidden(x)))))


def _data():
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (48, 6))
    y = jnp.argmax(x @ jax.random.normal(kw, (6, 3)), axis=-1)
    return x, y


def cross_entropy(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def zero_one_error(model, x, y):
    return jnp.mean(jnp.argmax(model(x), axis=-1) != y).astype(jnp.float32)


def _tx():
    return mls.with_mgs(optax.adam(1e-2), probe_scale=1.0, num_candidates=4, key=3)


def _nnx_run(jit):
    model = MLP(nnx.Rngs(0, dropout=1))
    optimizer = nnx.Optimizer(model, _tx(), wrt=nnx.Param)
    x, y = _data()

    def step(model, optimizer, x, y):
        grads = nnx.grad(cross_entropy)(model, x, y)
        task_loss = mls.nnx_task_loss(zero_one_error, model)
        optimizer.update(model, grads, task_loss_fn=task_loss, x=x, y=y)

    step = jit(step)
    for _ in range(NUM_STEPS):
        step(model, optimizer, x, y)
    return model, optimizer


def _pure_run():
    """The same model written as pure functions of its parameter pytree."""
    model = MLP(nnx.Rngs(0, dropout=1))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params = nnx.as_pure(params)
    tx = _tx()
    state = tx.init(params)
    x, y = _data()

    @jax.jit
    def step(params, rest, state, x, y):
        def mle(params):
            module = nnx.merge(graphdef, params, rest)
            loss = cross_entropy(module, x, y)
            return loss, nnx.as_pure(nnx.state(module, nnx.Not(nnx.Param)))

        grads, new_rest = jax.grad(mle, has_aux=True)(params)

        def error(params, x, y):
            module = nnx.merge(graphdef, params, new_rest)
            module.eval()
            return zero_one_error(module, x, y)

        updates, state = tx.update(grads, state, params, task_loss_fn=error, x=x, y=y)
        return optax.apply_updates(params, updates), new_rest, state

    rest = nnx.as_pure(rest)
    for _ in range(NUM_STEPS):
        params, rest, state = step(params, rest, state, x, y)
    return params, rest, state


@pytest.mark.parametrize("jit", [nnx.jit, jax.jit], ids=["nnx.jit", "jax.jit"])
def test_the_nnx_path_gives_the_pure_function_update_bit_for_bit(jit):
    if jit is jax.jit:
        # jax.jit over NNX objects: nnx.split outside, nnx.merge inside.
        def jit(step):
            @jax.jit
            def pure(graphdef, state, x, y):
                model, optimizer = nnx.merge(graphdef, state)
                step(model, optimizer, x, y)
                return nnx.split((model, optimizer))[1]

            def call(model, optimizer, x, y):
                graphdef, state = nnx.split((model, optimizer))
                nnx.update((model, optimizer), pure(graphdef, state, x, y))

            return call

    model, optimizer = _nnx_run(jit)
    params, rest, state = _pure_run()
    chex.assert_trees_all_equal(nnx.as_pure(nnx.state(model, nnx.Param)), params)
    chex.assert_trees_all_equal(nnx.as_pure(nnx.state(model, nnx.Not(nnx.Param))), rest)
    opt_state = nnx.as_pure(optimizer.opt_state)
    for name in ("candidate_losses", "weights", "ess", "temperature"):
        chex.assert_trees_all_equal(optax.tree.get(opt_state, name), optax.tree.get(state, name))


def test_the_search_leaves_non_parameter_state_alone():
    """Batch statistics and RNG counters move with the MLE pass only, not with the candidates."""
    x, y = _data()
    searched = MLP(nnx.Rngs(0, dropout=1))
    plain = MLP(nnx.Rngs(0, dropout=1))
    optimizer = nnx.Optimizer(searched, _tx(), wrt=nnx.Param)

    @nnx.jit
    def mgs_step(model, optimizer):
        grads = nnx.grad(cross_entropy)(model, x, y)
        optimizer.update(
            model, grads, task_loss_fn=mls.nnx_task_loss(zero_one_error, model), x=x, y=y
        )

    @nnx.jit
    def mle_pass(model):
        nnx.grad(cross_entropy)(model, x, y)

    mgs_step(searched, optimizer)
    mle_pass(plain)

    # Equal up to float rounding (the MLE pass is compiled into two different programs): a
    # candidate that moved the statistics would move them by about 1e-2, and RNG counters by 1.
    def rest(model):
        state = nnx.as_pure(nnx.state(model, nnx.Not(nnx.Param)))
        is_key = lambda a: jnp.issubdtype(a.dtype, jax.dtypes.prng_key)  # noqa: E731
        return jax.tree.map(lambda a: jax.random.key_data(a) if is_key(a) else a, state)

    chex.assert_trees_all_close(rest(searched), rest(plain), rtol=1e-6, atol=0)
    # And the candidates did differ: the search had something to weigh.
    losses = optax.tree.get(nnx.as_pure(optimizer.opt_state), "candidate_losses")
    assert losses.shape == (4,) and np.all(np.isfinite(losses))


def test_candidates_are_scored_in_evaluation_mode_unless_asked():
    model = MLP(nnx.Rngs(0, dropout=1))
    x, _ = _data()
    params = nnx.as_pure(nnx.state(model, nnx.Param))
    model.eval()
    expected = model(x)
    model.train()
    scored = mls.nnx_task_loss(lambda m, x: m(x), model)(params, x)
    np.testing.assert_array_equal(scored, expected)
    assert not model.dropout.deterministic  # the model itself stays in training mode
    in_training = mls.nnx_task_loss(lambda m, x: m(x), model, eval_mode=False)(params, x)
    assert not np.allclose(in_training, expected)


def test_extra_arguments_are_routed_by_the_loss_signature():
    model = MLP(nnx.Rngs(0))
    loss = mls.nnx_task_loss(zero_one_error, model)
    assert list(__import__("inspect").signature(loss).parameters) == ["params", "x", "y"]
    with pytest.raises(TypeError, match="first positional argument"):
        mls.nnx_task_loss(lambda *, model: 0.0, model)
