r"""Text completion: continue English paragraphs (or sentences) without repeating or running on.

The language-modelling setting of [1] at laptop scale. A small `models.TransformerLM` is trained by
maximum likelihood on English text, then fine-tuned so that its greedy continuations of
prefixes degenerate less (fewer repeated n-grams [3], fewer continuations that never end [2])
while its perplexity on human text holds.

Data: paragraphs (``unit="paragraph"``, the paper's setting)
-------------------------------------------------------------
The documents are CPython's help topics (``pydoc_data.topics``) and, with
``sources="topics+docstrings"``, the docstrings of every module of the standard library, read with
``ast`` from the installed sources (`stdlib_docstrings`), so nothing is downloaded and nothing is
imported. `load_paragraphs` keeps the prose paragraphs of at least ``min_sentences`` sentences
(`clean_paragraphs`), each once, and `split_documents` assigns whole documents to train, valid
or test by a hash of their name, so that no document is in two splits. Training examples are
whole paragraphs; each held-out paragraph gives one prefix per entry of ``prefix_offsets``
(`encode_with_offsets`). During fine-tuning, continuations are decoded for at most
``train_decode_scale`` times the longest reference continuation of the batch, as in the
released code of [1] (`decode_budget`, `cut_at_budget`), and never more than
``max_decode_len``; evaluation decodes ``max_decode_len`` tokens.

Data: sentences (``unit="sentence"``)
-------------------------------------
The corpus is the English help text that ships with every CPython, ``pydoc_data.topics.topics``
(the pages behind ``help("with")`` and friends), so nothing is downloaded. `load_sentences` folds
it to ASCII, drops code blocks, grammar rules, interactive sessions and underlines, joins the
remaining paragraphs, splits them into sentences and keeps those that look like prose. The
sentences therefore depend on the Python version that runs the task (3.11 gives about 2,000
distinct sentences).

`split_sentences` assigns each sentence to the held-out pool when the SHA-1 of its text, read as a
fraction of 2**160, is below ``heldout_fraction``; everything else is training data. The split is
thus deterministic, independent of the order of the corpus, and disjoint (sentences are distinct).
Held-out sentences that pass the length filter fill ``valid`` first, then ``test``, in hash order.

Tokenizer
---------
A byte-pair encoding [4] (Hugging Face ``tokenizers``) trained on the training sentences only, with
a Metaspace pre-tokenizer (spaces become ``▁`` and stay part of the following token, so decoding
restores the text exactly), the printable ASCII characters as its initial alphabet (every
normalised character is covered, so no unknown token is needed) and the special tokens
``<pad>`` (id 0) and ``<eos>`` (id 1). Training is single-pass and deterministic: the same
sentences and settings give the same merges. The trained tokenizer is cached as JSON under
``cache_dir`` (``~/.cache/mlesearch/text_completion`` by default), in a file named by a hash of the
settings and of the training sentences, so a later run loads it instead of training again.

Examples
--------
Each sentence becomes its token ids followed by EOS, right-padded with ``<pad>`` to
``max_tokens + 1`` columns. Sentences with fewer than ``min_tokens`` or more than ``max_tokens``
tokens (EOS excluded) are dropped. The *prefix* is the first ``prefix_len`` tokens of a sentence
(the same for every row, so prompts have one shape); the *reference continuation* is the rest, up
to and including EOS. A batch is ``{"tokens": int32 (B, max_tokens + 1)}``.

Losses
------
- ``mle_loss``: the token-level cross-entropy of whole sentences (every token after the first, EOS
  included), padding masked.
- ``task_loss`` with ``task_loss="lm"`` (MGS-LM of [1]): greedy-decode at most ``max_decode_len``
  tokens after each prefix with the parameters being scored, then take the negative
  log-likelihood of the decoded continuation, *summed* over its tokens up to and including the
  first EOS, under the frozen ``reference`` parameters (the MLE checkpoint); average over the
  batch. This is the ``"lm"`` distance of the released code of [1], which sums the score model's
  token log-probabilities under a mask that keeps everything up to the first EOS. (The released
  code also sums over the prefix, a constant for a given batch; we leave it out.) A continuation
  that never ends is ``max_decode_len`` tokens long, and so pays for every one of them.
- ``task_loss`` with ``task_loss="repetition"``: seq-rep-n [3] (``rep_n``, 4 by default) plus
  non-termination [2] of the greedy continuations, averaged over the batch (in ``[0, 2]``).
- ``task_loss`` with ``task_loss="degeneration"`` (`degeneration_loss`): the repetition loss
  plus ``length_weight`` times the relative gap between the batch's mean continuation length
  and its human continuations' mean length, ``|mean(len) - mean(ref_len)| / mean(ref_len)``
  (lengths with EOS; `length_gap`). Ending early and running long both pay, but a single
  continuation is not asked to guess its reference's length: the pretrained model's lengths
  scatter widely around the references' (a median of 27 tokens against 36), which a per-row
  length term would charge more than it charges a model that only emits EOS. The length term
  is a property of the batch, not a sum over continuations, so the sampled methods (PG, MRT,
  GRPO), which need a cost per sample, get the per-row cost of `continuation_costs` instead:
  the repetition cost plus ``length_weight`` times the shortfall ``max(0, 1 - len / ref_len)``
  (`length_shortfall`), which charges ending early and leaves running long to non-termination
  and repetition.

``"lm"`` and ``"repetition"`` are smallest for a model that ends every continuation at once: a
continuation that is only EOS costs ``-log p(EOS)`` under ``"lm"`` (7.5 nats on the validation
split, against 95 for the pretrained model's own continuations, whose NLL per token, 2.5, is a
third of the EOS-only model's) and 0 under ``"repetition"``. A method that minimises them
without the MLE loss pulling back (policy gradient or minimum risk training with
``mle_weight=0``) finds that solution. ``"degeneration"`` does not reward it: at
``length_weight=2`` a model that only emits EOS costs about 2 (1.94 on the validation split of
the default config), as much as one that repeats a token and never ends, while the pretrained
model's seq-rep-4 (0.275), non-termination (0.144) and a mean length 10% under the references'
cost about 0.6. Being 10% short or long costs 0.2.

- ``sample``: ``num_samples`` continuations per prefix by ancestral sampling at
  ``sample_temperature``; their log-probabilities come from a teacher-forced pass of prefix plus
  sample through the model, so they are differentiable, and their costs are those of the task
  loss, per sample (for ``"degeneration"``, against the length of its prefix's human
  continuation), cut at the fine-tuning budget as ``task_loss`` is.

Evaluation
----------
``evaluate`` greedy-decodes every prefix of the split (``max_decode_len`` tokens) and reports:

- ``task_loss``: the configured task loss (the mean cost per continuation), and
  ``task_loss_per_token``, the task loss times the number of continuations divided by their
  total length (for the summed NLL, the NLL per token);
- ``lm_nll``: the ``"lm"`` cost (the summed NLL of the continuation under the reference, the MLE
  checkpoint), and ``nll_per_token``, the total NLL divided by the total length, whatever task
  loss is configured: a model that only shortens its continuations lowers the first but not the
  second;
- ``repetition_loss`` and ``degeneration``: the other two costs, whatever task loss trains
  (``degeneration`` with the configured ``length_weight``);
- ``seq_rep_4`` and ``non_term``: the means over continuations of seq-rep-4 and of
  non-termination;
- ``ppl``: the perplexity of the human continuations (EOS included) under the evaluated
  parameters;
- ``avg_len`` and ``avg_len_ref``: the mean lengths of generated and human continuations (EOS
  included), ``len_gap = |avg_len - avg_len_ref|`` and ``len_ratio = avg_len / avg_len_ref``;
- ``seq_rep_4_ref``: seq-rep-4 of the human continuations; ``mle_loss``: the ``mle_loss`` of the
  split's rows (the pretraining's early-stopping criterion; `Task.evaluate_mle` computes it
  without decoding, in chunks of its own so that ``eval_batch_size`` plays no part in
  pretraining).

The table's columns (`Task.metrics`) are named metrics that mean the same for every row,
whatever task loss it trains with; ``primary_metric`` is the named metric of the configured task
loss (`PRIMARY_METRICS`), and has a column too. Rows are decoded in chunks of one size for
every split (one compilation): the validation rows cut into equal chunks of at most
``eval_batch_size``. The summed NLL under the reference is then computed on the continuations
sorted by length, in groups cut to their longest member (`_lm_nll_by_length`): a teacher-forced
pass costs as much at padding as at a token, and most continuations end long before
``max_decode_len``.

References:
  [1] S. Welleck and K. Cho, "MLE-guided parameter search for task loss minimization in neural
      sequence modeling", AAAI 2021. https://arxiv.org/abs/2006.03158
  [2] S. Welleck, I. Kulikov, J. Kim, R. Y. Pang and K. Cho, "Consistency of a recurrent language
      model with respect to incomplete decoding", EMNLP 2020. https://arxiv.org/abs/2002.02492
  [3] S. Welleck, I. Kulikov, S. Roller, E. Dinan, K. Cho and J. Weston, "Neural text generation
      with unlikelihood training", ICLR 2020. https://arxiv.org/abs/1908.04319
  [4] R. Sennrich, B. Haddow and A. Birch, "Neural machine translation of rare words with subword
      units", ACL 2016. https://arxiv.org/abs/1508.07909
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import string
import tempfile
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mlesearch import baselines
from mlesearch.experiments.tasks.base import Batch, Metric, Params, Samples, Task
from mlesearch.seq import metrics
from mlesearch.seq.decoding import greedy_decode, sample_decode, transformer_decoder
from mlesearch.seq.models import TransformerConfig, TransformerLM, token_log_probs

PAD_ID = 0
EOS_ID = 1
PAD_TOKEN = "<pad>"
EOS_TOKEN = "<eos>"
TASK_LOSSES = ("lm", "repetition", "degeneration")
# The task_config fields that only fine-tuning and evaluation read: changing one leaves the data,
# the model, the pretraining batches and pretraining's early stopping (`evaluate_mle`) as they
# were, so the pretrained checkpoint can be reused. ``train_decode_scale`` is here because
# `model_config` sizes the model by ``max_decode_len`` alone (the fine-tuning budget may not
# exceed it), and ``eval_batch_size`` because `evaluate_mle` chunks rows on its own. Not here:
# ``max_decode_len`` (the model's ``max_len``, hence the parameters' shapes) and ``num_valid``
# (the rows of early stopping).
FINE_TUNING_FIELDS = (
    "task_loss",
    "rep_n",
    "length_weight",
    "sample_temperature",
    "dedupe_samples",
    "train_decode_scale",
    "eval_batch_size",
)
# The metric of `evaluate` that each task loss is compared by: the configured task loss, named.
PRIMARY_METRICS = {"lm": "lm_nll", "repetition": "repetition_loss", "degeneration": "degeneration"}
# The weight of the length term of the "degeneration" task loss when the config does not set
# ``length_weight``; see `continuation_costs`.
DEFAULT_LENGTH_WEIGHT = 2.0
# Rows per chunk of `evaluate_mle`, fixed rather than ``eval_batch_size`` so that pretraining's
# early stopping does not depend on a fine-tuning field.
_MLE_CHUNK_ROWS = 256
# `evaluate` scores greedy continuations under the reference on their first w columns only, w a
# multiple of this (see `_lm_nll_by_length`).
_LM_WIDTH_STEP = 16
SPLITS = ("train", "valid", "test")
UNITS = ("sentence", "paragraph")
SOURCES = ("topics", "topics+docstrings")
# Changing how sentences are cleaned or the tokenizer is set up must change this, so that cached
# tokenizers built the old way are not reused.
_FORMAT_VERSION = 1

_ASCII_FOLD = {
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u2026": "...",
    "\u2013": "-",
    "\u2014": "-",
    "\u00a0": " ",
}
# Paragraphs that hold any of these are code, grammar rules or interactive sessions.
_CODE_LINE = re.compile(r"::=|>>>|^\s*\.\.\.\s|^\s{3,}\S.*[=(){}\[\]]\s*$")
_UNDERLINE = re.compile(r"[*=\-~^+#]{3,}")
_LIST_MARKER = re.compile(r"^(?:\d+\.|\*|-|\u2022)\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
# Abbreviations after which a full stop does not end a sentence.
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "Mr.", "Dr.", "No.")


# ---------------------------------------------------------------------------------------------
# Corpus.


def fold_to_ascii(text: str) -> str:
    """Returns ``text`` with typographic quotes and dashes replaced and other non-ASCII dropped.

    Args:
      text: any string.

    Returns:
      A string of ASCII characters only.
    """
    for old, new in _ASCII_FOLD.items():
        text = text.replace(old, new)
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def _split_into_sentences(paragraph: str) -> list[str]:
    """Splits prose at ``.``, ``!`` or ``?`` followed by a capital, except after abbreviations."""
    pieces = _SENTENCE_END.split(paragraph)
    sentences: list[str] = []
    for piece in pieces:
        if sentences and sentences[-1].endswith(_ABBREVIATIONS):
            sentences[-1] = f"{sentences[-1]} {piece}"
        else:
            sentences.append(piece)
    return sentences


def _is_prose(sentence: str, min_words: int) -> bool:
    """Whether a sentence looks like English prose rather than code or a fragment."""
    if len(sentence.split()) < min_words or not sentence[0].isupper():
        return False
    if not sentence.endswith((".", "!", "?")) or sentence.endswith(":."):
        return False
    wordlike = sum(c.isalpha() or c in " ,.'\"-" for c in sentence)
    return wordlike >= 0.9 * len(sentence)


def clean_topics(topics: Mapping[str, str], min_words: int = 4) -> list[str]:
    """Extracts distinct prose sentences from help texts.

    Paragraphs (blocks separated by blank lines) that contain code, grammar rules (``::=``),
    interactive sessions (``>>>``) or heading underlines are dropped; the others are joined into
    one line, stripped of list markers and of reStructuredText emphasis (``*name*``), split into
    sentences, and kept when they look like prose: a capital first letter, final punctuation, at
    least ``min_words`` words and at least 90% letters, spaces and ordinary punctuation.

    Args:
      topics: help texts, keyed by topic; read in sorted key order.
      min_words: the fewest whitespace-separated words a kept sentence has.

    Returns:
      The distinct sentences, sorted, each with whitespace collapsed to single spaces.
    """
    sentences: set[str] = set()
    for name in sorted(topics):
        for joined in _text_paragraphs(topics[name]):
            for sentence in _split_into_sentences(joined):
                sentence = sentence.strip()
                if sentence and _is_prose(sentence, min_words):
                    sentences.add(sentence)
    return sorted(sentences)


def _text_paragraphs(text: str) -> list[str]:
    """The paragraphs of a help text or docstring that are not code, each on one line.

    Paragraphs (blocks separated by blank lines) that contain code, grammar rules (``::=``),
    interactive sessions (``>>>``) or heading underlines are dropped; the others are folded to
    ASCII and joined into one line, stripped of list markers and of reStructuredText emphasis.
    """
    out = []
    for paragraph in re.split(r"\n\s*\n", fold_to_ascii(text)):
        lines = paragraph.split("\n")
        if any(_CODE_LINE.search(line) for line in lines):
            continue
        if any(_UNDERLINE.fullmatch(line.strip()) for line in lines):
            continue
        joined = " ".join(line.strip() for line in lines)
        joined = _LIST_MARKER.sub("", joined)
        joined = re.sub(r"\*+([^*\s][^*]*?)\*+", r"\1", joined)
        joined = re.sub(r"\s+", " ", joined).strip()
        if joined:
            out.append(joined)
    return out


def clean_paragraphs(text: str, min_words: int = 4, min_sentences: int = 2) -> list[str]:
    """Extracts the prose paragraphs of a help text or docstring.

    A paragraph is kept when it has at least ``min_sentences`` sentences and every one of them
    looks like prose (see `clean_topics`).

    Args:
      text: a help text or docstring.
      min_words: the fewest words each sentence of a kept paragraph has.
      min_sentences: the fewest sentences a kept paragraph has.

    Returns:
      The kept paragraphs, in order, each on one line with single spaces.
    """
    kept = []
    for joined in _text_paragraphs(text):
        sentences = [s.strip() for s in _split_into_sentences(joined)]
        if len(sentences) >= min_sentences and all(_is_prose(s, min_words) for s in sentences):
            kept.append(" ".join(sentences))
    return kept


# Parts of the standard library whose docstrings are not user documentation (tests, the IDLE and
# Tk code, vendored packages) or that are not there on every installation.
_STDLIB_SKIP = ("test", "tests", "idlelib", "site-packages", "lib2to3", "tkinter", "turtledemo")


def stdlib_docstrings() -> dict[str, str]:
    """The docstrings of the standard library's Python modules, read with ``ast`` (no import).

    Parsing the whole standard library takes seconds, so the result is computed once per process.

    Returns:
      ``{path relative to the standard library: the module's, classes' and functions'
      docstrings joined by blank lines}``, for every module that parses, in sorted order.
    """
    return dict(_parse_stdlib_docstrings())


@functools.lru_cache(maxsize=1)
def _parse_stdlib_docstrings() -> dict[str, str]:
    import ast
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    documents = {}
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        parts = relative.parts
        if any(part in _STDLIB_SKIP or part.startswith(("config-", ".")) for part in parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError, OSError):
            continue
        docstrings = [
            ast.get_docstring(node) or ""
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        ]
        text = "\n\n".join(d for d in docstrings if d)
        if text:
            documents[relative.as_posix()] = text
    return documents


def load_paragraphs(
    sources: str = "topics+docstrings", min_words: int = 4, min_sentences: int = 2
) -> dict[str, list[str]]:
    """The prose paragraphs of CPython's help texts (and standard library docstrings), by document.

    Documents are ``"topic:<name>"`` (``pydoc_data.topics``) and ``"stdlib:<path>"`` (one module's
    docstrings). A paragraph found in several documents is kept in the first, in sorted order of
    the document names, so that it cannot land in two splits.

    Args:
      sources: ``"topics"`` or ``"topics+docstrings"``.
      min_words: see `clean_paragraphs`.
      min_sentences: see `clean_paragraphs`.

    Returns:
      ``{document: [paragraph, ...]}`` for the documents that keep at least one paragraph.
    """
    from pydoc_data.topics import topics

    if sources not in SOURCES:
        raise ValueError(f"sources must be one of {SOURCES}, got {sources!r}.")
    texts = {f"topic:{name}": text for name, text in topics.items()}
    if sources == "topics+docstrings":
        texts.update({f"stdlib:{name}": text for name, text in stdlib_docstrings().items()})
    seen: set[str] = set()
    documents = {}
    for name in sorted(texts):
        kept = []
        for paragraph in clean_paragraphs(texts[name], min_words, min_sentences):
            if paragraph not in seen:
                seen.add(paragraph)
                kept.append(paragraph)
        if kept:
            documents[name] = kept
    return documents


def split_documents(
    documents: Mapping[str, Sequence[str]], heldout_fraction: float
) -> dict[str, list[str]]:
    """Splits paragraphs into train, valid and test by a hash of their document's name.

    A document goes to ``test`` when the SHA-1 of its name, read as a fraction of 2**160, is
    below ``heldout_fraction / 2``, to ``valid`` when it is below ``heldout_fraction``, and to
    ``train`` otherwise; no document has paragraphs in two splits.

    Args:
      documents: ``{document: [paragraph, ...]}``, as `load_paragraphs` returns.
      heldout_fraction: the expected share of documents held out, in ``(0, 1)``.

    Returns:
      ``{"train", "valid", "test"}`` to lists of paragraphs, in the hash order of their
      documents (then in document order).
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction!r}.")
    splits: dict[str, list[str]] = {name: [] for name in SPLITS}
    for fraction, name in sorted((_unit_hash(d), d) for d in documents):
        split = (
            "test"
            if fraction < heldout_fraction / 2
            else "valid"
            if fraction < heldout_fraction
            else "train"
        )
        splits[split].extend(documents[name])
    return splits


