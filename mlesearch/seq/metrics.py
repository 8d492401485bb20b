r"""Metrics on integer token arrays and on class predictions, all jit-able and vmap-able.

What lives here: the sequence metrics that the experiments of [7] report or optimise, namely
seq-rep-n [4], non-termination [5], Levenshtein edit distance [6], and sentence and corpus BLEU
[1, 2, 3] (with BLEU's sufficient statistics, so that a corpus can be scored batch by batch),
and the classification metrics accuracy, balanced accuracy and F1. Every function is pure
``jax.numpy``, with no host callback and no Python loop over data, so it runs under ``jax.jit``
and ``jax.vmap``.
Integer hyperparameters (``n``, ``max_order``, ``num_classes``) and string options are static.
What does not live here: task losses built from these metrics (``mlesearch/experiments/tasks/``)
and decoding (``mlesearch/seq/decoding.py``).

How a row of tokens is read
---------------------------
The sequence metrics take token arrays of fixed shape ``(batch, length)`` and read each row as
follows (one rule, shared by every sequence metric; ``non_termination`` only looks for EOS):

1. The row is cut at its **first** ``eos_id``. Everything after that EOS is ignored, whatever it
   is. By default the EOS token itself is **not** part of the sequence (``include_eos=False``):
   the row ``[5, 6, EOS, 7]`` is the sequence ``[5, 6]``. With ``include_eos=True`` it is
   ``[5, 6, EOS]``, which is how the released code of [7] computes its repetition statistics.
   A row without EOS is used whole. ``eos_id=None`` means there is no EOS token.
2. Every ``pad_id`` token before the cut is dropped, wherever it stands (left padding, right
   padding or in between), and the remaining tokens close up in their order: ``[PAD, 5, 6]`` and
   ``[5, PAD, 6]`` both read as ``[5, 6]``. ``pad_id=None`` means there is no padding token.
   The EOS kept by ``include_eos=True`` stays even when ``pad_id == eos_id``.

N-grams are compared exactly, token by token (a lexicographic sort of the n-gram tuples), never
through hashes, so two different n-grams can never collide.

References:
  [1] Papineni, Roukos, Ward and Zhu, BLEU: a method for automatic evaluation of machine
      translation, ACL 2002, https://aclanthology.org/P02-1040.
  [2] Post, A call for clarity in reporting BLEU scores, WMT 2018,
      https://arxiv.org/abs/1804.08771 (sacrebleu).
  [3] Chen and Cherry, A systematic comparison of smoothing techniques for sentence-level BLEU,
      WMT 2014, https://aclanthology.org/W14-3346.
  [4] Welleck, Kulikov, Roller, Dinan, Cho and Weston, Neural text generation with unlikelihood
      training, ICLR 2020, https://arxiv.org/abs/1908.04319.
  [5] Welleck, Kulikov, Kim, Pang and Cho, Consistency of a recurrent language model with respect
      to incomplete decoding, EMNLP 2020, https://arxiv.org/abs/2002.02492.
  [6] Levenshtein, Binary codes capable of correcting deletions, insertions, and reversals,
      Soviet Physics Doklady 10(8), 1966.
  [7] Welleck and Cho, MLE-guided parameter search for task loss minimization in neural sequence
      modeling, AAAI 2021, https://arxiv.org/abs/2006.03158.
"""

import functools
import itertools
import operator
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

_SMOOTH_DEFAULTS: dict[str, float | None] = {"none": None, "floor": 0.1, "add-k": 1.0, "exp": None}
_AVERAGES = ("macro", "micro")


def _check_positive_int(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a Python int >= 1 (it is static), got {value!r}.")


def _as_token_array(tokens: ArrayLike, name: str) -> jax.Array:
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] < 1:
        raise ValueError(
            f"{name} must have shape (batch, length) with length >= 1, got shape {tokens.shape}. "
            f"Add a batch axis with {name}[None] for a single sequence, or jax.vmap over extra "
            "leading axes."
        )
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(
            f"{name} must hold integer token ids, got dtype {tokens.dtype}. "
            f"Cast with {name}.astype(jnp.int32)."
        )
    return tokens


def _as_token_pair(hyp: ArrayLike, ref: ArrayLike) -> tuple[jax.Array, jax.Array]:
    hyp = _as_token_array(hyp, "hyp")
    ref = _as_token_array(ref, "ref")
    if hyp.shape[0] != ref.shape[0]:
        raise ValueError(
            f"hyp and ref must have the same batch size, got shapes {hyp.shape} and {ref.shape}. "
            "Pass one reference row per hypothesis row (their lengths may differ)."
        )
    return hyp, ref


