"""Fixtures shared by the test modules: faster compilation, fresh Python processes, and random
parameters for the transformer of `mlesearch.seq.models`."""

import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest


@pytest.fixture(scope="module")
def fast_compilation() -> Iterator[None]:
    """XLA's optimisations change nothing in these results and slow down their compilation.

    Use it for a whole module with ``pytestmark = pytest.mark.usefixtures("fast_compilation")``.
    """
    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


def _run_python(
    arguments: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 600
) -> str:
    result = subprocess.run(
        [sys.executable, *arguments],
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture
def run_python() -> Callable[..., str]:
    """``run_python(arguments, env=None, timeout=600)``: runs ``python *arguments`` in a fresh
    process (a script path, or ``"-c", code``), checks that it succeeded, and returns its stdout.
    """
    return _run_python


def _random_transformer_params(model: Any, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))

    def draw(path: tuple[jax.tree_util.DictKey, ...], leaf: jax.ShapeDtypeStruct) -> np.ndarray:
        noise = rng.normal(size=leaf.shape)
        value = {"embedding": noise, "scale": 1.0 + 0.2 * noise, "bias": 0.2 * noise}.get(
            path[-1].key, 0.3 * noise
        )
        return value.astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="session")
def random_transformer_params() -> Callable[..., dict]:
    """``random_transformer_params(model, seed)``: parameters of a `TransformerLM`, drawn with
    numpy: no compilation, unlike a jitted ``model.init``."""
    return _random_transformer_params