def load_sentences(min_words: int = 4) -> list[str]:
    """Returns the prose sentences of CPython's ``pydoc_data.topics`` (see `clean_topics`).

    Args:
      min_words: the fewest words a kept sentence has.

    Returns:
      The distinct sentences, sorted.
    """
    from pydoc_data.topics import topics

    return clean_topics(topics, min_words=min_words)


def _unit_hash(sentence: str) -> float:
    """The SHA-1 of ``sentence`` as a number in ``[0, 1)``."""
    digest = hashlib.sha1(sentence.encode("utf-8")).digest()
    return int.from_bytes(digest, "big") / 2.0**160


def split_sentences(
    sentences: Sequence[str], heldout_fraction: float
) -> tuple[list[str], list[str]]:
    """Splits sentences into training and held-out sets by a hash of their text.

    Args:
      sentences: distinct sentences.
      heldout_fraction: the expected share of held-out sentences, in ``(0, 1)``.

    Returns:
      ``(train, heldout)``, each sorted by the hash, so that the order does not depend on the
      order of ``sentences``.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction!r}.")
    ordered = sorted(set(sentences), key=lambda s: (_unit_hash(s), s))
    heldout = [s for s in ordered if _unit_hash(s) < heldout_fraction]
    train = [s for s in ordered if _unit_hash(s) >= heldout_fraction]
    return train, heldout


# ---------------------------------------------------------------------------------------------
# Tokenizer.


def default_cache_dir() -> Path:
    """The tokenizer cache, ``$XDG_CACHE_HOME/mlesearch/text_completion`` or under ``~/.cache``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mlesearch" / "text_completion"