def _trim(
    tokens: jax.Array, eos_id: int | None, pad_id: int | None, include_eos: bool
) -> tuple[jax.Array, jax.Array]:
    """Cuts each row at its first EOS, drops padding and moves the kept tokens to the front.

    Args:
      tokens: token ids, shape ``(batch, length)``.
      eos_id: the EOS id, or None.
      pad_id: the padding id, or None.
      include_eos: whether the first EOS itself is kept.

    Returns:
      ``(compact, lengths)``: ``compact`` of shape ``(batch, length)`` holds each row's kept
      tokens first, in order (the positions from ``lengths`` on hold leftovers, to be masked);
      ``lengths`` of shape ``(batch,)``, int32, counts the kept tokens.
    """
    length = tokens.shape[1]
    positions = jnp.arange(length)
    keep = jnp.ones(tokens.shape, bool)
    if eos_id is not None:
        first_eos = jnp.min(jnp.where(tokens == eos_id, positions, length), axis=1)
        keep = positions < first_eos[:, None]
    if pad_id is not None:
        keep &= tokens != pad_id
    if eos_id is not None and include_eos:
        keep |= positions == first_eos[:, None]
    # A stable sort on "dropped" moves the kept tokens to the front without reordering them.
    dropped = jnp.logical_not(keep).astype(jnp.int32)
    _, compact = lax.sort([dropped, tokens], dimension=1, is_stable=True, num_keys=1)
    return compact, keep.sum(axis=1, dtype=jnp.int32)


def _ngram_columns(tokens: jax.Array, n: int) -> list[jax.Array]:
    """Returns ``n`` arrays, shape ``(batch, length)``: token m of the n-gram at each start."""
    length = tokens.shape[1]
    padded = jnp.pad(tokens, ((0, 0), (0, n - 1)))
    return [padded[:, m : m + length] for m in range(n)]


def _run_starts(sorted_keys: list[jax.Array]) -> jax.Array:
    """Marks, along the last axis of sorted keys, the entries that differ from their predecessor."""
    differs = functools.reduce(operator.or_, [key[..., 1:] != key[..., :-1] for key in sorted_keys])
    first = jnp.ones((*differs.shape[:-1], 1), bool)
    return jnp.concatenate([first, differs], axis=-1)


def sequence_repetition(
    tokens: ArrayLike,
    n: int = 4,
    *,
    eos_id: int | None,
    pad_id: int | None = None,
    include_eos: bool = False,
) -> jax.Array:
    r"""Returns seq-rep-n, the share of repeated n-grams in each row.

    .. math::
      \text{seq-rep-}n = 1 - \frac{|\text{unique } n\text{-grams}|}{|n\text{-grams}|}

    over the ``max(len - n + 1, 0)`` n-grams of a row of ``len`` tokens, read as the module
    docstring says (cut at the first EOS, padding dropped). n-grams are compared exactly: they
    are sorted lexicographically and neighbours compared token by token, in
    ``O(n · length · log length)`` time.

    A row with fewer than ``n`` tokens has no n-gram and scores 0.0: nothing in it repeats.
    Implementations differ here. The released code of [7] computes
    ``1 - |unique| / max(|n-grams|, 1)``, which gives 1.0 for such a row when it is not guarded
    by a length check; the versions we read skip such rows (they leave them out of the average).
    To reproduce that, average over rows with ``len >= n`` only.

    Args:
      tokens: token ids, shape ``(batch, length)``.
      n: the n-gram order, a static int >= 1.
      eos_id: the EOS id, or None for no EOS. Keyword-only and required, so that forgetting it
        cannot go unnoticed.
      pad_id: the padding id, or None.
      include_eos: whether the first EOS counts as a token of the sequence. The released code
        of [7] counts it (``include_eos=True``).

    Returns:
      seq-rep-n of each row, shape ``(batch,)``, float32 in ``[0, 1)``.

    Raises:
      ValueError: if ``n`` is not an int >= 1, or ``tokens`` is not an integer array of shape
        ``(batch, length)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from mlesearch.seq import metrics
      >>> tokens = jnp.array([[5, 6, 5, 6, 5, 6, 1, 9], [5, 6, 7, 0, 0, 0, 0, 0]])
      >>> print(metrics.sequence_repetition(tokens, n=2, eos_id=1, pad_id=0))
      [0.6 0. ]

    References:
      [4] Welleck, Kulikov, Roller, Dinan, Cho and Weston, Neural text generation with
      unlikelihood training, ICLR 2020, https://arxiv.org/abs/1908.04319.

      [7] Welleck and Cho, MLE-guided parameter search for task loss minimization in neural
      sequence modeling, AAAI 2021, https://arxiv.org/abs/2006.03158.
    """
    _check_positive_int(n, "n")
    tokens = _as_token_array(tokens, "tokens")
    compact, lengths = _trim(tokens, eos_id, pad_id, include_eos)
    num_ngrams = jnp.maximum(lengths - n + 1, 0)
    # Invalid starts sort last (first key), so they never join a run of real n-grams.
    invalid = (jnp.arange(tokens.shape[1]) >= num_ngrams[:, None]).astype(jnp.int32)
    sorted_keys = lax.sort([invalid, *_ngram_columns(compact, n)], dimension=1, num_keys=n + 1)
    unique = jnp.sum(_run_starts(sorted_keys) & (sorted_keys[0] == 0), axis=1)
    repetition = 1.0 - unique / jnp.maximum(num_ngrams, 1)
    return jnp.where(num_ngrams > 0, repetition, 0.0).astype(jnp.float32)


