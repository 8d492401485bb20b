"""Candidates split over 4 host devices give the single-device result, batch sharded or not,
inputs placed on the mesh or not.

Each case runs in a fresh Python process, because the number of host devices is fixed when jax
starts (``XLA_FLAGS=--xla_force_host_platform_device_count=4``).
"""

import json
import os
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, optax
    import mlesearch as mls
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

    assert jax.device_count() == 4, jax.devices()
    options = json.loads(sys.argv[1])
    chunk_size = options.get("chunk_size")
    params = {"w": jax.random.normal(jax.random.key(0), (16, 3)), "b": jnp.zeros(3)}
    x = jax.random.normal(jax.random.key(1), (64, 16))
    y = jax.random.randint(jax.random.key(2), (64,), 0, 3)

    def logits(p, x):
        return x @ p["w"] + p["b"]

    # The shapes of each device's share of the candidates' logits, recorded by
    # jax.debug.inspect_array_sharding as the task loss is compiled (under mgs's vmap it sees
    # the logits of every candidate evaluated at once, (chunk, batch, classes)).
    local_logits = []

    def record(sharding):
        local_logits.append(sharding.shard_shape(logits_shape))

    def error(p, x, y):  # 0/1 error plus a weight penalty, so that candidates differ
        z = logits(p, x)
        jax.debug.inspect_array_sharding(z, callback=record)
        wrong = jnp.mean(jnp.argmax(z, -1) != y).astype(jnp.float32)
        return wrong + 0.01 * jnp.sum(p["w"] ** 2)

    def ce(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(logits(p, x), y).mean()

    def shrink(p, x, y):  # a guide whose gradient needs no batch (see the Explicit case below)
        return 0.5 * jnp.sum(p["w"] ** 2) + jnp.sum(p["b"])

    def run(mgs, x, y, surrogate=ce, start=params):
        local_logits.clear()
        tx = optax.chain(optax.adam(0.1), mgs)
        state = tx.init(start)

        @jax.jit
        def step(p, state, x, y):
            g = jax.grad(surrogate)(p, x, y)
            u, state = tx.update(g, state, p, task_loss_fn=error, x=x, y=y)
            return optax.apply_updates(p, u), state

        p = start
        for _ in range(3):
            p, state = step(p, state, x, y)
        return p, state, sorted(set(local_logits))

    def max_diff(a, b):
        return max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(
            jax.tree.leaves(a), jax.tree.leaves(b), strict=True))

    kwargs = dict(num_candidates=8, sigma=0.1, key=0, **options)
    per_device = 8 if chunk_size is None else min(chunk_size, 8)
    logits_shape = (per_device, 64, 3)  # the candidates evaluated at once, all the batch
    reference, _, _ = run(mls.mgs(**kwargs), x, y)

    # Default jax.make_mesh axes (Explicit in recent jax) and one candidate axis over 4 devices.
    mesh = jax.make_mesh((4,), ("candidates",))
    sharded, state, shards = run(mls.mgs(**kwargs, mesh=mesh), x, y)
    losses_spec = str(state[1].info.candidate_losses.sharding.spec)

    # Params and batch replicated on that mesh, as a multi-process run places them
    # (jax.make_array_from_process_local_data): their types carry the Explicit mesh, though
    # nothing is split over it.
    replicated = NamedSharding(mesh, P())
    on_mesh, _, _ = run(
        mls.mgs(**kwargs, mesh=mesh),
        jax.device_put(x, replicated),
        jax.device_put(y, replicated),
        start=jax.device_put(params, replicated),
    )

    # A 2 x 2 mesh: the batch split over "data", the candidates over "candidates".
    mesh2 = jax.make_mesh((2, 2), ("data", "candidates"), axis_types=(AxisType.Auto,) * 2)
    batch = NamedSharding(mesh2, P("data"))
    both, _, shards2 = run(
        mls.mgs(**kwargs, mesh=mesh2, candidate_axis="candidates"),
        jax.device_put(x, batch),
        jax.device_put(y, batch),
    )

    # The same mesh with jax.make_mesh's default (Explicit) axis types, the batch sharded over it.
    # Under Explicit axes the user's own code must say how a contraction over the sharded batch
    # is sharded, so the guide here comes from a loss without the batch.
    mesh3 = jax.make_mesh((2, 2), ("data", "candidates"))
    explicit_types = [str(t) for t in mesh3.axis_types]
    batch3 = NamedSharding(mesh3, P("data"))
    plain, _, _ = run(mls.mgs(**kwargs), x, y, surrogate=shrink)
    explicit, _, _ = run(
        mls.mgs(**kwargs, mesh=mesh3, candidate_axis="candidates"),
        jax.device_put(x, batch3),
        jax.device_put(y, batch3),
        surrogate=shrink,
    )
    print(json.dumps(dict(
        one_axis=max_diff(reference, sharded),
        replicated=max_diff(reference, on_mesh),
        two_axes=max_diff(reference, both),
        explicit=max_diff(plain, explicit),
        explicit_types=explicit_types,
        losses_spec=losses_spec,
        # Each device computes the logits of (its share of candidates, batch rows, classes).
        local_logits=shards,
        expected_local_logits=[[per_device // 4, 64, 3]],
        local_logits2=shards2,
        expected_local_logits2=[[per_device // 2, 32, 3]],
    )))
    """
)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"chunk_size": 4},  # chunks folded into the weighted mean over the mesh
        # Antithetic pairs split over the devices, and α chosen from the losses of all of them.
        {"antithetic": True, "temperature": "auto"},
    ],
)
def test_candidates_sharded_over_four_devices_match_one_device(run_python, options):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env.pop("JAX_PLATFORMS", None)
    stdout = run_python(["-c", SCRIPT, json.dumps(options)], env=env)
    out = json.loads(stdout.strip().splitlines()[-1])
    assert out["one_axis"] < 1e-5, out
    assert out["replicated"] < 1e-5, out
    assert out["two_axes"] < 1e-5, out
    assert "AxisType.Explicit" in out["explicit_types"], out
    assert out["explicit"] < 1e-5, out
    if "chunk_size" not in options:
        assert "candidates" in out["losses_spec"], out
    assert out["local_logits"] == out["expected_local_logits"], out
    assert out["local_logits2"] == out["expected_local_logits2"], out


def test_mesh_arguments_are_checked():
    import jax

    import mlesearch as mls

    with pytest.raises(ValueError, match="needs a mesh"):
        mls.mgs(candidate_axis="candidates")
    with pytest.raises(ValueError, match="jax.sharding.Mesh"):
        mls.mgs(mesh="devices")
    mesh = jax.make_mesh((1,), ("data",))
    with pytest.raises(ValueError, match="not an axis of the mesh"):
        mls.mgs(mesh=mesh, candidate_axis="candidates")
