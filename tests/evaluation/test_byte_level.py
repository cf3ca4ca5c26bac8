"""Byte-level models with input-id expansion: loading the expand model, scoring and
decoding with the expanded ids (decoding rebuilds them from a window of history)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from lm_eval.api.instance import Instance

from tests.evaluation.support import (
    LLAMA_SPEC,
    TINY_TOKENIZERS_DIR,
    naive_greedy,
    random_params,
    sequence_logprob,
    tiny_config,
)
from tokenkit.byteify import load_byteify_tokenizer
from tokenkit.evaluation.generate import Generator
from tokenkit.evaluation.lm import TokenkitLM
from tokenkit.evaluation.model import load_eval_model
from tokenkit.models import save_pretrained

BYTE_SPEC = f"{TINY_TOKENIZERS_DIR / 'llama3_bpe'}:source=Llama3:conversion=byte"


@pytest.fixture(scope="module")
def byte_model(tmp_path_factory, llama_checkpoint):
    tokenizer = load_byteify_tokenizer(BYTE_SPEC)
    config = tiny_config(len(tokenizer) + 55, max_position_embeddings=256)
    path = tmp_path_factory.mktemp("byte_model")
    save_pretrained(path, config, random_params(config, seed=7))
    return load_eval_model(str(path), BYTE_SPEC, expand_model=llama_checkpoint,
                           expand_tokenizer=LLAMA_SPEC)


def test_expand_model_supplies_the_table(byte_model, llama_model):
    table = np.asarray(byte_model.params["expand_embedder"]["embedding"])
    old = np.asarray(llama_model.params["embedder"]["embedding"])
    n_old = len(llama_model.tokenizer)
    np.testing.assert_array_equal(table[:n_old], old[:n_old])
    assert not table[n_old:].any()  # the "no match" row and padding add nothing
    assert byte_model.expansion is not None and byte_model.expansion.none_id == n_old


def test_scores_use_the_expansion(byte_model):
    lm = TokenkitLM(models=[byte_model], lengths=(64,), tokens_per_batch=128,
                    show_progress=False)
    pairs = [("What is 12 + 7?", " 19"), ("Population of Fograd?", " 493000")]
    reqs = [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i,
                     metadata=("t", i, 1)) for i, p in enumerate(pairs)]
    results = lm.loglikelihood(reqs)
    plain = dataclasses.replace(byte_model, expansion=None)
    for (context, continuation), (logprob, _) in zip(pairs, results):
        ids, start = lm._encode_pair(byte_model, context, continuation)
        assert logprob == pytest.approx(sequence_logprob(byte_model, ids, start)[0], abs=1e-3)
        # Without the expanded ids the model scores differently: the expansion is used.
        assert logprob != pytest.approx(sequence_logprob(plain, ids, start)[0], abs=1e-2)


def test_decoding_with_expansion_equals_naive_loop(byte_model):
    generator = Generator(byte_model, lengths=(64,), tokens_per_batch=128, show_progress=False)
    prompts = ["What is 12 + 7?", "Copy: vexmi"]
    results = generator.generate(prompts, max_new_tokens=24)
    for prompt, result in zip(prompts, results):
        # The naive loop recomputes the expansion over the whole sequence every step.
        assert result.token_ids == naive_greedy(byte_model, byte_model.encode(prompt), 24)
        assert len(result.token_ids) > 16  # beyond one expansion window of history