def non_termination(tokens: ArrayLike, eos_id: int) -> jax.Array:
    """Returns 1.0 for each row that holds no EOS token, else 0.0.

    Averaged over sequences decoded with a maximum length, this is the non-termination ratio of
    [5]: the share of sequences the model never ended. Padding plays no part: a row that holds
    ``eos_id`` anywhere has terminated.

    Args:
      tokens: token ids, shape ``(batch, length)``.
      eos_id: the EOS id.

    Returns:
      1.0 where a row has no EOS, else 0.0, shape ``(batch,)``, float32.

    Raises:
      ValueError: if ``eos_id`` is None, or ``tokens`` is not an integer array of shape
        ``(batch, length)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from mlesearch.seq import metrics
      >>> print(metrics.non_termination(jnp.array([[5, 1, 0], [5, 6, 7]]), eos_id=1))
      [0. 1.]

    References:
      [5] Welleck, Kulikov, Kim, Pang and Cho, Consistency of a recurrent language model with
      respect to incomplete decoding, EMNLP 2020, https://arxiv.org/abs/2002.02492.
    """
    if eos_id is None:
        raise ValueError("non_termination needs the EOS id: pass eos_id=<int>.")
    tokens = _as_token_array(tokens, "tokens")
    return jnp.logical_not(jnp.any(tokens == eos_id, axis=1)).astype(jnp.float32)


def edit_distance(
    hyp: ArrayLike,
    ref: ArrayLike,
    *,
    eos_id: int | None,
    pad_id: int | None = None,
    include_eos: bool = False,
    normalize: bool = True,
) -> jax.Array:
    r"""Returns the Levenshtein distance between each row of ``hyp`` and of ``ref``.

    The distance is the least number of single-token insertions, deletions and substitutions
    that turn one sequence into the other [6]. Both rows are read as the module docstring says;
    by default EOS and everything after it are excluded from both.

    The dynamic programme runs row by row of its table with ``jax.lax.scan`` over the positions
    of ``hyp``, vectorised over the batch and over the positions of ``ref``. The one sequential
    dependence within a table row, :math:`D_{i,j} \leftarrow D_{i,j-1} + 1`, is resolved by a
    prefix minimum: with :math:`t_j = \min(D_{i-1,j} + 1, D_{i-1,j-1} + [h_i \ne r_j])` and
    :math:`t_0 = i`, :math:`D_{i,j} = j + \min_{k \le j} (t_k - k)`. Rows of ``hyp`` past its
    length leave the table unchanged, and the answer is read at column ``|ref|``.

    With ``normalize=True`` the distance is divided by the reference length and capped at 1:
    :math:`\min(d / |\text{ref}|, 1)`. An empty reference gives 0.0 when the hypothesis is empty
    too, else 1.0.

    Args:
      hyp: hypothesis token ids, shape ``(batch, hyp_length)``.
      ref: reference token ids, shape ``(batch, ref_length)``.
      eos_id: the EOS id, or None for no EOS. Keyword-only and required.
      pad_id: the padding id, or None.
      include_eos: whether the first EOS counts as a token of each sequence.
      normalize: whether to return ``min(d / |ref|, 1)`` instead of the raw distance ``d``.

    Returns:
      Shape ``(batch,)``: the raw distances as int32 when ``normalize=False``, else the
      normalised distances as float32 in ``[0, 1]``.

    Raises:
      ValueError: if ``hyp`` or ``ref`` is not an integer array of shape ``(batch, length)``, or
        their batch sizes differ.

    Examples:
      >>> import jax.numpy as jnp
      >>> from mlesearch.seq import metrics
      >>> hyp = jnp.array([[11, 9, 20, 20, 5, 14, 1]])  # "kitten" then EOS
      >>> ref = jnp.array([[19, 9, 20, 20, 9, 14, 7]])  # "sitting", no EOS
      >>> print(metrics.edit_distance(hyp, ref, eos_id=1, normalize=False))
      [3]

    References:
      [6] Levenshtein, Binary codes capable of correcting deletions, insertions, and reversals,
      Soviet Physics Doklady 10(8), 1966.
    """
    hyp, ref = _as_token_pair(hyp, ref)
    hyp_tokens, hyp_lengths = _trim(hyp, eos_id, pad_id, include_eos)
    ref_tokens, ref_lengths = _trim(ref, eos_id, pad_id, include_eos)
    batch = hyp.shape[0]
    columns = jnp.arange(ref.shape[1] + 1, dtype=jnp.int32)

    def table_row(
        previous: jax.Array, inputs: tuple[jax.Array, jax.Array]
    ) -> tuple[jax.Array, None]:
        row_index, hyp_token = inputs
        substitution = previous[:, :-1] + (hyp_token[:, None] != ref_tokens)
        deletion = previous[:, 1:] + 1
        first = jnp.full((batch, 1), row_index, jnp.int32)
        best = jnp.concatenate([first, jnp.minimum(substitution, deletion)], axis=1)
        row = lax.cummin(best - columns, axis=1) + columns
        return jnp.where((row_index <= hyp_lengths)[:, None], row, previous), None

    first_row = jnp.broadcast_to(columns, (batch, columns.size))
    row_indices = jnp.arange(1, hyp.shape[1] + 1, dtype=jnp.int32)
    last_row, _ = lax.scan(table_row, first_row, (row_indices, hyp_tokens.T))
    distance = jnp.take_along_axis(last_row, ref_lengths[:, None], axis=1)[:, 0]
    if not normalize:
        return distance
    # min(d / max(|ref|, 1), 1) also gives 0 for two empty rows and 1 for an empty ref alone.
    normalized = distance / jnp.maximum(ref_lengths, 1)
    return jnp.minimum(normalized, 1.0).astype(jnp.float32)


