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
# # Your own metric: sacrebleu inside a jitted MGS step
#
# MGS never differentiates the task loss, so the loss does not even have to be JAX code. Any
# Python function of NumPy arrays will do: here sacrebleu's sentence BLEU on detokenised text,
# for the translation-like task of `mlesearch.experiments.tasks.translation` (English dates to
# German, from the Unicode CLDR through babel). `mls.host_task_loss` wraps the Python function with
# `jax.pure_callback`, so that it runs on the host from inside the jitted, vmapped evaluation
# of the candidates.
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

EXTRAS = "[experiments,text]"
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
import tempfile
import time

import jax
import matplotlib.pyplot as plt
import numpy as np
import optax
import sacrebleu

import mlesearch as mls
from mlesearch.experiments import train
from mlesearch.experiments.configs import translation as translation_config
from mlesearch.experiments.tasks import translation

SMALL = os.environ.get("MLESEARCH_SIZE", "full") == "small"
STEPS = 10 if SMALL else 200

# %% [markdown]
# ## The task and a pretrained model
#
# The task's config is the one that `mlesearch compare translation` uses. MLE pretraining is
# deliberately short, so that the model still gets some dates wrong.

# %%
config = translation_config.get_config()
if SMALL:
    config.pretrain.steps = 50
    config.task_config.num_train = 200
    config.task_config.num_valid = 64
    config.task_config.num_test = 64
task = translation.DateTranslation(config.task_config)  # the task, with its helpers
workdir = tempfile.mkdtemp()
pretrained, record = train.pretrain(config, workdir, progress=False)
print(task.describe(pretrained, pretrained, "test", 4))

# %% [markdown]
# ## A metric that only exists in Python
#
# `py_bleu` receives NumPy token arrays, turns them back into text with the task's vocabulary,
# and calls sacrebleu. With the default `vmap_method="sequential"`, it sees one candidate at a
# time.

# %%
data = task.data
vocab = data.vocab


def text_of(ids: np.ndarray) -> str:
    tokens = []
    for token in vocab.decode(ids.tolist()):
        if token == translation.EOS:
            break
        if token not in translation.SPECIAL_TOKENS:
            tokens.append(token)
    return translation.detokenize(tokens)


def py_bleu_loss(hyps: np.ndarray, refs: np.ndarray) -> float:
    """1 - mean sentence BLEU / 100 of a batch, by sacrebleu on detokenised text."""
    scores = [
        sacrebleu.sentence_bleu(text_of(h), [text_of(r)]).score
        for h, r in zip(hyps, refs, strict=True)
    ]
    return 1.0 - float(np.mean(scores)) / 100.0


bleu_loss = mls.host_task_loss(py_bleu_loss)


def sacrebleu_task_loss(params, batch):
    output = task.translate(params, batch["prompt"])  # greedy decoding, in JAX
    return bleu_loss(output.tokens, batch["target"])  # scoring, in Python


batch = task.train_batch(jax.random.key(0))
print("sacrebleu task loss:", float(jax.jit(sacrebleu_task_loss)(pretrained, batch)))
print("JAX BLEU task loss: ", float(jax.jit(task.task_loss)(pretrained, batch, pretrained)))
# The two need not agree: sacrebleu re-tokenises the detokenised text with its default "13a"
# tokenizer, while the task's JAX BLEU scores the task's own tokens. On dates they come close.

# %% [markdown]
# ## MLE against MGS with the Python metric
#
# The same Adam optimiser; the MGS chain hands Adam's update to `mls.mgs` as the guide and
# scores its candidates with sacrebleu.


# %%
def fine_tune(tx, steps=STEPS, seed=0):
    params, state = pretrained, tx.init(pretrained)

    @jax.jit
    def step(params, state, key):
        batch = task.train_batch(key)
        grads = jax.grad(task.mle_loss)(params, batch)
        updates, state = tx.update(
            grads, state, params, task_loss_fn=sacrebleu_task_loss, batch=batch
        )
        return optax.apply_updates(params, updates), state

    curve, start = [], time.perf_counter()
    for i in range(steps):
        params, state = step(params, state, jax.random.fold_in(jax.random.key(seed), i))
        if (i + 1) % max(1, steps // 10) == 0:
            curve.append((i + 1, task.evaluate(params, pretrained, "valid")["bleu"]))
    return params, curve, time.perf_counter() - start


lr = config.learning_rate
runs = {
    "MLE (adam)": optax.adam(lr),
    "MGS (adam → mgs, sacrebleu)": optax.chain(
        optax.adam(lr),
        mls.mgs(
            num_candidates=config.mgs.num_candidates,
            sigma=config.mgs.sigma,
            noise=config.mgs.noise,
            weighting=config.mgs.weighting,
            temperature="auto",
            key=0,
        ),
    ),
}
results = {name: fine_tune(tx) for name, tx in runs.items()}

plt.figure(figsize=(6, 4))
for name, (_, curve, _) in results.items():
    plt.plot(*zip(*curve, strict=True), "o-", label=name)
plt.xlabel("step")
plt.ylabel("valid corpus BLEU")
plt.legend()
plt.title("Fine-tuning from the MLE checkpoint")
plt.show()
for name, (params, _, seconds) in results.items():
    test = task.evaluate(params, pretrained, "test")
    print(
        f"{name:<30} test BLEU {test['bleu']:6.2f}  exact match {test['exact_match']:.3f}  "
        f"{seconds:.1f} s"
    )

# %% [markdown]
# The host round trip costs time: every candidate's BLEU leaves the accelerator. When a metric
# can be written in JAX (as `mlesearch.metrics.bleu` is), prefer that; `host_task_loss` is for
# the metrics that cannot, such as external scorers, parsers or simulators.
