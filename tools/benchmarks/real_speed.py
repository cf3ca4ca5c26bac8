"""SmolLM2-135M on this CPU: tokenkit against transformers (PyTorch), in one process.

    python tools/benchmarks/real_speed.py                            # everything
    python tools/benchmarks/real_speed.py --sections=score --repeats=3
    python tools/benchmarks/real_speed.py --compilation_cache=~/.cache/tokenkit/jax

Four measurements on the real assets (`tools/real_assets.py`), each timing ours and
theirs interleaved (ours, theirs, ours, theirs, ...) so that the load other jobs put on
a shared machine hits both alike; the load average is printed with each section:

- **score**: the log-likelihood of every token of the 12 paragraphs of
  `data/real/pydoc_eval.txt` and of 5 long texts of about 2,400 tokens (consecutive
  English paragraphs of `data/real/test.jsonl`). Ours: `scoring.score_texts` (one
  window per text: `max_length` 4096); theirs: one forward per text under
  `torch.no_grad()`. Both read the same ids. `cold` is the first call (ours compiles
  each batch shape, into a fresh persistent compilation cache unless
  `--compilation_cache` names a warm one); `warm` the best of `--repeats` later calls.
  The texts' log-likelihoods must agree to `--rtol` (the run fails otherwise).
- **lm_eval**: the `loglikelihood` requests of the first `--lm_eval_items` items of the
  `real_docs_mc` task (`data/eval_tasks/real_docs`), through our `TokenkitLM` and
  lm-eval's `HFLM` (`--hf_batch_size`); same checks, plus each side's accuracy.
- **ensemble**: the same requests through a token-level ensemble of SmolLM2 with itself
  (`TokenkitLM` with two members, `mean_prob`: it scores as the model alone), against
  `HFLM` run once per member, the cost of the same two models through transformers.
- **generate**: greedy generation of exactly `--new_tokens` tokens (stop tokens off)
  after chat prompts, at batch 1 and 8: our `Generator` (bucket lengths
  `--gen_lengths`) against `model.generate` (left padding); tokens/s over all rows,
  and how many rows' tokens equal theirs.

`ratio` is ours / theirs in wall time (below 1: ours is faster), or in tokens/s for
generation (above 1: ours is faster).
"""

from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("sections", ["score", "lm_eval", "ensemble", "generate"],
                  "What to measure.")
flags.DEFINE_integer("repeats", 2, "Warm calls per side (interleaved); the best counts.")
flags.DEFINE_integer("long_tokens", 2400, "Tokens per long text (whole paragraphs, at least this).")
flags.DEFINE_integer("long_texts", 5, "How many long texts.")
flags.DEFINE_integer("lm_eval_items", 60, "real_docs_mc items (4 requests each).")
flags.DEFINE_integer("hf_batch_size", 8, "HFLM batch size.")
flags.DEFINE_integer("new_tokens", 128, "Tokens generated per row.")
flags.DEFINE_list("gen_batch", ["1", "8"], "Generation batch sizes.")
flags.DEFINE_list("gen_lengths", ["128", "256", "512", "1024", "2048"],
                  "Our generator's bucket lengths (its default).")
flags.DEFINE_float("rtol", 1e-3, "Largest relative difference of log-likelihoods allowed.")
flags.DEFINE_string("compilation_cache", None,
                    "Persistent compilation cache directory (default: a fresh empty one).")
flags.DEFINE_string("cache_dir", None, "Real-assets cache (default: $TOKENKIT_CACHE).")

REPO = Path(__file__).resolve().parents[2]


def load_average() -> str:
    return "load %.1f %.1f %.1f" % os.getloadavg()


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    jax.block_until_ready(out) if isinstance(out, jax.Array) else None
    return time.perf_counter() - start, out


def interleaved(ours: Callable[[], Any], theirs: Callable[[], Any], repeats: int) -> dict:
    """Cold call of each, then `repeats` warm calls alternating; seconds and outputs."""
    cold_ours, out_ours = timed(ours)
    cold_theirs, out_theirs = timed(theirs)
    warm_ours, warm_theirs = [], []
    for _ in range(repeats):
        warm_ours.append(timed(ours)[0])
        warm_theirs.append(timed(theirs)[0])
    return {"cold_ours": cold_ours, "cold_theirs": cold_theirs,
            "warm_ours": min(warm_ours), "warm_theirs": min(warm_theirs),
            "out_ours": out_ours, "out_theirs": out_theirs}


