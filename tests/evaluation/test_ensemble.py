"""Token-level ensembles: unified vocabularies, combination, lockstep scoring and decoding."""

from __future__ import annotations

from pathlib import Path

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from lm_eval.api.instance import Instance
from scipy.special import logsumexp

from tests.evaluation.support import forward_logprobs
from tokenkit import prompts
from tokenkit.evaluation import ensemble, scoring
from tokenkit.evaluation.generate import Generator
from tokenkit.evaluation.lm import TokenkitLM

REPO = Path(__file__).resolve().parents[2]
PAIRS = [
    ("What is 12 + 7?", " 19"),
    ("Spell [quinbersamis] in reverse order.", " simasrebniuq"),
    ("", "Hello world"),
    ("In which country is Fograd?\n", "Dresesh"),
]


def requests(kind, args):
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i, metadata=("t", i, 1))
            for i, a in enumerate(args)]


def test_identical_tokenizers_give_the_identity(llama_model):
    vocab = ensemble.UnifiedVocabulary.build([llama_model.tokenizer] * 2,
                                             [llama_model.stop_ids] * 2)
    assert vocab.is_identity and vocab.size == len(llama_model.tokenizer)
    assert vocab.stop_ids == llama_model.stop_ids


def test_unified_vocabulary_across_families(qwen_models):
    native, transferred = qwen_models
    vocab = ensemble.UnifiedVocabulary.build(
        [native.tokenizer, transferred.tokenizer], [native.stop_ids, transferred.stop_ids])
    assert not vocab.is_identity
    # All Qwen2 ids but its 3 special tokens, plus one end entry.
    assert vocab.size == len(native.tokenizer) - 3 + 1
    (end,) = vocab.stop_ids
    assert native.tokenizer.convert_ids_to_tokens(int(vocab.member_ids[0][end])) == "<|im_end|>"
    assert transferred.tokenizer.convert_ids_to_tokens(int(vocab.member_ids[1][end])) == "<|eot_id|>"
    regular_0 = native.tokenizer.convert_ids_to_tokens(vocab.member_ids[0][:end].tolist())
    regular_1 = transferred.tokenizer.convert_ids_to_tokens(vocab.member_ids[1][:end].tolist())
    assert regular_0 == regular_1 and "Ġthe" in regular_0
    inverse = vocab.inverse(0, native.config.vocab_size)
    assert inverse[vocab.member_ids[0][17]] == 17
    assert inverse[native.tokenizer.convert_tokens_to_ids("<|endoftext|>")] == -1


