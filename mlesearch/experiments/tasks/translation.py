"""Translating dates from English to German, as the Unicode CLDR writes them, scored by BLEU.

A small machine-translation task, the setting of the BLEU experiments of Welleck and Cho [1],
scaled down to run on a laptop CPU. Its data comes from a real library rather than a toy rule:
each example is one calendar date written by ``babel.dates.format_date`` with the CLDR locale data
[3] of the source locale (English by default) and of the target locale (German by default), in
one of the CLDR's standard lengths, for example::

    full    Friday, March 5, 2021  ->  Freitag, 5. März 2021
    long    March 5, 2021          ->  5. März 2021
    medium  Mar 5, 2021            ->  05.03.2021
    short   3/5/21                 ->  05.03.21

The model must learn the vocabulary (weekday and month names), the word order (month-day against
day-month), the punctuation and the number formats (zero padding, two-digit years) of each length.

Data. Dates are drawn without replacement from ``[first_year, last_year]`` with a NumPy
``RandomState(data_seed)``; the test split takes the first dates of that permutation, the
validation split the next ones and the training split the ones after those, so the splits hold
disjoint dates and the test set does not change with ``num_train``. Each date gets one format,
drawn uniformly from ``formats`` with the same generator (a format is one of the CLDR lengths
``"full"``, ``"long"``, ``"medium"``, ``"short"`` or any CLDR date pattern, such as
``"EEEE, d MMMM y"``).

Tokens. Text is split into words, whole numbers and single punctuation marks (`tokenize`):
"Freitag, 5. März 2021" is ``["Freitag", ",", "5", ".", "März", "2021"]``. Numbers stay whole, so
that BLEU counts a wrong year or day as one wrong word, as it would in a sentence; "05" and "5"
are different tokens. `detokenize` puts the spaces back for the patterns of these locales. The
vocabulary is every token of the three splits (so that no test token is unknown; its embedding is
trained only if the token also occurs in training), after the special tokens ``<pad>`` (id 0),
``<eos>`` (id 1) and ``<sep>`` (id 2).

Model. A decoder-only `mlesearch.models.TransformerLM` used as a prefix language model: the
prompt is the source, left-padded with ``<pad>`` to ``source_len`` tokens, followed by ``<sep>``,
so that every prompt has the same length and ``<sep>`` always sits at position ``source_len``;
the model then writes the target and ``<eos>``. The MLE loss is the cross-entropy of the target
tokens and the ``<eos>`` only (prompt and padding masked).

Task loss. One minus the mean sentence BLEU [2], divided by 100, of the greedy translations of a
batch against their references, with BLEU computed on token ids by `mlesearch.metrics.bleu`, up to
4-grams, with sacrebleu's ``sentence_bleu`` defaults: exponential smoothing ("exp", NIST's
mteval-v13a, method 3 of Chen and Cherry [4]) and effective order. The targets have five or six
tokens, so unsmoothed BLEU would score 0 for almost every translation with one wrong token in the
middle; the exponential smoothing halves the precision for each further order with no match
instead, so the task loss is graded in the number and position of the errors.

Evaluation. Greedy translations of a whole split: corpus BLEU (``"bleu"``, the primary metric,
as sacrebleu's ``corpus_bleu`` with ``tokenize="none"`` reports it on the space-joined tokens),
mean sentence BLEU, exact matches, the teacher-forced NLL per target token, and the task loss.

References:
  [1] Welleck and Cho, MLE-guided parameter search for task loss minimization in neural sequence
      modeling, AAAI 2021, https://arxiv.org/abs/2006.03158.
  [2] Papineni, Roukos, Ward and Zhu, BLEU: a method for automatic evaluation of machine
      translation, ACL 2002, https://aclanthology.org/P02-1040.
  [3] The Unicode Common Locale Data Repository (CLDR), https://cldr.unicode.org, through babel,
      https://babel.pocoo.org.
  [4] Chen and Cherry, A systematic comparison of smoothing techniques for sentence-level BLEU,
      WMT 2014, https://aclanthology.org/W14-3346.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from babel import dates as babel_dates

from mlesearch.baselines import unique_sample_mask
from mlesearch.experiments.tasks.base import Batch, Metric, Params, Samples, Task
from mlesearch.seq import metrics
from mlesearch.seq.decoding import DecodeOutput, greedy_decode, sample_decode, transformer_decoder
from mlesearch.seq.models import TransformerConfig, TransformerLM, lm_loss, token_log_probs

PAD, EOS, SEP = "<pad>", "<eos>", "<sep>"
SPECIAL_TOKENS = (PAD, EOS, SEP)
PAD_ID, EOS_ID, SEP_ID = 0, 1, 2
SPLITS = ("train", "valid", "test")
CLDR_LENGTHS = ("full", "long", "medium", "short")

# Words (letters), whole numbers, and every other visible character on its own.
_TOKEN_PATTERN = re.compile(r"[^\W\d_]+|\d+|[^\w\s]|_")

# The task's fields and their defaults; `configs/translation.py` sets every one of them.
DEFAULTS: dict[str, Any] = dict(
    source_locale="en",
    target_locale="de",
    formats=CLDR_LENGTHS,
    first_year=1950,
    last_year=2049,
    num_train=4000,
    num_valid=250,
    num_test=500,
    data_seed=0,
    batch_size=32,
    num_layers=2,
    num_heads=4,
    embed_dim=64,
    mlp_dim=128,
    max_order=4,
    smooth="exp",
    smooth_value=None,
    sample_temperature=1.0,
    eval_batch_size=250,
)


# ---------------------------------------------------------------------------------------------
# Data.


def format_pair(
    date: datetime.date,
    date_format: str,
    source_locale: str = "en",
    target_locale: str = "de",
) -> tuple[str, str]:
    """Writes one date in the source and the target locale with the CLDR's data, through babel.

    Args:
      date: the calendar date.
      date_format: a CLDR length (``"full"``, ``"long"``, ``"medium"``, ``"short"``) or a CLDR date
        pattern such as ``"EEEE, d MMMM y"``.
      source_locale: the locale of the source text, e.g. ``"en"``.
      target_locale: the locale of the target text, e.g. ``"de"``.

    Returns:
      ``(source, target)``, e.g. ``("Friday, March 5, 2021", "Freitag, 5. März 2021")``.

    References:
      The Unicode Common Locale Data Repository (CLDR), https://cldr.unicode.org.
    """
    source = babel_dates.format_date(date, format=date_format, locale=source_locale)
    target = babel_dates.format_date(date, format=date_format, locale=target_locale)
    return source, target


def tokenize(text: str) -> list[str]:
    """Splits text into words, whole numbers and single punctuation marks; spaces are dropped.

    Args:
      text: e.g. ``"Freitag, 5. März 2021"``.

    Returns:
      The tokens, e.g. ``["Freitag", ",", "5", ".", "März", "2021"]``.
    """
    return _TOKEN_PATTERN.findall(text)


def detokenize(tokens: Iterable[str]) -> str:
    """Joins tokens into text, putting back the spaces of CLDR date patterns.

    Punctuation attaches to the token before it; a slash also to the token after it, and so does a
    dot between two numbers (``05.03.2021``). This inverts `tokenize` on the dates of the default
    locales and formats (the tests check every example); for other locales it is a readable
    approximation.

    Args:
      tokens: e.g. ``["05", ".", "03", ".", "2021"]``.

    Returns:
      The text, e.g. ``"05.03.2021"``.
    """
    text = " ".join(tokens)
    text = re.sub(r" (?=[.,/])", "", text)
    text = re.sub(r"(?<=/) ", "", text)
    return re.sub(r"(?<=\d\.) (?=\d)", "", text)


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """A fixed list of tokens and their ids; the special tokens come first.

    Attributes:
      tokens: the token of each id: ``<pad>`` (0), ``<eos>`` (1), ``<sep>`` (2), then the
        others.
    """

    tokens: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.tokens[: len(SPECIAL_TOKENS)] != SPECIAL_TOKENS:
            raise ValueError(f"The vocabulary must start with {SPECIAL_TOKENS}.")
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("The vocabulary holds a token twice.")
        object.__setattr__(self, "_ids", {token: i for i, token in enumerate(self.tokens)})

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> Vocabulary:
        """Builds the vocabulary of the tokens of ``texts``, sorted after the special tokens.

        Args:
          texts: strings to `tokenize`.

        Returns:
          The `Vocabulary`.
        """
        found = {token for text in texts for token in tokenize(text)}
        return cls(SPECIAL_TOKENS + tuple(sorted(found - set(SPECIAL_TOKENS))))

    @property
    def size(self) -> int:
        """The number of ids, special tokens included."""
        return len(self.tokens)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Returns the ids of ``tokens``; raises KeyError for a token outside the vocabulary."""
        return [self._ids[token] for token in tokens]  # type: ignore[attr-defined]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Returns the tokens of ``ids``, cut before the first ``<eos>``, with ``<pad>`` dropped.

        The ids are read as `mlesearch.metrics` reads a row of tokens, so that the text shown is
        the text scored.

        Args:
          ids: token ids, e.g. a row of a decoded array.

        Returns:
          The tokens.
        """
        tokens = []
        for token_id in ids:
            token_id = int(token_id)
            if token_id == EOS_ID:
                break
            if token_id != PAD_ID:
                tokens.append(self.tokens[token_id])
        return tokens


@dataclasses.dataclass(frozen=True)
class Example:
    """One dated sentence pair.

    Attributes:
      date: the calendar date.
      date_format: the CLDR length or pattern it is written in.
      source: the date in the source locale.
      target: the date in the target locale.
    """

    date: datetime.date
    date_format: str
    source: str
    target: str


def make_splits(
    *,
    first_year: int,
    last_year: int,
    formats: Sequence[str],
    num_train: int,
    num_valid: int,
    num_test: int,
    data_seed: int,
    source_locale: str = "en",
    target_locale: str = "de",
) -> dict[str, tuple[Example, ...]]:
    """Draws the examples of the three splits: disjoint dates, each in one random format.

    The dates of ``[first_year, last_year]`` are permuted by ``RandomState(data_seed)``; the test
    split takes the first ``num_test``, the validation split the next ``num_valid`` and the
    training split the next ``num_train``. Each date's format is drawn uniformly from ``formats``
    by the same generator, one per date of the range, so a date keeps its format whatever the
    split sizes.

    Args:
      first_year: the first year of the range.
      last_year: the last year of the range (included).
      formats: CLDR lengths or patterns to choose from.
      num_train: the number of training examples.
      num_valid: the number of validation examples.
      num_test: the number of test examples.
      data_seed: the seed of the NumPy generator.
      source_locale: the locale of the sources.
      target_locale: the locale of the targets.

    Returns:
      The examples of ``"train"``, ``"valid"`` and ``"test"``.

    Raises:
      ValueError: if the range holds fewer dates than the splits need, or ``formats`` is empty.

    References:
      The Unicode Common Locale Data Repository (CLDR), https://cldr.unicode.org.
    """
    if not formats:
        raise ValueError("formats must name at least one CLDR length or pattern.")
    start = datetime.date(first_year, 1, 1)
    num_days = (datetime.date(last_year, 12, 31) - start).days + 1
    sizes = {"test": num_test, "valid": num_valid, "train": num_train}
    if min(sizes.values()) < 1 or sum(sizes.values()) > num_days:
        raise ValueError(
            f"The splits need {sizes} examples, each at least 1 and {sum(sizes.values())} in all, "
            f"but {first_year}-{last_year} holds {num_days} dates; widen the range of years."
        )
    rng = np.random.RandomState(data_seed)
    order = rng.permutation(num_days)
    format_of_day = rng.randint(len(formats), size=num_days)
    splits, offset = {}, 0
    for split in ("test", "valid", "train"):
        examples = []
        for day in order[offset : offset + sizes[split]]:
            date = start + datetime.timedelta(days=int(day))
            date_format = formats[format_of_day[day]]
            source, target = format_pair(date, date_format, source_locale, target_locale)
            examples.append(Example(date, date_format, source, target))
        splits[split] = tuple(examples)
        offset += sizes[split]
    return {split: splits[split] for split in SPLITS}


def encode_examples(
    examples: Sequence[Example], vocab: Vocabulary, source_len: int, target_len: int
) -> dict[str, np.ndarray]:
    """Turns examples into the fixed-shape arrays of a batch.

    Args:
      examples: ``m`` examples.
      vocab: the vocabulary.
      source_len: the number of source tokens of a prompt, before ``<sep>``.
      target_len: the number of target positions, ``<eos>`` included.

    Returns:
      ``{"prompt": (m, source_len + 1), "target": (m, target_len)}``, int32: the prompt is the
      source tokens left-padded with ``<pad>``, then ``<sep>``; the target is the target tokens,
      ``<eos>``, then ``<pad>``.

    Raises:
      ValueError: if a source or target is too long.
    """
    prompts = np.full((len(examples), source_len + 1), PAD_ID, np.int32)
    targets = np.full((len(examples), target_len), PAD_ID, np.int32)
    for row, example in enumerate(examples):
        source = vocab.encode(tokenize(example.source))
        target = vocab.encode(tokenize(example.target)) + [EOS_ID]
        if len(source) > source_len or len(target) > target_len:
            raise ValueError(
                f"{example.source!r} -> {example.target!r} does not fit source_len={source_len}, "
                f"target_len={target_len}."
            )
        prompts[row, source_len - len(source) : source_len] = source
        prompts[row, source_len] = SEP_ID
        targets[row, : len(target)] = target
    return {"prompt": prompts, "target": targets}


@dataclasses.dataclass(frozen=True)
class TranslationData:
    """The examples, the vocabulary and the encoded arrays of every split.

    Attributes:
      examples: the `Example` tuples of ``"train"``, ``"valid"`` and ``"test"``.
      vocab: the `Vocabulary` of all three splits.
      source_len: the longest source, in tokens.
      target_len: the longest target, in tokens, plus one for ``<eos>``.
      arrays: per split, ``{"prompt": (m, source_len + 1), "target": (m, target_len)}`` int32
        NumPy arrays (see `encode_examples`).
    """

    examples: Mapping[str, tuple[Example, ...]]
    vocab: Vocabulary
    source_len: int
    target_len: int
    arrays: Mapping[str, Mapping[str, np.ndarray]]


def build_data(config: Mapping[str, Any]) -> TranslationData:
    """Builds the splits, the vocabulary and the arrays from the task's config.

    Args:
      config: the task config (``config.task_config``); see `DEFAULTS` for its data fields.

    Returns:
      The `TranslationData`.
    """
    field = _reader(config)
    examples = make_splits(
        first_year=field("first_year"),
        last_year=field("last_year"),
        formats=tuple(field("formats")),
        num_train=field("num_train"),
        num_valid=field("num_valid"),
        num_test=field("num_test"),
        data_seed=field("data_seed"),
        source_locale=field("source_locale"),
        target_locale=field("target_locale"),
    )
    every = [example for split in SPLITS for example in examples[split]]
    vocab = Vocabulary.from_texts(text for ex in every for text in (ex.source, ex.target))
    source_len = max(len(tokenize(example.source)) for example in every)
    target_len = max(len(tokenize(example.target)) for example in every) + 1
    arrays = {
        split: encode_examples(examples[split], vocab, source_len, target_len) for split in SPLITS
    }
    return TranslationData(examples, vocab, source_len, target_len, arrays)


def _reader(config: Mapping[str, Any] | None) -> Any:
    """Returns ``field(name)``: the config's value of ``name``, or its entry in `DEFAULTS`.

    Raises:
      ValueError: if the config has a field that the task does not know (a misspelling).
    """
    config = {} if config is None else config
    unknown = set(config.keys()) - set(DEFAULTS)
    if unknown:
        raise ValueError(
            f"Unknown translation task fields {sorted(unknown)}; the task reads {sorted(DEFAULTS)}."
        )

    def field(name: str) -> Any:
        value = config.get(name, DEFAULTS[name])
        return DEFAULTS[name] if value is None and DEFAULTS[name] is not None else value

    return field


# ---------------------------------------------------------------------------------------------
# The task.


class DateTranslation:
    """The model and the functions of the date translation task, over one `TranslationData`.

    `make_task` wraps an instance in a `mlesearch.experiments.tasks.base.Task`. Batches are
    ``{"prompt": (B, source_len + 1), "target": (B, target_len)}`` int32 (see `encode_examples`).

    Args:
      config: the task config (``config.task_config``); see `DEFAULTS` for its fields.

    Attributes:
      data: the `TranslationData`.
      vocab: its vocabulary.
      model_config: the `TransformerConfig`; ``max_len = source_len + 1 + target_len``.
      model: the `TransformerLM`.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        field = _reader(config)
        self.data = build_data(config)
        self.vocab = self.data.vocab
        self.batch_size = int(field("batch_size"))
        self.eval_batch_size = int(field("eval_batch_size"))
        self.max_order = int(field("max_order"))
        self.smooth = str(field("smooth"))
        self.smooth_value = field("smooth_value")
        self.sample_temperature = float(field("sample_temperature"))
        self.prompt_len = self.data.source_len + 1
        self.target_len = self.data.target_len
        self.model_config = TransformerConfig(
            vocab_size=self.vocab.size,
            num_layers=int(field("num_layers")),
            num_heads=int(field("num_heads")),
            embed_dim=int(field("embed_dim")),
            mlp_dim=int(field("mlp_dim")),
            max_len=self.prompt_len + self.target_len,
        )
        self.model = TransformerLM(self.model_config)
        self.decoder = transformer_decoder(self.model_config)
        self._splits = {
            split: {name: jnp.asarray(array) for name, array in arrays.items()}
            for split, arrays in self.data.arrays.items()
        }
        self._eval_chunk = jax.jit(self._score_chunk)
        # Check the smoothing options now (tracing only) rather than inside the first jitted call.
        ones = jax.ShapeDtypeStruct((1, 1), jnp.int32)
        jax.eval_shape(self.sentence_bleu, ones, ones)

    # -- model ----------------------------------------------------------------------------------

    def init_params(self, key: jax.Array) -> Params:
        """Returns fresh model parameters.

        Args:
          key: a PRNG key.

        Returns:
          The flax parameters of the `TransformerLM`.
        """
        dummy = jnp.zeros((1, self.model_config.max_len), jnp.int32)
        return self.model.init(key, dummy)

    def train_batch(self, key: jax.Array) -> Batch:
        """Returns ``batch_size`` training examples drawn uniformly with replacement (jit-able).

        Args:
          key: a PRNG key.

        Returns:
          ``{"prompt": (batch_size, source_len + 1), "target": (batch_size, target_len)}``.
        """
        train = self._splits["train"]
        rows = jax.random.randint(key, (self.batch_size,), 0, train["prompt"].shape[0])
        return {name: array[rows] for name, array in train.items()}

    def _teacher_forced(
        self, params: Params, prompt: jax.Array, continuation: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """Log-probabilities of ``continuation`` after ``prompt``, shape ``(B, target_len)``."""
        sequence = jnp.concatenate([prompt, continuation.astype(jnp.int32)], axis=1)
        logits = self.model.apply(params, sequence[:, :-1])
        log_probs = token_log_probs(logits, sequence[:, 1:])
        return log_probs[:, self.prompt_len - 1 :], logits[:, self.prompt_len - 1 :]

    def mle_loss(self, params: Params, batch: Batch) -> jax.Array:
        """The mean cross-entropy of the target tokens and ``<eos>``, teacher-forced.

        Args:
          params: model parameters.
          batch: ``{"prompt": (B, source_len + 1), "target": (B, target_len)}``.

        Returns:
          A float32 scalar, nats per target token.
        """
        _, logits = self._teacher_forced(params, batch["prompt"], batch["target"])
        return lm_loss(logits, batch["target"], batch["target"] != PAD_ID)

    def sequence_log_probs(
        self, params: Params, prompt: jax.Array, tokens: jax.Array, lengths: jax.Array
    ) -> jax.Array:
        """The summed log-probability of decoded outputs, from one teacher-forced forward pass.

        Differentiable in ``params``.

        Args:
          params: model parameters.
          prompt: prompts, shape ``(B, source_len + 1)``.
          tokens: outputs, shape ``(B, target_len)``, as `mlesearch.decoding` writes them.
          lengths: the number of generated tokens of each row, ``<eos>`` included, shape ``(B,)``.

        Returns:
          Float32 log-probabilities, shape ``(B,)``.
        """
        log_probs, _ = self._teacher_forced(params, prompt, tokens)
        generated = jnp.arange(self.target_len) < lengths[:, None]
        return jnp.sum(jnp.where(generated, log_probs, 0.0), axis=1)

    # -- decoding and scoring -------------------------------------------------------------------

    def translate(self, params: Params, prompt: jax.Array) -> DecodeOutput:
        """Greedy translations of prompts.

        Args:
          params: model parameters.
          prompt: prompts, shape ``(B, source_len + 1)``.

        Returns:
          A `mlesearch.decoding.DecodeOutput` with tokens of shape ``(B, target_len)``.
        """
        return greedy_decode(
            self.decoder,
            params,
            prompt,
            max_new_tokens=self.target_len,
            eos_id=EOS_ID,
            pad_id=PAD_ID,
        )

    def sentence_bleu(self, hyp: jax.Array, ref: jax.Array) -> jax.Array:
        """Sentence BLEU in ``[0, 100]`` of each hypothesis row against its reference row.

        Rows are cut at the first ``<eos>`` with ``<pad>`` dropped; the score equals sacrebleu's
        ``sentence_bleu`` of the space-joined tokens with ``tokenize="none"`` and the configured
        smoothing (default: ``"exp"``, effective order).

        Args:
          hyp: hypothesis ids, shape ``(B, length)``.
          ref: reference ids, shape ``(B, length')``.

        Returns:
          Float32 scores, shape ``(B,)``.

        References:
          Papineni, Roukos, Ward and Zhu, BLEU: a method for automatic evaluation of machine
          translation, ACL 2002, https://aclanthology.org/P02-1040.
        """
        return metrics.bleu(
            hyp,
            ref,
            self.max_order,
            eos_id=EOS_ID,
            pad_id=PAD_ID,
            smooth=self.smooth,
            smooth_value=self.smooth_value,
        )

    def task_loss(self, params: Params, batch: Batch, reference: Params) -> jax.Array:
        """One minus the mean sentence BLEU (scaled to ``[0, 1]``) of greedy translations.

        Jit-able and vmap-able over ``params``.

        Args:
          params: model parameters.
          batch: ``{"prompt": (B, source_len + 1), "target": (B, target_len)}``.
          reference: unused (the MLE checkpoint, for tasks that score with it).

        Returns:
          A float32 scalar in ``[0, 1]``.
        """
        del reference
        output = self.translate(params, batch["prompt"])
        return 1.0 - jnp.mean(self.sentence_bleu(output.tokens, batch["target"])) / 100.0

    def draw_samples(
        self, params: Params, prompt: jax.Array, key: jax.Array, num_samples: int
    ) -> DecodeOutput:
        """Samples ``num_samples`` translations of each prompt at ``sample_temperature``.

        Args:
          params: model parameters (gradients are stopped).
          prompt: prompts, shape ``(B, source_len + 1)``.
          key: a PRNG key.
          num_samples: ``k``, a Python int.

        Returns:
          A `mlesearch.decoding.DecodeOutput` over ``B * k`` rows, the k samples of input b in
          rows ``b * k, ..., b * k + k - 1``.
        """
        return sample_decode(
            self.decoder,
            jax.lax.stop_gradient(params),
            jnp.repeat(prompt, num_samples, axis=0),
            key,
            max_new_tokens=self.target_len,
            temperature=self.sample_temperature,
            eos_id=EOS_ID,
            pad_id=PAD_ID,
        )

    def sample(
        self, params: Params, batch: Batch, key: jax.Array, num_samples: int, reference: Params
    ) -> Samples:
        """Sampled translations with their log-probabilities, costs and a duplicate mask.

        Args:
          params: model parameters.
          batch: ``{"prompt": (B, source_len + 1), "target": (B, target_len)}``.
          key: a PRNG key.
          num_samples: ``k``, the samples per input (a Python int).
          reference: unused.

        Returns:
          `Samples` of shape ``(B, k)``: the summed log-probabilities from a teacher-forced
          forward pass (differentiable), the costs ``1 - BLEU / 100``, and a mask that drops
          repeated samples of an input.
        """
        del reference
        batch_size = batch["prompt"].shape[0]
        shape = (batch_size, num_samples)
        output = self.draw_samples(params, batch["prompt"], key, num_samples)
        prompt = jnp.repeat(batch["prompt"], num_samples, axis=0)
        log_probs = self.sequence_log_probs(params, prompt, output.tokens, output.lengths)
        target = jnp.repeat(batch["target"], num_samples, axis=0)
        costs = 1.0 - self.sentence_bleu(output.tokens, target) / 100.0
        mask = unique_sample_mask(output.tokens.reshape(*shape, self.target_len))
        return Samples(
            log_probs=log_probs.reshape(shape),
            costs=jax.lax.stop_gradient(costs).reshape(shape).astype(jnp.float32),
            mask=mask,
        )

    # -- evaluation -----------------------------------------------------------------------------

    def score_translations(
        self, hyp: jax.Array, ref: jax.Array, weight: jax.Array | None = None
    ) -> dict[str, Any]:
        """Sums, over rows, of the scores of translations: the input of `summarize_scores`.

        Jit-able. Sums from several batches add up (``jax.tree.map(jnp.add, ...)``).

        Args:
          hyp: translations, shape ``(B, target_len)``, as `mlesearch.decoding` writes them
            (``<pad>`` after the first ``<eos>``).
          ref: references, shape ``(B, target_len)``, as in a batch's ``"target"``.
          weight: the weight of each row, shape ``(B,)``: 1, or 0 for rows that only pad a
            batch; None weighs every row 1.

        Returns:
          ``"statistics"``: the summed `mlesearch.metrics.BLEUStatistics` (float32);
          ``"sentence_bleu"``: the summed sentence BLEU; ``"exact_match"``: the number of rows
          equal to their reference; ``"rows"``: the summed weights.
        """
        if weight is None:
            weight = jnp.ones(hyp.shape[:1], jnp.float32)
        statistics = metrics.bleu_statistics(hyp, ref, self.max_order, eos_id=EOS_ID, pad_id=PAD_ID)
        pooled = jax.tree.map(
            lambda field: jnp.sum(field * weight.reshape(-1, *([1] * (field.ndim - 1))), 0),
            statistics,
        )
        return {
            "statistics": pooled,
            "sentence_bleu": jnp.sum(self.sentence_bleu(hyp, ref) * weight),
            "exact_match": jnp.sum(jnp.all(hyp == ref, axis=1) * weight),
            "rows": jnp.sum(weight),
        }

    @staticmethod
    def summarize_scores(sums: Mapping[str, Any]) -> dict[str, float]:
        """Turns the sums of `score_translations` into the BLEU metrics of `evaluate`.

        Args:
          sums: the output of `score_translations`, summed over batches.

        Returns:
          ``"bleu"``: corpus BLEU in ``[0, 100]`` from the pooled statistics, with sacrebleu's
          ``corpus_bleu`` defaults (``"exp"`` smoothing, no effective order);
          ``"sentence_bleu"``: the mean sentence BLEU in ``[0, 100]``; ``"exact_match"``: the share
          of exact translations; ``"task_loss"``: ``1 - sentence_bleu / 100``.

        References:
          Papineni, Roukos, Ward and Zhu, BLEU: a method for automatic evaluation of machine
          translation, ACL 2002, https://aclanthology.org/P02-1040.
        """
        statistics = metrics.BLEUStatistics(
            *(jnp.round(field).astype(jnp.int32) for field in sums["statistics"])
        )
        corpus = metrics.bleu_from_statistics(statistics, smooth="exp", effective_order=False)
        rows = float(sums["rows"])
        sentence = float(sums["sentence_bleu"]) / rows
        return {
            "bleu": float(corpus),
            "sentence_bleu": sentence,
            "exact_match": float(sums["exact_match"]) / rows,
            "task_loss": 1.0 - sentence / 100.0,
        }

    def _score_chunk(
        self, params: Params, prompt: jax.Array, target: jax.Array, weight: jax.Array
    ) -> tuple[dict[str, Any], jax.Array]:
        """Summed scores and NLL of a chunk, and its greedy outputs; weight 0 marks padding."""
        output = self.translate(params, prompt)
        sums = self.score_translations(output.tokens, target, weight)
        log_probs, _ = self._teacher_forced(params, prompt, target)
        tokens = (target != PAD_ID).astype(jnp.float32) * weight[:, None]
        sums["nll"] = -jnp.sum(log_probs * tokens)
        sums["tokens"] = jnp.sum(tokens)
        return sums, output.tokens

    def _run_split(
        self, params: Params, split: str, num_rows: int | None = None
    ) -> tuple[dict[str, Any], np.ndarray]:
        """Scores the first ``num_rows`` (default: all) examples of a split in jitted chunks.

        Returns the summed scores and the greedy outputs.
        """
        if split not in self._splits:
            raise ValueError(f"Unknown split {split!r}; choose one of {SPLITS}.")
        arrays = self._splits[split]
        size = arrays["prompt"].shape[0]
        size = size if num_rows is None else max(min(size, num_rows), 1)
        chunk = self.eval_batch_size  # one shape for every split: one compilation
        totals: dict[str, Any] | None = None
        outputs = []
        for start in range(0, size, chunk):
            rows = np.arange(start, start + chunk)
            weight = (rows < size).astype(np.float32)
            rows = np.minimum(rows, size - 1)  # pad the last chunk with copies of the last row
            sums, tokens = self._eval_chunk(
                params, arrays["prompt"][rows], arrays["target"][rows], jnp.asarray(weight)
            )
            outputs.append(np.asarray(tokens)[weight > 0])
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        assert totals is not None
        return totals, np.concatenate(outputs)

    def translate_split(self, params: Params, split: str) -> np.ndarray:
        """Greedy translations of a whole split, in jitted chunks.

        Args:
          params: model parameters.
          split: ``"valid"``, ``"test"`` or ``"train"``.

        Returns:
          Token ids, shape ``(m, target_len)``, in the order of ``data.examples[split]``.
        """
        return self._run_split(params, split)[1]

    def evaluate(self, params: Params, reference: Params, split: str) -> dict[str, float]:
        """Greedy translations of a whole split, scored (jitted, in chunks of ``eval_batch_size``).

        Args:
          params: model parameters.
          reference: unused.
          split: ``"valid"``, ``"test"`` or ``"train"``.

        Returns:
          ``"bleu"``: corpus BLEU in ``[0, 100]`` (statistics pooled over the split, as
          sacrebleu's ``corpus_bleu`` with ``tokenize="none"`` reports it); ``"sentence_bleu"``:
          the mean sentence BLEU in ``[0, 100]``; ``"exact_match"``: the share of translations
          equal to their reference; ``"nll"``: the teacher-forced cross-entropy per target token
          (``<eos>`` included); ``"task_loss"``: ``1 - sentence_bleu / 100``, the mean of
          `task_loss` over the split.
        """
        del reference
        totals, _ = self._run_split(params, split)
        scores = self.summarize_scores(totals)
        scores["nll"] = float(totals["nll"]) / float(totals["tokens"])
        return {
            name: scores[name]
            for name in ("bleu", "sentence_bleu", "exact_match", "nll", "task_loss")
        }

    def describe(self, params: Params, reference: Params, split: str, num_examples: int = 5) -> str:
        """A few sources, greedy translations and references of a split, as plain text.

        Args:
          params: model parameters.
          reference: unused.
          split: ``"valid"``, ``"test"`` or ``"train"``.
          num_examples: how many examples to show (the first of the split).

        Returns:
          One block of lines per example.
        """
        del reference
        examples = self.data.examples[split][:num_examples]
        _, outputs = self._run_split(params, split, len(examples))
        lines = []
        for example, output in zip(examples, outputs, strict=True):
            lines.append(f"source:    {example.source}  ({example.date_format})")
            lines.append(f"output:    {detokenize(self.vocab.decode(output))}")
            lines.append(f"reference: {example.target}")
            lines.append("")
        return "\n".join(lines).rstrip("\n")


METRICS = (
    Metric("bleu", lower_is_better=False, label="BLEU"),
    Metric("sentence_bleu", lower_is_better=False, label="sent. BLEU"),
    Metric("exact_match", lower_is_better=False, label="exact"),
    Metric("nll", lower_is_better=True, label="NLL"),
    Metric("task_loss", lower_is_better=True, label="1 - BLEU"),
)


def make_task(config: Mapping[str, Any]) -> Task:
    """Builds the date translation task from its config.

    Args:
      config: the task config (``config.task_config``); fields missing from it take their value
        from `DEFAULTS`.

    Returns:
      The `mlesearch.experiments.tasks.base.Task`, with ``primary_metric="bleu"`` (corpus BLEU).

    References:
      Welleck and Cho, MLE-guided parameter search for task loss minimization in neural sequence
      modeling, AAAI 2021, https://arxiv.org/abs/2006.03158.
    """
    task = DateTranslation(config)
    return Task(
        name="translation",
        init_params=task.init_params,
        train_batch=task.train_batch,
        mle_loss=task.mle_loss,
        task_loss=task.task_loss,
        sample=task.sample,
        evaluate=task.evaluate,
        metrics=METRICS,
        primary_metric="bleu",
        describe=task.describe,
    )
