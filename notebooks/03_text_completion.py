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
# # Text completion: fine-tuning a language model against degenerate continuations
#
# The setting of Welleck & Cho (2020, arXiv 2006.03158), at notebook scale. A small transformer
# is pretrained by maximum likelihood on English paragraphs from CPython's own help texts
# (`pydoc_data.topics`) and the docstrings of its standard library: prose paragraphs of two or
# more sentences, split by source document so that no document is in two splits. Given the first
# ten tokens of a held-out paragraph, its greedy continuation often loops ("is a value is a value
# is a value ...") or never emits the end-of-sequence token. Those failures are not
# differentiable functions of the parameters, so MLE cannot target them.
#
# The task loss here is the paper's "MGS-LM" cost: the negative log-likelihood of the model's own
# greedy continuation under the frozen MLE model, summed up to and including EOS. A continuation
# that repeats or runs to the length limit without ending pays for every token it produces.
#
# `MLESEARCH_SIZE=small` in the environment runs everything in under a minute (the test suite
# does); the committed outputs come from a full-size run.

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
import html
import tempfile

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import HTML, display

from mlesearch.experiments import train
from mlesearch.experiments.configs import text_completion as text_completion_config
from mlesearch.experiments.tasks import text_completion as tc
from mlesearch.seq.decoding import greedy_decode, transformer_decoder

SMALL = os.environ.get("MLESEARCH_SIZE", "full") == "small"

# %% [markdown]
# ## The task
#
# The config is the one `mlesearch` (the default comparison) uses; the small size shrinks the
# corpus, the model and the number of steps.

# %%
config = text_completion_config.get_config()
if SMALL:
    config.pretrain.steps = 20
    config.pretrain.eval_every = 10
    config.steps = 4
    config.eval_every = 2
    config.task_config.update(
        num_train=256, num_valid=8, num_test=16, num_layers=1, embed_dim=32, mlp_dim=64
    )
config.checkpoint_every = config.steps
task = train.get_task(config)
data = tc.build_data(config.task_config)
print({split: len(rows) for split, rows in data.splits.items()}, "paragraph prefixes")
print("vocabulary:", data.vocab_size, "BPE tokens")
print(
    "prefix:",
    config.task_config.prefix_len,
    "tokens; decode at most",
    config.task_config.max_decode_len,
)

# %% [markdown]
# ## MLE and MGS from the same pretrained model
#
# `train.run` pretrains once (early stopping on the validation loss), then fine-tunes each method
# from that checkpoint. MLE keeps minimising the token loss with Adam. MGS runs in the placement
# of the paper's released code, `mls.with_mgs(optax.adam(...), probe_scale=...)`: its candidates
# probe around the clipped negative MLE gradient, are weighted by the task loss of a batch, and
# the weighted direction goes to the same Adam as a pseudo-gradient. We look at the parameters
# after the last step here (`select_checkpoint=False`); the `mlesearch` command reports the
# checkpoint with the best validation task loss as well.

# %%
workdir = tempfile.mkdtemp()
results = {}
for method in ("mle", "mgs"):
    run_config = config.copy_and_resolve_references()
    run_config.method = method
    run_config.select_checkpoint = False
    results[method] = train.run(run_config, workdir, task=task, progress=False)
pretrained, _ = train.pretrain(config, os.path.join(workdir, train.PRETRAINED_DIR), task=task)

# %% [markdown]
# ## Validation curves
#
# The task loss and the two degeneracy rates, every `eval_every` steps.

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
for method, result in results.items():
    steps = [h["step"] for h in result["history"]]
    for ax, name in zip(axes, ("task_loss", "seq_rep_4", "non_term"), strict=True):
        ax.plot(steps, [h["valid"][name] for h in result["history"]], "o-", label=method)
        ax.set(xlabel="step", title=f"valid {name}")
axes[0].legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The metrics table (test split)
#
# seq-rep-4 is the share of repeated 4-grams in a continuation, non-term the share of
# continuations that never end, ppl the perplexity of the human continuation.

# %%
columns = ("task_loss", "seq_rep_4", "non_term", "ppl", "avg_len", "avg_len_ref")
rows = {"pretrained (MLE)": task.evaluate(pretrained, pretrained, "test")}
rows.update({method: result["test"] for method, result in results.items()})
print(f"{'':<18}" + "".join(f"{c:>12}" for c in columns) + f"{'seconds':>9}")
for name, metrics in rows.items():
    seconds = results[name]["seconds"] if name in results else float("nan")
    print(f"{name:<18}" + "".join(f"{metrics[c]:>12.3f}" for c in columns) + f"{seconds:>9.1f}")


# %% [markdown]
# ## Greedy continuations, side by side
#
# Tokens inside a repeated 4-gram are in red; a continuation that reaches the length limit
# without EOS ends in a red "(no EOS)".


# %%
decoder = transformer_decoder(tc.model_config(config.task_config, data.vocab_size))


def greedy_tokens(params, rows):
    """Greedy continuations of the prefixes of ``rows``, as lists of token ids (EOS cut)."""
    output = greedy_decode(
        decoder,
        params,
        rows[:, : config.task_config.prefix_len],
        max_new_tokens=config.task_config.max_decode_len,
        eos_id=tc.EOS_ID,
        pad_id=tc.PAD_ID,
    )
    out = []
    for ids in np.asarray(output.tokens):
        ids = ids.tolist()
        ended = tc.EOS_ID in ids
        out.append((ids[: ids.index(tc.EOS_ID)] if ended else ids, ended))
    return out


def render(ids, ended, n=4):
    """HTML of a continuation, with the tokens of repeated n-grams highlighted."""
    seen, repeated = set(), set()
    for i in range(len(ids) - n + 1):
        gram = tuple(ids[i : i + n])
        if gram in seen:
            repeated.update(range(i, i + n))
        seen.add(gram)
    pieces = []
    for i, token in enumerate(ids):
        text = html.escape(data.tokenizer.id_to_token(token).replace("\u2581", " "))
        pieces.append(f'<span style="color:#c00">{text}</span>' if i in repeated else text)
    tail = "" if ended else ' <b style="color:#c00">(no EOS)</b>'
    return "".join(pieces) + tail


examples = data.splits["test"][: 4 if SMALL else 12]
columns = {"MLE checkpoint": pretrained}
columns.update({method.upper(): result["params"] for method, result in results.items()})
decoded = {name: greedy_tokens(params, examples) for name, params in columns.items()}
prefix_len = config.task_config.prefix_len
table = ["<table><tr><th>prefix</th>" + "".join(f"<th>{n}</th>" for n in columns) + "</tr>"]
for row_index, row in enumerate(examples):
    prefix = html.escape(data.tokenizer.decode([int(t) for t in row[:prefix_len]]))
    cells = "".join(f"<td>{render(*decoded[name][row_index])}</td>" for name in columns)
    table.append(f"<tr><td><b>{prefix}</b></td>{cells}</tr>")
table.append("</table>")
display(HTML("".join(table)))

# %% [markdown]
# The comparison of MLE, MGS, its uniform-weight control and the policy-gradient baselines is the
# library's main job: run `mlesearch` in a terminal (2 seeds, about a quarter of an hour on two
# CPU cores), or see docs/experiments.md for the 5-seed table of every row.