def train_tokenizer(sentences: Sequence[str], vocab_size: int) -> Any:
    """Trains a byte-pair-encoding tokenizer on ``sentences``, deterministically.

    The initial alphabet is every printable ASCII character plus the Metaspace marker ``▁``, so
    every text returned by `fold_to_ascii` with whitespace collapsed can be encoded. Ids 0 and 1
    are ``<pad>`` and ``<eos>``.

    Args:
      sentences: the training sentences, ASCII with single spaces.
      vocab_size: the size of the vocabulary, specials included; at least 128.

    Returns:
      A ``tokenizers.Tokenizer``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 128:
        raise ValueError(f"vocab_size must be at least 128, got {vocab_size!r}.")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    alphabet = [c for c in string.printable if not c.isspace()] + ["\u2581"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD_TOKEN, EOS_TOKEN],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(sentences), trainer)
    if tokenizer.token_to_id(PAD_TOKEN) != PAD_ID or tokenizer.token_to_id(EOS_TOKEN) != EOS_ID:
        raise RuntimeError("The special tokens did not get ids 0 and 1.")
    return tokenizer


def tokenizer_cache_key(sentences: Sequence[str], vocab_size: int) -> str:
    """A hash of the tokenizer's settings and training sentences, naming its cache file."""
    import tokenizers

    digest = hashlib.sha256()
    header = dict(version=_FORMAT_VERSION, vocab_size=vocab_size, lib=tokenizers.__version__)
    digest.update(json.dumps(header, sort_keys=True).encode())
    for sentence in sentences:
        digest.update(sentence.encode("utf-8") + b"\n")
    return digest.hexdigest()[:20]


def load_or_train_tokenizer(
    sentences: Sequence[str], vocab_size: int, cache_dir: str | os.PathLike | None = None
) -> Any:
    """Loads the tokenizer for these settings from the cache, or trains and caches it.

    Args:
      sentences: the training sentences.
      vocab_size: the vocabulary size, specials included.
      cache_dir: where tokenizers are cached; None or ``""`` uses `default_cache_dir`.

    Returns:
      A ``tokenizers.Tokenizer``.
    """
    from tokenizers import Tokenizer

    directory = Path(cache_dir) if cache_dir else default_cache_dir()
    path = directory / f"bpe-{vocab_size}-{tokenizer_cache_key(sentences, vocab_size)}.json"
    if path.exists():
        try:
            return Tokenizer.from_file(str(path))
        except Exception:  # a corrupt cache file: train again and overwrite it.
            pass
    tokenizer = train_tokenizer(sentences, vocab_size)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # Write to a temporary file first, so that concurrent runs never read half a file.
        with tempfile.NamedTemporaryFile(
            "w", dir=directory, suffix=".tmp", delete=False, encoding="utf-8"
        ) as handle:
            handle.write(tokenizer.to_str())
        os.replace(handle.name, path)
    except OSError:
        pass  # an unwritable cache only costs a retrain next time.
    return tokenizer


# ---------------------------------------------------------------------------------------------
# Data.


