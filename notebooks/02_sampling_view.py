# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # The sampling view of an update
#
# MLE-guided parameter search (Welleck & Cho, AAAI 2021) starts from one idea: the ideal update
# Δθ is the mean of
#
# $$p(\Delta\theta \mid \theta) \propto
# \exp\big(-[l(\theta + \Delta\theta) - l(\theta)]/\alpha\big),$$
#
# for a task loss $l$ and a temperature $\alpha$. Expand $l$ to first order inside a ball and the
# mean points along $-\nabla l$: gradient descent. Expand it to second order and
# $p$ is the Gaussian $\mathcal{N}(-H^{-1}g, \alpha H^{-1})$, whose mean is Newton's step. When $l$
# is a metric with no useful gradient, MGS estimates the mean by sampling. This notebook makes
# each of these statements visible with `mlesearch`'s own building blocks.
#
# `MLESEARCH_SIZE` (an environment variable, default `full`) sets how much work each cell does;
# `small` runs everything in seconds (the test suite does).

# %%
# On a fresh runtime (Colab), install the library first. mlesearch is not on the package
# index, so the cell installs it from, in this order: MLESEARCH_SOURCE (a git URL such as
# "git+https://github.com/OWNER/mlesearch", a clone's path or a wheel's), the clone this notebook
# runs in, or a wheel uploaded beside it (`pip wheel --no-deps .` in a clone makes one).
import importlib.util
import os
import pathlib
import subprocess
import sys

EXTRAS = "[experiments]"
if importlib.util.find_spec("mlesearch") is None:
    here = pathlib.Path.cwd()
    clones = [
        path
        for path in (here, *here.parents)
        if (path / "pyproject.toml").is_file() and (path / "mlesearch" / "__init__.py").is_file()
    ]
    wheels = sorted(here.glob("mlesearch-*.whl"))
    source = os.environ.get("MLESEARCH_SOURCE") or (
        str(clones[0]) if clones else str(wheels[-1]) if wheels else None
    )
    if source is None:
        raise RuntimeError(
            "mlesearch is not installed, and it is not on the package index. Do one of: set "
            "os.environ['MLESEARCH_SOURCE'] = 'git+https://github.com/OWNER/mlesearch' (the "
            "repository you cloned this notebook from) and run this cell again; upload a wheel "
            "(made by `pip wheel --no-deps .` in a clone) next to this notebook; or run the "
            "notebook from inside a clone."
        )
    requirement = (
        f"mlesearch{EXTRAS} @ {source}" if source.startswith("git+") else f"{source}{EXTRAS}"
    )
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", requirement], check=True)

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import mlesearch as mls

SMALL = os.environ.get("MLESEARCH_SIZE", "full") == "small"
print("size:", "small" if SMALL else "full", "| jax", jax.__version__, "|", jax.default_backend())

# %% [markdown]
# ## 1. p(Δ | θ) on a 2-D loss surface
#
# A non-convex loss in two dimensions, and the distribution over steps from θ = (0.3, 0.7) for
# three temperatures. Small α concentrates p on the best nearby step; large α spreads it out.

# %%
theta = jnp.array([0.3, 0.7])


def bumpy(p):
    return 0.5 * (p[0] ** 2 + 2 * p[1] ** 2) + 0.3 * jnp.sin(4 * p[0]) * jnp.cos(3 * p[1])


grid = jnp.linspace(-2.0, 2.0, 101 if SMALL else 201)
dx, dy = jnp.meshgrid(grid, grid)
steps = jnp.stack([dx.ravel(), dy.ravel()], axis=1)
gaps = jax.vmap(lambda d: bumpy(theta + d) - bumpy(theta))(steps)

