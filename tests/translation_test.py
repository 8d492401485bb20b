"""Tests for mlesearch.experiments.tasks.translation: English to German dates, scored by BLEU."""

from __future__ import annotations

import datetime
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sacrebleu

from mlesearch.experiments.configs import translation as translation_config
from mlesearch.experiments.tasks import Task, make_task
from mlesearch.experiments.tasks import translation as tr
from mlesearch.seq.models import token_log_probs

# A tiny model and tiny splits keep compilation and running short.
TINY = dict(
    first_year=2000,
    last_year=2003,
    num_train=32,
    num_valid=6,
    num_test=6,
    data_seed=0,
    batch_size=4,
    num_layers=1,
    num_heads=2,
    embed_dim=16,
    mlp_dim=32,
    eval_batch_size=4,  # valid and test need two chunks, the second one padded
)
SPLIT_ARGS = dict(
    first_year=2000,
    last_year=2003,
    formats=tr.CLDR_LENGTHS,
    num_train=32,
    num_valid=6,
    num_test=6,
    data_seed=0,
)


def _key(seed: int) -> jax.Array:
    """A PRNG key; rbg keys compile far faster than the default threefry on CPU."""
    return jax.random.key(seed, impl="rbg")


@functools.cache
def _task() -> tr.DateTranslation:
    return tr.DateTranslation(TINY)


@functools.cache
def _params() -> dict:
    return jax.jit(_task().init_params)(_key(0))


@functools.cache
def _batch() -> dict:
    return jax.jit(_task().train_batch)(_key(1))


@functools.cache
def _sentence_bleu():
    return jax.jit(_task().sentence_bleu)


@functools.cache
def _score_translations():
    return jax.jit(_task().score_translations)


def _teacher_forced_log_probs(
    task: tr.DateTranslation, params: dict, prompt: jax.Array, continuation: jax.Array
) -> jax.Array:
    """Log-probabilities of the continuation's tokens, computed from scratch, ``(B, T)``."""
    sequence = jnp.concatenate([prompt, continuation], axis=1)
    log_probs = token_log_probs(task.model.apply(params, sequence[:, :-1]), sequence[:, 1:])
    return log_probs[:, prompt.shape[1] - 1 :]


def _words(task: tr.DateTranslation, row: np.ndarray) -> str:
    return " ".join(task.vocab.decode(row))


def test_data_comes_from_the_cldr():
    date = datetime.date(2021, 3, 5)
    assert tr.format_pair(date, "full") == ("Friday, March 5, 2021", "Freitag, 5. März 2021")
    assert tr.format_pair(date, "long") == ("March 5, 2021", "5. März 2021")
    assert tr.format_pair(date, "medium") == ("Mar 5, 2021", "05.03.2021")
    assert tr.format_pair(date, "short") == ("3/5/21", "05.03.21")
    for examples in _task().data.examples.values():
        for example in examples:
            assert (example.source, example.target) == tr.format_pair(
                example.date, example.date_format
            )


def test_splits_are_deterministic_and_disjoint():
    splits = tr.make_splits(**SPLIT_ARGS)
    assert splits == tr.make_splits(**SPLIT_ARGS)
    assert {name: len(split) for name, split in splits.items()} == dict(train=32, valid=6, test=6)
    dates = {name: {example.date for example in split} for name, split in splits.items()}
    assert sum(map(len, dates.values())) == 44  # distinct within and across splits
    assert all(2000 <= date.year <= 2003 for split in dates.values() for date in split)
    # The held-out splits do not depend on the size of the training split.
    bigger = tr.make_splits(**{**SPLIT_ARGS, "num_train": 40})
    assert bigger["test"] == splits["test"] and bigger["valid"] == splits["valid"]
    assert splits != tr.make_splits(**{**SPLIT_ARGS, "data_seed": 1})
    with pytest.raises(ValueError, match="widen"):
        tr.make_splits(**{**SPLIT_ARGS, "last_year": 2000, "num_train": 400})


def test_tokenizer_round_trip():
    tokens = tr.tokenize("Freitag, 5. März 2021")
    assert tokens == ["Freitag", ",", "5", ".", "März", "2021"]
    assert tr.tokenize("05.03.21") == ["05", ".", "03", ".", "21"]
    assert tr.tokenize("3/5/21") == ["3", "/", "5", "/", "21"]
    task = _task()
    vocab = task.vocab
    assert vocab.tokens[:3] == (tr.PAD, tr.EOS, tr.SEP)
    assert (tr.PAD_ID, tr.EOS_ID, tr.SEP_ID) == (0, 1, 2)
    for examples in task.data.examples.values():
        for example in examples:
            for text in (example.source, example.target):
                assert tr.detokenize(tr.tokenize(text)) == text
                ids = vocab.encode(tr.tokenize(text))
                assert vocab.decode([*ids, tr.EOS_ID, 5]) == tr.tokenize(text)
    assert vocab.decode([tr.PAD_ID, 3, tr.PAD_ID, 4, tr.EOS_ID, 5]) == [
        vocab.tokens[3],
        vocab.tokens[4],
    ]