def test_combine_logits():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 3, 7)).astype(np.float32) * 3
    log_sm = lambda x: x - logsumexp(x, axis=-1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(ensemble.combine_logits([a, a], "mean_prob"), log_sm(a),
                               atol=1e-6)
    expected = np.log((np.exp(log_sm(a)) + np.exp(log_sm(b))) / 2)
    np.testing.assert_allclose(ensemble.combine_logits([a, b], "mean_prob"), expected, atol=1e-5)
    np.testing.assert_allclose(ensemble.combine_logits([a, b], "mean_logits"), (a + b) / 2,
                               atol=1e-6)
    with pytest.raises(ValueError, match="combine_strategy 'max'.*mean_prob, mean_logits"):
        ensemble.combine_logits([a], "max")


def test_model_ensembled_with_itself_scores_like_the_model(llama_model):
    alone = TokenkitLM(models=[llama_model], lengths=(32,), tokens_per_batch=128,
                       show_progress=False)
    twice = TokenkitLM(models=[llama_model, llama_model], lengths=(32,), tokens_per_batch=128,
                       combine_strategy="mean_prob", show_progress=False)
    expected = alone.loglikelihood(requests("loglikelihood", PAIRS))
    got = twice.loglikelihood(requests("loglikelihood", PAIRS))
    np.testing.assert_allclose([g[0] for g in got], [e[0] for e in expected], atol=2e-4,
                               rtol=1e-6)
    assert [g[1] for g in got] == [e[1] for e in expected]
    gen = {"until": ["\n"], "max_gen_toks": 6}
    contexts = [(c, gen) for c, _ in PAIRS if c]
    assert twice.generate_until(requests("generate_until", contexts)) == alone.generate_until(
        requests("generate_until", contexts))


def _combined(vocab, member_logits, strategy):
    unified = [x[..., vocab.member_ids[i]] for i, x in enumerate(member_logits)]
    if strategy == "mean_prob":
        lps = [u - logsumexp(u, axis=-1, keepdims=True) for u in unified]
        return logsumexp(np.stack(lps), axis=0) - np.log(len(lps))
    return sum(unified) / len(unified)


def _lockstep_expected(lm, context, continuation, strategy) -> tuple[float, bool]:
    """The combined log-likelihood of one request from each member's plain forward, and
    whether each continuation token is the combination's argmax."""
    per_member = [lm._encode_pair(m, context, continuation) for m in lm.models]
    n = len(per_member[0][0]) - per_member[0][1]
    assert n == len(per_member[1][0]) - per_member[1][1] > 0
    logits = []
    for model, (ids, start) in zip(lm.models, per_member):
        # Log-probabilities differ from logits by a shift per position, which neither
        # strategy's softmax sees.
        logits.append(forward_logprobs(model, ids)[start - 1: len(ids) - 1])
    combined = _combined(lm.vocabulary, logits, strategy)
    combined = combined - logsumexp(combined, axis=-1, keepdims=True)
    labels = lm._inverse[0][per_member[0][0][per_member[0][1]:]]
    greedy = bool(np.all(combined.argmax(axis=-1) == labels))
    return float(combined[np.arange(n), labels].sum()), greedy


@pytest.mark.parametrize("strategy", ensemble.COMBINE_STRATEGIES)
def test_two_models_lockstep_loglikelihood(qwen_models, strategy):
    native, transferred = qwen_models
    lm = TokenkitLM(models=[native, transferred], lengths=(32,), tokens_per_batch=128,
                    combine_strategy=strategy, show_progress=False)
    results = lm.loglikelihood(requests("loglikelihood", PAIRS))
    for (context, continuation), (logprob, greedy) in zip(PAIRS, results):
        per_member = [lm._encode_pair(m, context, continuation) for m in lm.models]
        # The Llama3-family member reads a bos first, the Qwen2 one does not.
        assert per_member[1][0][0] == transferred.tokenizer.bos_token_id
        assert per_member[0][0][0] != per_member[1][0][0]
        expected, expected_greedy = _lockstep_expected(lm, context, continuation, strategy)
        assert logprob == pytest.approx(expected, abs=2e-3, rel=1e-5)
        assert greedy == expected_greedy


def test_lockstep_choices_share_their_question(qwen_models, caplog):
    """The choices of a question run its context once under every member (rows cut to
    fit, a request alone beside them) and score as each request alone."""
    native, transferred = qwen_models
    lm = TokenkitLM(models=[native, transferred], lengths=(32,), tokens_per_batch=64,
                    show_progress=False)
    question = "Spell [quinbersamis] in reverse order, then say which country Fograd is in:"
    # A fifth choice: the ensemble's own argmax after the question (a greedy flag to see).
    per_member = [lm._encode_pair(m, question, " x") for m in lm.models]
    first = [forward_logprobs(m, ids)[start - 1: start]
             for m, (ids, start) in zip(lm.models, per_member)]
    best = int(lm.vocabulary.member_ids[0][_combined(lm.vocabulary, first, "mean_prob")[0].argmax()])
    choices = [" simasrebniuq", " Dresesh", " 19", " quinbersamis", native.tokenizer.decode([best])]
    pairs = [(question, c) for c in choices] + [PAIRS[0]]
    items = [[lm._encode_pair(m, *pair) for m in lm.models] for pair in pairs]
    rows = scoring.plan_rows(lm.models, [[it[m][0] for it in items] for m in (0, 1)],
                             [[it[m][1] for it in items] for m in (0, 1)], 32)
    # The question is 20 / 21 tokens; its choices need two rows of 32.
    assert sorted(members for _, members in rows) == [[0, 1, 2], [3, 4], [5]]
    assert rows[0][0] == (20, 21)
    with caplog.at_level("INFO"):
        results = lm.loglikelihood(requests("loglikelihood", pairs))
    assert "5 of 6 sequences share 1 contexts" in caplog.text
    for (context, continuation), (logprob, greedy) in zip(pairs, results):
        expected, expected_greedy = _lockstep_expected(lm, context, continuation, "mean_prob")
        assert logprob == pytest.approx(expected, abs=2e-3, rel=1e-5)
        assert greedy == expected_greedy
    assert results[0][0] < -1 and results[4][1]  # not vacuous


def _naive_lockstep_greedy(models, vocab, prompt, max_new, strategy="mean_prob"):
    ids = [m.encode(prompt) for m in models]
    out = []
    for _ in range(max_new):
        last = [forward_logprobs(m, seq)[-1] for m, seq in zip(models, ids)]
        token = int(np.argmax(_combined(vocab, last, strategy)))
        if token in vocab.stop_ids:
            break
        out.append(token)
        for i, seq in enumerate(ids):
            seq.append(int(vocab.member_ids[i][token]))
    return [int(vocab.member_ids[0][t]) for t in out]


def test_two_models_generate_in_lockstep(qwen_models):
    native, transferred = qwen_models
    generator = Generator([native, transferred], lengths=(32, 64), tokens_per_batch=128,
                          show_progress=False)
    texts = ["What is 12 + 7?", "Write \"vexmi\" backwards."]
    chat = [prompts.preprocess_prompt(t, "surround_instruct") for t in texts]
    # Each member fills the template with its own family's tokens.
    assert native.encode(chat[0])[0] != transferred.encode(chat[0])[0]
    results = generator.generate(chat, max_new_tokens=8)
    for prompt, result in zip(chat, results):
        assert result.token_ids == _naive_lockstep_greedy(
            [native, transferred], generator.vocabulary, prompt, 8)
        assert len(result.token_ids) > 0


def test_members_must_share_a_tokenizer(llama_model, qwen_models):
    lm = TokenkitLM(models=[llama_model, qwen_models[0]], lengths=(32,), show_progress=False)
    with pytest.raises(ValueError, match="tokenize a continuation differently"):
        lm.loglikelihood(requests("loglikelihood", [("What is 12 + 7?", " 19 and more words")]))


def test_member_specs():
    spec = ensemble.MemberSpec.from_dict(0, {"pretrained": "a", "tokenizer": "b:source=Qwen2"})
    assert spec.add_bos is True and spec.expand_model is None
    with pytest.raises(ValueError, match="unknown key.*'bos'.*valid keys"):
        ensemble.MemberSpec.from_dict(1, {"pretrained": "a", "tokenizer": "b", "bos": True})
    with pytest.raises(ValueError, match="lacks required key.*tokenizer"):
        ensemble.MemberSpec.from_dict(2, {"pretrained": "a"})
    with pytest.raises(TypeError, match="must be a dict"):
        ensemble.MemberSpec.from_dict(3, "a")


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "gin" / "ensembles").glob("*.gin")))
def test_shipped_ensemble_definitions_parse(name):
    gin.clear_config()
    try:
        gin.parse_config_file(str(REPO / "gin" / "ensembles" / name))
        specs, strategy = ensemble.ensemble_models()
    finally:
        gin.clear_config()
    assert len(specs) >= 2 and strategy in ensemble.COMBINE_STRATEGIES
    assert all(":source=" in s.tokenizer for s in specs)