fig, axes = plt.subplots(1, 3, figsize=(13, 4))
for ax, alpha in zip(axes, (0.05, 0.3, 1.5), strict=True):
    logp = -gaps / alpha
    p = jnp.exp(logp - logp.max()).reshape(dx.shape)
    p = p / p.sum()
    mean = (p.ravel()[:, None] * steps).sum(0)
    ax.contourf(dx, dy, p, levels=30, cmap="viridis")
    ax.contour(dx, dy, gaps.reshape(dx.shape), levels=12, colors="white", linewidths=0.4)
    ax.plot(*mean, "r*", markersize=14, label="mean of p")
    ax.set(title=f"α = {alpha}", xlabel="Δθ₁", ylabel="Δθ₂")
    ax.legend(loc="lower right")
fig.suptitle("p(Δθ | θ) ∝ exp(-Δl / α) (colour) over the loss gap (white contours)")
plt.show()

# %% [markdown]
# ## 2. Second order: the estimate converges to Newton's step
#
# For a quadratic $l(\theta) = \tfrac12\theta^\top H\theta + b^\top\theta$, $p$ is exactly
# $\mathcal{N}(-H^{-1}g, \alpha H^{-1})$. With importance weighting, λ = 1 (a zero-mean
# proposal) and a broad σ, the MGS estimate converges to $-H^{-1}g$ as n grows. We call
# `mls.mgs` itself, as a training loop would.

# %%
H = jnp.array([[2.0, 0.5], [0.5, 1.0]])
b = jnp.array([1.0, -1.0])


def quadratic(p):
    return 0.5 * p @ H @ p + b @ p


grad = jax.grad(quadratic)(theta)
newton = -jnp.linalg.solve(H, grad)


def mgs_updates(n, seeds, **kwargs):
    """The MGS update of every seed, from one jitted step: the seed only changes the state's key."""
    tx = mls.mgs(num_candidates=n, **kwargs)
    state = tx.init(theta)
    step = jax.jit(
        lambda key: tx.update(-grad, state._replace(key=key), theta, task_loss_fn=quadratic)[0]
    )
    return [step(jax.random.key(seed)) for seed in seeds]


sizes = [16, 64, 256, 1024] if SMALL else [16, 64, 256, 1024, 4096, 16384]
seeds = range(4 if SMALL else 16)
errors = np.array(
    [
        [float(jnp.linalg.norm(u - newton)) for u in mgs_updates(n, seeds, sigma=2.0, mix=1.0)]
        for n in sizes
    ]
)
plt.figure(figsize=(5, 3.5))
plt.loglog(sizes, errors.mean(1), "o-", label="mean over seeds")
plt.loglog(sizes, errors.mean(1)[0] * np.sqrt(sizes[0] / np.array(sizes)), "k--", label="∝ 1/√n")
plt.xlabel("candidates n")
plt.ylabel("‖Δ* − Newton step‖")
plt.title("MGS → Newton's step on a quadratic")
plt.legend()
plt.show()
print(
    "Newton step:", newton, "| MGS, largest n:", mgs_updates(sizes[-1], [0], sigma=2.0, mix=1.0)[0]
)

# %% [markdown]
# ## 3. First order: on a linear loss the update points along -g
#
# A linear loss $l(\theta) = g^\top\theta$ restricted to a ball of radius r around θ (infinite
# outside). Candidates outside the ball get weight 0, which `mgs` does for non-finite losses.
# The cosine between the update and $-g$ approaches 1 as n grows.

# %%
g_lin = jnp.array([1.0, -2.0, 0.5, 3.0])
center = jnp.zeros(4)


def linear_in_ball(p, radius=1.0):
    inside = jnp.linalg.norm(p - center) <= radius
    return jnp.where(inside, g_lin @ p, jnp.inf)


def cosine(u, v):
    return float(u @ v / (jnp.linalg.norm(u) * jnp.linalg.norm(v)))


cosines = []
for n in sizes:
    tx = mls.mgs(num_candidates=n, sigma=0.5, temperature=0.1, mix=1.0, weighting="tilted", key=0)
    update, _ = tx.update(jnp.zeros(4), tx.init(center), center, task_loss_fn=linear_in_ball)
    cosines.append(cosine(update, -g_lin))