def test_batch_layout_and_shapes():
    task = _task()
    batch = _batch()
    source_len, target_len = task.data.source_len, task.data.target_len
    assert batch["prompt"].shape == (4, source_len + 1)
    assert batch["target"].shape == (4, target_len)
    assert batch["prompt"].dtype == batch["target"].dtype == jnp.int32
    assert task.model_config.max_len == source_len + 1 + target_len
    arrays = task.data.arrays["test"]
    for example, prompt, target in zip(
        task.data.examples["test"], arrays["prompt"], arrays["target"], strict=True
    ):
        source = tr.tokenize(example.source)
        assert prompt[-1] == tr.SEP_ID
        assert np.all(prompt[: source_len - len(source)] == tr.PAD_ID)  # left padding
        assert task.vocab.decode(prompt[:-1]) == source
        assert task.vocab.decode(target) == tr.tokenize(example.target)
        assert target[len(tr.tokenize(example.target))] == tr.EOS_ID


def test_mle_loss_scores_the_target_only():
    task, params, batch = _task(), _params(), _batch()

    @jax.jit
    def losses(params, batch):
        loss, grads = jax.value_and_grad(task.mle_loss)(params, batch)
        # An independent computation: prompt + target, the target's tokens and EOS scored.
        log_probs = _teacher_forced_log_probs(task, params, batch["prompt"], batch["target"])
        mask = batch["target"] != tr.PAD_ID
        return loss, grads, -jnp.sum(log_probs * mask) / jnp.sum(mask)

    loss, grads, expected = losses(params, batch)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert float(loss) > 0
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_task_loss_jits_and_vmaps_over_candidates():
    task, params, batch = _task(), _params(), _batch()

    rng = np.random.RandomState(0)
    stacked = jax.tree.map(
        lambda leaf: leaf + 0.3 * rng.standard_normal((4, *leaf.shape)).astype(np.float32), params
    )
    losses = jax.jit(jax.vmap(task.task_loss, in_axes=(0, None, None)))(stacked, batch, None)
    single = jax.jit(task.task_loss)
    candidates = [jax.tree.map(lambda leaf, i=i: leaf[i], stacked) for i in range(4)]
    expected = jnp.stack([single(candidate, batch, None) for candidate in candidates])
    assert losses.shape == (4,)
    np.testing.assert_allclose(losses, expected, atol=1e-6)
    assert bool(jnp.all((losses >= 0) & (losses <= 1)))


def _corrupted_references(task: tr.DateTranslation) -> tuple[np.ndarray, np.ndarray]:
    """Hypotheses made from the test references: exact, substituted, cut short, extended, empty."""
    ref = np.asarray(task.data.arrays["test"]["target"])
    hyp = ref.copy()
    hyp[1, 1] = 3 if ref[1, 1] != 3 else 4  # one wrong token
    hyp[2, 2:] = tr.PAD_ID  # cut after two tokens
    hyp[2, 2] = tr.EOS_ID
    hyp[3] = np.roll(hyp[3], 1)  # shifted by one
    hyp[3, 0] = 4
    hyp[4] = tr.PAD_ID  # nothing, and no EOS
    hyp[5, 0], hyp[5, 3] = hyp[5, 3], hyp[5, 0]  # two tokens swapped
    return hyp, ref


def test_bleu_matches_sacrebleu():
    task = _task()
    hyp, ref = _corrupted_references(task)
    hyp_text = [_words(task, row) for row in hyp]
    ref_text = [_words(task, row) for row in ref]
    sentence = _sentence_bleu()(hyp, ref)
    expected = [
        sacrebleu.sentence_bleu(h, [r], tokenize="none").score
        for h, r in zip(hyp_text, ref_text, strict=True)
    ]
    np.testing.assert_allclose(sentence, expected, atol=1e-3)
    assert 0 < sentence[1] < 100 and sentence[0] == 100

    weight = jnp.ones(6, jnp.float32)
    scores = task.summarize_scores(_score_translations()(hyp, ref, weight))
    corpus = sacrebleu.corpus_bleu(hyp_text, [ref_text], tokenize="none").score
    assert scores["bleu"] == pytest.approx(corpus, abs=1e-3)
    assert scores["sentence_bleu"] == pytest.approx(np.mean(expected), abs=1e-3)
    assert scores["task_loss"] == pytest.approx(1 - np.mean(expected) / 100, abs=1e-5)
    assert scores["exact_match"] == pytest.approx(1 / 6)


