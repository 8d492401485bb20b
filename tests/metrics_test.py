"""Tests for `mlesearch.metrics`, against reference implementations that no one here wrote.

BLEU is checked against sacrebleu, F1 and accuracy against scikit-learn, edit distance against the
`editdistance` package, and seq-rep-n and non-termination against plain-Python transcriptions of
their definitions. Each comparison runs hundreds of random cases through one jitted call.
"""

import functools
import logging
import warnings

import chex
import editdistance
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sklearn
from sacrebleu.metrics import BLEU
from sklearn import metrics as sk_metrics

from mlesearch import metrics

PAD, EOS = 0, 1
NUM_CASES = 600
HYP_WIDTH, REF_WIDTH = 18, 22
# sacrebleu scores are on [0, 100]; ours agree to this absolute tolerance on that scale.
BLEU_ATOL = 1e-4
# (smooth, smooth_value, effective_order, include_eos): every smoothing sacrebleu offers, with
# default and custom values, with and without effective order, and once with EOS kept.
BLEU_CONFIGS = [
    (smooth, value, effective_order, False)
    for smooth, value in [
        ("none", None),
        ("floor", None),
        ("floor", 0.3),
        ("add-k", None),
        ("add-k", 0.5),
        ("exp", None),
    ]
    for effective_order in (True, False)
] + [("exp", None, True, True)]

logging.getLogger("sacrebleu").setLevel(logging.ERROR)


def _read(row, include_eos=False):
    """The module's reading rule in plain Python: cut at the first EOS, drop padding."""
    sequence = []
    for token in row.tolist():
        if token == EOS:
            if include_eos:
                sequence.append(token)
            break
        if token != PAD:
            sequence.append(token)
    return sequence


def _encode(rng, content, width, vocab):
    """Writes a sequence into a row: some pads inside, then EOS and junk, or right padding."""
    content = np.asarray(content, np.int32)
    if content.size and rng.random() < 0.15:
        content = np.where(rng.random(content.size) < 0.3, PAD, content)
    tail = width - content.size
    if tail > 0 and rng.random() < 0.7:
        # After EOS anything may follow, more EOS and padding included: it must be ignored.
        junk = rng.integers(0, 2 + vocab, size=tail - 1)
        return np.concatenate([content, [EOS], junk]).astype(np.int32)
    return np.concatenate([content, np.full(tail, PAD)]).astype(np.int32)


def _mutate(rng, sequence, vocab):
    """Copies a sequence with random substitutions, deletions and insertions."""
    mutated = []
    for token in sequence:
        u = rng.random()
        if u < 0.1:
            continue
        if u < 0.25:
            mutated.append(int(rng.integers(2, 2 + vocab)))
        else:
            mutated.append(token)
        if rng.random() < 0.08:
            mutated.append(int(rng.integers(2, 2 + vocab)))
    return mutated


def _random_pairs(seed, num_rows, hyp_width=HYP_WIDTH, ref_width=REF_WIDTH):
    """Hypothesis and reference rows from a small vocabulary, so that n-grams repeat and match.

    Returns two int32 arrays of shapes (num_rows, hyp_width) and (num_rows, ref_width). Half of
    the hypotheses are mutated copies of their reference, half are drawn independently.
    """
    rng = np.random.default_rng(seed)
    hyps = np.empty((num_rows, hyp_width), np.int32)
    refs = np.empty((num_rows, ref_width), np.int32)
    for row in range(num_rows):
        vocab = int(rng.choice([2, 3, 5, 8]))
        ref = rng.integers(2, 2 + vocab, size=rng.integers(0, ref_width + 1)).tolist()
        if rng.random() < 0.5:
            hyp = _mutate(rng, ref, vocab)[:hyp_width]
        else:
            hyp = rng.integers(2, 2 + vocab, size=rng.integers(0, hyp_width + 1)).tolist()
        hyps[row] = _encode(rng, hyp, hyp_width, vocab)
        refs[row] = _encode(rng, ref, ref_width, vocab)
    return hyps, refs