plt.figure(figsize=(5, 3.5))
plt.semilogx(sizes, cosines, "o-")
plt.axhline(1.0, color="k", lw=0.5)
plt.xlabel("candidates n")
plt.ylabel("cos(Δ*, −g)")
plt.title("MGS → gradient direction on a linear loss")
plt.show()

# %% [markdown]
# ## 4. Importance against tilted weights in high dimension
#
# `"importance"` weights $w_i \propto \exp(-\Delta l_i/\alpha)/q(\Delta_i)$ target $p$ exactly,
# but $1/q$ varies enormously between candidates in high dimension: the effective sample size
# (ESS) collapses towards 1 whatever the loss does. `"tilted"` drops the $1/q$ factor,
# $w_i \propto \exp(-\Delta l_i/\alpha)$: it targets $q\cdot\exp(-\Delta l/\alpha)$ instead
# (biased towards the proposal) but keeps its ESS. Below: ESS of n = 32 candidates from the
# mixture proposal (λ = 0.5) on a quadratic, against the dimension.

# %%
dims = [2, 8, 32, 128, 512] if SMALL else [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096]
num_candidates = 32
ess = {"importance": [], "tilted": []}
for d in dims:
    p0 = jnp.ones(d) / jnp.sqrt(d)

    def loss(p):
        return 0.5 * jnp.sum(p**2)

    guide = -0.1 * p0
    for weighting in ess:
        tx = mls.mgs(
            num_candidates=num_candidates, sigma=0.05, temperature=0.01, weighting=weighting
        )
        state = tx.init(p0)

        @jax.jit
        def ess_of(key, tx=tx, state=state, p0=p0, guide=guide):
            _, new_state = tx.update(guide, state._replace(key=key), p0, task_loss_fn=loss)
            return optax.tree.get(new_state, "ess")

        values = [float(ess_of(jax.random.key(seed))) for seed in range(3 if SMALL else 8)]
        ess[weighting].append(np.mean(values))

plt.figure(figsize=(5, 3.5))
for weighting, values in ess.items():
    plt.semilogx(dims, values, "o-", label=weighting)
plt.xlabel("dimension d")
plt.ylabel(f"ESS (of n = {num_candidates})")
plt.title("Importance weights collapse in high dimension")
plt.legend()
plt.show()

# %% [markdown]
# ## 5. What `temperature="auto"` does
#
# α sets how sharply the weights prefer low losses, and its right value depends on the scale of
# the loss. With `temperature="auto"`, each step bisects on log α until the ESS of the weights is
# `target_ess · n`. The same losses multiplied by 1000 give the same weights and an α 1000 times
# larger.

# %%
losses = jax.random.uniform(jax.random.key(0), (32,))
for scale in (1.0, 1000.0):
    alpha = mls.auto_temperature(scale * losses, target_ess=0.25, weighting="tilted")
    weights = mls.candidate_weights(scale * losses, None, alpha, "tilted")
    print(
        f"loss scale {scale:>6}: α = {float(alpha):.4g}, "
        f"ESS = {float(mls.effective_sample_size(weights)):.2f} (target {0.25 * 32})"
    )

targets = np.linspace(0.05, 1.0, 20)
reached = [
    float(
        mls.effective_sample_size(
            mls.candidate_weights(
                losses,
                None,
                mls.auto_temperature(losses, target_ess=t, weighting="tilted"),
                "tilted",
            )
        )
    )
    / 32
    for t in targets
]
plt.figure(figsize=(5, 3.5))
plt.plot(targets, reached, "o-", label="reached")
plt.plot(targets, targets, "k--", label="target")
plt.xlabel("target_ess")
plt.ylabel("ESS / n")
plt.title('temperature="auto" hits its ESS target')
plt.legend()
plt.show()

# %% [markdown]
# **Takeaways.** MGS's update is an estimate of the mean of $p(\Delta\theta|\theta)$, which
# contains gradient descent and Newton's method as limits. Importance weighting is unbiased for
# that mean but collapses in high dimension, so for neural networks prefer `weighting="tilted"`,
# possibly with `temperature="auto"`.
