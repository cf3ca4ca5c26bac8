"""KV-cache generation: equal to a naive full-forward loop, stop sequences, eos, sampling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.evaluation.support import naive_greedy
from tokenkit.evaluation import ensemble
from tokenkit.evaluation.generate import (
    Generator,
    SamplingConfig,
    cut_at_stop_sequences,
    sample_tokens,
    sampling_from_gen_kwargs,
)

# Prompts of different lengths, as ids (with bos), so batches hold ragged rows.
PROMPT_TEXTS = ["What is 12 + 7?", "Repeat exactly: \"vexmi talquin\"", "Hi", "Wie viele Einwohner hat Fograd?"]


@pytest.fixture(scope="module")
def prompt_ids(llama_model):
    return [llama_model.encode(t) for t in PROMPT_TEXTS]


@pytest.fixture(scope="module")
def generator(llama_model):
    # 64 tokens per batch with buckets of 16/32: batches of 2 or 4 rows, several buckets.
    return Generator(llama_model, lengths=(16, 32, 64), tokens_per_batch=64, show_progress=False)


def test_greedy_equals_naive_loop(llama_model, generator, prompt_ids):
    results = generator.generate(prompt_ids, max_new_tokens=12)
    for ids, result in zip(prompt_ids, results):
        expected = naive_greedy(llama_model, ids, 12)
        assert result.token_ids == expected
        assert result.text == llama_model.tokenizer.decode(expected, skip_special_tokens=True)
        assert result.finish_reason == ("length" if len(expected) == 12 else "eos")


def test_string_prompts_are_encoded_with_bos(llama_model, generator, prompt_ids):
    by_text = generator.generate(PROMPT_TEXTS, max_new_tokens=6)
    by_ids = generator.generate(prompt_ids, max_new_tokens=6)
    assert [r.token_ids for r in by_text] == [r.token_ids for r in by_ids]
    assert prompt_ids[0][0] == llama_model.tokenizer.bos_token_id


def test_batching_does_not_change_results(llama_model, prompt_ids, generator):
    one_row = Generator(llama_model, lengths=(64,), tokens_per_batch=64, show_progress=False)
    assert [r.token_ids for r in one_row.generate(prompt_ids, max_new_tokens=8)] == [
        r.token_ids for r in generator.generate(prompt_ids, max_new_tokens=8)
    ]


def test_stop_sequence_cuts_decoded_text(llama_model, generator, prompt_ids):
    full = generator.generate(prompt_ids[:1], max_new_tokens=16)[0]
    assert len(full.text) > 6
    stop = full.text[3:5]  # a piece of text the model produces, maybe mid-token
    first = full.text.find(stop)
    stopped = Generator(llama_model, lengths=(16, 32, 64), tokens_per_batch=64,
                        stop_check_every=2, show_progress=False).generate(
        prompt_ids[:1], max_new_tokens=16, until=["never appears", stop]
    )[0]
    assert stopped.text == full.text[:first]
    assert stopped.finish_reason == "stop_sequence"
    # The ids end with the token that completed the stop sequence.
    n = len(stopped.token_ids)
    assert n < len(full.token_ids) and full.token_ids[:n] == stopped.token_ids
    decode = llama_model.tokenizer.decode
    assert stop in decode(stopped.token_ids) and stop not in decode(stopped.token_ids[:-1])
    # Checking for stop sequences less often gives the same result.
    assert generator.generate(prompt_ids[:1], max_new_tokens=16, until=[stop])[0] == stopped


def test_cut_at_stop_sequences():
    assert cut_at_stop_sequences("abc\n\ndef", ["\n\n", "c"]) == ("ab", True)
    assert cut_at_stop_sequences("abc", ["x", ""]) == ("abc", False)
    assert cut_at_stop_sequences("", ["x"]) == ("", False)


def test_eos_ends_a_row(llama_model, prompt_ids):
    # Declare the token greedy decoding produces third to be the stop token.
    reference = naive_greedy(llama_model, prompt_ids[0], 8, stop_ids=())
    stop_token = reference[2]
    vocab = ensemble.UnifiedVocabulary(
        member_ids=(np.arange(len(llama_model.tokenizer), dtype=np.int32),),
        stop_ids=(stop_token,), is_identity=True,
    )
    result = Generator(llama_model, lengths=(32,), tokens_per_batch=64, vocabulary=vocab,
                       show_progress=False).generate(prompt_ids[:1], max_new_tokens=8)[0]
    assert result.token_ids == reference[: reference.index(stop_token)]
    assert result.finish_reason == "eos"


def test_long_prompts_lose_tokens_from_the_left(llama_model):
    ids = llama_model.encode("Convert 12 km to m. " * 8)
    assert len(ids) > 20
    result = Generator(llama_model, lengths=(24,), tokens_per_batch=24,
                       show_progress=False).generate([ids], max_new_tokens=4)[0]
    assert result.token_ids == naive_greedy(llama_model, ids[-20:], 4)


def test_top_k_1_equals_greedy(generator, prompt_ids):
    greedy = generator.generate(prompt_ids, max_new_tokens=8)
    top1 = generator.generate(prompt_ids, max_new_tokens=8,
                              sampling=SamplingConfig(do_sample=True, top_k=1), seed=5)
    assert [r.token_ids for r in top1] == [r.token_ids for r in greedy]


def test_sampling_is_reproducible_and_independent_of_batching(llama_model, generator, prompt_ids):
    sampling = SamplingConfig(do_sample=True, temperature=1.5)
    first = generator.generate(prompt_ids, max_new_tokens=10, sampling=sampling, seed=3)
    again = generator.generate(prompt_ids, max_new_tokens=10, sampling=sampling, seed=3)
    other_seed = generator.generate(prompt_ids, max_new_tokens=10, sampling=sampling, seed=4)
    one_row = Generator(llama_model, lengths=(64,), tokens_per_batch=64, show_progress=False)
    rebatched = one_row.generate(prompt_ids, max_new_tokens=10, sampling=sampling, seed=3)
    tokens = [r.token_ids for r in first]
    assert tokens == [r.token_ids for r in again] == [r.token_ids for r in rebatched]
    assert tokens != [r.token_ids for r in other_seed]
    assert tokens != [r.token_ids for r in generator.generate(prompt_ids, max_new_tokens=10)]


def _draws(logits: np.ndarray, config: SamplingConfig, n: int = 400) -> set[int]:
    keys = jax.random.split(jax.random.key(0), n)
    batch = jnp.broadcast_to(jnp.asarray(logits), (n, logits.shape[0]))
    return set(np.asarray(jax.jit(sample_tokens, static_argnums=2)(batch, keys, config)).tolist())


def test_top_k_and_top_p_restrict_the_candidates():
    logits = np.log(np.asarray([0.05, 0.5, 0.15, 0.3], np.float32))
    assert _draws(logits, SamplingConfig(do_sample=True)) == {0, 1, 2, 3}
    assert _draws(logits, SamplingConfig(do_sample=True, top_k=2)) == {1, 3}
    assert _draws(logits, SamplingConfig(do_sample=True, top_k=3)) == {1, 2, 3}
    # Nucleus: the most likely tokens until their mass reaches top_p.
    assert _draws(logits, SamplingConfig(do_sample=True, top_p=0.5)) == {1}
    assert _draws(logits, SamplingConfig(do_sample=True, top_p=0.7)) == {1, 3}
    assert _draws(logits, SamplingConfig(do_sample=True, top_p=0.81)) == {1, 2, 3}
    assert _draws(logits, SamplingConfig(do_sample=True, top_p=0.9, top_k=2)) == {1, 3}


def test_low_temperature_approaches_greedy():
    logits = np.asarray([1.0, 1.5, 0.5, 1.2], np.float32)
    assert _draws(logits, SamplingConfig(do_sample=True, temperature=1e-3)) == {1}


def test_sampling_config_validation_and_gen_kwargs():
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=0.0)
    with pytest.raises(ValueError, match="top_k"):
        SamplingConfig(top_k=-1)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=1.5)
    default = SamplingConfig(do_sample=True, temperature=0.7, top_p=0.9)
    assert sampling_from_gen_kwargs({"temperature": 0.0}, default) == SamplingConfig()
    assert sampling_from_gen_kwargs({"do_sample": False}, default) == SamplingConfig()
    assert sampling_from_gen_kwargs({}, default) == default
    assert sampling_from_gen_kwargs({"top_k": 5}, default) == SamplingConfig(
        do_sample=True, temperature=0.7, top_k=5, top_p=0.9
    )


def test_bad_generation_arguments(llama_model, generator):
    with pytest.raises(ValueError, match="max_new_tokens"):
        generator.generate(["x"], max_new_tokens=0)
    with pytest.raises(ValueError, match="no room"):
        generator.generate(["x"], max_new_tokens=64)
    with pytest.raises(ValueError, match="bucket lengths"):
        Generator(llama_model, lengths=(1024,))  # above max_position_embeddings=512
