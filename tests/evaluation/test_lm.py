"""The lm-eval backend: log-likelihoods equal plain forward passes, bucketing changes
nothing, rolling windows, generation requests, model_args parsing."""

from __future__ import annotations

import numpy as np
import pytest
from lm_eval.api.instance import Instance
from lm_eval import utils as lm_eval_utils
from lm_eval.api.registry import get_model

from tests.evaluation.support import naive_greedy, sequence_logprob
from tokenkit import prompts
from tokenkit.evaluation import generate
from tokenkit.evaluation.lm import TokenkitLM, parse_lengths

PAIRS = [
    ("What is 12 + 7?", " 19"),
    ("Repeat exactly: \"vexmi talquin sa\"\n", "vexmi talquin sa"),  # trailing newline moves
    ("Population of Fograd?", " 493000 people live there, in the city of Fograd."),
    ("", "Hello world"),  # empty context: conditioned on bos
    ("Q: Convert 2.5 km to m.\nA:", " 2500"),
]


def requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [
        Instance(request_type=kind, doc={}, arguments=a, idx=i, metadata=("t", i, 1))
        for i, a in enumerate(args)
    ]


def reference_pair(model, context: str, continuation: str) -> tuple[float, bool]:
    """lm-eval's convention, computed by hand with a plain forward pass."""
    if not context:
        ids = [model.tokenizer.bos_token_id] + model.tokenizer.encode(
            continuation, add_special_tokens=False)
        return sequence_logprob(model, ids, 1)
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    bos = [model.tokenizer.bos_token_id]
    ctx = bos + model.tokenizer.encode(context, add_special_tokens=False)
    whole = bos + model.tokenizer.encode(context + continuation, add_special_tokens=False)
    return sequence_logprob(model, ctx + whole[len(ctx):], len(ctx))


@pytest.fixture(scope="module")
def lm(llama_model):
    return TokenkitLM(models=[llama_model], lengths=(16, 32, 64), tokens_per_batch=64,
                      show_progress=False)


def test_loglikelihood_equals_plain_forward(llama_model, lm):
    results = lm.loglikelihood(requests("loglikelihood", PAIRS))
    for pair, (logprob, greedy) in zip(PAIRS, results):
        expected, expected_greedy = reference_pair(llama_model, *pair)
        assert logprob == pytest.approx(expected, abs=1e-4, rel=1e-5)
        assert greedy == expected_greedy
    assert all(logprob < 0 for logprob, _ in results)


def test_bucketing_and_padding_change_nothing(llama_model, lm):
    baseline = lm.loglikelihood(requests("loglikelihood", PAIRS))
    for lengths, tokens_per_batch in (((64,), 64), ((64,), 512), ((8, 16, 24, 32, 64), 24)):
        other = TokenkitLM(models=[llama_model], lengths=lengths,
                           tokens_per_batch=tokens_per_batch, show_progress=False)
        results = other.loglikelihood(requests("loglikelihood", PAIRS))
        np.testing.assert_allclose([r[0] for r in results], [b[0] for b in baseline],
                                   rtol=1e-5, atol=1e-4)
        assert [r[1] for r in results] == [b[1] for b in baseline]


def test_is_greedy_for_the_greedy_continuation(llama_model, lm):
    context = "Wie viele Einwohner hat Fograd?"
    ids = llama_model.encode(context)
    greedy_ids = naive_greedy(llama_model, ids, 5, stop_ids=())
    greedy_text = llama_model.tokenizer.decode(greedy_ids)
    # Only meaningful if the greedy tokens re-encode to themselves.
    assert llama_model.encode(context + greedy_text)[len(ids):] == greedy_ids
    other = llama_model.tokenizer.decode(greedy_ids[:-1] + [(greedy_ids[-1] + 1) % 4000])
    (lp_greedy, is_greedy), (lp_other, is_other_greedy) = lm.loglikelihood(
        requests("loglikelihood", [(context, greedy_text), (context, other)]))
    assert is_greedy and not is_other_greedy
    assert lp_greedy > lp_other


def test_long_requests_lose_context_from_the_left(llama_model):
    lm = TokenkitLM(models=[llama_model], lengths=(16,), tokens_per_batch=64,
                    show_progress=False)
    context = "Convert 12 km to m. " * 6
    (logprob, _), = lm.loglikelihood(requests("loglikelihood", [(context, " 12000")]))
    bos = [llama_model.tokenizer.bos_token_id]
    ctx = bos + llama_model.tokenizer.encode(context.rstrip(), add_special_tokens=False)
    whole = bos + llama_model.tokenizer.encode(context + " 12000", add_special_tokens=False)
    ids = ctx + whole[len(ctx):]
    expected, _ = sequence_logprob(llama_model, ids[-16:], 16 - (len(ids) - len(ctx)))
    assert logprob == pytest.approx(expected, abs=1e-4)