def test_references_score_perfectly():
    task = _task()
    ref = task.data.arrays["test"]["target"]
    np.testing.assert_allclose(_sentence_bleu()(ref, ref), 100.0, rtol=1e-6)
    weight = jnp.array([1, 1, 1, 1, 0, 0], jnp.float32)
    scores = task.summarize_scores(_score_translations()(ref, ref, weight))
    assert scores["bleu"] == pytest.approx(100.0)
    assert scores["sentence_bleu"] == pytest.approx(100.0)
    assert scores["exact_match"] == 1.0
    assert scores["task_loss"] == pytest.approx(0.0, abs=1e-6)


def test_sample_log_probs_are_teacher_forced_and_differentiable():
    task, params, batch = _task(), _params(), _batch()
    key, num_samples = _key(3), 3

    @jax.jit
    def run(params):
        def objective(params):
            samples = task.sample(params, batch, key, num_samples, None)
            return jnp.sum(jnp.where(samples.mask, samples.log_probs, 0.0)), samples

        (_, samples), grads = jax.value_and_grad(objective, has_aux=True)(params)
        # The same samples drawn again, scored by the decoding loop and from scratch.
        output = task.draw_samples(params, batch["prompt"], key, num_samples)
        prompt = jnp.repeat(batch["prompt"], num_samples, axis=0)
        log_probs = _teacher_forced_log_probs(task, params, prompt, output.tokens)
        generated = jnp.arange(output.tokens.shape[1]) < output.lengths[:, None]
        recomputed = jnp.sum(jnp.where(generated, log_probs, 0.0), axis=1)
        target = jnp.repeat(batch["target"], num_samples, axis=0)
        costs = 1 - task.sentence_bleu(output.tokens, target) / 100
        return samples, grads, output, recomputed, costs

    samples, grads, output, recomputed, costs = run(params)
    assert samples.log_probs.shape == samples.costs.shape == samples.mask.shape == (4, 3)
    assert samples.mask.dtype == jnp.bool_ and bool(jnp.all(samples.mask[:, 0]))
    assert bool(jnp.all((samples.costs >= 0) & (samples.costs <= 1)))
    grad_norm = math.sqrt(sum(float(jnp.sum(g**2)) for g in jax.tree.leaves(grads)))
    assert 0 < grad_norm < math.inf
    loop = jnp.sum(output.log_probs, axis=1).reshape(4, 3)
    np.testing.assert_allclose(samples.log_probs, loop, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(samples.log_probs, recomputed.reshape(4, 3), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(samples.costs, costs.reshape(4, 3), atol=1e-6)
    assert bool(jnp.all(samples.log_probs < 0))


def test_make_task_evaluate_and_describe():
    task = make_task("translation", TINY)
    assert isinstance(task, Task) and task.name == "translation"
    params = _params()
    keys = {"bleu", "sentence_bleu", "exact_match", "nll", "task_loss"}
    assert {metric.name for metric in task.metrics} == keys
    assert task.primary_metric in keys
    lower = {metric.name: metric.lower_is_better for metric in task.metrics}
    assert lower == dict(
        bleu=False, sentence_bleu=False, exact_match=False, nll=True, task_loss=True
    )
    results = _task().evaluate(params, None, "valid")
    assert set(results) == keys
    assert all(isinstance(value, float) and math.isfinite(value) for value in results.values())
    assert 0 <= results["bleu"] <= 100 and 0 <= results["task_loss"] <= 1
    outputs = _task().translate_split(params, "valid")
    assert outputs.shape == (6, _task().target_len)
    text = _task().describe(params, None, "test", 2)
    for example in _task().data.examples["test"][:2]:
        assert example.source in text and example.target in text


def test_config_sets_every_task_field():
    config = translation_config.get_config()
    assert config.task == "translation"
    assert set(config.task_config.keys()) == set(tr.DEFAULTS)
    for name, default in tr.DEFAULTS.items():
        assert config.task_config[name] == default, name
    with pytest.raises(ValueError, match="num_trian"):
        tr.DateTranslation({"num_trian": 3})