@dataclasses.dataclass(frozen=True)
class TextCompletionData:
    """The tokenized splits and the tokenizer.

    Attributes:
      tokenizer: the ``tokenizers.Tokenizer``.
      splits: ``{"train", "valid", "test"}`` to int32 arrays of shape ``(num_examples,
        max_tokens + 1)``: each row a sentence's ids, then EOS, then ``PAD_ID``.
      sentences: the text of each row, per split.
    """

    tokenizer: Any
    splits: Mapping[str, np.ndarray]
    sentences: Mapping[str, tuple[str, ...]]

    @property
    def vocab_size(self) -> int:
        """The number of token ids."""
        return self.tokenizer.get_vocab_size()


def encode_sentences(
    tokenizer: Any, sentences: Sequence[str], min_tokens: int, max_tokens: int
) -> tuple[np.ndarray, list[str]]:
    """Encodes sentences, keeps those of ``min_tokens..max_tokens`` tokens and appends EOS.

    Args:
      tokenizer: a tokenizer from `train_tokenizer`.
      sentences: the sentences, in the order to keep.
      min_tokens: the fewest tokens (EOS excluded) a kept sentence has.
      max_tokens: the most tokens (EOS excluded) a kept sentence has.

    Returns:
      ``(tokens, kept)``: int32 ids of shape ``(len(kept), max_tokens + 1)``, right-padded with
      ``PAD_ID``, and the kept sentences.
    """
    rows, kept = [], []
    for sentence, encoding in zip(sentences, tokenizer.encode_batch(list(sentences)), strict=True):
        ids = encoding.ids
        if min_tokens <= len(ids) <= max_tokens:
            rows.append(ids + [EOS_ID] + [PAD_ID] * (max_tokens - len(ids)))
            kept.append(sentence)
    tokens = np.asarray(rows, np.int32).reshape(len(rows), max_tokens + 1)
    return tokens, kept


def encode_with_offsets(
    tokenizer: Any,
    texts: Sequence[str],
    offsets: Sequence[int],
    min_tokens: int,
    max_tokens: int,
) -> tuple[np.ndarray, list[str]]:
    """Encodes texts and makes one row per text and offset: the tokens from the offset on.

    A paragraph held out for evaluation gives several prefixes this way: the row of offset ``o``
    starts at its token ``o``, so its prefix is tokens ``o .. o + prefix_len`` and its reference
    continuation the rest of the paragraph. Rows are kept when they have ``min_tokens`` to
    ``max_tokens`` tokens (EOS excluded).

    Args:
      tokenizer: a tokenizer from `train_tokenizer`.
      texts: the texts, in order.
      offsets: token offsets, each >= 0; rows come text by text, offset by offset.
      min_tokens: the fewest tokens (EOS excluded) a kept row has.
      max_tokens: the most tokens (EOS excluded) a kept row has.

    Returns:
      ``(tokens, kept)``: int32 ids of shape ``(rows, max_tokens + 1)``, each row its tokens,
      EOS, then ``PAD_ID``; and the text each row comes from.
    """
    rows, kept = [], []
    for text, encoding in zip(texts, tokenizer.encode_batch(list(texts)), strict=True):
        for offset in offsets:
            ids = encoding.ids[offset:]
            if min_tokens <= len(ids) <= max_tokens:
                rows.append(ids + [EOS_ID] + [PAD_ID] * (max_tokens - len(ids)))
                kept.append(text)
    tokens = np.asarray(rows, np.int32).reshape(len(rows), max_tokens + 1)
    return tokens, kept


def _paragraph_data(config: Any) -> TextCompletionData:
    splits_text = split_documents(
        load_paragraphs(config.sources, config.min_words, config.min_sentences),
        config.heldout_fraction,
    )
    tokenizer = load_or_train_tokenizer(
        splits_text["train"], config.vocab_size, config.cache_dir or None
    )
    offsets = tuple(int(o) for o in config.prefix_offsets)
    caps = {"train": config.num_train, "valid": config.num_valid, "test": config.num_test}
    splits, texts = {}, {}
    for name in SPLITS:
        # Training rows are whole paragraphs; held-out paragraphs give a prefix per offset.
        tokens, kept = encode_with_offsets(
            tokenizer,
            splits_text[name],
            (0,) if name == "train" else offsets,
            config.min_tokens,
            config.max_tokens,
        )
        if caps[name]:
            tokens, kept = tokens[: caps[name]], kept[: caps[name]]
        if len(kept) < 1:
            raise ValueError(
                f"No {name} paragraph passes the length filter ({config.min_tokens} to "
                f"{config.max_tokens} tokens); widen it or raise heldout_fraction."
            )
        splits[name], texts[name] = tokens, tuple(kept)
    return TextCompletionData(tokenizer=tokenizer, splits=splits, sentences=texts)


def build_data(config: Any) -> TextCompletionData:
    """Builds the splits described by a task config (see `configs/text_completion.py`).

    With ``unit="sentence"`` the examples are sentences, split by a hash of their text. With
    ``unit="paragraph"`` they are the prose paragraphs of `load_paragraphs`, split by a hash of
    their document's name (`split_documents`); each held-out paragraph gives one row per
    ``prefix_offsets`` entry (`encode_with_offsets`).

    Args:
      config: the task config; reads ``unit``, ``vocab_size``, ``min_tokens``, ``max_tokens``,
        ``heldout_fraction``, ``num_train`` (0 for all), ``num_valid``, ``num_test`` (0 for all
        the rest), ``min_words`` and ``cache_dir``; for paragraphs also ``sources``,
        ``min_sentences`` and ``prefix_offsets``.

    Returns:
      The `TextCompletionData`.

    Raises:
      ValueError: if a split would be empty or the held-out pool is too small for ``num_valid``.
    """
    if config.get("unit", "sentence") == "paragraph":
        return _paragraph_data(config)
    train, heldout = split_sentences(
        load_sentences(min_words=config.min_words), config.heldout_fraction
    )
    tokenizer = load_or_train_tokenizer(train, config.vocab_size, config.cache_dir or None)
    train_tokens, train_kept = encode_sentences(
        tokenizer, train, config.min_tokens, config.max_tokens
    )
    if config.num_train:
        train_tokens, train_kept = train_tokens[: config.num_train], train_kept[: config.num_train]
    heldout_tokens, heldout_kept = encode_sentences(
        tokenizer, heldout, config.min_tokens, config.max_tokens
    )
    num_valid = config.num_valid
    if num_valid < 1 or num_valid >= len(heldout_kept):
        raise ValueError(
            f"num_valid={num_valid} but only {len(heldout_kept)} held-out sentences pass the "
            "length filter; lower num_valid or raise heldout_fraction."
        )
    test_end = len(heldout_kept) if not config.num_test else num_valid + config.num_test
    if test_end > len(heldout_kept):
        raise ValueError(
            f"num_valid + num_test = {test_end} but only {len(heldout_kept)} held-out sentences "
            "pass the length filter; lower them or raise heldout_fraction."
        )
    if len(train_kept) < 1:
        raise ValueError("No training sentence passes the length filter.")
    splits = {
        "train": train_tokens,
        "valid": heldout_tokens[:num_valid],
        "test": heldout_tokens[num_valid:test_end],
    }
    sentences = {
        "train": tuple(train_kept),
        "valid": tuple(heldout_kept[:num_valid]),
        "test": tuple(heldout_kept[num_valid:test_end]),
    }
    return TextCompletionData(tokenizer=tokenizer, splits=splits, sentences=sentences)


# ---------------------------------------------------------------------------------------------
# Model-side functions.


def model_config(config: Any, vocab_size: int) -> TransformerConfig:
    """The `TransformerConfig` of a task config: room for a prefix and a full decoding.

    Fine-tuning decodes at most ``max_decode_len`` tokens too (`make_task` checks it), so
    ``train_decode_scale`` plays no part here: it is one of `FINE_TUNING_FIELDS`.

    Args:
      config: the task config (``num_layers``, ``num_heads``, ``embed_dim``, ``mlp_dim``,
        ``prefix_len``, ``max_decode_len``, ``max_tokens``).
      vocab_size: the tokenizer's vocabulary size.

    Returns:
      A `TransformerConfig` with ``max_len = max(prefix_len + max_decode_len, max_tokens + 1)``.
    """
    decode_len = config.max_decode_len
    return TransformerConfig(
        vocab_size=vocab_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        embed_dim=config.embed_dim,
        mlp_dim=config.mlp_dim,
        max_len=max(config.prefix_len + decode_len, config.max_tokens + 1),
    )


