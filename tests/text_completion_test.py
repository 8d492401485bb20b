"""Tests for mlesearch.experiments.tasks.text_completion: data, tokenizer, losses, evaluation."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mlesearch import metrics
from mlesearch.experiments.configs import text_completion as text_completion_config
from mlesearch.experiments.tasks import text_completion as tc
from mlesearch.experiments.tasks.base import Samples, Task
from mlesearch.seq.decoding import DecodeOutput, greedy_decode, sample_decode, transformer_decoder
from mlesearch.seq.models import TransformerLM

BATCH = 4
NUM_CANDIDATES = 4


def tiny_config(cache_dir: str, task_loss: str = "lm") -> ml_collections.ConfigDict:
    """A task config small enough to compile in seconds: short sentences, a one-layer model."""
    return ml_collections.ConfigDict(
        dict(
            vocab_size=512,
            min_words=4,
            min_tokens=6,
            max_tokens=14,
            heldout_fraction=0.25,
            num_train=0,
            num_valid=8,
            num_test=8,
            cache_dir=cache_dir,
            prefix_len=3,
            max_decode_len=16,
            num_layers=1,
            num_heads=2,
            embed_dim=16,
            mlp_dim=32,
            batch_size=BATCH,
            task_loss=task_loss,
            rep_n=4,
            length_weight=2.0,
            sample_temperature=1.0,
            dedupe_samples=False,
            eval_batch_size=8,
        )
    )


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("tokenizers"))


@pytest.fixture(scope="module")
def config(cache_dir: str) -> ml_collections.ConfigDict:
    config = tiny_config(cache_dir)
    config.dedupe_samples = True
    return config


@pytest.fixture(scope="module")
def data(config: ml_collections.ConfigDict) -> tc.TextCompletionData:
    return tc.build_data(config)


@pytest.fixture(scope="module")
def task(config: ml_collections.ConfigDict) -> Task:
    return tc.make_task(config)


@pytest.fixture(scope="module")
def params(task: Task) -> dict:
    return task.init_params(jax.random.key(0))


@pytest.fixture(scope="module")
def candidate_losses(task: Task) -> Callable:
    """``task.task_loss`` of stacked parameter trees, jitted and vmapped."""
    return jax.jit(jax.vmap(task.task_loss, in_axes=(0, None, None)))


def stack(trees: list[dict]) -> dict:
    """Stacks parameter trees along a new leading axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def constant_token_params(params: dict, token: int, strength: float = 10.0) -> dict:
    """Parameters whose next-token distribution is the same everywhere, with ``token`` on top.

    The final LayerNorm's scale is zeroed, so its output is its bias whatever the input, and the
    tied output head then gives the same logits at every position: ``embedding @ bias / sqrt(d)``.
    Only ``token`` has a nonzero first embedding coordinate, ``strength``, and the bias points
    along it: ``token`` has logit ``strength / sqrt(d)`` and every other token 0.
    """
    inner = jax.tree.map(lambda x: x, params["params"])
    embedding = inner["token_embed"]["embedding"]
    dim = embedding.shape[1]
    embedding = embedding.at[:, 0].set(0.0).at[token, 0].set(strength)
    inner["token_embed"]["embedding"] = embedding
    inner["final_norm"] = {
        "scale": jnp.zeros((dim,)),
        "bias": jnp.zeros((dim,)).at[0].set(1.0),
    }
    return {"params": inner}


# ---------------------------------------------------------------------------------------------
# Data and tokenizer.


def test_clean_topics_keeps_prose_and_drops_code() -> None:
    topics = {
        "demo": (
            "The \u201cdemo\u201d statement\n*******************\n\n"
            "A demo statement prints its argument.  It never fails, e.g. on\nempty input.\n\n"
            '   demo_stmt ::= "demo" expression\n\n'
            ">>> demo(1)\n1\n\n"
            "   x = f(y)\n   z = g(x)\n\n"
            "1. The argument is *evaluated* first.\n"
        )
    }
    assert tc.clean_topics(topics) == [
        "A demo statement prints its argument.",
        "It never fails, e.g. on empty input.",
        "The argument is evaluated first.",
    ]