def test_loglikelihood_rolling(llama_model):
    text = "Fograd is a city in Dresesh. It has 493000 people, and its river is long and slow."
    tokens = llama_model.tokenizer.encode(text, add_special_tokens=False)
    bos = llama_model.tokenizer.bos_token_id
    one_window = TokenkitLM(models=[llama_model], lengths=(64,), show_progress=False)
    (total,) = one_window.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,)]))
    expected, _ = sequence_logprob(llama_model, [bos] + tokens, 1)
    assert total == pytest.approx(expected, abs=1e-3, rel=1e-5)

    # Windows of at most 8 tokens: lm-eval's disjoint rolling windows, each scored by a
    # plain forward pass over (window context + window predictions).
    windowed = TokenkitLM(models=[llama_model], lengths=(8,), show_progress=False)
    (total8,) = windowed.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,)]))
    expected8, scored = 0.0, 0
    for ctx, pred in map(lm_eval_utils.make_disjoint_window, lm_eval_utils.get_rolling_token_windows(
            tokens, prefix_token=bos, max_seq_len=7, context_len=1)):
        assert len(ctx) + len(pred) <= 8
        expected8 += sequence_logprob(llama_model, ctx + pred, len(ctx))[0]
        scored += len(pred)
    assert scored == len(tokens) and expected8 != pytest.approx(expected, abs=1e-2)
    assert total8 == pytest.approx(expected8, abs=1e-3, rel=1e-5)
    assert total8 != pytest.approx(total, abs=1e-2)


def test_generate_until_wraps_prompts_and_cuts(llama_model, lm):
    gen_kwargs = {"until": ["\n"], "max_gen_toks": 6, "do_sample": False}
    contexts = ["What is 12 + 7?", "Hi"]
    outputs = lm.generate_until(requests("generate_until", [(c, gen_kwargs) for c in contexts]))
    generator = generate.Generator(llama_model, lengths=(16, 32, 64), tokens_per_batch=64,
                                   show_progress=False)
    for context, output in zip(contexts, outputs):
        prompt = prompts.preprocess_prompt(context, "surround_instruct")
        expected = generator.generate([prompt], max_new_tokens=6, until=["\n"])[0]
        assert output == expected.text.strip()
        ids = llama_model.encode(prompt)
        assert ids[0] == llama_model.tokenizer.bos_token_id
        assert llama_model.tokenizer.convert_tokens_to_ids("<|start_header_id|>") in ids


def test_apply_chat_template_is_not_wrapped_twice(llama_model, lm):
    chat = lm.apply_chat_template([{"role": "user", "content": "What is 12 + 7?"}])
    assert chat == prompts.preprocess_prompt("What is 12 + 7?", "surround_instruct")
    gen_kwargs = {"until": [], "max_gen_toks": 5}
    templated, raw = lm.generate_until(requests("generate_until", [
        (chat, gen_kwargs), ("What is 12 + 7?", gen_kwargs)]))
    assert templated == raw
    assert lm.chat_template(True).startswith("tokenkit")
    assert "llama3_bpe" in lm.tokenizer_name


def test_raw_prompts_without_chat_template_mode(llama_model):
    lm = TokenkitLM(models=[llama_model], lengths=(32,), chat_template_mode=None,
                    show_progress=False)
    (out,) = lm.generate_until(requests("generate_until", [("Hi", {"max_gen_toks": 5})]))
    expected = naive_greedy(llama_model, llama_model.encode("Hi"), 5)
    assert out == llama_model.tokenizer.decode(expected, skip_special_tokens=True).strip()


def test_create_from_arg_string_with_upstream_names(llama_checkpoint, llama_model):
    spec = llama_model.tokenizer.spec
    lm = get_model("tokenkit").create_from_arg_string(
        f"pretrained={llama_checkpoint},tokenizer={spec},lengths=16;32,tokens_per_batch=64,"
        "add_bos=False,chat_template_mode=none,top_k=3",
        {"batch_size": 1, "device": None},
    )
    assert isinstance(lm, TokenkitLM)
    assert lm.lengths == (16, 32) and lm.tokens_per_batch == 64
    assert lm.models[0].add_bos is False and lm.chat_template_mode is None
    assert lm.default_sampling.top_k == 3
    np.testing.assert_allclose(
        np.asarray(lm.models[0].params["embedder"]["embedding"]),
        np.asarray(llama_model.params["embedder"]["embedding"]),
    )
    aliased = TokenkitLM.create_from_arg_string(
        f"model.pretrained_model_name_or_path={llama_checkpoint},model.tokenizer_name={spec}")
    assert aliased.models[0].config == llama_model.config
    with pytest.raises(ValueError, match="go together"):
        TokenkitLM.create_from_arg_string(
            f"pretrained={llama_checkpoint},tokenizer={spec},"
            f"expand_model.pretrained_model_name_or_path={llama_checkpoint}")


def test_bad_arguments(llama_model):
    with pytest.raises(TypeError, match="unknown argument.*'lenghts'"):
        TokenkitLM(models=[llama_model], lenghts=(16,))
    with pytest.raises(ValueError, match="chat_template_mode.*surround_instruct"):
        TokenkitLM(models=[llama_model], chat_template_mode="surround")
    with pytest.raises(ValueError, match="pretrained=DIR and tokenizer=SPEC"):
        TokenkitLM(pretrained="x")
    with pytest.raises(ValueError, match="lengths"):
        parse_lengths("128;abc")
    assert parse_lengths("128;256") == parse_lengths("128 256") == parse_lengths([128, 256])