def check_close(name: str, ours: Sequence[float], theirs: Sequence[float], rtol: float) -> float:
    """The largest relative difference; raises if above `rtol`."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    worst = float(np.max(np.abs(ours - theirs) / np.maximum(np.abs(theirs), 1e-9)))
    if worst > rtol:
        raise AssertionError(f"{name}: log-likelihoods differ by up to {worst:.2e} relative "
                             f"(> {rtol:g}); ours {ours[:4]}, theirs {theirs[:4]}")
    return worst


# --------------------------------------------------------------------------------------
# Inputs


def long_texts(model, n: int, min_tokens: int) -> list[str]:
    """`n` texts of consecutive English test paragraphs (blank line between), each the
    first whole paragraphs reaching `min_tokens` tokens."""
    texts, current = [], []
    with open(REPO / "data" / "real" / "test.jsonl", encoding="utf-8") as f:
        for record in map(json.loads, f):
            if record["lang"] != "en":
                continue
            current.append(record["text"])
            text = "\n\n".join(current)
            if len(model.encode(text)) >= min_tokens:
                texts.append(text)
                current = []
                if len(texts) == n:
                    return texts
    raise ValueError(f"data/real/test.jsonl has English text for only {len(texts)} texts "
                     f"of {min_tokens} tokens.")


def mc_requests(n_items: int) -> tuple[list, list[dict]]:
    from lm_eval.api.instance import Instance

    path = REPO / "data" / "eval_tasks" / "real_docs" / "mc.jsonl"
    items = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()][:n_items]
    requests = [
        Instance("loglikelihood", item, (item["context"], "\n\n" + choice), j)
        for item in items for j, choice in enumerate(item["choices"])
    ]
    return requests, items


def accuracy(items: Sequence[dict], logprobs: Sequence[float]) -> float:
    per_item = np.asarray(logprobs).reshape(len(items), -1)
    return float(np.mean(per_item.argmax(axis=1) == [item["label"] for item in items]))


# --------------------------------------------------------------------------------------
# Sections


def torch_loglik(hf_model, ids: Sequence[int]) -> float:
    import torch

    with torch.no_grad():
        x = torch.tensor([list(ids)])
        logits = hf_model(x).logits[0, :-1].float()
        logp = torch.log_softmax(logits, dim=-1).gather(1, x[0, 1:, None])
        return float(logp.sum())


def bench_score(model, hf_model, repeats: int, rtol: float) -> list[dict]:
    from tokenkit.evaluation import scoring

    short = (REPO / "data" / "real" / "pydoc_eval.txt").read_text(encoding="utf-8").splitlines()
    rows = []
    for name, texts in (("12 pydoc paragraphs", short),
                        (f"{FLAGS.long_texts} long texts",
                         long_texts(model, FLAGS.long_texts, FLAGS.long_tokens))):
        ids = [model.encode(t) for t in texts]
        print(f"score {name}: {sum(map(len, ids)):,} tokens, longest {max(map(len, ids))}; "
              f"{load_average()}", flush=True)

        def ours(texts=texts):
            return [s.loglik for s in scoring.score_texts(model, texts, max_length=4096,
                                                          show_progress=False)]

        def theirs(ids=ids):
            return [torch_loglik(hf_model, x) for x in ids]

        r = interleaved(ours, theirs, repeats)
        r["max_rel_diff"] = check_close(name, r["out_ours"], r["out_theirs"], rtol)
        rows.append({"what": f"score {name}", **r})
    return rows


def bench_lm_eval(model, repeats: int, rtol: float) -> list[dict]:
    from lm_eval.models.huggingface import HFLM

    from tokenkit.evaluation.lm import TokenkitLM

    requests, items = mc_requests(FLAGS.lm_eval_items)
    ours_lm = TokenkitLM(models=[model], show_progress=False)
    theirs_lm = HFLM(pretrained=str(model.name), device="cpu", dtype="float32",
                     batch_size=FLAGS.hf_batch_size)
    print(f"lm_eval: {len(requests)} loglikelihood requests ({len(items)} real_docs_mc items); "
          f"{load_average()}", flush=True)
    r = interleaved(lambda: [x[0] for x in ours_lm.loglikelihood(requests)],
                    lambda: [x[0] for x in theirs_lm.loglikelihood(requests, disable_tqdm=True)],
                    repeats)
    r["max_rel_diff"] = check_close("lm_eval", r["out_ours"], r["out_theirs"], rtol)
    r["note"] = (f"acc ours {accuracy(items, r['out_ours']):.3f}, "
                 f"theirs {accuracy(items, r['out_theirs']):.3f}")
    return [{"what": f"lm-eval loglikelihood x{len(requests)}", **r}]


def bench_ensemble(model, repeats: int, rtol: float) -> list[dict]:
    from lm_eval.models.huggingface import HFLM

    from tokenkit.evaluation.lm import TokenkitLM

    requests, items = mc_requests(FLAGS.lm_eval_items)
    ours_lm = TokenkitLM(models=[model, model], combine_strategy="mean_prob", show_progress=False)
    theirs_lm = HFLM(pretrained=str(model.name), device="cpu", dtype="float32",
                     batch_size=FLAGS.hf_batch_size)
    print(f"ensemble: {len(requests)} loglikelihood requests, 2 members; {load_average()}",
          flush=True)

    def theirs():
        members = [[x[0] for x in theirs_lm.loglikelihood(requests, disable_tqdm=True)]
                   for _ in range(2)]
        return members[0]

    r = interleaved(lambda: [x[0] for x in ours_lm.loglikelihood(requests)], theirs, repeats)
    r["max_rel_diff"] = check_close("ensemble", r["out_ours"], r["out_theirs"], rtol)
    r["note"] = f"acc ours {accuracy(items, r['out_ours']):.3f}; theirs: HFLM once per member"
    return [{"what": f"ensemble of 2, loglikelihood x{len(requests)}", **r}]


def bench_generate(model, hf_model, hf_tokenizer, repeats: int) -> list[dict]:
    import torch

    from tokenkit.evaluation import agreement, ensemble
    from tokenkit.evaluation.generate import Generator
    from tools.real_chats import QUESTIONS

    new = FLAGS.new_tokens
    no_stop = ensemble.UnifiedVocabulary((np.arange(len(model.tokenizer), dtype=np.int32),), (), True)
    lengths = tuple(int(x) for x in FLAGS.gen_lengths)
    rows = []
    for batch in (int(b) for b in FLAGS.gen_batch):
        questions = list(QUESTIONS[:batch])
        prompt_ids = [model.encode(agreement.chat_prompt(q)) for q in questions]
        generator = Generator(model, lengths=lengths, tokens_per_batch=batch * lengths[-1],
                              vocabulary=no_stop, show_progress=False)
        longest = max(map(len, prompt_ids)) + new
        bucket = min(x for x in lengths if x >= longest)
        generator.tokens_per_batch = batch * bucket  # exactly `batch` rows in one batch
        width = max(map(len, prompt_ids))
        pad = hf_tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in prompt_ids])
        attention = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in prompt_ids])
        print(f"generate batch {batch}: prompts of {min(map(len, prompt_ids))}-{width} tokens, "
              f"{new} new tokens, our bucket {bucket}; {load_average()}", flush=True)

        def ours(prompt_ids=prompt_ids, generator=generator):
            return [r.token_ids for r in generator.generate(prompt_ids, max_new_tokens=new)]

        # Neither side may stop or forbid a token: ours has no stop ids, theirs an eos id
        # no step can produce (None would be filled in from the model's own config, and
        # min_new_tokens *forbids* eos, so the texts parted at the first step where eos
        # was the argmax, as they did in earlier runs of this benchmark).
        no_eos = copy.deepcopy(hf_model.generation_config)
        no_eos.eos_token_id = hf_model.config.vocab_size
        no_eos.pad_token_id = pad
        no_eos.max_new_tokens, no_eos.do_sample = new, False

        def theirs(input_ids=input_ids, attention=attention, no_eos=no_eos):
            with torch.no_grad():
                out = hf_model.generate(input_ids=input_ids, attention_mask=attention,
                                        generation_config=no_eos)
            return out[:, input_ids.shape[1]:].tolist()

        r = interleaved(ours, theirs, repeats)
        for side in ("ours", "theirs"):
            counts = sorted({len(row) for row in r[f"out_{side}"]})
            if counts != [new]:
                raise SystemExit(f"generate batch {batch}: {side} made {counts} tokens per "
                                 f"row, not {new}: tokens/s would not compare.")
        same = sum(a == b for a, b in zip(r["out_ours"], r["out_theirs"]))
        agree = np.mean([_common_prefix(a, b) for a, b in zip(r["out_ours"], r["out_theirs"])])
        r["note"] = f"{same}/{batch} rows equal, {agree:.0f} leading tokens equal on average"
        r["tokens"] = batch * new
        rows.append({"what": f"generate batch {batch}", **r})
    return rows


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# --------------------------------------------------------------------------------------


def print_table(rows: Sequence[dict]) -> None:
    header = (f"{'measurement':<34} {'ours cold s':>11} {'ours warm s':>11} {'theirs 1st s':>12} "
              f"{'theirs warm s':>13} {'ratio':>6}  note")
    print(header)
    print("-" * len(header))
    for r in rows:
        if "tokens" in r:  # generation: tokens/s, ratio ours/theirs (higher is better)
            ours_tps, theirs_tps = r["tokens"] / r["warm_ours"], r["tokens"] / r["warm_theirs"]
            ratio = ours_tps / theirs_tps
            note = f"tokens/s ours {ours_tps:.1f}, theirs {theirs_tps:.1f}; {r['note']}"
        else:
            ratio = r["warm_ours"] / r["warm_theirs"]
            note = f"max rel diff {r['max_rel_diff']:.1e}" + (f"; {r['note']}" if "note" in r else "")
        print(f"{r['what']:<34} {r['cold_ours']:>11.2f} {r['warm_ours']:>11.2f} "
              f"{r['cold_theirs']:>12.2f} {r['warm_theirs']:>13.2f} {ratio:>6.2f}  {note}")


def main(argv: Sequence[str]) -> None:
    del argv
    if str(REPO) not in sys.path:  # run as a script: tools/ is not importable otherwise
        sys.path.insert(0, str(REPO))
    unknown = set(FLAGS.sections) - {"score", "lm_eval", "ensemble", "generate"}
    if unknown:
        raise app.UsageError(f"Unknown sections {sorted(unknown)}; valid: score, lm_eval, "
                             "ensemble, generate")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tokenkit import entry
    from tokenkit.evaluation.model import load_eval_model
    from tools import real_assets

    cache = Path(os.path.expanduser(FLAGS.compilation_cache or tempfile.mkdtemp(prefix="jax_cache_")))
    cache.mkdir(parents=True, exist_ok=True)
    fresh = not any(cache.iterdir())
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(cache)
    entry.enable_compilation_cache()
    assets = real_assets.ensure(Path(FLAGS.cache_dir) if FLAGS.cache_dir else None)
    model = load_eval_model(str(assets.smollm2_dir), assets.smollm2_tokenizer_spec)
    hf_model = AutoModelForCausalLM.from_pretrained(assets.smollm2_dir, dtype=torch.float32).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(assets.smollm2_dir)
    print(f"SmolLM2-135M-Instruct, float32; jax {jax.__version__} on "
          f"{jax.devices()[0].device_kind} ({os.cpu_count()} cores), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); compilation cache {cache} "
          f"({'empty: cold = compile' if fresh else 'warm: cold = load'}); {load_average()}",
          flush=True)
    rows = []
    if "score" in FLAGS.sections:
        rows += bench_score(model, hf_model, FLAGS.repeats, FLAGS.rtol)
    if "lm_eval" in FLAGS.sections:
        rows += bench_lm_eval(model, FLAGS.repeats, FLAGS.rtol)
    if "ensemble" in FLAGS.sections:
        rows += bench_ensemble(model, FLAGS.repeats, FLAGS.rtol)
    if "generate" in FLAGS.sections:
        rows += bench_generate(model, hf_model, hf_tokenizer, FLAGS.repeats)
    print(f"\nend: {load_average()}")
    print_table(rows)


if __name__ == "__main__":
    app.run(main)