def test_split_is_deterministic_and_disjoint(data: tc.TextCompletionData) -> None:
    sentences = tc.load_sentences()
    assert len(sentences) == len(set(sentences)) > 1000
    train, heldout = tc.split_sentences(sentences, 0.25)
    shuffled = list(sentences)
    random.Random(0).shuffle(shuffled)
    assert tc.split_sentences(shuffled, 0.25) == (train, heldout)
    assert not set(train) & set(heldout)
    assert sorted(train + heldout) == sorted(sentences)
    assert 0.15 < len(heldout) / len(sentences) < 0.35

    split_sets = {name: set(data.sentences[name]) for name in tc.SPLITS}
    assert not split_sets["train"] & split_sets["valid"]
    assert not split_sets["train"] & split_sets["test"]
    assert not split_sets["valid"] & split_sets["test"]
    assert split_sets["train"] <= set(train)
    assert split_sets["valid"] | split_sets["test"] <= set(heldout)
    assert len(data.splits["valid"]) == len(data.splits["test"]) == 8


def test_rows_are_tokens_then_eos_then_padding(
    data: tc.TextCompletionData, config: ml_collections.ConfigDict
) -> None:
    for name in tc.SPLITS:
        tokens = data.splits[name]
        assert tokens.dtype == np.int32
        assert tokens.shape == (len(data.sentences[name]), config.max_tokens + 1)
        for row, sentence in zip(tokens, data.sentences[name], strict=True):
            assert np.sum(row == tc.EOS_ID) == 1
            length = int(np.argmax(row == tc.EOS_ID))
            assert config.min_tokens <= length <= config.max_tokens
            assert np.all(row[:length] > tc.EOS_ID)
            assert np.all(row[length + 1 :] == tc.PAD_ID)
            assert data.tokenizer.decode([int(i) for i in row[:length]]) == sentence


def test_tokenizer_is_deterministic_and_cached(tmp_path, data: tc.TextCompletionData) -> None:
    train, _ = tc.split_sentences(tc.load_sentences(), 0.25)
    first = tc.train_tokenizer(train, 300)
    second = tc.train_tokenizer(train, 300)
    assert first.to_str() == second.to_str()
    merges = json.loads(first.to_str())["model"]["merges"]
    assert len(merges) > 100
    assert first.get_vocab_size() == 300
    assert first.token_to_id(tc.PAD_TOKEN) == tc.PAD_ID
    assert first.token_to_id(tc.EOS_TOKEN) == tc.EOS_ID

    cached = tc.load_or_train_tokenizer(train, 300, tmp_path)
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1
    assert cached.to_str() == first.to_str()
    assert tc.load_or_train_tokenizer(train, 300, tmp_path).to_str() == first.to_str()
    assert list(tmp_path.glob("*.json")) == files
    # Other settings get another file.
    tc.load_or_train_tokenizer(train[:-1], 300, tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_default_config_builds_data(tmp_path) -> None:
    config = text_completion_config.get_config()
    task_config = config.task_config
    assert config.task == "text_completion"
    task_config.cache_dir = str(tmp_path)
    data = tc.build_data(task_config)
    assert len(data.splits["train"]) > 500
    assert len(data.splits["valid"]) == task_config.num_valid
    assert len(data.splits["test"]) > 100
    longest = task_config.max_tokens + 1 - task_config.prefix_len
    assert task_config.max_decode_len >= 2 * longest


def test_make_task_rejects_bad_lengths(cache_dir: str) -> None:
    config = tiny_config(cache_dir)
    config.max_decode_len = 4
    with pytest.raises(ValueError, match="max_decode_len"):
        tc.make_task(config)
    config = tiny_config(cache_dir, task_loss="bleu")
    with pytest.raises(ValueError, match="task_loss"):
        tc.make_task(config)
    config = tiny_config(cache_dir)
    config.train_decode_scale = 2.0  # 2 * 12 tokens > max_decode_len = 16
    with pytest.raises(ValueError, match="train_decode_scale"):
        tc.make_task(config)
    config = tiny_config(cache_dir)
    config.length_weight = -1.0
    with pytest.raises(ValueError, match="length_weight"):
        tc.make_task(config)


# ---------------------------------------------------------------------------------------------
# Losses and sampling.


def test_train_batch_shapes(
    task: Task, data: tc.TextCompletionData, config: ml_collections.ConfigDict
) -> None:
    batch = jax.jit(task.train_batch)(jax.random.key(3))
    assert set(batch) == {"tokens"}
    assert batch["tokens"].shape == (BATCH, config.max_tokens + 1)
    assert batch["tokens"].dtype == jnp.int32
    rows = {tuple(row) for row in data.splits["train"].tolist()}
    assert all(tuple(row) in rows for row in np.asarray(batch["tokens"]).tolist())


def test_mle_loss_and_gradient_are_finite(task: Task, params: dict) -> None:
    batch = task.train_batch(jax.random.key(1))
    value_and_grad = jax.jit(jax.value_and_grad(task.mle_loss))
    loss, grads = value_and_grad(params, batch)
    # Uniform predictions over the vocabulary would score log(vocab_size).
    assert np.isfinite(loss) and 0.5 * np.log(512) < loss < 2 * np.log(512)
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms)) and max(norms) > 0