@pytest.mark.parametrize("strategy", ensemble.COMBINE_STRATEGIES)
def test_aligned_logprobs_equal_the_combination(strategy):
    """Per-token log-probs and argmax flags of the combination, on a unified vocabulary
    that reorders one member's ids, with a label far in both members' tails (finite)."""
    rng = np.random.default_rng(1)
    a, b = (rng.normal(size=(2, 2, 3, 6)) * 4).astype(np.float32)  # [B, K, V] each
    b[0, 2, 3] = a[0, 2, 3] = -300.0
    order = np.asarray([5, 0, 1, 2, 3, 4], np.int32)  # member 1 spells unified id u as order[u]
    vocab = ensemble.UnifiedVocabulary((np.arange(6, dtype=np.int32), order), (5,), False)
    b_member = np.empty_like(b)
    b_member[..., order] = b
    labels = np.asarray([[2, 4, 3], [0, 1, 5]], np.int32)
    lp, greedy = ensemble.aligned_logprobs([jnp.asarray(a), jnp.asarray(b_member)],
                                           jnp.asarray(labels), vocab, strategy)
    combined = _combined(vocab, [a, b_member], strategy)
    combined = combined - logsumexp(combined, axis=-1, keepdims=True)
    want = np.take_along_axis(combined, labels[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(np.asarray(lp), want, rtol=1e-5, atol=1e-4)
    assert np.isfinite(np.asarray(lp)).all() and float(lp[0, 2]) < -250
    np.testing.assert_array_equal(np.asarray(greedy), combined.argmax(-1) == labels)
    assert np.asarray(greedy).any() and not np.asarray(greedy).all()


# ------------------------------------------------------- through a pivot (MinED mappings)

# Tiny-world pair data: each Qwen2-BPE id -> the Llama3-BPE id of least edit distance.
QWEN_TO_LLAMA = REPO / "data" / "tokenizer_pairs" / "llama3_bpe__qwen2_bpe"


def _pivot_vocabulary(qwen_models, llama_model):
    native = qwen_models[0]
    mapping = ensemble.load_mined_mapping(QWEN_TO_LLAMA)
    vocab = ensemble.UnifiedVocabulary.build(
        [native.tokenizer, llama_model.tokenizer], [native.stop_ids, llama_model.stop_ids],
        [None, mapping])
    return vocab, mapping


def test_pivot_vocabulary_is_the_pivots_regular_tokens(qwen_models, llama_model):
    native = qwen_models[0]
    vocab, mapping = _pivot_vocabulary(qwen_models, llama_model)
    assert vocab.pivot and not vocab.is_identity
    assert vocab.size == len(native.tokenizer) - 3 + 1  # Qwen2's 3 special tokens out, end in
    (end,) = vocab.stop_ids
    pivot_ids = vocab.member_ids[0][:end]
    np.testing.assert_array_equal(vocab.member_ids[1][:end], mapping[pivot_ids])
    assert native.tokenizer.convert_ids_to_tokens(int(vocab.member_ids[0][end])) == "<|im_end|>"
    assert llama_model.tokenizer.convert_ids_to_tokens(int(vocab.member_ids[1][end])) == "<|eot_id|>"
    # Tokens both have map to themselves; others to a near spelling.
    the = native.tokenizer.convert_ids_to_tokens(pivot_ids.tolist()).index("Ġthe")
    assert llama_model.tokenizer.convert_ids_to_tokens(int(vocab.member_ids[1][the])) == "Ġthe"
    # A different mapping is a different compiled-function key.
    other = ensemble.UnifiedVocabulary.build(
        [native.tokenizer, llama_model.tokenizer], [native.stop_ids, llama_model.stop_ids],
        [None, np.zeros_like(mapping)])
    assert other.fingerprint != vocab.fingerprint


def test_pivot_vocabulary_refuses_bad_mappings(qwen_models, llama_model):
    native = qwen_models[0]
    toks, stops = [native.tokenizer, llama_model.tokenizer], [native.stop_ids, llama_model.stop_ids]
    mapping = ensemble.load_mined_mapping(QWEN_TO_LLAMA)
    with pytest.raises(ValueError, match="lists the pivot first"):
        ensemble.UnifiedVocabulary.build(toks, stops, [mapping, None])
    with pytest.raises(ValueError, match="has 10 entries"):
        ensemble.UnifiedVocabulary.build(toks, stops, [None, mapping[:10]])
    with pytest.raises(ValueError, match="outside its tokenizer"):
        ensemble.UnifiedVocabulary.build(toks, stops, [None, mapping + 5000])


def test_mined_mapping_files_and_member_keys(tmp_path):
    mapping = ensemble.load_mined_mapping(QWEN_TO_LLAMA)
    assert mapping.shape == (3000,)
    np.testing.assert_array_equal(
        ensemble.load_mined_mapping(QWEN_TO_LLAMA / "mined_mapping.npy"), mapping)
    with pytest.raises(FileNotFoundError, match="No MinED mapping.*compute_mined_mapping"):
        ensemble.load_mined_mapping(tmp_path)
    pivot = {"pretrained": "p", "tokenizer": "p:source=Qwen2"}
    member = {"pretrained": "m", "tokenizer": "m:source=Llama3", "mined_mapping": str(QWEN_TO_LLAMA)}
    gin.clear_config()
    try:
        specs, _ = ensemble.ensemble_models(models=[pivot, member])
        assert [s.mined_mapping for s in specs] == [None, str(QWEN_TO_LLAMA)]
        for bad in ([member, pivot], [pivot, member, pivot]):
            with pytest.raises(ValueError, match="lists the pivot first"):
                ensemble.ensemble_models(models=bad)
    finally:
        gin.clear_config()


def test_pivot_ensemble_with_itself_scores_like_the_model(qwen_models):
    """An identity MinED mapping makes a pivot ensemble of a model with itself that model,
    its distribution renormalised over the pivot vocabulary (the regular tokens and the
    end entry; the other special tokens are out). A text in one window scores the same
    rolling as it does as a continuation of nothing."""
    native = qwen_models[0]
    twice = TokenkitLM(models=[native, native], lengths=(32,), tokens_per_batch=128,
                       mined_mappings=[None, np.arange(native.config.vocab_size)],
                       show_progress=False)
    assert twice.vocabulary.pivot
    got = twice.loglikelihood(requests("loglikelihood", PAIRS))
    kept = twice.vocabulary.member_ids[0]
    for (context, continuation), (logprob, greedy) in zip(PAIRS, got):
        ids, start = twice._encode_pair(native, context, continuation)
        lp = forward_logprobs(native, ids)[start - 1: len(ids) - 1][:, kept]
        lp = lp - logsumexp(lp, axis=-1, keepdims=True)
        labels = twice._inverse[0][ids[start:]]
        assert logprob == pytest.approx(float(lp[np.arange(len(labels)), labels].sum()),
                                        abs=2e-4, rel=1e-6)
        assert greedy == bool(np.all(lp.argmax(-1) == labels))
    (rolled,) = twice.loglikelihood_rolling(requests("loglikelihood_rolling", [("Hello world",)]))
    assert rolled == pytest.approx(got[2][0], abs=2e-4)  # PAIRS[2] is ("", "Hello world")


def test_pivot_ensemble_scores_the_pivots_tokens(qwen_models, llama_model):
    """Members with different tokenizers: each reads the context in its own tokenization,
    then the pivot's continuation tokens (the Llama member: their MinED-mapped ids); the
    score is the combined distribution's log-probability of the pivot's tokens."""
    native = qwen_models[0]
    mapping = ensemble.load_mined_mapping(QWEN_TO_LLAMA)
    lm = TokenkitLM(models=[native, llama_model], lengths=(32,), tokens_per_batch=128,
                    mined_mappings=[None, mapping], show_progress=False)
    results = lm.loglikelihood(requests("loglikelihood", PAIRS))
    for (context, continuation), (logprob, _) in zip(PAIRS, results):
        (pivot_ids, p_start), (member_ids, m_start) = lm._encode_pivot_pair(context, continuation)
        assert (pivot_ids, p_start) == lm._encode_pair(native, context, continuation)
        stripped = context.rstrip()
        own_context = llama_model.encode(stripped) if stripped else [llama_model.prefix_id]
        assert member_ids[:m_start] == own_context
        assert member_ids[m_start:] == mapping[pivot_ids[p_start:]].tolist()
        n = len(pivot_ids) - p_start
        logits = [forward_logprobs(native, pivot_ids)[p_start - 1: len(pivot_ids) - 1],
                  forward_logprobs(llama_model, member_ids)[m_start - 1: len(member_ids) - 1]]
        combined = _combined(lm.vocabulary, logits, "mean_prob")
        labels = lm._inverse[0][pivot_ids[p_start:]]
        assert logprob == pytest.approx(float(combined[np.arange(n), labels].sum()),
                                        abs=2e-3, rel=1e-5)
    # Rolling windows are the pivot's, the Llama member's prefix its own bos.
    (windows,) = [lm._to_member(1, [native.prefix_id] + native.encode("Hello world", bos=False))]
    assert windows[0] == llama_model.prefix_id
    assert np.isfinite(lm.loglikelihood_rolling(requests("loglikelihood_rolling",
                                                         [("Hello world again",)]))[0])
    with pytest.raises(ValueError, match="not in the ensemble's pivot vocabulary"):
        lm._to_member(1, [native.tokenizer.convert_tokens_to_ids("<|im_start|>")])