def _check_smoothing(smooth: str, smooth_value: float | None) -> float:
    if smooth not in _SMOOTH_DEFAULTS:
        raise ValueError(
            f"Unknown smooth {smooth!r}: use one of {sorted(_SMOOTH_DEFAULTS)} (sacrebleu's names)."
        )
    default = _SMOOTH_DEFAULTS[smooth]
    if default is None:
        if smooth_value is not None:
            raise ValueError(
                f"smooth={smooth!r} takes no smooth_value (got {smooth_value!r}): drop it, or use "
                "smooth='floor' or smooth='add-k'."
            )
        return 0.0
    if smooth_value is None:
        return default
    if isinstance(smooth_value, int | float) and smooth_value < 0:
        raise ValueError(f"smooth_value must be >= 0, got {smooth_value!r}.")
    return smooth_value


class BLEUStatistics(NamedTuple):
    """BLEU's sufficient statistics, as sacrebleu counts them. Sum them to pool sentences."""

    matches: jax.Array  # (..., max_order) int32: clipped n-gram matches, order 1 first.
    totals: jax.Array  # (..., max_order) int32: hypothesis n-grams, order 1 first.
    hyp_length: jax.Array  # (...) int32: hypothesis tokens.
    ref_length: jax.Array  # (...) int32: reference tokens.


def bleu_statistics(
    hyp: ArrayLike,
    ref: ArrayLike,
    max_order: int = 4,
    *,
    eos_id: int | None,
    pad_id: int | None = None,
    include_eos: bool = False,
) -> BLEUStatistics:
    """Returns the n-gram statistics from which BLEU is computed, one set per row.

    For each order k, a hypothesis k-gram matches at most as often as it occurs in the reference
    (clipping). The hypothesis and reference k-grams of a row are sorted together, exactly,
    token by token; each run of equal k-grams then holds ``c_hyp`` hypothesis and ``c_ref``
    reference copies, and contributes ``min(c_hyp, c_ref)`` matches. Rows are read as the module
    docstring says.

    Corpus BLEU pools sentences by summing these statistics, so a corpus evaluated batch by batch
    is scored by summing each batch's statistics over axis 0 (``jax.tree.map``), adding them up
    across batches, and calling `bleu_from_statistics` once.

    Args:
      hyp: hypothesis token ids, shape ``(batch, hyp_length)``.
      ref: reference token ids, one reference per row, shape ``(batch, ref_length)``.
      max_order: the largest n-gram order N, a static int >= 1.
      eos_id: the EOS id, or None for no EOS. Keyword-only and required.
      pad_id: the padding id, or None.
      include_eos: whether the first EOS counts as a token of each sequence.

    Returns:
      A `BLEUStatistics` with ``matches`` and ``totals`` of shape ``(batch, max_order)`` and
      ``hyp_length`` and ``ref_length`` of shape ``(batch,)``, all int32.

    Raises:
      ValueError: if ``max_order`` is not an int >= 1, or the token arrays have the wrong shape,
        dtype or batch size.
    """
    _check_positive_int(max_order, "max_order")
    hyp, ref = _as_token_pair(hyp, ref)
    hyp_tokens, hyp_lengths = _trim(hyp, eos_id, pad_id, include_eos)
    ref_tokens, ref_lengths = _trim(ref, eos_id, pad_id, include_eos)
    hyp_width = hyp.shape[1]
    tokens = jnp.concatenate([hyp_tokens, ref_tokens], axis=1)
    orders = jnp.arange(1, max_order + 1)
    hyp_counts = jnp.maximum(hyp_lengths[:, None] - orders + 1, 0)  # (batch, max_order)
    ref_counts = jnp.maximum(ref_lengths[:, None] - orders + 1, 0)
    # All orders are sorted in one go, along a (batch, max_order, entries) array: order k keeps
    # the first k token columns and zeroes the rest, so its keys compare its k-grams exactly.
    columns = [
        jnp.where((m < orders)[None, :, None], column[:, None, :], 0)
        for m, column in enumerate(_ngram_columns(tokens, max_order))
    ]
    # A valid hypothesis n-gram lies inside the hypothesis block, a valid reference one inside
    # the reference block. Invalid starts sort last and count for neither side.
    valid = jnp.concatenate(
        [
            jnp.arange(hyp_width) < hyp_counts[..., None],
            jnp.arange(ref.shape[1]) < ref_counts[..., None],
        ],
        axis=-1,
    )
    from_hyp = jnp.arange(tokens.shape[1]) < hyp_width
    invalid = jnp.logical_not(valid).astype(jnp.int32)
    is_hyp = (valid & from_hyp).astype(jnp.int32)
    is_ref = (valid & jnp.logical_not(from_hyp)).astype(jnp.int32)
    *sorted_keys, sorted_hyp, sorted_ref = lax.sort(
        [invalid, *columns, is_hyp, is_ref], dimension=2, num_keys=max_order + 1
    )
    starts = _run_starts(sorted_keys)
    ends = jnp.concatenate([starts[..., 1:], jnp.ones((*starts.shape[:-1], 1), bool)], axis=-1)
    in_both = jnp.minimum(_count_in_run(sorted_hyp, starts), _count_in_run(sorted_ref, starts))
    return BLEUStatistics(
        matches=jnp.sum(jnp.where(ends, in_both, 0), axis=-1, dtype=jnp.int32),
        totals=hyp_counts.astype(jnp.int32),
        hyp_length=hyp_lengths,
        ref_length=ref_lengths,
    )


