"""Scoring: batched, bucketed log-likelihoods equal plain unbatched forward passes."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenkit import byteify
from tokenkit.evaluation import scoring
from tokenkit.evaluation.model import EvalModel
from tokenkit.logits import mask_padded_vocab, vocab_mask
from tokenkit.models import expand
from tokenkit.models.config import ModelConfig
from tokenkit.models.transformer import init_params, make_transformer

TEXTS = [
    "The river runs past the old mill.",
    "Die Straße ist lang und schön.",
    "x",
    "",
    "数字 12 + 7 = 19; emoji 🙂 and tabs\tend",
    "A somewhat longer line, so that it lands in another bucket than the short ones do: "
    "the quick brown fox jumps over the lazy dog, twice. The quick brown fox jumps again.",
]


@functools.cache
def _tok(spec: str) -> byteify.ByteifyTokenizer:
    return byteify.load_byteify_tokenizer(spec)


def _model(vocab_size: int, seed: int = 0):
    config = ModelConfig(architecture="llama", vocab_size=vocab_size, hidden_size=16,
                         intermediate_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                         head_dim=4, max_position_embeddings=512)
    model = make_transformer(config)
    params = init_params(model, seed)
    # A larger embedding scale than HF's 0.02 makes the distributions far from uniform.
    params["embedder"]["embedding"] = params["embedder"]["embedding"] * 50
    return model, params


def _scored(tok, model, params, *, add_bos=True, expansion=None) -> EvalModel:
    """What scoring runs: the model side of (config, tokenizer) with its params."""
    return EvalModel.build(model.config, params, tok, add_bos=add_bos, expansion=expansion)


@pytest.fixture(scope="module")
def llama(tiny_tokenizer_specs):
    tok = _tok(tiny_tokenizer_specs["llama3_bpe"])
    model, params = _model(4160)  # 64 padding rows beyond the tokenizer's 4096
    return tok, model, {"params": params}


@pytest.fixture(scope="module")
def scored(llama):
    tok, model, variables = llama
    return _scored(tok, model, variables["params"])


@functools.partial(jax.jit, static_argnames="model")
def _logits(model, variables, x, expanded):
    return model.apply(variables, x, expanded_input_ids=expanded).logits


def _plain_loglik(model, variables, ids, num_real, score_from=1, expanded=None) -> float:
    """One unpadded row, one forward pass, log-softmax over the real vocabulary."""
    x = jnp.asarray([ids], jnp.int32)
    logits = _logits(model, variables, x, expanded)[0].astype(jnp.float32)
    logits = mask_padded_vocab(logits, vocab_mask(num_real, model.config.vocab_size))
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1), np.float64)
    return float(sum(logp[i - 1, ids[i]] for i in range(score_from, len(ids))))


def test_loglik_equals_plain_forward_for_each_line(llama, scored):
    tok, model, variables = llama
    results = scoring.score_texts(scored, TEXTS, tokens_per_batch=256, show_progress=False)
    for text, result in zip(TEXTS, results):
        ids = [tok.bos_token_id] + tok.encode(text, add_special_tokens=False)
        assert result.n_tokens == len(ids) - 1
        assert result.n_bytes == len(text.encode("utf-8"))
        want = _plain_loglik(model, variables, ids, len(tok))
        assert result.loglik == pytest.approx(want, rel=1e-5, abs=1e-4), text
        if text:
            assert result.bits_per_byte == pytest.approx(-want / math.log(2) / result.n_bytes, rel=1e-5)
        else:
            assert result.bits_per_byte is None and result.loglik == 0.0
    assert results[0].loglik < -5  # far from zero: the check above is not vacuous


def test_padding_and_bucketing_change_nothing(scored):
    a = scoring.score_texts(scored, TEXTS, tokens_per_batch=1, show_progress=False)
    b = scoring.score_texts(scored, TEXTS, tokens_per_batch=5 * 128, buckets=(128,),
                            show_progress=False)
    for x, y in zip(a, b):
        assert x.n_tokens == y.n_tokens
        assert x.loglik == pytest.approx(y.loglik, rel=1e-5, abs=1e-4)


def test_bits_per_byte_formula():
    score = scoring.TextScore(loglik=-math.log(2) * 12.0, n_tokens=5, n_bytes=8)
    assert score.bits_per_byte == pytest.approx(1.5)
    assert score.as_dict() == {"loglik": score.loglik, "n_tokens": 5, "n_bytes": 8, "bits_per_byte": 1.5}
    assert scoring.TextScore(0.0, 0, 0).bits_per_byte is None


def test_add_bos_options(llama, scored, tiny_tokenizer_specs):
    tok, model, variables = llama
    text = TEXTS[0]
    without = scoring.score_texts(scored, [text], add_bos=False, show_progress=False)[0]
    no_bos_model = _scored(tok, model, variables["params"], add_bos=False)
    assert scoring.score_texts(no_bos_model, [text], show_progress=False)[0] == without
    ids = tok.encode(text, add_special_tokens=False)
    assert without.n_tokens == len(ids) - 1
    assert without.loglik == pytest.approx(_plain_loglik(model, variables, ids, len(tok)), rel=1e-5)
    assert scoring.encode_texts(tok, [text])[0][0] == tok.bos_token_id
    qwen = _tok(tiny_tokenizer_specs["qwen2_bpe"])
    assert scoring.encode_texts(qwen, [text]) == [qwen.encode(text, add_special_tokens=False)]
    with pytest.raises(ValueError, match="Qwen2 family .* has no bos"):
        scoring.encode_texts(qwen, [text], add_bos=True)


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 200), max_length=st.integers(2, 40), data=st.data())
def test_windows_score_every_position_once(length, max_length, data):
    stride = data.draw(st.integers(1, max_length - 1))
    spans = scoring.windows(length, max_length, stride)
    scored = [p for start, end, first in spans for p in range(start + first, end)]
    assert scored == list(range(1, length))
    for k, (start, end, first) in enumerate(spans):
        assert 0 <= start < end <= length and end - start <= max_length and first >= 1
        if k:
            assert first == max_length - (end - spans[k - 1][1])  # the rest is context
    with pytest.raises(ValueError, match="stride"):
        scoring.windows(length, max_length, max_length)


def test_long_texts_are_scored_in_sliding_windows(llama, scored, caplog):
    tok, model, variables = llama
    text = TEXTS[-1] * 2
    ids = [tok.bos_token_id] + tok.encode(text, add_special_tokens=False)
    max_length, stride = 24, 10
    with caplog.at_level("INFO"):
        result = scoring.score_texts(scored, [text, "short"], max_length=max_length,
                                     stride=stride, show_progress=False)[0]
    assert "1 of 2 texts exceed max_length=24" in caplog.text
    spans = scoring.windows(len(ids), max_length, stride)
    assert result.n_windows == len(spans) > 3 and result.n_tokens == len(ids) - 1
    want = sum(_plain_loglik(model, variables, ids[s:e], len(tok), first) for s, e, first in spans)
    assert result.loglik == pytest.approx(want, rel=1e-5)


def test_continuations_score_only_their_positions(llama, scored):
    """Sequences scored from late starts (the head runs on a narrow width of the bucket)
    equal the plain forward, whatever the width their batch gets."""
    tok, model, variables = llama
    ids = [tok.bos_token_id] + tok.encode(" ".join(TEXTS * 4), add_special_tokens=False)
    ids = ids[:120]
    assert len(ids) == 120
    starts = [119, 110, 90, 60, 1]  # widths 16 (an eighth of 128), 16, 32, 64, 128
    assert [scoring.head_width(len(ids) - s, 128) for s in starts] == [16, 16, 32, 64, 128]
    got = scoring.score_sequences(scored, [ids] * len(starts), starts, buckets=(128,),
                                  tokens_per_batch=128, show_progress=False)
    together = scoring.score_sequences(scored, [ids] * len(starts), starts, buckets=(128,),
                                       tokens_per_batch=128 * len(starts), show_progress=False)
    for start, a, b in zip(starts, got, together):
        want = _plain_loglik(model, variables, ids, len(tok), score_from=start)
        assert a.n_tokens == len(ids) - start
        assert a.loglik == pytest.approx(want, rel=1e-5, abs=1e-4), start
        assert b.loglik == pytest.approx(want, rel=1e-5, abs=1e-4), start
    assert got[0].loglik < -1  # not vacuous


def test_sequences_report_greedy(llama, scored):
    tok, model, variables = llama
    prefix = [tok.bos_token_id] + tok.encode("The river", add_special_tokens=False)
    greedy = list(prefix)
    for _ in range(4):
        logits = _logits(model, variables, jnp.asarray([greedy], jnp.int32), None)[0, -1]
        logits = mask_padded_vocab(logits, vocab_mask(len(tok), model.config.vocab_size))
        greedy.append(int(jnp.argmax(logits)))
    other = greedy[:-1] + [(greedy[-1] + 1) % len(tok)]
    a, b, c = scoring.score_sequences(
        scored, [greedy, other, greedy], [len(prefix), len(prefix), len(greedy)],
        show_progress=False,
    )
    assert a.is_greedy and not b.is_greedy and a.n_tokens == 4
    assert c.n_tokens == 0 and c.loglik == 0.0 and c.is_greedy
    assert a.loglik > b.loglik
    with pytest.raises(ValueError, match="first token has no prediction"):
        scoring.score_sequences(scored, [greedy], 0, show_progress=False)


def test_tokenizer_larger_than_model_is_refused(tiny_tokenizer_specs):
    tok = _tok(tiny_tokenizer_specs["llama3_bpe"])
    model, params = _model(1024)
    with pytest.raises(ValueError, match="4096 ids but the model .* has only 1024 embedding rows"):
        _scored(tok, model, params)


def test_byte_level_model_with_expansion(tiny_tokenizer_specs):
    old = _tok(tiny_tokenizer_specs["llama3_bpe"])
    new = _tok(tiny_tokenizer_specs["llama3_bpe"] + ":conversion=byte")
    expansion = expand.build_expansion(new, old)
    model, params = _model(320, seed=1)
    old_embeddings = np.random.default_rng(2).normal(size=(len(old), 16)).astype(np.float32)
    params["expand_embedder"] = {"embedding": jnp.asarray(expansion.embedding_table(old_embeddings))}
    variables = {"params": params}
    texts = TEXTS[:3] + TEXTS[4:5]
    got = scoring.score_texts(_scored(new, model, params, expansion=expansion), texts,
                              tokens_per_batch=3 * 64, show_progress=False)
    plain = scoring.score_texts(_scored(new, model, params), texts, show_progress=False)
    for text, result, no_expansion in zip(texts, got, plain):
        ids = [new.bos_token_id] + new.encode(text, add_special_tokens=False)
        assert result.n_tokens == len(ids) - 1 == result.n_bytes
        expanded = expansion.apply(np.asarray([ids], np.int32))
        want = _plain_loglik(model, variables, ids, len(new), expanded=expanded)
        assert result.loglik == pytest.approx(want, rel=1e-5, abs=1e-4), text
        if result.n_tokens > 1:
            assert abs(result.loglik - no_expansion.loglik) > 1e-2  # the expansion is used


def test_batch_plan_fills_a_token_budget_without_fixed_rows():
    assert scoring.default_buckets(1000) == (
        16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768,
        896, 1000)
    buckets = scoring.default_buckets(4096)
    for length in range(17, 4097):  # padding adds less than a quarter of a length
        assert scoring.bucket_length(length, buckets) < 1.25 * length + scoring.MIN_BUCKET
    lengths = [5, 100, 20, 33, 7, 130]
    plan = scoring.plan_batches(lengths, scoring.default_buckets(256), tokens_per_batch=128)
    # Longest first within a bucket; two short rows make a batch of 2 rows, not of the
    # 8 that the budget would allow at length 16.
    assert plan == [(16, 2, [4, 0]), (32, 1, [2]), (48, 1, [3]), (112, 1, [1]), (160, 1, [5])]
    many = scoring.plan_batches([10] * 11, (16,), tokens_per_batch=64)
    assert [(rows, len(members)) for _, rows, members in many] == [(4, 4), (4, 4), (3, 3)]
    few = scoring.plan_batches([10] * 5, (16,), tokens_per_batch=128)
    assert [(rows, len(members)) for _, rows, members in few] == [(5, 5)]
    # Generation pads a bucket's last batch to a power of two rows (fewer compiles).
    padded = scoring.plan_batches([10] * 11, (16,), tokens_per_batch=64, pad_rows=True)
    assert [(rows, len(members)) for _, rows, members in padded] == [(4, 4), (4, 4), (4, 3)]
    few = scoring.plan_batches([10] * 5, (16,), tokens_per_batch=128, pad_rows=True)
    assert [(rows, len(members)) for _, rows, members in few] == [(8, 5)]
    with pytest.raises(ValueError, match="tokens_per_batch"):
        scoring.plan_batches(lengths, (256,), 0)


def test_shared_contexts_score_as_unshared(llama, scored, tiny_tokenizer_specs):
    """Sequences that share a context (run once, each sequence a segment after it) score
    as each alone, with mixed lengths, several groups in a batch, lone sequences beside
    them, and for an expanded byte-level model."""
    tok, model, variables = llama
    contexts = [[tok.bos_token_id] + tok.encode(t * 3, add_special_tokens=False)
                for t in (TEXTS[0], TEXTS[1], TEXTS[5])]
    choices = [tok.encode(" " + t, add_special_tokens=False) for t in TEXTS if t]
    sequences, starts = [], []
    for ctx in contexts:
        for choice in choices[: 3 if len(ctx) > 40 else 4]:
            sequences.append(ctx + choice)
            starts.append(len(ctx))
    sequences.append(contexts[0] + choices[0])  # scored from elsewhere: alone
    starts.append(3)
    groups = scoring.shared_prefixes([sequences], [starts])
    assert sorted(len(rows) for _, rows in groups) == sorted(
        [3 if len(c) > 40 else 4 for c in contexts])
    assert all(length == (len(contexts[k]),) for k, (length, _) in enumerate(groups))
    lengths = [len(s) for s in sequences]
    cap = max(lengths) + 5
    rows = scoring.pack_groups(groups, [lengths], cap)  # rows cut to fit, the context in each
    assert sorted(i for _, members in rows for i in members) == sorted(
        i for _, members in groups for i in members)
    assert all(c + sum(lengths[i] - c for i in members) <= cap for (c,), members in rows)
    assert len(rows) > len(groups)
    # Unshared scoring equals the plain forward (tests above); one plain check here.
    unshared = scoring.score_sequences(scored, sequences, starts, share_prefixes=False,
                                       tokens_per_batch=4096, show_progress=False)
    want = _plain_loglik(model, variables, sequences[0], len(tok), score_from=starts[0])
    assert unshared[0].loglik == pytest.approx(want, rel=1e-5, abs=1e-4)
    for budget in (64, 4096):  # a group per batch; all groups in one
        shared = scoring.score_sequences(scored, sequences, starts, tokens_per_batch=budget,
                                         show_progress=False)
        for seq, start, got, alone in zip(sequences, starts, shared, unshared):
            assert got.n_tokens == alone.n_tokens == len(seq) - start
            assert got.loglik == pytest.approx(alone.loglik, rel=1e-5, abs=1e-4)
            assert got.is_greedy == alone.is_greedy
    assert shared[0].loglik < -5  # not vacuous

    old = tok
    new = _tok(tiny_tokenizer_specs["llama3_bpe"] + ":conversion=byte")
    expansion = expand.build_expansion(new, old)
    byte_model, params = _model(320, seed=1)
    old_embeddings = np.random.default_rng(2).normal(size=(len(old), 16)).astype(np.float32)
    params["expand_embedder"] = {"embedding": jnp.asarray(expansion.embedding_table(old_embeddings))}
    ctx = [new.bos_token_id] + new.encode(TEXTS[0], add_special_tokens=False)
    byte_sequences = [ctx + new.encode(" " + t, add_special_tokens=False) for t in TEXTS[1:3]]
    got = scoring.score_sequences(_scored(new, byte_model, params, expansion=expansion),
                                  byte_sequences, len(ctx), show_progress=False)
    for seq, result in zip(byte_sequences, got):
        expanded = expansion.apply(np.asarray([seq], np.int32))
        want = _plain_loglik(byte_model, {"params": params}, seq, len(new), score_from=len(ctx),
                             expanded=expanded)
        assert result.loglik == pytest.approx(want, rel=1e-5, abs=1e-4)
