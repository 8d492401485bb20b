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
# # Quickstart: optimise the 0/1 error of a flax model
#
# A small flax MLP classifies scikit-learn's 8×8 digits. Cross-entropy is what we can
# differentiate; the 0/1 error is what we are judged by. `mlesearch.mgs` goes after
# `optax.adam` in the chain: Adam's update of the cross-entropy gradient becomes the *guide*
# around which MGS samples candidate updates, and the 0/1 error decides how to weight them.
#
# `MLESEARCH_SIZE=small` in the environment runs everything in seconds (the test suite does).

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
import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from sklearn.datasets import load_digits

import mlesearch as mls

SMALL = os.environ.get("MLESEARCH_SIZE", "full") == "small"
STEPS = 60 if SMALL else 600
SEEDS = [0] if SMALL else [0, 1, 2]

# %% [markdown]
# ## Data and model

# %%
digits = load_digits()
x_all = jnp.asarray(digits.data / 16.0, jnp.float32)
y_all = jnp.asarray(digits.target, jnp.int32)
order = np.random.RandomState(0).permutation(len(y_all))
train, test = order[:1200], order[1200:]
x_train, y_train, x_test, y_test = x_all[train], y_all[train], x_all[test], y_all[test]
print("train", x_train.shape, "test", x_test.shape)


class MLP(nn.Module):
    hidden: int = 32

    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.relu(nn.Dense(self.hidden)(x)))


model = MLP()


def cross_entropy(params, x, y):
    logits = model.apply(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def zero_one_error(params, x, y):
    return jnp.mean(jnp.argmax(model.apply(params, x), -1) != y).astype(jnp.float32)


# %% [markdown]
# ## One training loop, two chains
#
# The only difference between the two runs is the chain. Each step sees a random batch of 128;
# MGS scores its candidates on that batch too.


# %%
def train(tx, seed, steps=STEPS, batch_size=128, log_mgs=False):
    params = model.init(jax.random.key(seed), x_train[:1])
    state = tx.init(params)

    @jax.jit
    def step(params, state, key):
        index = jax.random.choice(key, len(y_train), (batch_size,), replace=False)
        x, y = x_train[index], y_train[index]
        grads = jax.grad(cross_entropy)(params, x, y)
        updates, state = tx.update(grads, state, params, task_loss_fn=zero_one_error, x=x, y=y)
        return optax.apply_updates(params, updates), state

    history = {"step": [], "test_error": [], "ess": [], "guide_weight": [], "weights": []}
    key = jax.random.key(1000 + seed)
    for i in range(steps + 1):
        if i % max(1, steps // 30) == 0:
            history["step"].append(i)
            history["test_error"].append(float(zero_one_error(params, x_test, y_test)))
            if i > 0 and log_mgs:
                history["ess"].append(float(optax.tree.get(state, "ess")))
                history["guide_weight"].append(float(optax.tree.get(state, "guide_weight")))
                history["weights"].append(np.asarray(optax.tree.get(state, "weights")))
        if i < steps:
            key, step_key = jax.random.split(key)
            params, state = step(params, state, step_key)
    return params, state, history


def make_chains(seed):
    return {
        "MLE only (adam)": optax.adam(3e-3),
        "MGS (adam → mgs)": optax.chain(
            optax.adam(3e-3),
            mls.mgs(
                num_candidates=16,
                sigma=3.0,
                noise="relative",
                weighting="tilted",
                temperature="auto",
                target_ess=0.25,
                key=seed,
            ),
        ),
    }


results = {}
for seed in SEEDS:
    for name, tx in make_chains(seed).items():
        results.setdefault(name, []).append(train(tx, seed, log_mgs=name.startswith("MGS")))

# %% [markdown]
# ## Test error against steps

# %%
plt.figure(figsize=(6, 4))
for name, runs in results.items():
    steps = runs[0][2]["step"]
    errors = np.array([r[2]["test_error"] for r in runs])
    plt.plot(steps, errors.mean(0), label=name)
    if len(runs) > 1:
        plt.fill_between(steps, errors.min(0), errors.max(0), alpha=0.2)
plt.xlabel("step")
plt.ylabel("test 0/1 error")
plt.yscale("log")
plt.legend()
plt.title(f"digits, {len(SEEDS)} seed(s): mean and range")
plt.show()
for name, runs in results.items():
    final = [r[2]["test_error"][-1] for r in runs]
    print(f"{name:<20} final test error {np.mean(final):.4f} ± {np.std(final):.4f}")

# %% [markdown]
# On digits, cross-entropy is already a close stand-in for the 0/1 error, so there is little for
# MGS to gain; the table above says how the two compare here, measured. Where the candidates'
# 0/1 errors on a batch tie (look at `candidate_losses` below), their weights are uniform and
# carry no signal, and MGS then follows Adam's step scaled by the share of guided candidates.
# docs/experiments.md has the comparisons on the other tasks, against MLE, the controls and the
# policy-gradient baselines.
#
# ## Reading `MGSInfo`
#
# The state of `mgs` carries the diagnostics of its last step, `MGSInfo(candidate_losses,
# weights, ess, guide_weight, temperature)`. Read any of them by name with `optax.tree.get`,
# wherever `mgs` sits in the chain:
#
# - `ess`: the effective sample size of the weights, between 1 (one candidate takes all) and n;
# - `guide_weight`: the total weight on candidates drawn around the guide rather than around 0;
#   near 1 means the MLE direction is doing the work, near 0 that random search is;
# - `weights`, `candidate_losses` and `temperature` (the α that `"auto"` chose).

# %%
_, state, history = results["MGS (adam → mgs)"][0]
print(
    "last step:",
    "ESS",
    optax.tree.get(state, "ess"),
    "| guide weight",
    optax.tree.get(state, "guide_weight"),
    "| α",
    optax.tree.get(state, "temperature"),
)
print("candidate losses", optax.tree.get(state, "candidate_losses"))

fig, axes = plt.subplots(1, 3, figsize=(14, 3.5))
axes[0].plot(history["step"][1:], history["ess"])
axes[0].set(xlabel="step", ylabel="ESS (n = 16)", title="effective sample size")
axes[1].plot(history["step"][1:], history["guide_weight"])
axes[1].set(xlabel="step", ylabel="weight", title="weight on guided candidates", ylim=(0, 1))
weights = np.array(history["weights"])
axes[2].imshow(weights.T, aspect="auto", cmap="magma", interpolation="nearest")
axes[2].set(xlabel="logged step", ylabel="candidate (first 8: zero-mean)", title="weights")
plt.tight_layout()
plt.show()