def _count_in_run(flags: jax.Array, starts: jax.Array) -> jax.Array:
    """Counts, at each entry, the flags since the start of its run, along the last axis."""
    cumulative = jnp.cumsum(flags, axis=-1)
    # The count before each entry never decreases, so a running max over run starts picks the
    # count before the current run, without a gather.
    before_run = lax.cummax(jnp.where(starts, cumulative - flags, 0), axis=flags.ndim - 1)
    return cumulative - before_run


def _accumulate_orders(values: jax.Array, combine: Callable) -> jax.Array:
    """Running ``combine`` along the short, static last axis (the n-gram orders).

    An unrolled loop over at most ``max_order`` entries: XLA's cumulative ops cost far more to
    compile than these few element-wise ones.
    """
    running = itertools.accumulate([values[..., k] for k in range(values.shape[-1])], combine)
    return jnp.stack(list(running), axis=-1)


def bleu_from_statistics(
    statistics: BLEUStatistics,
    *,
    smooth: str = "exp",
    smooth_value: float | None = None,
    effective_order: bool,
) -> jax.Array:
    r"""Returns BLEU, in ``[0, 100]``, from its statistics, as sacrebleu's ``compute_bleu`` does.

    BLEU [1] is the geometric mean of the clipped n-gram precisions :math:`p_k`, k = 1..N, times
    the brevity penalty :math:`\mathrm{BP} = \min(1, e^{1 - r/c})` for hypothesis length c and
    reference length r (BP = 0 for an empty hypothesis and a non-empty reference). Scores are
    on sacrebleu's scale, ``[0, 100]``. Everything follows ``BLEU.compute_bleu`` of sacrebleu
    2.x [2]:

    - No clipped match at any order gives 0, whatever the smoothing.
    - Orders are used up to the first one with no hypothesis n-gram (after add-k). With
      ``effective_order=True`` the geometric mean runs over those orders only; with
      ``effective_order=False`` it runs over all N, and a missing order gives 0.
    - A used order with no match has precision 0, and so the score is 0, unless smoothed [3]:
      ``"floor"``: :math:`p_k = \text{smooth\_value} / \text{total}_k` (default 0.1);
      ``"add-k"``: for k >= 2, add ``smooth_value`` (default 1) to the matches and totals first;
      ``"exp"``: :math:`p_k = 1 / (2^m \, \text{total}_k)` at the m-th order with no match
      (NIST's mteval-v13a smoothing, sacrebleu's default).

    Args:
      statistics: a `BLEUStatistics` with leading shape ``(...)``: per sentence, as
        `bleu_statistics` returns them, or summed over sentences for a corpus.
      smooth: ``"none"``, ``"floor"``, ``"add-k"`` or ``"exp"``, as in sacrebleu.
      smooth_value: the value for ``"floor"`` (default 0.1) or ``"add-k"`` (default 1); must be
        None for the other methods.
      effective_order: whether to average over the orders present only (see above); sacrebleu
        uses True for sentences and False for corpora. Keyword-only and required.

    Returns:
      BLEU, shape ``(...)``, float32 in ``[0, 100]``.

    Raises:
      ValueError: for an unknown ``smooth``, or a ``smooth_value`` given to a method that takes
        none or below 0.

    References:
      [1] Papineni, Roukos, Ward and Zhu, BLEU: a method for automatic evaluation of machine
      translation, ACL 2002, https://aclanthology.org/P02-1040.

      [2] Post, A call for clarity in reporting BLEU scores, WMT 2018,
      https://arxiv.org/abs/1804.08771.

      [3] Chen and Cherry, A systematic comparison of smoothing techniques for sentence-level
      BLEU, WMT 2014, https://aclanthology.org/W14-3346.
    """
    smooth_value = _check_smoothing(smooth, smooth_value)
    matches, totals, hyp_length, ref_length = statistics
    max_order = matches.shape[-1]
    any_match = jnp.any(matches > 0, axis=-1)
    matches = matches.astype(jnp.float32)
    totals = totals.astype(jnp.float32)
    if smooth == "add-k":
        bump = jnp.where(jnp.arange(max_order) >= 1, smooth_value, 0.0)
        matches = matches + bump
        totals = totals + bump
    # sacrebleu stops at the first order with no hypothesis n-gram at all.
    active = _accumulate_orders(totals > 0, operator.and_)
    if effective_order:
        used_orders = jnp.maximum(active.sum(axis=-1), 1)
    else:
        used_orders = jnp.full(active.shape[:-1], max_order)
    safe_totals = jnp.where(totals > 0, totals, 1.0)
    no_match = matches == 0
    if smooth == "exp":
        doublings = _accumulate_orders((no_match & active).astype(jnp.float32), operator.add)
        smoothed = 1.0 / (2.0**doublings * safe_totals)
    elif smooth == "floor":
        smoothed = smooth_value / safe_totals
    else:
        smoothed = jnp.zeros_like(totals)
    precisions = jnp.where(active, jnp.where(no_match, smoothed, matches / safe_totals), 0.0)
    used = jnp.arange(max_order) < used_orders[..., None]
    # sacrebleu floors log(0) at -9999999999, which makes the score exactly 0.
    any_zero = jnp.any(used & (precisions <= 0), axis=-1)
    log_precisions = jnp.where(used & (precisions > 0), jnp.log(precisions), 0.0)
    geometric_mean = jnp.exp(log_precisions.sum(axis=-1) / used_orders)
    hyp_length = jnp.asarray(hyp_length, jnp.float32)
    ref_length = jnp.asarray(ref_length, jnp.float32)
    brevity_penalty = jnp.where(
        hyp_length < ref_length,
        jnp.where(hyp_length > 0, jnp.exp(1.0 - ref_length / jnp.maximum(hyp_length, 1.0)), 0.0),
        1.0,
    )
    score = 100.0 * brevity_penalty * geometric_mean
    return jnp.where(any_match & jnp.logical_not(any_zero), score, 0.0).astype(jnp.float32)