def _jit(fn, **static_kwargs):
    return jax.jit(functools.partial(fn, **static_kwargs))


def _seq_rep_reference(sequence, n):
    ngrams = [tuple(sequence[i : i + n]) for i in range(len(sequence) - n + 1)]
    return 1.0 - len(set(ngrams)) / len(ngrams) if ngrams else 0.0


def _sacrebleu(smooth, value, effective_order):
    return BLEU(
        tokenize="none",
        force=True,
        smooth_method=smooth,
        smooth_value=value,
        effective_order=effective_order,
    )


def _as_text(sequence):
    return " ".join(str(token) for token in sequence)


def _bleu_kwargs(smooth, value, effective_order, include_eos):
    return dict(
        eos_id=EOS,
        pad_id=PAD,
        include_eos=include_eos,
        smooth=smooth,
        smooth_value=value,
        effective_order=effective_order,
    )


def test_random_cases_cover_the_edge_cases():
    hyps, refs = _random_pairs(0, NUM_CASES)
    hyp_lengths = np.array([len(_read(row)) for row in hyps])
    assert np.sum(hyp_lengths == 0) >= 10
    assert np.sum(hyp_lengths < 4) >= 50
    assert np.sum(~(hyps == EOS).any(axis=1)) >= 100
    assert np.sum(((hyps == PAD).cumsum(axis=1) < (hyps == EOS).cumsum(axis=1)).any(axis=1)) >= 20


def test_sequence_repetition_matches_python_definition():
    tokens, _ = _random_pairs(1, NUM_CASES, hyp_width=40)
    configs = [(n, include_eos) for n in (1, 2, 3, 4) for include_eos in (False, True)]

    @jax.jit
    def all_configs(tokens):
        return [
            metrics.sequence_repetition(tokens, n, eos_id=EOS, pad_id=PAD, include_eos=include_eos)
            for n, include_eos in configs
        ]

    results = all_configs(tokens)
    for (n, include_eos), result in zip(configs, results, strict=True):
        chex.assert_shape(result, (NUM_CASES,))
        expected = [_seq_rep_reference(_read(row, include_eos), n) for row in tokens]
        np.testing.assert_allclose(result, expected, atol=1e-6, err_msg=f"n={n}, {include_eos=}")


def test_non_termination_matches_python_definition():
    tokens, _ = _random_pairs(2, NUM_CASES)
    result = jax.jit(functools.partial(metrics.non_termination, eos_id=EOS))(tokens)
    chex.assert_shape(result, (NUM_CASES,))
    expected = [float(EOS not in row.tolist()) for row in tokens]
    np.testing.assert_array_equal(result, expected)


def test_edit_distance_matches_editdistance_package():
    hyps, refs = _random_pairs(3, NUM_CASES)

    @jax.jit
    def all_configs(hyps, refs):
        return {
            (normalize, include_eos): metrics.edit_distance(
                hyps, refs, eos_id=EOS, pad_id=PAD, include_eos=include_eos, normalize=normalize
            )
            for normalize in (False, True)
            for include_eos in (False, True)
        }

    results = all_configs(hyps, refs)
    for include_eos in (False, True):
        pairs = [
            (_read(h, include_eos), _read(r, include_eos)) for h, r in zip(hyps, refs, strict=True)
        ]
        distances = np.array([editdistance.eval(h, r) for h, r in pairs])
        ref_lengths = np.array([len(r) for _, r in pairs])
        raw = results[False, include_eos]
        assert raw.dtype == jnp.int32
        np.testing.assert_array_equal(raw, distances)
        normalized = np.where(
            ref_lengths > 0,
            np.minimum(distances / np.maximum(ref_lengths, 1), 1.0),
            (distances > 0).astype(float),
        )
        np.testing.assert_allclose(results[True, include_eos], normalized, atol=1e-6)


