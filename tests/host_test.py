"""Tests for `mlesearch.host`: Python task losses under jit and vmap."""

from __future__ import annotations

import collections

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlesearch.seq import host

EOS = 0


def _cut_at_eos(tokens: np.ndarray) -> list[int]:
    tokens = tokens.tolist()
    return tokens[: tokens.index(EOS)] if EOS in tokens else tokens


def unigram_f1_loss(hypothesis: np.ndarray, reference: np.ndarray) -> float:
    """1 - clipped unigram F1, on token ids cut at EOS; plain Python with Counters."""
    hyp = collections.Counter(_cut_at_eos(hypothesis))
    ref = collections.Counter(_cut_at_eos(reference))
    overlap = sum((hyp & ref).values())
    if overlap == 0:
        return 1.0
    precision = overlap / sum(hyp.values())
    recall = overlap / sum(ref.values())
    return 1.0 - 2 * precision * recall / (precision + recall)


REFERENCE = np.array([5, 6, 7, 8, 0, 0], np.int32)
CANDIDATES = np.array(
    [
        [5, 6, 7, 8, 0, 0],  # exact
        [5, 6, 9, 0, 3, 3],  # partial, junk after EOS
        [9, 9, 9, 9, 9, 9],  # no overlap, no EOS
        [8, 7, 6, 5, 5, 0],  # all unigrams, one extra
    ],
    np.int32,
)


def test_jit_matches_the_python_function():
    loss = host.host_task_loss(unigram_f1_loss)
    for candidate in CANDIDATES:
        got = jax.jit(loss)(jnp.asarray(candidate), jnp.asarray(REFERENCE))
        np.testing.assert_allclose(got, unigram_f1_loss(candidate, REFERENCE), rtol=1e-6)


def test_vmap_over_candidates_equals_separate_calls():
    loss = host.host_task_loss(unigram_f1_loss)
    batched = jax.jit(jax.vmap(loss, in_axes=(0, None)))(CANDIDATES, REFERENCE)
    separate = [float(loss(jnp.asarray(c), jnp.asarray(REFERENCE))) for c in CANDIDATES]
    chex.assert_shape(batched, (4,))
    np.testing.assert_allclose(batched, separate, rtol=1e-6)
    np.testing.assert_allclose(separate, [0.0, 1 - 4 / 7, 1.0, 1 - 8 / 9], rtol=1e-6)


def test_sequential_calls_py_fn_once_per_candidate_with_numpy_arrays():
    seen = []

    def recording_loss(hypothesis: np.ndarray, reference: np.ndarray) -> float:
        seen.append((type(hypothesis), hypothesis.shape, reference.shape))
        return unigram_f1_loss(hypothesis, reference)

    loss = host.host_task_loss(recording_loss, vmap_method="sequential")
    jax.block_until_ready(jax.jit(jax.vmap(loss, in_axes=(0, None)))(CANDIDATES, REFERENCE))
    assert seen == [(np.ndarray, (6,), (6,))] * 4


def test_expand_dims_calls_py_fn_once_for_the_batch():
    seen = []

    def batched_loss(hypotheses: np.ndarray, reference: np.ndarray) -> np.ndarray:
        seen.append((hypotheses.shape, reference.shape))
        return np.array([unigram_f1_loss(h, reference[0]) for h in hypotheses])

    loss = host.host_task_loss(batched_loss, vmap_method="expand_dims")
    got = jax.jit(jax.vmap(loss, in_axes=(0, None)))(CANDIDATES, REFERENCE)
    expected = [unigram_f1_loss(c, REFERENCE) for c in CANDIDATES]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert seen == [((4, 6), (1, 6))]


def test_broadcast_all_tiles_unbatched_arguments():
    seen = []

    def batched_loss(hypotheses: np.ndarray, references: np.ndarray) -> np.ndarray:
        seen.append(references.shape)
        return np.array(
            [unigram_f1_loss(h, r) for h, r in zip(hypotheses, references, strict=True)]
        )

    loss = host.host_task_loss(batched_loss, vmap_method="broadcast_all")
    got = jax.vmap(loss, in_axes=(0, None))(CANDIDATES, REFERENCE)
    np.testing.assert_allclose(got, [unigram_f1_loss(c, REFERENCE) for c in CANDIDATES])
    assert seen == [(4, 6)]