def train_decode_len(config: Any) -> int:
    """The most tokens decoded after a prefix during fine-tuning.

    With ``train_decode_scale`` s > 0, ``ceil(s * L)`` for the longest possible reference
    continuation L (``max_tokens + 1 - prefix_len``, EOS included); each batch then cuts its
    continuations at ``ceil(s * l)`` for the longest reference ``l`` in the batch
    (`decode_budget`), as the released code of [1] does. With 0, ``max_decode_len``.

    Args:
      config: the task config.

    Returns:
      The length, a Python int.
    """
    scale = float(config.get("train_decode_scale", 0.0))
    if scale <= 0:
        return int(config.max_decode_len)
    return math.ceil(scale * (config.max_tokens + 1 - config.prefix_len))


def decode_budget(reference_continuations: jax.Array, scale: float) -> jax.Array:
    """``ceil(scale * l)`` for the longest reference continuation ``l`` (EOS included).

    Args:
      reference_continuations: int token ids, shape ``(batch, length)``, ``PAD_ID`` after EOS.
      scale: the multiple of the longest reference, > 0.

    Returns:
      The budget, an int32 scalar.
    """
    width = reference_continuations.shape[1]
    longest = jnp.max(continuation_lengths(reference_continuations, width))
    return jnp.ceil(scale * longest.astype(jnp.float32)).astype(jnp.int32)