def test_task_loss_jits_and_vmaps_over_candidates(
    task: Task, params: dict, candidate_losses: Callable
) -> None:
    batch = task.train_batch(jax.random.key(2))
    candidates = [
        jax.tree.map(lambda x, i=i: x * (1.0 + 0.5 * i), params) for i in range(NUM_CANDIDATES)
    ]
    batched = candidate_losses(stack(candidates), batch, params)
    # Each candidate on its own, in every row, so that one compiled function serves.
    separate = np.array(
        [candidate_losses(stack([p] * NUM_CANDIDATES), batch, params)[0] for p in candidates]
    )
    assert batched.shape == (NUM_CANDIDATES,)
    assert np.all(np.isfinite(separate)) and np.all(separate > 0)
    assert len(np.unique(separate)) > 1
    np.testing.assert_allclose(batched, separate, rtol=1e-5, atol=1e-4)


def test_sample_log_probs_match_decoding_and_have_gradients(
    task: Task, params: dict, data: tc.TextCompletionData, config: ml_collections.ConfigDict
) -> None:
    batch = task.train_batch(jax.random.key(4))
    key = jax.random.key(5, impl="rbg")
    num_samples = 3

    decoder = transformer_decoder(tc.model_config(config, data.vocab_size))
    prefix = jnp.repeat(batch["tokens"][:, : config.prefix_len], num_samples, axis=0)

    def total_log_prob(p: dict) -> tuple[jax.Array, tuple[Samples, DecodeOutput]]:
        samples = task.sample(p, batch, key, num_samples, params)
        # The decoding loop scores the same tokens with the key/value cache: same numbers.
        output = sample_decode(
            decoder,
            jax.lax.stop_gradient(p),
            prefix,
            key,
            max_new_tokens=config.max_decode_len,
            eos_id=tc.EOS_ID,
            pad_id=tc.PAD_ID,
        )
        return jnp.sum(samples.log_probs), (samples, output)

    sample_and_grads = jax.jit(jax.grad(total_log_prob, has_aux=True))
    log_prob_grads, (samples, output) = sample_and_grads(params)
    assert isinstance(samples, Samples)
    for field in samples:
        assert field.shape == (BATCH, num_samples)
    assert samples.costs.dtype == jnp.float32
    # Random parameters never sample the same continuation twice here.
    assert samples.mask.dtype == jnp.bool_ and bool(jnp.all(samples.mask))

    expected = output.log_probs.sum(axis=1).reshape(BATCH, num_samples)
    np.testing.assert_allclose(samples.log_probs, expected, rtol=1e-4, atol=1e-4)
    # With the sampling model as reference, the "lm" cost is the sample's own NLL.
    np.testing.assert_allclose(samples.costs, -expected, rtol=1e-4, atol=1e-4)

    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(log_prob_grads)]
    assert all(np.isfinite(norms)) and max(norms) > 0

    # A model that always emits one token samples the same continuation every time: with
    # dedupe_samples, only the first sample of each input counts.
    degenerate = constant_token_params(params, 7, strength=400.0)
    _, (repeated, _) = sample_and_grads(degenerate)
    np.testing.assert_array_equal(repeated.mask, np.tile([True, False, False], (BATCH, 1)))


# ---------------------------------------------------------------------------------------------
# Evaluation.

EVALUATE_KEYS = {
    "task_loss",
    "task_loss_per_token",
    "lm_nll",
    "nll_per_token",
    "degeneration",
    "repetition_loss",
    "len_ratio",
    "seq_rep_4",
    "non_term",
    "ppl",
    "len_gap",
    "avg_len",
    "avg_len_ref",
    "seq_rep_4_ref",
    "mle_loss",
    "num_examples",
}