def bleu(
    hyp: ArrayLike,
    ref: ArrayLike,
    max_order: int = 4,
    *,
    eos_id: int | None,
    pad_id: int | None = None,
    include_eos: bool = False,
    smooth: str = "exp",
    smooth_value: float | None = None,
    effective_order: bool = True,
) -> jax.Array:
    """Returns sentence BLEU, in ``[0, 100]``, of each row of ``hyp`` against the row of ``ref``.

    Each row is scored on its own, as sacrebleu's ``sentence_bleu`` scores one sentence against
    one reference tokenised by whitespace (``tokenize="none"``), with the same defaults,
    ``smooth="exp"`` and ``effective_order=True``. Rows are read as the module docstring says;
    by default EOS and everything after it are excluded from hypothesis and reference alike.
    This is `bleu_statistics` followed by `bleu_from_statistics`, whose docstring gives the
    formula and every convention (clipping, brevity penalty, smoothing, effective order).

    Args:
      hyp: hypothesis token ids, shape ``(batch, hyp_length)``.
      ref: reference token ids, one reference per row, shape ``(batch, ref_length)``.
      max_order: the largest n-gram order N, a static int >= 1.
      eos_id: the EOS id, or None for no EOS. Keyword-only and required.
      pad_id: the padding id, or None.
      include_eos: whether the first EOS counts as a token of each sequence.
      smooth: ``"none"``, ``"floor"``, ``"add-k"`` or ``"exp"``, as in sacrebleu.
      smooth_value: the value for ``"floor"`` (default 0.1) or ``"add-k"`` (default 1); must be
        None for the other methods.
      effective_order: whether to average over the orders present only.

    Returns:
      BLEU of each row, shape ``(batch,)``, float32 in ``[0, 100]``.

    Raises:
      ValueError: for an unknown ``smooth``, a ``smooth_value`` given to a method that takes
        none or below 0, ``max_order`` not an int >= 1, or token arrays of the wrong shape,
        dtype or batch size.

    Examples:
      >>> import jax.numpy as jnp
      >>> from mlesearch.seq import metrics
      >>> ref = jnp.array([[5, 6, 7, 8, 9, 1, 0], [5, 6, 7, 8, 9, 1, 0]])
      >>> hyp = jnp.array([[5, 6, 7, 8, 9, 1, 0], [5, 6, 7, 1, 0, 0, 0]])
      >>> print(metrics.bleu(hyp, ref, eos_id=1, pad_id=0).round(2))
      [100.    51.34]

    References:
      [1] Papineni, Roukos, Ward and Zhu, BLEU: a method for automatic evaluation of machine
      translation, ACL 2002, https://aclanthology.org/P02-1040.

      [2] Post, A call for clarity in reporting BLEU scores, WMT 2018,
      https://arxiv.org/abs/1804.08771.
    """
    _check_smoothing(smooth, smooth_value)
    statistics = bleu_statistics(
        hyp, ref, max_order, eos_id=eos_id, pad_id=pad_id, include_eos=include_eos
    )
    return bleu_from_statistics(
        statistics, smooth=smooth, smooth_value=smooth_value, effective_order=effective_order
    )