NUM_CORPORA, CORPUS_SIZE = 500, 4


@pytest.fixture(scope="module")
def bleu_cases():
    """Random pairs and every BLEU configuration of them, computed in one jitted call.

    Sentence scores come from `bleu` itself, for every configuration. Corpus scores come from
    `bleu_statistics` pooled by hand over NUM_CORPORA corpora of CORPUS_SIZE rows (and over the
    whole batch), then `bleu_from_statistics`, for every configuration; `corpus_bleu` itself, under
    vmap and on the whole batch, is run with sacrebleu's defaults. (Each route through the
    statistics costs seconds of compilation, so the configurations share them.)
    """
    hyps, refs = _random_pairs(4, NUM_CORPORA * CORPUS_SIZE)

    @jax.jit
    def all_configs(hyps, refs):
        def pooled(include_eos):
            statistics = metrics.bleu_statistics(
                hyps, refs, eos_id=EOS, pad_id=PAD, include_eos=include_eos
            )
            return jax.tree.map(
                lambda field: jnp.concatenate(
                    [
                        field.reshape(NUM_CORPORA, CORPUS_SIZE, *field.shape[1:]).sum(1),
                        field.sum(0, keepdims=True),
                    ]
                ),
                statistics,
            )

        corpora = {include_eos: pooled(include_eos) for include_eos in (False, True)}
        sentence, corpus = [], []
        for smooth, value, effective_order, include_eos in BLEU_CONFIGS:
            kwargs = _bleu_kwargs(smooth, value, effective_order, include_eos)
            sentence.append(metrics.bleu(hyps, refs, **kwargs)[:NUM_CASES])
            corpus.append(
                metrics.bleu_from_statistics(
                    corpora[include_eos],
                    smooth=smooth,
                    smooth_value=value,
                    effective_order=effective_order,
                )
            )
        corpus_bleu = functools.partial(metrics.corpus_bleu, eos_id=EOS, pad_id=PAD)
        grouped_hyps = hyps.reshape(NUM_CORPORA, CORPUS_SIZE, -1)
        grouped_refs = refs.reshape(NUM_CORPORA, CORPUS_SIZE, -1)
        direct = jnp.concatenate(
            [jax.vmap(corpus_bleu)(grouped_hyps, grouped_refs), corpus_bleu(hyps, refs)[None]]
        )
        return sentence, corpus, direct

    sentence, corpus, direct = all_configs(hyps, refs)
    texts = {
        include_eos: (
            [_as_text(_read(row, include_eos)) for row in hyps],
            [_as_text(_read(row, include_eos)) for row in refs],
        )
        for include_eos in (False, True)
    }
    return dict(texts=texts, sentence=sentence, corpus=corpus, direct=direct)


def _sacrebleu_sentences(scorer, hyp_texts, ref_texts):
    return [
        scorer.sentence_score(hyp, [ref]).score
        for hyp, ref in zip(hyp_texts[:NUM_CASES], ref_texts[:NUM_CASES], strict=True)
    ]


def _sacrebleu_corpora(scorer, hyp_texts, ref_texts):
    """sacrebleu's corpus BLEU of each corpus of CORPUS_SIZE rows, then of all rows."""
    starts = range(0, NUM_CORPORA * CORPUS_SIZE, CORPUS_SIZE)
    corpora = [(hyp_texts[i : i + CORPUS_SIZE], ref_texts[i : i + CORPUS_SIZE]) for i in starts]
    corpora.append((hyp_texts, ref_texts))
    return [scorer.corpus_score(hyps, [refs]).score for hyps, refs in corpora]


