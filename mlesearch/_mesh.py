"""Placement of the candidate axis of :func:`mlesearch.mgs` on a ``jax.sharding.Mesh``.

The candidates of a step are split over one axis (or several) of the user's mesh, whose axes may
be Auto or Explicit (``jax.make_mesh``'s default). Explicit axes carry shardings in the arrays'
types: the candidates are then moved with ``jax.sharding.reshard`` and contracted with an
explicit output sharding, and the mesh must be in context while the step is traced. Auto axes
take ``with_sharding_constraint`` hints. Without a mesh every function here is the identity.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import jax
import jax.numpy as jnp


def candidate_sharding(
    mesh: jax.sharding.Mesh | None, axis: str | tuple[str, ...] | None
) -> jax.sharding.NamedSharding | None:
    """The sharding of the candidate axis over ``axis`` of ``mesh``, checked; None without mesh."""
    if mesh is None:
        if axis is not None:
            raise ValueError("candidate_axis needs a mesh: pass mesh=jax.sharding.Mesh(...).")
        return None
    if not isinstance(mesh, jax.sharding.Mesh):
        raise ValueError(
            f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}. Build one with "
            'jax.make_mesh((jax.device_count(),), ("candidates",)).'
        )
    if axis is None:
        axis = mesh.axis_names[0]
    names = (axis,) if isinstance(axis, str) else tuple(axis)
    unknown = [name for name in names if name not in mesh.axis_names]
    if unknown:
        raise ValueError(
            f"candidate_axis {unknown} is not an axis of the mesh, whose axes are "
            f"{mesh.axis_names}."
        )
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis))


def _on_explicit_mesh(trees: Any) -> bool:
    """Whether a mesh is in context, or any array of ``trees`` is typed on a mesh with an
    Explicit axis.

    An array placed on such a mesh carries it in its type whether it is sharded over the mesh
    or replicated on it (as the global arrays of a multi-process run are, made with
    ``jax.make_array_from_process_local_data``), and it cannot meet an array typed on an Auto
    copy of the mesh.
    """
    meshes = [
        getattr(getattr(jax.typeof(leaf), "sharding", None), "mesh", None)
        for leaf in jax.tree.leaves(trees)
    ]
    return not jax.sharding.get_abstract_mesh().empty or any(
        mesh is not None and not mesh.empty and jax.sharding.AxisType.Explicit in mesh.axis_types
        for mesh in meshes
    )


def resolve(
    sharding: jax.sharding.NamedSharding | None, trees: Any
) -> jax.sharding.NamedSharding | None:
    """The candidate sharding to use for this call.

    With a mesh whose candidate axis is Explicit (``jax.make_mesh``'s default), arrays sharded
    over that mesh carry the sharding in their types, and the candidates must be placed in the
    same typed world: the mesh is used as given. When no input lives on such a mesh (a batch on
    one device), the same devices are used through an Auto copy of the mesh, where a sharding
    hint is enough.
    """
    if not is_explicit(sharding) or _on_explicit_mesh(trees):
        return sharding
    mesh = sharding.mesh
    auto_mesh = jax.sharding.Mesh(
        mesh.devices,
        mesh.axis_names,
        axis_types=(jax.sharding.AxisType.Auto,) * len(mesh.axis_names),
    )
    return jax.sharding.NamedSharding(auto_mesh, sharding.spec)


def is_explicit(sharding: jax.sharding.NamedSharding | None) -> bool:
    """Whether the candidate axis of the mesh is Explicit (``jax.make_mesh``'s default)."""
    if sharding is None:
        return False
    types = dict(zip(sharding.mesh.axis_names, sharding.mesh.axis_types, strict=True))
    return any(types[name] == jax.sharding.AxisType.Explicit for name in _names(sharding))


def _names(sharding: jax.sharding.NamedSharding) -> tuple[str, ...]:
    """The mesh axes of the candidate axis."""
    axis = sharding.spec[0]
    return (axis,) if isinstance(axis, str) else tuple(axis)


def gather(x: Any, sharding: jax.sharding.NamedSharding | None) -> Any:
    """Replicates small per-candidate outputs (losses) over an Explicit mesh; else ``x``."""
    if not is_explicit(sharding):
        return x
    replicated = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    return jax.sharding.reshard(x, replicated)


def weighted_sum(weights: jax.Array, deltas: Any, like: Any, sharding: Any) -> Any:
    """Σᵢ wᵢ Δᵢ over the leading axis of each leaf of ``deltas``, as one dot per leaf.

    Over an Explicit mesh the contraction runs over the sharded candidate axis, so the result
    is given the sharding of the matching leaf of ``like`` (the guide).
    """
    explicit = is_explicit(sharding)
    return jax.tree.map(
        lambda d, u: jnp.einsum(
            "n,n...->...", weights, d, out_sharding=jax.typeof(u).sharding if explicit else None
        ),
        deltas,
        like,
    )


def constrain(x: Any, sharding: jax.sharding.NamedSharding | None) -> Any:
    """Puts the leading (candidate) axis of every leaf of ``x`` on the candidate axis of the mesh.

    Explicit mesh axes carry their sharding in the arrays' types and are moved with
    ``jax.sharding.reshard``, which splits an axis only evenly: a leading axis that the
    candidate axis's devices do not divide (a chunk of 3 on 2 devices) is replicated instead,
    every device evaluating all of it. Auto axes take a ``with_sharding_constraint`` hint.
    """
    if sharding is None:
        return x
    if not is_explicit(sharding):
        return jax.lax.with_sharding_constraint(x, sharding)
    devices = math.prod(sharding.mesh.shape[name] for name in _names(sharding))
    replicated = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    return jax.tree.map(
        lambda leaf: jax.sharding.reshard(
            leaf, sharding if jnp.shape(leaf)[0] % devices == 0 else replicated
        ),
        x,
    )


def context(sharding: jax.sharding.NamedSharding | None) -> contextlib.AbstractContextManager[Any]:
    """The mesh as the current one when its candidate axis is Explicit, else nothing: Explicit
    axes need the mesh in context to trace operations on arrays sharded over them."""
    if not is_explicit(sharding):
        return contextlib.nullcontext()
    return jax.sharding.use_abstract_mesh(sharding.mesh.abstract_mesh)