def cut_at_budget(
    continuation: jax.Array, lengths: jax.Array, budget: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Keeps the first ``budget`` tokens of each continuation: later ones become ``PAD_ID``.

    A continuation whose EOS comes after the budget is then unfinished (non-terminated) and
    ``budget`` tokens long.

    Args:
      continuation: int token ids, shape ``(batch, length)``.
      lengths: lengths up to and including EOS, shape ``(batch,)``.
      budget: an int32 scalar.

    Returns:
      ``(continuation, lengths)`` cut.
    """
    inside = jnp.arange(continuation.shape[1])[None, :] < budget
    return jnp.where(inside, continuation, PAD_ID), jnp.minimum(lengths, budget)


def continuation_mask(lengths: jax.Array, width: int) -> jax.Array:
    """Marks the tokens of each continuation up to and including its first EOS.

    Args:
      lengths: the continuation lengths, EOS included, shape ``(batch,)``.
      width: the number of columns.

    Returns:
      Float32 mask of shape ``(batch, width)``.
    """
    return (jnp.arange(width)[None, :] < lengths[:, None]).astype(jnp.float32)


def continuation_log_probs(
    model: TransformerLM, params: Params, prefix: jax.Array, continuation: jax.Array
) -> jax.Array:
    """Teacher-forced log-probabilities of each continuation token given the prefix.

    Args:
      model: the `TransformerLM`.
      params: its parameters.
      prefix: int32 prompts, shape ``(batch, prefix_len)``.
      continuation: int32 continuations, shape ``(batch, length)``.

    Returns:
      Float32 log-probabilities, shape ``(batch, length)``; ``[:, t]`` is that of
      ``continuation[:, t]`` given the prefix and ``continuation[:, :t]``.
    """
    full = jnp.concatenate([prefix, continuation], axis=1).astype(jnp.int32)
    logits = model.apply(params, full[:, :-1])
    return token_log_probs(logits[:, prefix.shape[1] - 1 :], full[:, prefix.shape[1] :])


def continuation_lengths(continuation: jax.Array, max_len: int) -> jax.Array:
    """Lengths up to and including the first EOS, or ``max_len`` when there is none.

    Args:
      continuation: int token ids, shape ``(batch, max_len)``.
      max_len: the number of columns.

    Returns:
      Int32 lengths, shape ``(batch,)``.
    """
    positions = jnp.arange(max_len)
    first_eos = jnp.min(jnp.where(continuation == EOS_ID, positions, max_len), axis=1)
    return jnp.minimum(first_eos + 1, max_len).astype(jnp.int32)


def length_gap(lengths: jax.Array, reference_lengths: jax.Array) -> jax.Array:
    r"""The length term of the ``"degeneration"`` task loss: the relative gap of mean lengths.

    .. math:: \frac{|\sum_i \ell_i - \sum_i \ell_{ref,i}|}{\sum_i \ell_{ref,i}}

    0 when the continuations are as long as the human ones on average, ``1 - 1/mean(ref_len)``
    when every continuation is EOS alone, and growing without bound with continuations that run
    on. Lengths count the tokens up to and including EOS.

    Args:
      lengths: continuation lengths, shape ``(batch,)``, each >= 1.
      reference_lengths: the human continuations' lengths, shape ``(batch,)``, each >= 1.

    Returns:
      The gap, a float32 scalar.
    """
    total = jnp.sum(lengths.astype(jnp.float32))
    reference_total = jnp.sum(reference_lengths.astype(jnp.float32))
    return jnp.abs(total - reference_total) / reference_total


def degeneration_loss(
    continuation: jax.Array,
    lengths: jax.Array,
    reference_lengths: jax.Array,
    rep_n: int = 4,
    length_weight: float = DEFAULT_LENGTH_WEIGHT,
) -> jax.Array:
    """The ``"degeneration"`` task loss of a batch: repetition, non-termination, length gap.

    The batch mean of `repetition_cost` (seq-rep-``rep_n`` plus non-termination) plus
    ``length_weight`` times `length_gap`, the relative gap between the mean lengths of the
    continuations and of the human ones.

    Args:
      continuation: int32 continuations, shape ``(batch, length)``, ``PAD_ID`` after EOS.
      lengths: continuation lengths up to and including EOS, shape ``(batch,)``.
      reference_lengths: the human continuations' lengths, EOS included, shape ``(batch,)``.
      rep_n: n of seq-rep-n.
      length_weight: the weight of the length term.

    Returns:
      The loss, a float32 scalar; lower is better.
    """
    repetition = jnp.mean(repetition_cost(continuation, rep_n))
    return repetition + length_weight * length_gap(lengths, reference_lengths)


def length_shortfall(lengths: jax.Array, reference_lengths: jax.Array) -> jax.Array:
    r"""The per-sample length term of ``"degeneration"``: :math:`\max(0, 1 - \ell/\ell_{ref})`.

    The cost of a sample for the sampled methods, which need one per sample (`length_gap`, the
    task loss's term, is a property of the batch).

    The share of the reference continuation's length by which a continuation falls short, in
    ``[0, 1)``: 0 for a continuation at least as long as the reference, ``1 - 1/\ell_{ref}``
    for one that is only EOS. Lengths count the tokens up to and including EOS. Running on is
    not charged here: non-termination and repetition already charge it.

    Args:
      lengths: continuation lengths, shape ``(batch,)``, each >= 1.
      reference_lengths: the human continuations' lengths, shape ``(batch,)``, each >= 1.

    Returns:
      Float32 length terms, shape ``(batch,)``.
    """
    ratio = lengths.astype(jnp.float32) / reference_lengths.astype(jnp.float32)
    return jnp.maximum(1.0 - ratio, 0.0)


def repetition_cost(continuation: jax.Array, rep_n: int = 4) -> jax.Array:
    """seq-rep-``rep_n`` [3] plus non-termination [2] of each continuation, in ``[0, 2)``.

    Args:
      continuation: int32 continuations, shape ``(batch, length)``, ``PAD_ID`` after EOS.
      rep_n: n of seq-rep-n.

    Returns:
      Float32 costs, shape ``(batch,)``.
    """
    repetition = metrics.sequence_repetition(continuation, rep_n, eos_id=EOS_ID, pad_id=PAD_ID)
    return repetition + metrics.non_termination(continuation, eos_id=EOS_ID)


def lm_cost(
    model: TransformerLM,
    reference: Params,
    prefix: jax.Array,
    continuation: jax.Array,
    lengths: jax.Array,
) -> jax.Array:
    """The NLL of each continuation under ``reference``, summed over its tokens up to EOS.

    This is the ``"lm"`` distance of [1]: every token up to and including the first EOS counts.

    Args:
      model: the `TransformerLM`.
      reference: the parameters that score the continuations (the MLE checkpoint).
      prefix: int32 prompts, shape ``(batch, prefix_len)``.
      continuation: int32 continuations, shape ``(batch, length)``, ``PAD_ID`` after EOS.
      lengths: continuation lengths up to and including EOS, shape ``(batch,)``.

    Returns:
      Float32 summed NLLs, shape ``(batch,)``.
    """
    log_probs = continuation_log_probs(model, reference, prefix, continuation)
    mask = continuation_mask(lengths, continuation.shape[1])
    return -jnp.sum(log_probs * mask, axis=1)


def continuation_costs(
    kind: str,
    model: TransformerLM,
    reference: Params,
    prefix: jax.Array,
    continuation: jax.Array,
    lengths: jax.Array,
    rep_n: int = 4,
    *,
    reference_lengths: jax.Array | None = None,
    length_weight: float = DEFAULT_LENGTH_WEIGHT,
) -> jax.Array:
    r"""The task cost of each continuation of a prefix.

    Args:
      kind: ``"lm"``: the negative log-likelihood under ``reference``, summed over the tokens up
        to and including the first EOS (the ``"lm"`` distance of [1], `lm_cost`);
        ``"repetition"``: seq-rep-``rep_n`` [3] plus non-termination [2] (`repetition_cost`);
        ``"degeneration"``: the per-row cost of the sampled methods for that task loss (whose
        length term, `length_gap`, is a property of the batch, see `degeneration_loss`): the
        repetition cost plus ``length_weight`` times `length_shortfall`,
        :math:`\max(0, 1 - \ell / \ell_{ref})`, so that ending early is no way out of
        repetition. ``reference`` and ``prefix`` are only read by ``"lm"``,
        ``reference_lengths`` only by ``"degeneration"``.
      model: the `TransformerLM`.
      reference: the parameters that score continuations for ``"lm"`` (the MLE checkpoint).
      prefix: int32 prompts, shape ``(batch, prefix_len)``.
      continuation: int32 continuations, shape ``(batch, length)``, ``PAD_ID`` after EOS.
      lengths: continuation lengths up to and including EOS (``length`` where there is none),
        shape ``(batch,)``.
      rep_n: n of seq-rep-n.
      reference_lengths: the lengths of the human continuations of the same prefixes, EOS
        included, shape ``(batch,)``; needed by ``"degeneration"``.
      length_weight: the weight of the length term of ``"degeneration"``.

    Returns:
      Float32 costs, shape ``(batch,)``; lower is better.
    """
    if kind == "lm":
        return lm_cost(model, reference, prefix, continuation, lengths)
    if kind == "repetition":
        return repetition_cost(continuation, rep_n)
    if kind == "degeneration":
        if reference_lengths is None:
            raise ValueError(
                "The degeneration cost compares lengths with the reference continuations': pass "
                "reference_lengths."
            )
        length_term = length_shortfall(lengths, reference_lengths)
        return repetition_cost(continuation, rep_n) + length_weight * length_term
    raise ValueError(f"task_loss must be one of {TASK_LOSSES}, got {kind!r}.")


def _chunk_size(num_rows: int, max_chunk: int) -> int:
    """The rows per chunk of the fewest chunks of at most ``max_chunk`` rows, as even as can be.

    500 rows at most 256 per chunk make two chunks of 250, rather than 256 and 244 padded to 256.
    """
    num_chunks = -(-num_rows // max_chunk)
    return -(-num_rows // num_chunks)


def _rows_in_chunks(array: np.ndarray, chunk: int) -> list[tuple[np.ndarray, int]]:
    """Splits rows into chunks of exactly ``chunk`` rows (the last repeats row 0 as filler)."""
    out = []
    for start in range(0, len(array), chunk):
        piece = array[start : start + chunk]
        valid = len(piece)
        if valid < chunk:
            filler = np.repeat(array[:1], chunk - valid, axis=0)
            piece = np.concatenate([piece, filler])
        out.append((piece, valid))
    return out


def _check_task_config(config: Any) -> None:
    """Raises `ValueError` for inconsistent lengths or an unknown ``task_loss`` or ``unit``."""
    if config.task_loss not in TASK_LOSSES:
        raise ValueError(f"task_loss must be one of {TASK_LOSSES}, got {config.task_loss!r}.")
    if not 1 <= config.prefix_len <= config.min_tokens - 1:
        raise ValueError(
            f"prefix_len ({config.prefix_len}) must be in [1, min_tokens - 1] "
            f"(min_tokens={config.min_tokens}) so that every sentence has a continuation."
        )
    if config.max_tokens < config.min_tokens:
        raise ValueError("max_tokens must be at least min_tokens.")
    longest_reference = config.max_tokens + 1 - config.prefix_len
    if config.max_decode_len < longest_reference:
        raise ValueError(
            f"max_decode_len ({config.max_decode_len}) is shorter than the longest reference "
            f"continuation ({longest_reference} tokens with EOS); raise it."
        )
    unit = config.get("unit", "sentence")
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}.")
    scale = float(config.get("train_decode_scale", 0.0))
    if scale != 0 and scale < 1:
        raise ValueError(
            f"train_decode_scale must be 0 (decode max_decode_len tokens) or at least 1 (a "
            f"multiple of the longest reference), got {scale}."
        )
    if train_decode_len(config) > config.max_decode_len:
        raise ValueError(
            f"train_decode_scale={scale} decodes up to {train_decode_len(config)} tokens in "
            f"fine-tuning, more than max_decode_len ({config.max_decode_len}); lower it or raise "
            "max_decode_len."
        )
    length_weight = float(config.get("length_weight", DEFAULT_LENGTH_WEIGHT))
    if not length_weight >= 0:
        raise ValueError(f"length_weight must be >= 0, got {length_weight}.")


@dataclasses.dataclass(frozen=True)
class _Setup:
    """The model and the decoding settings that the task's losses and evaluation share."""

    model: TransformerLM
    decoder: Any  # `transformer_decoder(model.config)`.
    prefix_len: int  # tokens of each row given as the prefix.
    decode_len: int  # max_decode_len: tokens decoded in evaluation.
    fine_tune_len: int  # tokens decoded during fine-tuning (see `train_decode_len`).
    decode_scale: float  # train_decode_scale; 0 decodes fine_tune_len tokens.
    task_loss_kind: str  # one of TASK_LOSSES.
    rep_n: int  # n of seq-rep-n in the "repetition" and "degeneration" task losses.
    length_weight: float  # weight of the length term of the "degeneration" task loss.

    @classmethod
    def from_config(cls, config: Any, vocab_size: int) -> _Setup:
        mconfig = model_config(config, vocab_size)
        return cls(
            model=TransformerLM(mconfig),
            decoder=transformer_decoder(mconfig),
            prefix_len=config.prefix_len,
            decode_len=config.max_decode_len,
            fine_tune_len=train_decode_len(config),
            decode_scale=float(config.get("train_decode_scale", 0.0)),
            task_loss_kind=config.task_loss,
            rep_n=config.rep_n,
            length_weight=float(config.get("length_weight", DEFAULT_LENGTH_WEIGHT)),
        )

    def costs(
        self,
        reference: Params,
        prefix: jax.Array,
        continuation: jax.Array,
        lengths: jax.Array,
        reference_lengths: jax.Array,
    ) -> jax.Array:
        """Per-row task cost of continuations, shape ``(batch,)``."""
        return continuation_costs(
            self.task_loss_kind,
            self.model,
            reference,
            prefix,
            continuation,
            lengths,
            self.rep_n,
            reference_lengths=reference_lengths,
            length_weight=self.length_weight,
        )

    def reference_lengths(self, tokens: jax.Array) -> jax.Array:
        """The lengths of the rows' human continuations, EOS included, shape ``(batch,)``."""
        continuation = tokens[:, self.prefix_len :]
        return continuation_lengths(continuation, continuation.shape[1])

    def greedy(self, params: Params, prefix: jax.Array, length: int | None = None) -> Any:
        """Greedy continuations of ``length`` tokens (default ``decode_len``), padded after EOS."""
        return greedy_decode(
            self.decoder,
            params,
            prefix,
            max_new_tokens=self.decode_len if length is None else length,
            eos_id=EOS_ID,
            pad_id=PAD_ID,
        )

    def fine_tuning_budget(self, tokens: jax.Array) -> jax.Array:
        """The decoding budget of a training batch (see `train_decode_len`)."""
        if self.decode_scale <= 0:
            return jnp.int32(self.fine_tune_len)
        return decode_budget(tokens[:, self.prefix_len :], self.decode_scale)


def _weighted_log_probs(
    model: TransformerLM, params: Params, tokens: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Teacher-forced log-probs of every token after the first, zero at padding, and the
    weights (1 where the token is not padding); both of shape ``(batch, length - 1)``."""
    logits = model.apply(params, tokens[:, :-1])
    targets = tokens[:, 1:]
    weights = (targets != PAD_ID).astype(jnp.float32)
    return token_log_probs(logits, targets) * weights, weights


# ---------------------------------------------------------------------------------------------
# The task's functions: data, model, losses, evaluation.


def _train_batch_fn(data: TextCompletionData, batch_size: int) -> Callable[[jax.Array], Batch]:
    train_tokens = jnp.asarray(data.splits["train"])

    def train_batch(key: jax.Array) -> Batch:
        """``batch_size`` training rows drawn uniformly with replacement, inside jit."""
        index = jax.random.randint(key, (batch_size,), 0, train_tokens.shape[0])
        return {"tokens": train_tokens[index]}

    return train_batch


def _init_params_fn(model: TransformerLM) -> Callable[[jax.Array], Params]:
    @jax.jit
    def init_params(key: jax.Array) -> Params:
        """Fresh `TransformerLM` parameters (jitted: far faster than flax's eager init)."""
        return model.init(key, jnp.zeros((1, model.config.max_len), jnp.int32))

    return init_params


def _mle_loss_fn(model: TransformerLM) -> Callable[[Params, Batch], jax.Array]:
    def mle_loss(params: Params, batch: Batch) -> jax.Array:
        """Mean NLL per token of whole rows (every token after the first, EOS included)."""
        log_probs, weights = _weighted_log_probs(model, params, batch["tokens"])
        nll = -jnp.sum(log_probs)
        return nll / jnp.maximum(jnp.sum(weights), 1.0)

    return mle_loss


def _task_loss_fn(setup: _Setup) -> Callable[[Params, Batch, Params], jax.Array]:
    def task_loss(params: Params, batch: Batch, reference: Params) -> jax.Array:
        """The batch mean of the cost of each greedy continuation (see the module docstring)."""
        prefix = batch["tokens"][:, : setup.prefix_len]
        output = setup.greedy(params, prefix, setup.fine_tune_len)
        continuation, lengths = cut_at_budget(
            output.tokens, output.lengths, setup.fine_tuning_budget(batch["tokens"])
        )
        reference_lengths = setup.reference_lengths(batch["tokens"])
        if setup.task_loss_kind == "degeneration":
            return degeneration_loss(
                continuation, lengths, reference_lengths, setup.rep_n, setup.length_weight
            )
        return jnp.mean(setup.costs(reference, prefix, continuation, lengths, reference_lengths))

    return task_loss


def _sample_fn(setup: _Setup, temperature: float, dedupe: bool) -> Callable[..., Samples]:
    fine_tune_len = setup.fine_tune_len

    def sample(
        params: Params, batch: Batch, key: jax.Array, num_samples: int, reference: Params
    ) -> Samples:
        """``num_samples`` sampled continuations per prefix; log-probs by a teacher-forced pass."""
        prefix = batch["tokens"][:, : setup.prefix_len]
        rows = prefix.shape[0]
        repeated = jnp.repeat(prefix, num_samples, axis=0)
        output = sample_decode(
            setup.decoder,
            jax.lax.stop_gradient(params),
            repeated,
            key,
            max_new_tokens=fine_tune_len,
            temperature=temperature,
            eos_id=EOS_ID,
            pad_id=PAD_ID,
        )
        continuation, lengths = cut_at_budget(
            jax.lax.stop_gradient(output.tokens),
            output.lengths,
            setup.fine_tuning_budget(batch["tokens"]),
        )
        mask = continuation_mask(lengths, fine_tune_len)
        log_probs = continuation_log_probs(setup.model, params, repeated, continuation)
        sequence_log_probs = jnp.sum(log_probs * mask, axis=1).reshape(rows, num_samples)
        reference_lengths = jnp.repeat(setup.reference_lengths(batch["tokens"]), num_samples)
        costs = setup.costs(reference, repeated, continuation, lengths, reference_lengths)
        costs = jax.lax.stop_gradient(costs).reshape(rows, num_samples).astype(jnp.float32)
        if dedupe:
            sample_mask = baselines.unique_sample_mask(
                continuation.reshape(rows, num_samples, fine_tune_len)
            )
        else:
            sample_mask = jnp.ones((rows, num_samples), bool)
        return Samples(log_probs=sequence_log_probs, costs=costs, mask=sample_mask)

    return sample


_EvalChunkFn = Callable[[Params, jax.Array], tuple[dict[str, jax.Array], jax.Array]]
_LmNllFn = Callable[[Params, jax.Array, jax.Array, jax.Array], jax.Array]


def _eval_chunk_fn(setup: _Setup) -> _EvalChunkFn:
    """The jitted per-row statistics of a chunk of rows, shared by evaluation and `describe`."""
    model, prefix_len = setup.model, setup.prefix_len

    @jax.jit
    def eval_chunk_fn(params: Params, tokens: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
        """Per-row statistics of one chunk of examples, and the greedy continuations.

        Everything but ``lm_nll``, which `_lm_nll_by_length` computes on rows sorted by length.
        """
        prefix = tokens[:, :prefix_len]
        output = setup.greedy(params, prefix)
        generated, lengths = output.tokens, output.lengths
        reference_cont = tokens[:, prefix_len:]
        ref_lengths = setup.reference_lengths(tokens)
        # A row is its prefix and its human continuation, so one teacher-forced pass gives both
        # the MLE loss of whole rows (as in ``mle_loss``) and the perplexity of the human
        # continuations (EOS included; the weights vanish after EOS) under ``params``.
        row_log_probs, row_weights = _weighted_log_probs(model, params, tokens)
        return {
            "seq_rep_4": metrics.sequence_repetition(generated, 4, eos_id=EOS_ID, pad_id=PAD_ID),
            "non_term": metrics.non_termination(generated, eos_id=EOS_ID),
            "gen_len": lengths.astype(jnp.float32),
            "ref_len": ref_lengths.astype(jnp.float32),
            "repetition_loss": repetition_cost(generated, setup.rep_n),
            "ref_nll": -jnp.sum(row_log_probs[:, prefix_len - 1 :], axis=1),
            "ref_tokens": jnp.sum(row_weights[:, prefix_len - 1 :], axis=1),
            "sentence_nll": -jnp.sum(row_log_probs, axis=1),
            "sentence_tokens": jnp.sum(row_weights, axis=1),
            "seq_rep_4_ref": metrics.sequence_repetition(
                reference_cont, 4, eos_id=EOS_ID, pad_id=PAD_ID
            ),
        }, generated

    return eval_chunk_fn


def _lm_nll_fn(setup: _Setup) -> _LmNllFn:
    """`lm_cost` of the task's model, jitted: it compiles once per shape of the continuations."""
    return jax.jit(functools.partial(lm_cost, setup.model))


def _lm_nll_by_length(
    lm_nll_fn: _LmNllFn,
    reference: Params,
    prefix: np.ndarray,
    continuations: np.ndarray,
    lengths: np.ndarray,
    group_rows: int,
) -> np.ndarray:
    """`lm_cost` of every row, scored in groups of rows of similar length, each cut to its length.

    A teacher-forced pass costs as much at a padding position as at a token, and most greedy
    continuations end long before ``max_decode_len``; so the rows are sorted by length, taken
    ``group_rows`` at a time, and each group scores only the first ``w`` columns, ``w`` its
    longest continuation rounded up to a multiple of ``_LM_WIDTH_STEP`` (a handful of shapes to
    compile). Tokens after the first EOS do not count, so this is the full-width score up to
    float rounding.

    Args:
      lm_nll_fn: from `_lm_nll_fn`.
      reference: the scoring parameters.
      prefix: int32 prompts, shape ``(rows, prefix_len)``.
      continuations: int32 greedy continuations, shape ``(rows, max_decode_len)``.
      lengths: their lengths, EOS included, shape ``(rows,)``.
      group_rows: rows per call.

    Returns:
      Float32 summed NLLs, shape ``(rows,)``, in the order of the rows.
    """
    num_rows, max_width = continuations.shape
    order = np.argsort(lengths, kind="stable")
    nll = np.zeros(num_rows, np.float32)
    for start in range(0, num_rows, group_rows):
        rows = order[start : start + group_rows]
        valid = len(rows)
        rows = np.concatenate([rows, np.repeat(rows[-1:], group_rows - valid)])
        longest = int(np.max(lengths[rows]))
        width = min(max_width, -(-longest // _LM_WIDTH_STEP) * _LM_WIDTH_STEP)
        scores = lm_nll_fn(
            reference,
            jnp.asarray(prefix[rows]),
            jnp.asarray(continuations[rows, :width]),
            jnp.asarray(lengths[rows]),
        )
        nll[rows[:valid]] = jax.device_get(scores)[:valid]
    return nll


def _evaluate_fn(
    eval_chunk_fn: _EvalChunkFn,
    lm_nll_fn: _LmNllFn,
    setup: _Setup,
    data: TextCompletionData,
    eval_chunk: int,
    group_rows: int,
) -> Callable[[Params, Params, str], dict[str, float]]:

    def evaluate(params: Params, reference: Params, split: str) -> dict[str, float]:
        """Metrics of greedy continuations of every prefix of ``split``, in jitted chunks."""
        if split not in data.splits:
            raise ValueError(f"Unknown split {split!r}; choose one of {tuple(data.splits)}.")
        tokens = data.splits[split]
        totals: dict[str, float] = {}
        continuations, lengths = [], []
        for piece, valid in _rows_in_chunks(tokens, eval_chunk):
            stats, generated = jax.device_get(eval_chunk_fn(params, jnp.asarray(piece)))
            for name, values in stats.items():
                totals[name] = totals.get(name, 0.0) + float(np.sum(values[:valid]))
            continuations.append(generated[:valid])
            lengths.append(stats["gen_len"][:valid].astype(np.int32))
        lm_nll = _lm_nll_by_length(
            lm_nll_fn,
            reference,
            tokens[:, : setup.prefix_len],
            np.concatenate(continuations),
            np.concatenate(lengths),
            group_rows,
        )
        totals["lm_nll"] = float(np.sum(lm_nll))
        count = float(len(tokens))
        avg_len = totals["gen_len"] / count
        avg_ref_len = totals["ref_len"] / count
        repetition_loss = totals["repetition_loss"] / count
        losses = {
            "lm_nll": totals["lm_nll"] / count,
            "repetition_loss": repetition_loss,
            # `degeneration_loss` over the whole split.
            "degeneration": repetition_loss
            + setup.length_weight * abs(avg_len - avg_ref_len) / avg_ref_len,
        }
        task_loss = losses[PRIMARY_METRICS[setup.task_loss_kind]]
        return {
            "task_loss": task_loss,
            "task_loss_per_token": task_loss * count / totals["gen_len"],
            "nll_per_token": totals["lm_nll"] / totals["gen_len"],
            **losses,
            "seq_rep_4": totals["seq_rep_4"] / count,
            "non_term": totals["non_term"] / count,
            "ppl": float(np.exp(totals["ref_nll"] / totals["ref_tokens"])),
            "len_gap": abs(avg_len - avg_ref_len),
            "len_ratio": avg_len / avg_ref_len,
            "avg_len": avg_len,
            "avg_len_ref": avg_ref_len,
            "seq_rep_4_ref": totals["seq_rep_4_ref"] / count,
            "mle_loss": totals["sentence_nll"] / totals["sentence_tokens"],
            "num_examples": len(tokens),
        }

    return evaluate


def _evaluate_mle_fn(
    model: TransformerLM, data: TextCompletionData
) -> Callable[[Params, str], float]:
    @jax.jit
    def mle_chunk_fn(params: Params, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Per-row summed NLL of whole sequences and their token counts, as in ``mle_loss``."""
        log_probs, weights = _weighted_log_probs(model, params, tokens)
        return -jnp.sum(log_probs, axis=1), jnp.sum(weights, axis=1)

    def evaluate_mle(params: Params, split: str) -> float:
        """The ``mle_loss`` of every row of ``split`` (no decoding), for early stopping."""
        tokens = data.splits[split]
        total_nll = total_tokens = 0.0
        for piece, valid in _rows_in_chunks(tokens, _chunk_size(len(tokens), _MLE_CHUNK_ROWS)):
            nll, count = jax.device_get(mle_chunk_fn(params, jnp.asarray(piece)))
            total_nll += float(np.sum(nll[:valid]))
            total_tokens += float(np.sum(count[:valid]))
        return total_nll / total_tokens

    return evaluate_mle


def _detokenize(tokenizer: Any, ids: np.ndarray) -> str:
    """Text of a continuation, marked as ended (``<eos>``) or cut off (``...``)."""
    ids = [int(i) for i in ids]
    ended = EOS_ID in ids
    if ended:
        ids = ids[: ids.index(EOS_ID)]
    text = tokenizer.decode([i for i in ids if i != PAD_ID])
    return text + (" <eos>" if ended else " ...")


def _describe_fn(
    eval_chunk_fn: _EvalChunkFn, data: TextCompletionData, eval_chunk: int, prefix_len: int
) -> Callable[[Params, Params, str, int], str]:
    def describe(params: Params, reference: Params, split: str, num_examples: int) -> str:
        """Prefixes, greedy continuations and reference continuations, as plain text."""
        del reference  # the continuations are those of ``params``.
        tokens = data.splits[split][:num_examples]
        if len(tokens) == 0:
            return ""
        # The evaluation's compiled chunk serves here too, on rows padded to its size.
        continuations, lengths = [], []
        for piece, valid in _rows_in_chunks(tokens, eval_chunk):
            stats, generated = jax.device_get(eval_chunk_fn(params, jnp.asarray(piece)))
            continuations.extend(generated[:valid])
            lengths.extend(stats["gen_len"][:valid])
        lines = []
        for row, cont, length in zip(tokens, continuations, lengths, strict=True):
            lines.append(f"prefix:    {data.tokenizer.decode([int(i) for i in row[:prefix_len]])}")
            lines.append(f"greedy:    {_detokenize(data.tokenizer, cont)}  [{int(length)} tokens]")
            lines.append(f"reference: {_detokenize(data.tokenizer, row[prefix_len:])}")
            lines.append("")
        return "\n".join(lines).rstrip()

    return describe


def _table_metrics(task_loss: str) -> tuple[Metric, ...]:
    """The table's columns, the primary metric of ``task_loss`` among them.

    Named metrics rather than ``task_loss``, so that a column means the same whatever task loss a
    row trains with.
    """
    columns = (
        Metric("degeneration", True, "degen."),
        Metric("lm_nll", True, "NLL (sum)"),
        Metric("nll_per_token", True, "NLL/token"),
        Metric("seq_rep_4", True, "seq-rep-4"),
        Metric("non_term", True, "non-term"),
        Metric("avg_len", None, "len"),
        Metric("ppl", True, "ppl"),
    )
    if PRIMARY_METRICS[task_loss] not in {column.name for column in columns}:
        columns = (Metric(PRIMARY_METRICS[task_loss], True, task_loss), *columns)
    return columns


def make_task(config: Any) -> Task:
    """Builds the text completion task.

    Args:
      config: the task config (``config.task_config`` of `configs/text_completion.py`); the
        fields are documented there.

    Returns:
      The `Task`. Its batches are ``{"tokens": int32 (batch_size, max_tokens + 1)}``.

    Raises:
      ValueError: for inconsistent lengths or an unknown ``task_loss``.
    """
    _check_task_config(config)
    data = build_data(config)
    setup = _Setup.from_config(config, data.vocab_size)
    eval_chunk_fn = _eval_chunk_fn(setup)
    # One chunk size for every split, so that one compilation serves them all: the validation
    # rows (evaluated most often) in equal chunks of at most eval_batch_size.
    eval_chunk = _chunk_size(len(data.splits["valid"]), config.eval_batch_size)
    # Smaller groups fit their widths more tightly, at the price of more calls.
    group_rows = max(1, config.eval_batch_size // 4)
    return Task(
        name="text_completion",
        init_params=_init_params_fn(setup.model),
        train_batch=_train_batch_fn(data, config.batch_size),
        mle_loss=_mle_loss_fn(setup.model),
        task_loss=_task_loss_fn(setup),
        sample=_sample_fn(setup, config.sample_temperature, config.dedupe_samples),
        evaluate=_evaluate_fn(
            eval_chunk_fn, _lm_nll_fn(setup), setup, data, eval_chunk, group_rows
        ),
        metrics=_table_metrics(config.task_loss),
        primary_metric=PRIMARY_METRICS[config.task_loss],
        describe=_describe_fn(eval_chunk_fn, data, eval_chunk, setup.prefix_len),
        evaluate_mle=_evaluate_mle_fn(setup.model, data),
    )