def test_evaluate_returns_documented_finite_metrics(task: Task, params: dict) -> None:
    for split in ("valid", "test"):
        results = task.evaluate(params, params, split)
        assert set(results) == EVALUATE_KEYS
        assert results.pop("num_examples") == 8
        assert all(isinstance(v, float) and math.isfinite(v) for v in results.values())
    assert {metric.name for metric in task.metrics} <= EVALUATE_KEYS
    assert task.primary_metric == "lm_nll"
    assert set(tc.PRIMARY_METRICS) == set(tc.TASK_LOSSES)
    for task_loss, primary in tc.PRIMARY_METRICS.items():
        names = [metric.name for metric in tc._table_metrics(task_loss)]
        assert primary in names and set(names) <= EVALUATE_KEYS
    # The configured task loss ("lm") is reported under its own name too.
    assert results["task_loss"] == results["lm_nll"]
    assert 0 <= results["seq_rep_4"] < 1 and 0 <= results["non_term"] <= 1
    assert results["ppl"] > 1
    with pytest.raises(ValueError, match="split"):
        task.evaluate(params, params, "nope")
    text = task.describe(params, params, "valid", 2)
    assert text.count("prefix:") == 2 and text.count("reference:") == 2


def test_constant_token_model_is_fully_degenerate(
    task: Task,
    params: dict,
    config: ml_collections.ConfigDict,
    candidate_losses: Callable,
) -> None:
    token = 7
    degenerate = constant_token_params(params, token)
    length = config.max_decode_len
    results = task.evaluate(degenerate, degenerate, "valid")
    assert results["non_term"] == 1.0
    assert results["avg_len"] == float(length)
    # A constant row of L tokens has L - 3 four-grams, all equal.
    seq_rep = 1.0 - 1.0 / (length - 3)
    np.testing.assert_allclose(results["seq_rep_4"], seq_rep, rtol=1e-6)
    # Every token has the same log-probability under the same model.
    vocab_size = degenerate["params"]["token_embed"]["embedding"].shape[0]
    logits = jnp.zeros(vocab_size).at[token].set(10.0 / math.sqrt(config.embed_dim))
    nll = -float(jax.nn.log_softmax(logits)[token])
    np.testing.assert_allclose(results["task_loss"], length * nll, rtol=1e-5)
    np.testing.assert_allclose(results["lm_nll"], length * nll, rtol=1e-5)
    np.testing.assert_allclose(results["nll_per_token"], nll, rtol=1e-5)
    np.testing.assert_allclose(results["task_loss_per_token"], nll, rtol=1e-5)
    np.testing.assert_allclose(results["repetition_loss"], seq_rep + 1.0, rtol=1e-6)
    # Every continuation runs on: the length gap is that of ``length`` to the references' mean.
    gap = (length - results["avg_len_ref"]) / results["avg_len_ref"]
    expected = seq_rep + 1.0 + config.length_weight * gap
    np.testing.assert_allclose(results["degeneration"], expected, rtol=1e-6)
    np.testing.assert_allclose(results["len_ratio"], length / results["avg_len_ref"], rtol=1e-6)
    batch = task.train_batch(jax.random.key(8))
    losses = candidate_losses(stack([degenerate] * NUM_CANDIDATES), batch, degenerate)
    np.testing.assert_allclose(losses, length * nll, rtol=1e-5)


def test_model_that_ends_at_once_never_repeats_but_falls_short(
    task: Task, params: dict, data: tc.TextCompletionData, config: ml_collections.ConfigDict
) -> None:
    ending = constant_token_params(params, tc.EOS_ID)
    results = task.evaluate(ending, params, "valid")
    assert results["non_term"] == 0.0
    assert results["seq_rep_4"] == 0.0
    assert results["repetition_loss"] == 0.0
    assert results["avg_len"] == 1.0
    # Each continuation is EOS alone: its summed NLL is -log p(EOS | prefix) under the reference.
    tokens = data.splits["valid"]
    model = TransformerLM(tc.model_config(config, data.vocab_size))
    logits = np.asarray(model.apply(params, jnp.asarray(tokens[:, : config.prefix_len])))
    eos_nll = -np.asarray(jax.nn.log_softmax(logits[:, -1]))[:, tc.EOS_ID]
    np.testing.assert_allclose(results["lm_nll"], eos_nll.mean(), rtol=1e-5)
    np.testing.assert_allclose(results["nll_per_token"], eos_nll.mean(), rtol=1e-5)
    reference_lengths = np.argmax(tokens[:, config.prefix_len :] == tc.EOS_ID, axis=1) + 1
    np.testing.assert_allclose(results["avg_len_ref"], reference_lengths.mean())
    np.testing.assert_allclose(results["len_ratio"], 1.0 / reference_lengths.mean(), rtol=1e-6)
    gap = 1.0 - 1.0 / reference_lengths.mean()
    np.testing.assert_allclose(results["degeneration"], config.length_weight * gap, rtol=1e-6)


