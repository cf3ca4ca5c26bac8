"""lm-eval end to end on the local tasks: scores equal our own scoring and generation
paths; in-memory models; results written; ensembles."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tokenkit import prompts
from tokenkit.evaluation import harness, scoring
from tokenkit.evaluation.generate import Generator
from tokenkit.evaluation.lm import TokenkitLM

LENGTHS = (64, 128)
TOKENS_PER_BATCH = 512


@pytest.fixture(scope="module")
def results(llama_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    triple = (llama_model.config, llama_model.params, llama_model.tokenizer)
    res = harness.evaluate(
        triple, tasks=["tiny_world_mc", "tiny_world_gen"], limit=8, lengths=LENGTHS,
        tokens_per_batch=TOKENS_PER_BATCH, max_gen_toks=8, log_samples=True,
        bootstrap_iters=0, output_dir=out,
    )
    return res, out


def test_multiple_choice_scores_equal_our_scoring_path(llama_model, results):
    res, _ = results
    samples = res["samples"]["tiny_world_mc"]
    assert len(samples) == 8
    lm = TokenkitLM(models=[llama_model], lengths=LENGTHS, show_progress=False)
    correct, correct_norm = [], []
    for sample in samples:
        doc = sample["doc"]
        pairs = [lm._encode_pair(llama_model, doc["question"], " " + c) for c in doc["choices"]]
        scores = scoring.score_sequences(
            llama_model, [ids for ids, _ in pairs], [start for _, start in pairs],
            show_progress=False,
        )
        lls = np.asarray([s.loglik for s in scores])
        np.testing.assert_allclose([r[0] for r in sample["filtered_resps"]], lls, atol=1e-4)
        lengths = np.asarray([len(c) for c in doc["choices"]], float)
        correct.append(int(np.argmax(lls)) == doc["label"])
        correct_norm.append(int(np.argmax(lls / lengths)) == doc["label"])
    metrics = res["results"]["tiny_world_mc"]
    assert metrics["acc,none"] == pytest.approx(np.mean(correct))
    assert metrics["acc_norm,none"] == pytest.approx(np.mean(correct_norm))


def test_generation_task_equals_our_generator(llama_model, results):
    res, _ = results
    samples = res["samples"]["tiny_world_gen"]
    generator = Generator(llama_model, lengths=LENGTHS, tokens_per_batch=TOKENS_PER_BATCH,
                          show_progress=False)
    chat = [prompts.preprocess_prompt(s["doc"]["question"], "surround_instruct") for s in samples]
    # The task's generation_kwargs (max_gen_toks: 32) override eval.max_gen_toks.
    assert samples[0]["arguments"][0][1]["max_gen_toks"] == 32
    ours = [r.text.strip() for r in generator.generate(chat, max_new_tokens=32, until=["\n"])]
    assert [s["resps"][0][0] for s in samples] == ours
    matches = [o == s["doc"]["answer"] for o, s in zip(ours, samples)]
    assert res["results"]["tiny_world_gen"]["exact_match,none"] == pytest.approx(np.mean(matches))


def test_results_are_written(results):
    res, out = results
    written = json.loads((out / harness.RESULTS_FILE).read_text())
    assert written["results"]["tiny_world_mc"]["acc,none"] == pytest.approx(
        res["results"]["tiny_world_mc"]["acc,none"])
    lines = (out / "samples_tiny_world_gen.jsonl").read_text().splitlines()
    assert len(lines) == 8 and "resps" in json.loads(lines[0])


def test_bad_model_references():
    with pytest.raises(ValueError, match="triple"):
        harness.as_eval_model((1, 2))
    with pytest.raises(ValueError, match="needs a tokenizer spec"):
        harness.as_eval_model("some/dir")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        harness.as_eval_model("/no/such/model", "data/tokenizers/llama3_bpe:source=Llama3")


@pytest.mark.slow
def test_two_model_ensemble_runs_end_to_end(qwen_models, tmp_path):
    res = harness.evaluate_lockstep(
        list(qwen_models), "mean_logits", tasks=["tiny_world_mc", "tiny_world_gen"], limit=4,
        lengths=LENGTHS, tokens_per_batch=TOKENS_PER_BATCH, max_gen_toks=6,
        bootstrap_iters=0, output_dir=tmp_path, log_samples=True,
    )
    assert 0.0 <= res["results"]["tiny_world_mc"]["acc,none"] <= 1.0
    assert "exact_match,none" in res["results"]["tiny_world_gen"]
    lls = [r[0] for s in res["samples"]["tiny_world_mc"] for r in s["filtered_resps"]]
    assert len(lls) == 16 and all(np.isfinite(lls)) and all(x < 0 for x in lls)
    assert (tmp_path / harness.RESULTS_FILE).is_file()
