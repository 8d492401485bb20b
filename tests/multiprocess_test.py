"""Two JAX processes on localhost share the candidates over ``jax.make_mesh``'s default axes.

Each process owns one CPU device, joins the other through ``jax.distributed.initialize`` (gloo
collectives over the loopback address) and places params and batch on the two-device mesh with
``jax.make_array_from_process_local_data``, as a multi-host run does. Its arrays then carry the
mesh, Explicit axes included, in their types, whether they are sharded over it or replicated.

The update of the two processes is one global array, replicated: both must hold the same values,
bit for bit. Against one process without a mesh it is the same estimator on the same candidates
(each is drawn from its own index), but the weighted sum over the candidates is split in two
partial sums joined by an all-reduce, and each device evaluates its candidates in a vmap of
another size, so it agrees up to float32 rounding only. (A single process with a two-device
mesh gives the two processes' bits exactly, when compiled alike: the partitioned program is the
same, and an all-reduce of two operands does not depend on their order. This test compares with
the single-device result instead, the one that `mlesearch.mgs` promises.)
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

# The problem and the steps, shared by the two processes and the single-process reference.
PROBLEM = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, optax
    import mlesearch as mls

    rng = np.random.default_rng(0)
    params = {
        "w": rng.normal(size=(16, 3)).astype(np.float32),
        "b": np.zeros(3, np.float32),
    }
    x = rng.normal(size=(64, 16)).astype(np.float32)
    y = rng.integers(0, 3, size=64).astype(np.int32)

    def logits(p, x):
        return x @ p["w"] + p["b"]

    def error(p, x, y):  # 0/1 error plus a weight penalty, so that candidates differ
        wrong = jnp.mean(jnp.argmax(logits(p, x), -1) != y).astype(jnp.float32)
        return wrong + 0.01 * jnp.sum(p["w"] ** 2)

    def ce(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(logits(p, x), y).mean()

    def run(place=lambda tree: tree, state_sharding=None, **mgs_kwargs):
        tx = optax.chain(optax.adam(0.1), mls.mgs(num_candidates=8, sigma=0.1, key=0, **mgs_kwargs))
        p, batch_x, batch_y = place((params, x, y))
        # The state starts where the steps leave it (on the mesh), so the second step does not
        # compile again.
        state = jax.jit(tx.init, out_shardings=state_sharding)(p)

        @jax.jit
        def step(p, state, x, y):
            u, state = tx.update(jax.grad(ce)(p, x, y), state, p, task_loss_fn=error, x=x, y=y)
            return optax.apply_updates(p, u), state

        for _ in range(3):
            p, state = step(p, state, batch_x, batch_y)
        # The weights may be split over the candidate axis: gather them (params are replicated).
        gather = jax.jit(lambda tree: tree, out_shardings=state_sharding)
        weights = gather(optax.tree.get(state, "weights"))
        return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), (p, weights))
    """
)

WORKER = (
    textwrap.dedent(
        """
        import json, sys
        import jax
        from jax._src import xla_bridge

        # Gloo listens on the address of the machine's hostname unless told otherwise: keep it on
        # the loopback address.
        make_collectives = xla_bridge._jax.make_gloo_tcp_collectives
        xla_bridge._jax.make_gloo_tcp_collectives = lambda **kwargs: make_collectives(
            hostname="127.0.0.1", **kwargs
        )
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.config.update("jax_disable_most_optimizations", True)  # faster compilation
        process_id, port, configs = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
        jax.distributed.initialize(
            f"127.0.0.1:{port}", num_processes=2, process_id=process_id,
            initialization_timeout=30,
        )
        assert jax.process_count() == 2 and jax.local_device_count() == 1, jax.devices()
        """
    )
    + PROBLEM
    + textwrap.dedent(
        """
        from jax.sharding import NamedSharding, PartitionSpec as P

        mesh = jax.make_mesh((2,), ("candidates",))  # the default axis types: Explicit
        replicated = NamedSharding(mesh, P())

        def place(tree):
            return jax.tree.map(
                lambda a: jax.make_array_from_process_local_data(replicated, a), tree
            )

        results = [
            run(place, replicated, mesh=mesh, candidate_axis="candidates", **config)
            for config in configs
        ]
        print(json.dumps({
            "axis_types": [str(t) for t in mesh.axis_types],
            "results": jax.tree.map(lambda a: a.tolist(), results),
        }))
        jax.distributed.shutdown()
        """
    )
)

# All candidates at once; and chunks of 3, which 2 devices cannot split evenly, with α chosen
# from every loss and the chunks drawn again for the weighted sum.
CONFIGS = [{}, {"chunk_size": 3, "temperature": "auto", "weighting": "tilted"}]


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run_two_processes(configs, directory, timeout=150.0):
    """Runs WORKER as processes 0 and 1; returns their parsed outputs, or fails with stderr.

    Both are killed as soon as either fails, or when the two take more than ``timeout`` seconds
    in all. Their output goes to files in ``directory``, which never fill up as pipes can.
    """
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    port = _free_loopback_port()
    processes, logs = [], []
    try:
        for process_id in (0, 1):
            stdout = open(directory / f"stdout{process_id}", "w+")  # noqa: SIM115 - closed below
            stderr = open(directory / f"stderr{process_id}", "w+")  # noqa: SIM115
            logs.append((stdout, stderr))
            arguments = [str(process_id), str(port), json.dumps(configs)]
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-c", WORKER, *arguments],
                    env=env,
                    stdout=stdout,
                    stderr=stderr,
                    text=True,
                )
            )
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in processes):
                break
            time.sleep(0.1)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
    outputs = []
    for process, (stdout, stderr) in zip(processes, logs, strict=True):
        stdout.seek(0)
        stderr.seek(0)
        output, errors = stdout.read(), stderr.read()
        stdout.close()
        stderr.close()
        assert process.returncode == 0, f"exit {process.returncode}: {errors[-3000:]}"
        outputs.append(json.loads(output.strip().splitlines()[-1]))
    return outputs


@pytest.mark.skipif(sys.platform != "linux", reason="gloo CPU collectives over TCP")
def test_two_processes_with_the_default_mesh_match_one_process_without_a_mesh(tmp_path):
    first, second = _run_two_processes(CONFIGS, tmp_path)
    assert "AxisType.Explicit" in first["axis_types"], first["axis_types"]
    # One global computation: both processes hold the same replicated update, bit for bit.
    assert first["results"] == second["results"]
    problem = {}
    exec(PROBLEM, problem)  # noqa: S102 - the same problem and steps as the processes ran
    for config, (params, weights) in zip(CONFIGS, first["results"], strict=True):
        expected_params, expected_weights = problem["run"](**config)
        np.testing.assert_allclose(weights, expected_weights, rtol=1e-5, atol=1e-6)
        assert params.keys() == expected_params.keys()
        for name, expected in expected_params.items():
            np.testing.assert_allclose(
                params[name], expected, rtol=1e-5, atol=1e-6, err_msg=f"{config} {name}"
            )