def eos_leaning_params(params: dict, strength: float = 6.0) -> dict:
    """``params`` with the final LayerNorm's bias pushed towards EOS: some greedy continuations
    of the tiny model end at once, the others never (lengths 1 and ``max_decode_len``)."""
    inner = jax.tree.map(lambda x: x, params["params"])
    eos_embedding = inner["token_embed"]["embedding"][tc.EOS_ID]
    bias = inner["final_norm"]["bias"] + strength * eos_embedding / jnp.linalg.norm(eos_embedding)
    inner["final_norm"] = {"scale": inner["final_norm"]["scale"], "bias": bias}
    return {"params": inner}


def seq_rep_by_hand(tokens: list[int], n: int) -> float:
    """1 - unique / all n-grams of the tokens before the first EOS (0 with no n-gram)."""
    if tc.EOS_ID in tokens:
        tokens = tokens[: tokens.index(tc.EOS_ID)]
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def test_evaluate_matches_a_computation_row_by_row(
    task: Task,
    params: dict,
    data: tc.TextCompletionData,
    config: ml_collections.ConfigDict,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Continuations that end at once are scored on their first 4 columns, the others on all 16.
    monkeypatch.setattr(tc, "_LM_WIDTH_STEP", 4)
    evaluated = eos_leaning_params(params)
    results = task.evaluate(evaluated, params, "valid")

    tokens = data.splits["valid"]
    prefix = jnp.asarray(tokens[:, : config.prefix_len])
    model_config = tc.model_config(config, data.vocab_size)
    output = greedy_decode(
        transformer_decoder(model_config),
        evaluated,
        prefix,
        max_new_tokens=config.max_decode_len,
        eos_id=tc.EOS_ID,
        pad_id=tc.PAD_ID,
    )
    continuations, lengths = np.asarray(output.tokens), np.asarray(output.lengths)
    # Both kinds of continuation, so that sums over tokens differ from means over rows.
    assert len(set(lengths.tolist())) > 1
    # The summed NLL under the reference from one full-width forward pass, in float64.
    full = np.concatenate([np.asarray(prefix), continuations], axis=1)
    logits = np.asarray(TransformerLM(model_config).apply(params, jnp.asarray(full[:, :-1])))
    logits = logits[:, config.prefix_len - 1 :].astype(np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    token_log_probs = np.take_along_axis(log_probs, continuations[..., None], axis=-1)[..., 0]
    inside = np.arange(config.max_decode_len)[None, :] < lengths[:, None]
    lm_nll = -(token_log_probs * inside).sum(axis=1)
    repetition = np.array(
        [seq_rep_by_hand(row.tolist(), config.rep_n) for row in continuations]
    ) + np.array([float(tc.EOS_ID not in row) for row in continuations])
    reference_lengths = np.argmax(tokens[:, config.prefix_len :] == tc.EOS_ID, axis=1) + 1
    gap = abs(lengths.mean() - reference_lengths.mean()) / reference_lengths.mean()

    np.testing.assert_allclose(results["lm_nll"], lm_nll.mean(), rtol=1e-5)
    np.testing.assert_allclose(results["task_loss"], lm_nll.mean(), rtol=1e-5)
    np.testing.assert_allclose(results["nll_per_token"], lm_nll.sum() / lengths.sum(), rtol=1e-5)
    np.testing.assert_allclose(
        results["task_loss_per_token"], lm_nll.sum() / lengths.sum(), rtol=1e-5
    )
    np.testing.assert_allclose(results["repetition_loss"], repetition.mean(), rtol=1e-6)
    np.testing.assert_allclose(
        results["degeneration"], repetition.mean() + config.length_weight * gap, rtol=1e-6
    )
    np.testing.assert_allclose(results["avg_len"], lengths.mean())
    np.testing.assert_allclose(
        results["len_ratio"], lengths.mean() / reference_lengths.mean(), rtol=1e-6
    )


def test_degeneration_task_scores_samples_and_greedy_continuations_alike(
    cache_dir: str, data: tc.TextCompletionData
) -> None:
    config = tiny_config(cache_dir, task_loss="degeneration")
    config.train_decode_scale = 1.0  # fine-tuning cuts continuations at the batch's longest
    task = tc.make_task(config)
    assert task.primary_metric == "degeneration"
    params = eos_leaning_params(task.init_params(jax.random.key(0)))
    batch = task.train_batch(jax.random.key(4))
    tokens = batch["tokens"]
    prefix_len, num_samples = config.prefix_len, 3
    decode_len = tc.train_decode_len(config)
    budget = tc.decode_budget(tokens[:, prefix_len:], config.train_decode_scale)
    reference_lengths = tc.continuation_lengths(
        tokens[:, prefix_len:], tokens.shape[1] - prefix_len
    )
    decoder = transformer_decoder(tc.model_config(config, data.vocab_size))
    key = jax.random.key(5, impl="rbg")

    def costs(continuation: jax.Array, lengths: jax.Array, rows: jax.Array) -> jax.Array:
        continuation, lengths = tc.cut_at_budget(continuation, lengths, budget)
        return tc.continuation_costs(
            "degeneration",
            None,
            None,
            None,
            continuation,
            lengths,
            config.rep_n,
            reference_lengths=rows,
            length_weight=config.length_weight,
        )

    @jax.jit
    def task_and_by_hand(params: dict) -> tuple[Samples, jax.Array, jax.Array, jax.Array]:
        samples = task.sample(params, batch, key, num_samples, params)
        repeated = jnp.repeat(tokens[:, :prefix_len], num_samples, axis=0)
        sampled = sample_decode(
            decoder, params, repeated, key, max_new_tokens=decode_len, eos_id=tc.EOS_ID
        )
        sample_costs = costs(
            sampled.tokens, sampled.lengths, jnp.repeat(reference_lengths, num_samples)
        )
        greedy = greedy_decode(
            decoder, params, tokens[:, :prefix_len], max_new_tokens=decode_len, eos_id=tc.EOS_ID
        )
        continuation, lengths = tc.cut_at_budget(greedy.tokens, greedy.lengths, budget)
        greedy_loss = tc.degeneration_loss(
            continuation, lengths, reference_lengths, config.rep_n, config.length_weight
        )
        return samples, sample_costs, task.task_loss(params, batch, params), greedy_loss

    samples, sample_costs, task_loss, greedy_loss = task_and_by_hand(params)
    np.testing.assert_allclose(samples.costs, sample_costs.reshape(BATCH, num_samples), rtol=1e-6)
    # The task loss charges the batch's mean length gap, the samples their own shortfall.
    np.testing.assert_allclose(task_loss, greedy_loss, rtol=1e-6)


# A value other than `config`'s for each of `FINE_TUNING_FIELDS`.
FINE_TUNING_CHANGES = {
    "task_loss": "degeneration",
    "rep_n": 3,
    "length_weight": 0.5,
    "sample_temperature": 0.7,
    "dedupe_samples": False,
    "train_decode_scale": 1.0,
    "eval_batch_size": 3,
}


def test_fine_tuning_fields_leave_pretraining_as_it_was(
    config: ml_collections.ConfigDict, task: Task, params: dict
) -> None:
    assert set(FINE_TUNING_CHANGES) == set(tc.FINE_TUNING_FIELDS)
    changed = ml_collections.ConfigDict(config.to_dict())
    for field, value in FINE_TUNING_CHANGES.items():
        assert config.get(field) != value
        changed[field] = value
    other = tc.make_task(changed)
    jax.tree.map(np.testing.assert_array_equal, other.init_params(jax.random.key(0)), params)
    key = jax.random.key(11)
    np.testing.assert_array_equal(other.train_batch(key)["tokens"], task.train_batch(key)["tokens"])
    for split in ("valid", "test"):
        assert other.evaluate_mle(params, split) == task.evaluate_mle(params, split)


def test_chunks_are_as_even_as_possible() -> None:
    assert tc._chunk_size(500, 256) == 250
    assert tc._chunk_size(690, 256) == 230
    assert tc._chunk_size(8, 8) == 8
    assert tc._chunk_size(3, 256) == 3


def test_repetition_costs() -> None:
    pad, eos = tc.PAD_ID, tc.EOS_ID
    continuation = jnp.array(
        [
            [7] * 10,  # never ends, one 4-gram seven times: 6/7 + 1
            [5, 6, 7, 8, 5, 6, 7, 8, eos, pad],  # ends; 2 of 5 four-grams repeat
            [5, 6, eos, pad, pad, pad, pad, pad, pad, pad],  # ends, too short to repeat
            [5, 6, 7, 8, 9, 10, 11, 12, 13, 14],  # never ends, no repeat
        ],
        jnp.int32,
    )
    lengths = tc.continuation_lengths(continuation, 10)
    np.testing.assert_array_equal(lengths, [10, 9, 3, 10])
    costs = tc.continuation_costs("repetition", None, None, None, continuation, lengths)
    np.testing.assert_allclose(costs, [6 / 7 + 1, 1 / 5, 0.0, 1.0], rtol=1e-6)
    with pytest.raises(ValueError, match="task_loss"):
        tc.continuation_costs("bleu", None, None, None, continuation, lengths)


def test_degeneration_costs() -> None:
    pad, eos = tc.PAD_ID, tc.EOS_ID
    reference = [5, 6, 7, 8, 9, 5, 6, 7, 8, eos]  # 10 tokens with EOS; 1 of 6 four-grams repeats
    continuation = jnp.array(
        [
            [eos] + [pad] * 9,  # ends at once: 9/10 of the reference's length missing
            [7] * 10,  # never ends, one 4-gram seven times, as long as the reference
            reference,  # the reference itself: its own seq-rep-4 only
            [5, 6, 7, 8, eos, pad, pad, pad, pad, pad],  # half the reference's length
        ],
        jnp.int32,
    )
    lengths = tc.continuation_lengths(continuation, 10)
    reference_lengths = jnp.full((4,), 10, jnp.int32)
    weight = 2.0
    costs = tc.continuation_costs(
        "degeneration",
        None,
        None,
        None,
        continuation,
        lengths,
        reference_lengths=reference_lengths,
        length_weight=weight,
    )
    np.testing.assert_allclose(costs, [weight * 0.9, 6 / 7 + 1, 1 / 6, weight * 0.5], rtol=1e-6)
    np.testing.assert_allclose(
        tc.length_shortfall(lengths, reference_lengths), [0.9, 0.0, 0.0, 0.5], rtol=1e-6
    )
    # Longer than the reference costs nothing extra: running on pays through non-termination.
    np.testing.assert_allclose(tc.length_shortfall(jnp.array([25]), jnp.array([10])), [0.0], atol=0)
    with pytest.raises(ValueError, match="reference_lengths"):
        tc.continuation_costs("degeneration", None, None, None, continuation, lengths)
    # The task loss: the mean repetition cost plus the gap of total lengths, |26 - 40| / 40.
    np.testing.assert_allclose(tc.length_gap(lengths, reference_lengths), 14 / 40, rtol=1e-6)
    loss = tc.degeneration_loss(continuation, lengths, reference_lengths, 4, weight)
    repetition = (0.0 + (6 / 7 + 1) + 1 / 6 + 0.0) / 4
    np.testing.assert_allclose(loss, repetition + weight * 14 / 40, rtol=1e-6)
    # Too long costs as much as too short.
    np.testing.assert_allclose(tc.length_gap(jnp.array([12]), jnp.array([10])), 0.2, rtol=1e-6)
    np.testing.assert_allclose(tc.length_gap(jnp.array([8]), jnp.array([10])), 0.2, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Paragraphs: the paper's setting.


def test_clean_paragraphs_keeps_multi_sentence_prose() -> None:
    text = (
        "Return the value. It may be cached for\nlater calls.\n\n"
        "A single sentence here.\n\n"
        ">>> f()\n3\n\n"
        "Raises an error when the key is missing. See *KeyError* for details."
    )
    assert tc.clean_paragraphs(text, min_words=3) == [
        "Return the value. It may be cached for later calls.",
        "Raises an error when the key is missing. See KeyError for details.",
    ]
    assert tc.clean_paragraphs(text, min_words=3, min_sentences=1)[1] == "A single sentence here."


def test_paragraphs_are_split_by_document_without_overlap() -> None:
    documents = tc.load_paragraphs("topics+docstrings")
    assert any(name.startswith("stdlib:") for name in documents)
    assert any(name.startswith("topic:") for name in documents)
    paragraphs = [p for kept in documents.values() for p in kept]
    assert len(paragraphs) == len(set(paragraphs)) > 1500
    splits = tc.split_documents(documents, 0.3)
    assert sorted(p for split in splits.values() for p in split) == sorted(paragraphs)
    owner = {p: name for name, kept in documents.items() for p in kept}
    split_of_document = {}
    for split, kept in splits.items():
        for paragraph in kept:
            assert split_of_document.setdefault(owner[paragraph], split) == split
    shuffled = dict(random.Random(0).sample(list(documents.items()), len(documents)))
    assert tc.split_documents(shuffled, 0.3) == splits
    assert len(tc.load_paragraphs("topics")) < len(documents)


def test_held_out_paragraphs_give_a_row_per_prefix_offset(data: tc.TextCompletionData) -> None:
    texts = ["The first paragraph has several words in it. It ends here."]
    tokens, kept = tc.encode_with_offsets(data.tokenizer, texts, (0, 3), 2, 40)
    ids = data.tokenizer.encode(texts[0]).ids
    assert kept == texts * 2 and tokens.shape == (2, 41)
    np.testing.assert_array_equal(tokens[0, : len(ids)], ids)
    np.testing.assert_array_equal(tokens[1, : len(ids) - 3], ids[3:])
    assert tokens[1, len(ids) - 3] == tc.EOS_ID
    assert tc.encode_with_offsets(data.tokenizer, texts, (0,), 2, len(ids) - 1)[0].shape[0] == 0


def test_decoding_budget_cuts_continuations() -> None:
    references = jnp.array([[5, 6, tc.EOS_ID, 0, 0, 0], [5, 6, 7, 8, tc.EOS_ID, 0]])
    budget = tc.decode_budget(references, 1.3)
    assert int(budget) == 7  # ceil(1.3 * 5), the longest reference with its EOS
    continuation = jnp.array([[9, 9, 9, 9, 9, 9, 9, 9, 9], [9, tc.EOS_ID, 0, 0, 0, 0, 0, 0, 0]])
    cut, lengths = tc.cut_at_budget(continuation, jnp.array([9, 2]), budget)
    np.testing.assert_array_equal(cut[0], [9] * 7 + [0, 0])
    np.testing.assert_array_equal(lengths, [7, 2])
    assert float(metrics.non_termination(cut, eos_id=tc.EOS_ID)[0]) == 1.0


def paragraph_config(cache_dir: str) -> ml_collections.ConfigDict:
    config = tiny_config(cache_dir)
    config.unit = "paragraph"
    config.sources = "topics+docstrings"
    config.min_sentences = 2
    config.prefix_offsets = (0, 4)
    config.min_tokens = 8
    config.max_tokens = 40
    config.heldout_fraction = 0.3
    config.num_valid = 10
    config.num_test = 10
    config.max_decode_len = 2 * (40 + 1 - 3)
    config.train_decode_scale = 1.3
    return config


def test_paragraph_task_decodes_within_the_batch_budget(cache_dir: str) -> None:
    config = paragraph_config(cache_dir)
    task = tc.make_task(config)
    assert tc.train_decode_len(config) == 50  # ceil(1.3 * 38)
    params = task.init_params(jax.random.key(0))
    batch = jax.jit(task.train_batch)(jax.random.key(1))
    loss = jax.jit(task.task_loss)(params, batch, params)
    assert np.isfinite(float(loss)) and float(loss) > 0
    samples = jax.jit(task.sample, static_argnums=3)(params, batch, jax.random.key(2), 2, params)
    assert samples.costs.shape == (BATCH, 2)
    metrics_valid = task.evaluate(params, params, "valid")
    assert metrics_valid["num_examples"] == 10
    assert task.evaluate_mle(params, "valid") == pytest.approx(metrics_valid["mle_loss"], 1e-5)


def test_bad_paragraph_settings_are_reported(cache_dir: str) -> None:
    config = paragraph_config(cache_dir)
    config.train_decode_scale = 0.5
    with pytest.raises(ValueError, match="train_decode_scale"):
        tc.make_task(config)
    config = paragraph_config(cache_dir)
    config.unit = "page"
    with pytest.raises(ValueError, match="unit must be one of"):
        tc.make_task(config)
    with pytest.raises(ValueError, match="sources must be one of"):
        tc.load_paragraphs("wikipedia")
