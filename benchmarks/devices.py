"""Step time of `mgs` with its candidates split over 1 device against D devices, side by side.

Each device count runs in its own process (the device count of the CPU backend is fixed when jax
starts: ``XLA_FLAGS=--xla_force_host_platform_device_count=D``); on a GPU host, ``--backend gpu``
uses the first D GPUs instead. Every process times the same jitted MGS step (the MLP workload of
`speed.py`) with ``mesh=`` over its D devices, and the script prints the ratio of each time to the
one-device time.

    python benchmarks/devices.py --devices 1 4 --d 1e4 1e5 --n 8 32

On a CPU, host devices share the same cores, so D host devices can at best match one device: the
benchmark checks that splitting costs little there, and measures the speed-up on real devices.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import memory  # noqa: E402


def measure(dim: int, num_candidates: int, repeats: int) -> dict[str, Any]:
    """Times one MGS step over all local devices of this process; returns seconds and devices."""
    import jax
    import optax

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _timing
    import speed

    import mlesearch as mls

    params, surrogate, task_loss, data = speed.mlp_workload(dim)
    mesh = jax.make_mesh((jax.device_count(),), ("candidates",))
    tx = optax.chain(
        optax.sgd(1e-3), mls.mgs(num_candidates=num_candidates, sigma=1e-2, key=0, mesh=mesh)
    )
    state = tx.init(params)
    grad_fn = jax.grad(surrogate)

    def routed(p, data):
        return task_loss(p, *data)

    @jax.jit
    def step(p, state, data):
        u, state = tx.update(grad_fn(p, *data), state, p, task_loss_fn=routed, data=data)
        return optax.apply_updates(p, u), state

    seconds = _timing.median_time(lambda: step(params, state, data), repeats)
    return dict(seconds=seconds, devices=jax.device_count(), backend=jax.default_backend())


def measure_in_subprocess(
    num_devices: int, backend: str, dim: int, num_candidates: int, repeats: int
) -> dict[str, Any]:
    env = dict(os.environ)
    if backend == "cpu":
        flags = env.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={num_devices}".strip()
        env["JAX_PLATFORMS"] = "cpu"
    else:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(num_devices))
    return memory.run_in_subprocess("devices", "measure", [dim, num_candidates, repeats], env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--backend", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--d", type=float, nargs="+", default=[1e4, 1e5])
    parser.add_argument("--n", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="JSON path for the results")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.devices, args.d, args.n, args.repeats = [1, 2], [1e3], [4], 1
    base = args.devices[0]
    header = f"{'d':>10} {'n':>4}" + "".join(f"{f'{k} dev ms':>11}" for k in args.devices)
    header += "".join(f"{f'{k}/{base}':>8}" for k in args.devices[1:])
    print(f"backend={args.backend}")
    print(header)
    print("-" * len(header))
    rows = []
    for dim in (int(d) for d in args.d):
        for n in args.n:
            times = {
                k: measure_in_subprocess(k, args.backend, dim, n, args.repeats)["seconds"]
                for k in args.devices
            }
            rows.append(dict(d=dim, n=n, seconds={str(k): t for k, t in times.items()}))
            line = f"{dim:>10} {n:>4}" + "".join(f"{1e3 * times[k]:>11.2f}" for k in args.devices)
            line += "".join(f"{times[k] / times[base]:>8.2f}" for k in args.devices[1:])
            print(line, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(backend=args.backend, rows=rows), f, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