@pytest.mark.parametrize("config", BLEU_CONFIGS, ids=str)
def test_bleu_matches_sacrebleu_sentence_bleu(bleu_cases, config):
    smooth, value, effective_order, include_eos = config
    result = bleu_cases["sentence"][BLEU_CONFIGS.index(config)]
    chex.assert_shape(result, (NUM_CASES,))
    expected = _sacrebleu_sentences(
        _sacrebleu(smooth, value, effective_order), *bleu_cases["texts"][include_eos]
    )
    np.testing.assert_allclose(result, expected, rtol=0, atol=BLEU_ATOL)


@pytest.mark.parametrize("config", BLEU_CONFIGS, ids=str)
def test_summed_statistics_match_sacrebleu_corpus_bleu(bleu_cases, config):
    smooth, value, effective_order, include_eos = config
    result = bleu_cases["corpus"][BLEU_CONFIGS.index(config)]
    chex.assert_shape(result, (NUM_CORPORA + 1,))
    expected = _sacrebleu_corpora(
        _sacrebleu(smooth, value, effective_order), *bleu_cases["texts"][include_eos]
    )
    np.testing.assert_allclose(result, expected, rtol=0, atol=BLEU_ATOL)


def test_corpus_bleu_under_vmap_matches_sacrebleu_corpus_bleu(bleu_cases):
    # sacrebleu's corpus defaults: smooth="exp", no effective order.
    expected = _sacrebleu_corpora(_sacrebleu("exp", None, False), *bleu_cases["texts"][False])
    chex.assert_shape(bleu_cases["direct"], (NUM_CORPORA + 1,))
    np.testing.assert_allclose(bleu_cases["direct"], expected, rtol=0, atol=BLEU_ATOL)


def _classification_problems(seed, num_problems=NUM_CASES, size=30, num_classes=5):
    """Random (preds, labels, weights) problems, shapes (num_problems, size).

    Some problems leave classes out, some have ids outside [0, num_classes), and weights are
    non-negative with some zeros.
    """
    rng = np.random.default_rng(seed)
    present = rng.integers(1, num_classes + 1, size=num_problems)
    labels = rng.integers(0, 10**6, size=(num_problems, size)) % present[:, None]
    noise = rng.integers(0, num_classes, size=(num_problems, size))
    preds = np.where(rng.random((num_problems, size)) < 0.6, labels, noise)
    out_of_range = rng.random(num_problems) < 0.2
    preds = np.where(out_of_range[:, None] & (rng.random((num_problems, size)) < 0.1), -1, preds)
    labels = np.where(
        out_of_range[:, None] & (rng.random((num_problems, size)) < 0.1), num_classes, labels
    )
    weights = rng.uniform(0.0, 2.0, size=(num_problems, size))
    weights = np.where(rng.random((num_problems, size)) < 0.2, 0.0, weights)
    weights[:, 0] = 1.0  # never a problem whose weights sum to zero
    return preds.astype(np.int32), labels.astype(np.int32), weights.astype(np.float32)


def _weighting(index, weights):
    """Problem ``index`` is scored unweighted, with float weights, or with a boolean mask."""
    return [None, weights[index], weights[index] > 0][index % 3]


def test_f1_matches_scikit_learn():
    num_classes = 5
    preds, labels, weights = _classification_problems(6, num_classes=num_classes)

    @jax.jit
    def all_configs(preds, labels, weights):
        results = {}
        for average in ("macro", "micro"):
            score = functools.partial(metrics.f1, num_classes=num_classes, average=average)
            results[average] = (
                jax.vmap(score)(preds, labels),
                jax.vmap(score)(preds, labels, weights=weights),
                jax.vmap(score)(preds, labels, weights=weights > 0),
            )
        return results

    results = all_configs(preds, labels, weights)
    for average, by_weighting in results.items():
        result = [by_weighting[i % 3][i] for i in range(NUM_CASES)]
        # Parameter validation makes scikit-learn ~5x slower; these inputs are valid.
        with sklearn.config_context(skip_parameter_validation=True):
            expected = [
                sk_metrics.f1_score(
                    labels[i],
                    preds[i],
                    labels=list(range(num_classes)),
                    average=average,
                    sample_weight=_weighting(i, weights),
                    zero_division=0,
                )
                for i in range(NUM_CASES)
            ]
        np.testing.assert_allclose(result, expected, atol=1e-6, err_msg=f"{average=}")