def test_keyword_arguments_and_pytrees_are_passed_through():
    def loss_fn(tokens: dict, *, reference: np.ndarray) -> float:
        return unigram_f1_loss(tokens["hypothesis"], reference)

    loss = host.host_task_loss(loss_fn)
    got = jax.jit(loss)({"hypothesis": CANDIDATES[1]}, reference=REFERENCE)
    np.testing.assert_allclose(got, unigram_f1_loss(CANDIDATES[1], REFERENCE), rtol=1e-6)


def test_result_shape_and_dtype_are_honoured():
    loss = host.host_task_loss(
        lambda tokens: [len(_cut_at_eos(tokens)), tokens.size], result_shape=(2,), dtype=jnp.int32
    )
    got = jax.jit(jax.vmap(loss))(CANDIDATES)
    chex.assert_shape(got, (4, 2))
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(got[:, 0], [4, 3, 6, 5])


def test_float64_is_canonicalised_without_x64():
    loss = host.host_task_loss(lambda x: float(x.sum()), dtype=np.float64)
    assert jax.jit(loss)(jnp.ones(3)).dtype == jnp.float32


def test_task_loss_of_params_decoded_inside_jit_and_vmapped_over_candidates():
    loss_on_tokens = host.host_task_loss(unigram_f1_loss)

    def task_loss_fn(params: dict, reference: jax.Array) -> jax.Array:
        tokens = jnp.argmax(params["logits"], axis=-1)  # greedy "decoding" inside the jitted loss
        return loss_on_tokens(tokens, reference)

    candidate_params = {"logits": jax.nn.one_hot(CANDIDATES, 10)}  # (4, 6, 10)
    got = jax.jit(jax.vmap(task_loss_fn, in_axes=(0, None)))(candidate_params, REFERENCE)
    np.testing.assert_allclose(got, [unigram_f1_loss(c, REFERENCE) for c in CANDIDATES])


def test_sacrebleu_sentence_bleu_under_jit_and_vmap():
    sacrebleu = pytest.importorskip("sacrebleu")

    def detokenise(tokens: np.ndarray) -> str:
        return " ".join(f"w{t}" for t in _cut_at_eos(tokens))

    def bleu_loss(hypothesis: np.ndarray, reference: np.ndarray) -> float:
        score = sacrebleu.sentence_bleu(detokenise(hypothesis), [detokenise(reference)])
        return 1.0 - score.score / 100.0

    reference = np.array([5, 6, 7, 8, 9, 10, 0], np.int32)
    candidates = np.array(
        [
            [5, 6, 7, 8, 9, 10, 0],
            [5, 6, 7, 8, 9, 11, 0],
            [11, 12, 13, 14, 0, 0, 0],
            [5, 6, 7, 0, 1, 1, 1],
        ],
        np.int32,
    )
    loss = host.host_task_loss(bleu_loss)
    got = jax.jit(jax.vmap(loss, in_axes=(0, None)))(candidates, reference)
    expected = [bleu_loss(c, reference) for c in candidates]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got[0] == pytest.approx(0.0, abs=1e-6)
    assert 0.0 < got[1] < got[2]


def test_works_as_a_decorator_and_keeps_the_name():
    @host.host_task_loss
    def distinct_ratio(tokens: np.ndarray) -> float:
        return len(set(tokens.tolist())) / tokens.size

    assert distinct_ratio.__name__ == "distinct_ratio"
    np.testing.assert_allclose(distinct_ratio(jnp.array([1, 1, 2, 3])), 0.75)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"vmap_method": "legacy_vectorize"}, "vmap_method"),
        ({"result_shape": 3}, "result_shape"),
        ({"result_shape": (-1,)}, "non-negative"),
    ],
)
def test_invalid_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        host.host_task_loss(unigram_f1_loss, **kwargs)


def test_non_callable_raises_value_error():
    with pytest.raises(ValueError, match="callable"):
        host.host_task_loss("bleu")