def corpus_bleu(
    hyp: ArrayLike,
    ref: ArrayLike,
    max_order: int = 4,
    *,
    eos_id: int | None,
    pad_id: int | None = None,
    include_eos: bool = False,
    smooth: str = "exp",
    smooth_value: float | None = None,
    effective_order: bool = False,
) -> jax.Array:
    """Returns corpus BLEU, in ``[0, 100]``, of the whole batch: one score, not a mean of scores.

    The statistics of all rows (clipped matches, hypothesis n-gram counts, lengths) are summed
    first, then turned into one BLEU, as sacrebleu's ``corpus_bleu`` does with one reference per
    sentence and its defaults, ``smooth="exp"`` and ``effective_order=False``. Rows are read as
    the module docstring says. For a corpus larger than one batch, sum `bleu_statistics` across
    batches and call `bleu_from_statistics` once.

    Args:
      hyp: hypothesis token ids, one sentence per row, shape ``(batch, hyp_length)``.
      ref: reference token ids, one reference per row, shape ``(batch, ref_length)``.
      max_order: the largest n-gram order N, a static int >= 1.
      eos_id: the EOS id, or None for no EOS. Keyword-only and required.
      pad_id: the padding id, or None.
      include_eos: whether the first EOS counts as a token of each sequence.
      smooth: ``"none"``, ``"floor"``, ``"add-k"`` or ``"exp"``, as in sacrebleu.
      smooth_value: the value for ``"floor"`` (default 0.1) or ``"add-k"`` (default 1); must be
        None for the other methods.
      effective_order: whether to average over the orders present only.

    Returns:
      The corpus BLEU, shape ``()``, float32 in ``[0, 100]``.

    Raises:
      ValueError: for an unknown ``smooth``, a ``smooth_value`` given to a method that takes
        none or below 0, ``max_order`` not an int >= 1, or token arrays of the wrong shape,
        dtype or batch size.

    Examples:
      >>> import jax.numpy as jnp
      >>> from mlesearch.seq import metrics
      >>> ref = jnp.array([[5, 6, 7, 8, 9, 1, 0], [5, 6, 7, 8, 9, 1, 0]])
      >>> hyp = jnp.array([[5, 6, 7, 8, 9, 1, 0], [5, 6, 7, 1, 0, 0, 0]])
      >>> print(metrics.corpus_bleu(hyp, ref, eos_id=1, pad_id=0).round(2))
      77.88

    References:
      [1] Papineni, Roukos, Ward and Zhu, BLEU: a method for automatic evaluation of machine
      translation, ACL 2002, https://aclanthology.org/P02-1040.

      [2] Post, A call for clarity in reporting BLEU scores, WMT 2018,
      https://arxiv.org/abs/1804.08771.
    """
    _check_smoothing(smooth, smooth_value)
    statistics = bleu_statistics(
        hyp, ref, max_order, eos_id=eos_id, pad_id=pad_id, include_eos=include_eos
    )
    pooled = BLEUStatistics(*(jnp.sum(field, axis=0) for field in statistics))
    return bleu_from_statistics(
        pooled, smooth=smooth, smooth_value=smooth_value, effective_order=effective_order
    )