def test_accuracy_matches_scikit_learn():
    preds, labels, weights = _classification_problems(7)

    @jax.jit
    def all_configs(preds, labels, weights):
        return (
            jax.vmap(metrics.accuracy)(preds, labels),
            jax.vmap(metrics.accuracy)(preds, labels, weights),
            jax.vmap(metrics.accuracy)(preds, labels, weights > 0),
        )

    by_weighting = all_configs(preds, labels, weights)
    result = [by_weighting[i % 3][i] for i in range(NUM_CASES)]
    with sklearn.config_context(skip_parameter_validation=True):
        expected = [
            sk_metrics.accuracy_score(labels[i], preds[i], sample_weight=_weighting(i, weights))
            for i in range(NUM_CASES)
        ]
    np.testing.assert_allclose(result, expected, atol=1e-6)


def test_balanced_accuracy_matches_scikit_learn():
    num_classes = 5
    preds, labels, weights = _classification_problems(8, num_classes=num_classes)
    score = functools.partial(metrics.balanced_accuracy, num_classes=num_classes)

    @jax.jit
    def all_configs(preds, labels, weights):
        return (
            jax.vmap(score)(preds, labels),
            jax.vmap(score)(preds, labels, weights=weights),
            jax.vmap(score)(preds, labels, weights=weights > 0),
        )

    by_weighting = all_configs(preds, labels, weights)
    result = [by_weighting[i % 3][i] for i in range(NUM_CASES)]
    in_range = [bool(np.all((row >= 0) & (row < num_classes))) for row in labels]
    with sklearn.config_context(skip_parameter_validation=True), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
        expected = [
            sk_metrics.balanced_accuracy_score(
                labels[i], preds[i], sample_weight=_weighting(i, weights)
            )
            for i in range(NUM_CASES)
        ]
    compared = [i for i in range(NUM_CASES) if in_range[i] and np.isfinite(expected[i])]
    assert len(compared) > NUM_CASES // 2
    np.testing.assert_allclose(
        np.asarray(result)[compared], np.asarray(expected)[compared], atol=1e-6
    )


def test_jit_of_vmap_equals_flat_batch_and_does_not_retrace():
    hyps, refs = _random_pairs(8, 64)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def grouped(hyps, refs):
        distance = functools.partial(metrics.edit_distance, eos_id=EOS, pad_id=PAD)
        return jax.vmap(distance)(hyps, refs)

    first = grouped(hyps.reshape(8, 8, -1), refs.reshape(8, 8, -1))
    again = grouped(hyps[::-1].reshape(8, 8, -1), refs[::-1].reshape(8, 8, -1))
    flat = _jit(metrics.edit_distance, eos_id=EOS, pad_id=PAD)(hyps, refs)
    chex.assert_shape(first, (8, 8))
    np.testing.assert_allclose(first.reshape(-1), flat, atol=1e-7)
    np.testing.assert_allclose(again.reshape(-1), flat[::-1], atol=1e-7)


def test_sequence_repetition_hand_computed_cases():
    tokens = jnp.array(
        [
            [5, 6, 5, 6, 5, 6, EOS, 9],  # 2-grams 56 65 56 65 56: 2 unique of 5
            [5, 5, 5, 5, 5, PAD, PAD, PAD],  # 2-grams 55 x4: 1 unique of 4
            [5, EOS, 5, 5, 5, 5, 5, 5],  # one token: no 2-gram, 0.0
            [PAD, 7, PAD, 7, 7, EOS, 7, 7],  # padding dropped: 77 77, 1 unique of 2
        ]
    )
    result = _jit(metrics.sequence_repetition, n=2, eos_id=EOS, pad_id=PAD)(tokens)
    np.testing.assert_allclose(result, [0.6, 0.75, 0.0, 0.5], atol=1e-6)
    # Keeping EOS adds one n-gram that ends in EOS, never a repeat.
    keep_eos = _jit(metrics.sequence_repetition, n=2, eos_id=EOS, pad_id=PAD, include_eos=True)
    result = keep_eos(tokens)
    np.testing.assert_allclose(result, [0.5, 0.75, 0.0, 1 / 3], atol=1e-6)


def test_sequence_repetition_compares_large_ids_exactly():
    big = 2**31 - 1
    tokens = jnp.array([[big, -big, big, -big + 1, big, -big]], jnp.int32)
    # 2-grams (b,-b) (-b,b) (b,-b+1) (-b+1,b) (b,-b): 4 unique of 5.
    result = _jit(metrics.sequence_repetition, n=2, eos_id=None)(tokens)
    np.testing.assert_allclose(result, [0.2], atol=1e-6)


def test_non_termination_hand_computed_cases():
    tokens = jnp.array([[5, 6, EOS], [5, 6, 7], [EOS, PAD, PAD], [PAD, PAD, PAD]])
    result = _jit(metrics.non_termination, eos_id=EOS)(tokens)
    np.testing.assert_array_equal(result, [0.0, 1.0, 0.0, 1.0])


def test_edit_distance_hand_computed_cases():
    # "kitten" -> "sitting" is 3; then empty/empty, empty ref, hyp far longer than ref.
    hyp = jnp.array(
        [
            [11, 9, 20, 20, 5, 14, EOS, 3],
            [EOS, 5, 5, 5, 5, 5, 5, 5],
            [5, 6, EOS, PAD, PAD, PAD, PAD, PAD],
            [5, 6, 7, 8, 9, 5, 6, 7],
        ]
    )
    ref = jnp.array(
        [
            [19, 9, 20, 20, 9, 14, 7],
            [EOS, PAD, PAD, PAD, PAD, PAD, PAD],
            [PAD, PAD, PAD, PAD, PAD, PAD, PAD],
            [5, EOS, 6, 6, 6, 6, 6],
        ]
    )
    raw = _jit(metrics.edit_distance, eos_id=EOS, pad_id=PAD, normalize=False)(hyp, ref)
    np.testing.assert_array_equal(raw, [3, 0, 2, 7])
    normalized = _jit(metrics.edit_distance, eos_id=EOS, pad_id=PAD)(hyp, ref)
    np.testing.assert_allclose(normalized, [3 / 7, 0.0, 1.0, 1.0], atol=1e-6)


def test_bleu_hand_computed_cases():
    ref = jnp.array([[5, 6, 7, 8, 9, EOS], [5, 6, 7, 8, 9, EOS], [5, 6, 7, 8, 9, EOS]])
    hyp = jnp.array([[5, 6, 7, 8, 9, EOS], [5, 6, 7, EOS, 0, 0], [2, 3, 4, EOS, 0, 0]])
    result = _jit(metrics.bleu, eos_id=EOS, pad_id=PAD)(hyp, ref)
    # Identical: 100. A 3-token prefix: precisions 1 up to the effective order 3, times the
    # brevity penalty exp(1 - 5/3). No match at all: 0.
    np.testing.assert_allclose(result, [100.0, 100.0 * np.exp(-2.0 / 3.0), 0.0], atol=1e-4)
    # Without effective order the missing 4-gram order makes the unsmoothed score 0.
    unsmoothed = _jit(metrics.bleu, eos_id=EOS, pad_id=PAD, smooth="none", effective_order=False)
    result = unsmoothed(hyp, ref)
    np.testing.assert_allclose(result, [100.0, 0.0, 0.0], atol=1e-4)
    # Corpus: 8/8 unigrams, 6/6 bigrams, 4/4 trigrams, 2/2 4-grams; BP = exp(1 - 10/8).
    corpus = _jit(metrics.corpus_bleu, eos_id=EOS, pad_id=PAD)(hyp[:2], ref[:2])
    np.testing.assert_allclose(corpus, 100.0 * np.exp(1.0 - 10.0 / 8.0), atol=1e-4)