def _as_class_arrays(
    preds: ArrayLike, labels: ArrayLike, weights: ArrayLike | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    preds = jnp.asarray(preds)
    labels = jnp.asarray(labels)
    if preds.shape != labels.shape:
        raise ValueError(
            f"preds and labels must have the same shape, got {preds.shape} and {labels.shape}. "
            "Pass predicted class ids (take argmax of logits first), not scores."
        )
    if weights is None:
        return preds, labels, jnp.ones(preds.shape, jnp.float32)
    weights = jnp.asarray(weights)
    if weights.shape != preds.shape:
        raise ValueError(
            f"weights must have the shape of preds, {preds.shape}, got {weights.shape}. "
            "Pass one weight (or mask entry) per prediction."
        )
    return preds, labels, weights.astype(jnp.float32)


def accuracy(preds: ArrayLike, labels: ArrayLike, weights: ArrayLike | None = None) -> jax.Array:
    r"""Returns the (weighted) fraction of predictions equal to their labels.

    .. math::
      \text{accuracy} = \frac{\sum_i w_i [\hat y_i = y_i]}{\sum_i w_i}

    as scikit-learn's ``accuracy_score(labels, preds, sample_weight=weights)``. A boolean mask is
    a 0/1 weight: pass ``tokens != pad_id`` for token accuracy without padding. When the weights
    sum to 0 (nothing to score; scikit-learn raises there) the result is 0.0.

    Args:
      preds: predicted class ids, any shape, e.g. ``(batch,)`` or ``(batch, length)``.
      labels: true class ids, the shape of ``preds``.
      weights: optional non-negative weights or boolean mask, the shape of ``preds``.

    Returns:
      The accuracy, shape ``()``, float32 in ``[0, 1]``.

    Raises:
      ValueError: if the shapes of ``preds``, ``labels`` and ``weights`` differ.

    Examples:
      >>> import jax.numpy as jnp
      >>> from mlesearch.seq import metrics
      >>> preds, labels = jnp.array([0, 1, 2, 2]), jnp.array([0, 1, 1, 2])
      >>> print(metrics.accuracy(preds, labels))
      0.75
      >>> print(metrics.accuracy(preds, labels, weights=jnp.array([1, 1, 0, 1], bool)))
      1.0
    """
    preds, labels, weights = _as_class_arrays(preds, labels, weights)
    total = weights.sum()
    correct = jnp.sum(weights * (preds == labels))
    return jnp.where(total > 0, correct / jnp.where(total > 0, total, 1.0), 0.0).astype(jnp.float32)


def f1(
    preds: ArrayLike,
    labels: ArrayLike,
    num_classes: int,
    average: str = "macro",
    weights: ArrayLike | None = None,
) -> jax.Array:
    r"""Returns the F1 score of class predictions, macro- or micro-averaged over the classes.

    For class c with (weighted) true positives, false positives and false negatives
    :math:`tp_c, fp_c, fn_c`, :math:`F1_c = 2 tp_c / (2 tp_c + fp_c + fn_c)`, the harmonic mean of
    precision and recall. ``"macro"`` averages :math:`F1_c` over the ``num_classes`` classes;
    ``"micro"`` sums tp, fp and fn over the classes first.

    This matches scikit-learn's ``f1_score(labels, preds, labels=range(num_classes),
    average=average, sample_weight=weights, zero_division=0)``, whose conventions it keeps:

    - A class that is neither predicted nor present (0 / 0) scores 0 and still counts in the
      macro average.
    - Ids outside ``[0, num_classes)`` belong to no class: a prediction of such an id is a false
      negative of the true class only, and a label of such an id adds a false positive to the
      predicted class only. With every id in range, micro F1 equals accuracy.

    Args:
      preds: predicted class ids, any shape, e.g. ``(batch,)`` or ``(batch, length)``.
      labels: true class ids, the shape of ``preds``.
      num_classes: the number of classes, a static int >= 1.
      average: ``"macro"`` or ``"micro"``.
      weights: optional non-negative weights or boolean mask, the shape of ``preds``.

    Returns:
      The F1 score, shape ``()``, float32 in ``[0, 1]``.

    Raises:
      ValueError: for an unknown ``average``, ``num_classes`` not an int >= 1, or shapes of
        ``preds``, ``labels`` and ``weights`` that differ.

    Examples:
      >>> import jax.numpy as jnp
      >>> from mlesearch.seq import metrics
      >>> preds, labels = jnp.array([0, 1, 1, 1]), jnp.array([0, 1, 2, 1])
      >>> print(f"{metrics.f1(preds, labels, num_classes=3):.4f}")
      0.6000
      >>> print(f"{metrics.f1(preds, labels, num_classes=3, average='micro'):.4f}")
      0.7500
    """
    _check_positive_int(num_classes, "num_classes")
    if average not in _AVERAGES:
        raise ValueError(f"Unknown average {average!r}: use one of {_AVERAGES}.")
    preds, labels, weights = _as_class_arrays(preds, labels, weights)
    classes = jnp.arange(num_classes)
    predicted = (preds.reshape(-1, 1) == classes) * weights.reshape(-1, 1)
    actual = labels.reshape(-1, 1) == classes
    true_positives = jnp.sum(predicted * actual, axis=0)
    predicted_counts = predicted.sum(axis=0)
    actual_counts = jnp.sum(actual * weights.reshape(-1, 1), axis=0)
    if average == "micro":
        true_positives = true_positives.sum()
        predicted_counts = predicted_counts.sum()
        actual_counts = actual_counts.sum()
    denominator = predicted_counts + actual_counts
    scores = jnp.where(
        denominator > 0, 2.0 * true_positives / jnp.where(denominator > 0, denominator, 1.0), 0.0
    )
    return jnp.mean(scores).astype(jnp.float32)


def balanced_accuracy(
    preds: ArrayLike, labels: ArrayLike, num_classes: int, weights: ArrayLike | None = None
) -> jax.Array:
    r"""Returns the balanced accuracy: the mean over classes of each class's recall.

    .. math::
      \text{balanced accuracy} = \frac{1}{|C|} \sum_{c \in C} \frac{tp_c}{tp_c + fn_c},

    where :math:`C` holds the classes in ``[0, num_classes)`` that occur in ``labels`` (with
    positive weight). On a class-balanced test set it equals accuracy; on an imbalanced one it
    weighs a rare class as much as a frequent one. This matches scikit-learn's
    ``balanced_accuracy_score(labels, preds, sample_weight=weights)`` when every label id is in
    range; with no scored label at all the result is 0.0.

    Args:
      preds: predicted class ids, any shape, e.g. ``(batch,)``.
      labels: true class ids, the shape of ``preds``.
      num_classes: the number of classes, a static int >= 1.
      weights: optional non-negative weights or boolean mask, the shape of ``preds``.

    Returns:
      The balanced accuracy, shape ``()``, float32 in ``[0, 1]``.

    Raises:
      ValueError: if ``num_classes`` is not an int >= 1, or the shapes differ.

    Examples:
      >>> import jax.numpy as jnp
      >>> from mlesearch.seq import metrics
      >>> preds, labels = jnp.array([0, 0, 0, 1]), jnp.array([0, 0, 0, 1])
      >>> print(metrics.balanced_accuracy(preds, labels, num_classes=2))
      1.0
      >>> print(metrics.balanced_accuracy(jnp.array([0, 0, 0, 0]), labels, num_classes=2))
      0.5

    References:
      Brodersen et al., *The balanced accuracy and its posterior distribution*, ICPR 2010.
    """
    _check_positive_int(num_classes, "num_classes")
    preds, labels, weights = _as_class_arrays(preds, labels, weights)
    classes = jnp.arange(num_classes)
    actual = (labels.reshape(-1, 1) == classes) * weights.reshape(-1, 1)
    hits = actual * (preds.reshape(-1, 1) == classes)
    actual_counts = actual.sum(axis=0)
    present = actual_counts > 0
    recalls = jnp.where(present, hits.sum(axis=0) / jnp.where(present, actual_counts, 1.0), 0.0)
    num_present = jnp.sum(present)
    return jnp.where(num_present > 0, jnp.sum(recalls) / jnp.maximum(num_present, 1), 0.0).astype(
        jnp.float32
    )