def test_classification_hand_computed_cases():
    preds = jnp.array([0, 1, 1, 1, 2, 4])
    labels = jnp.array([0, 1, 2, 1, 2, 3])
    # Per class: F1_0 = 1, F1_1 = 2*2/(2*2+1+0) = 0.8, F1_2 = 2/(2+0+1) = 2/3, F1_3 = 0 (never
    # predicted), F1_4 = 0 (never present), F1_5 = 0 (0/0 under zero_division=0, still averaged).
    macro = _jit(metrics.f1, num_classes=6)(preds, labels)
    np.testing.assert_allclose(macro, (1 + 0.8 + 2 / 3) / 6, atol=1e-6)
    # Micro: tp = 4, fp = fn = 2, so 2*4/(2*4+2+2) = 2/3, the accuracy.
    micro = _jit(metrics.f1, num_classes=6, average="micro")(preds, labels)
    np.testing.assert_allclose(micro, 4 / 6, atol=1e-6)
    accuracy = jax.jit(metrics.accuracy)
    np.testing.assert_allclose(accuracy(preds, labels), 4 / 6, atol=1e-6)
    mask = jnp.array([True, True, False, True, True, False])
    np.testing.assert_allclose(accuracy(preds, labels, mask), 1.0, atol=1e-6)
    # Nothing to score: 0.0 (scikit-learn raises on weights that sum to zero).
    np.testing.assert_allclose(accuracy(preds, labels, jnp.zeros(6, bool)), 0.0)


def test_metrics_reject_bad_arguments():
    tokens = jnp.array([[5, 6, 7]])
    with pytest.raises(ValueError, match="n must be"):
        metrics.sequence_repetition(tokens, n=0, eos_id=EOS)
    with pytest.raises(ValueError, match="Unknown smooth"):
        metrics.bleu(tokens, tokens, eos_id=EOS, smooth="add-one")
    with pytest.raises(ValueError, match="takes no smooth_value"):
        metrics.bleu(tokens, tokens, eos_id=EOS, smooth="exp", smooth_value=0.1)
    with pytest.raises(ValueError, match="smooth_value must be"):
        metrics.corpus_bleu(tokens, tokens, eos_id=EOS, smooth="floor", smooth_value=-1.0)
    with pytest.raises(ValueError, match="max_order must be"):
        metrics.bleu(tokens, tokens, max_order=0, eos_id=EOS)
    with pytest.raises(ValueError, match="same batch size"):
        metrics.edit_distance(tokens, jnp.concatenate([tokens, tokens]), eos_id=EOS)
    with pytest.raises(ValueError, match=r"tokens\[None\]"):
        metrics.sequence_repetition(tokens[0], eos_id=EOS)
    with pytest.raises(ValueError, match="integer token ids"):
        metrics.non_termination(tokens.astype(jnp.float32), EOS)
    with pytest.raises(ValueError, match="eos_id"):
        metrics.non_termination(tokens, None)
    with pytest.raises(ValueError, match="Unknown average"):
        metrics.f1(tokens, tokens, num_classes=3, average="weighted")
    with pytest.raises(ValueError, match="num_classes must be"):
        metrics.f1(tokens, tokens, num_classes=0)
    with pytest.raises(ValueError, match="same shape"):
        metrics.accuracy(tokens, tokens[0])
    with pytest.raises(ValueError, match="weights must have"):
        metrics.accuracy(tokens, tokens, weights=jnp.ones(3))
