"""Generation throughput of `tokenkit.evaluation.generate.Generator`: tokens/s by batch size.

    python tools/benchmarks/generate.py                       # small model, batch 1 and 16
    python tools/benchmarks/generate.py --size=tiny --batch=1,4,16,64 --new_tokens=256

A random model on the tiny world's Llama3 tokenizer generates `--new_tokens` tokens
greedily after prompts of `--prompt_len` tokens (stop tokens disabled, so every row runs
the full length). Prints one table row per batch size: compile time (prefill + decode
loop, first call), prefill time, decode time, generated tokens/s (all rows) and
milliseconds per decode step; and, for batch 1, the same generation by a naive loop (a
jitted full forward over the padded sequence per token, no cache) for comparison.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from tokenkit.byteify import load_byteify_tokenizer
from tokenkit.evaluation import ensemble
from tokenkit.evaluation.generate import Generator, bucket_length
from tokenkit.evaluation.model import EvalModel
from tokenkit.models import ModelConfig, Transformer, init_cache, init_params
from tokenkit.entry import REPO_ROOT

TOKENIZER = f"{REPO_ROOT / 'data' / 'tokenizers' / 'llama3_bpe'}:source=Llama3"
SIZES = {
    "tiny": dict(hidden_size=64, intermediate_size=192, num_layers=2, num_heads=4,
                 num_kv_heads=2, head_dim=16),
    "small": dict(hidden_size=256, intermediate_size=768, num_layers=4, num_heads=4,
                  num_kv_heads=2, head_dim=64),
    "medium": dict(hidden_size=512, intermediate_size=1536, num_layers=8, num_heads=8,
                   num_kv_heads=4, head_dim=64),
}

FLAGS = flags.FLAGS
flags.DEFINE_enum("size", "small", list(SIZES), "Model size.")
flags.DEFINE_list("batch", ["1", "16"], "Batch sizes (prompts generated together).")
flags.DEFINE_integer("prompt_len", 32, "Prompt tokens per row.")
flags.DEFINE_integer("new_tokens", 128, "Tokens generated per row.")
flags.DEFINE_integer("repeats", 3, "Timed runs after the first (compiling) one; best is shown.")
flags.DEFINE_integer("naive_tokens", 32, "Tokens the naive batch-1 loop generates (0: skip).")
flags.DEFINE_string("dtype", "float32", "Compute dtype.")


def make_model(size: str, dtype: str) -> EvalModel:
    tokenizer = load_byteify_tokenizer(TOKENIZER)
    config = ModelConfig("llama", vocab_size=len(tokenizer), max_position_embeddings=4096,
                         **SIZES[size])
    return EvalModel.build(config, init_params(Transformer(config), 0), tokenizer, dtype=dtype)


def no_stop_vocabulary(model: EvalModel) -> ensemble.UnifiedVocabulary:
    return ensemble.UnifiedVocabulary(
        (np.arange(len(model.tokenizer), dtype=np.int32),), (), True)


def bench_generator(model: EvalModel, batch: int, prompt_len: int, new_tokens: int,
                    repeats: int) -> dict:
    length = 1 << int(np.ceil(np.log2(prompt_len + new_tokens)))
    generator = Generator(model, lengths=(length,), tokens_per_batch=batch * length,
                          vocabulary=no_stop_vocabulary(model), show_progress=False)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 4000, prompt_len).tolist() for _ in range(batch)]

    start = time.perf_counter()
    generator.generate(prompts, max_new_tokens=new_tokens)
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        results = generator.generate(prompts, max_new_tokens=new_tokens)
        best = min(best, time.perf_counter() - start)
    assert all(len(r.token_ids) == new_tokens for r in results)

    # Prefill alone (the same compiled function: all prompt tokens but the last) to split
    # the time.
    ids = np.zeros((batch, bucket_length(prompt_len - 1, generator.lengths)), np.int32)
    mask = np.zeros_like(ids)
    ids[:, : prompt_len - 1] = np.asarray(prompts)[:, :-1]
    mask[:, : prompt_len - 1] = 1
    cache = init_cache(model.config, batch, length, model.module.dtype)
    params = ((model.params, None),)
    jax.block_until_ready(generator._prefill(params, (ids,), (mask,), (cache,)))
    start = time.perf_counter()
    jax.block_until_ready(generator._prefill(params, (ids,), (mask,), (cache,)))
    prefill = time.perf_counter() - start
    decode = max(best - prefill, 1e-9)
    return {
        "method": "generator", "batch": batch, "compile_s": first - best, "prefill_ms": prefill * 1e3,
        "decode_s": decode, "tokens_per_s": batch * new_tokens / best,
        "ms_per_step": decode / new_tokens * 1e3,
    }


def bench_naive(model: EvalModel, prompt_len: int, new_tokens: int) -> dict:
    """Greedy decoding by a full forward over the padded sequence per token (batch 1)."""
    length = prompt_len + new_tokens
    forward = jax.jit(lambda p, x, m: model.forward(p, x, m).logits)
    ids = np.zeros((1, length), np.int32)
    ids[0, :prompt_len] = np.random.default_rng(0).integers(0, 4000, prompt_len)

    def run() -> float:
        seq = ids.copy()
        start = time.perf_counter()
        for n in range(prompt_len, length):
            mask = (np.arange(length) < n).astype(np.int32)[None]
            logits = forward(model.params, jnp.asarray(seq), jnp.asarray(mask))
            seq[0, n] = int(jnp.argmax(logits[0, n - 1]))
        return time.perf_counter() - start

    first = run()
    best = run()
    return {
        "method": "naive loop", "batch": 1, "compile_s": first - best, "prefill_ms": float("nan"),
        "decode_s": best, "tokens_per_s": new_tokens / best, "ms_per_step": best / new_tokens * 1e3,
    }


def main(argv) -> None:
    del argv
    model = make_model(FLAGS.size, FLAGS.dtype)
    c = model.config
    print(f"model: {FLAGS.size} ({c.num_params() / 1e6:.1f}M params, {c.num_layers} layers, "
          f"hidden {c.hidden_size}, vocab {c.vocab_size}), dtype {FLAGS.dtype}, "
          f"device {jax.devices()[0].device_kind}; prompt {FLAGS.prompt_len} tokens, "
          f"{FLAGS.new_tokens} new tokens per row")
    rows = [bench_generator(model, int(b), FLAGS.prompt_len, FLAGS.new_tokens, FLAGS.repeats)
            for b in FLAGS.batch]
    if FLAGS.naive_tokens:
        rows.append(bench_naive(model, FLAGS.prompt_len, FLAGS.naive_tokens))
    header = f"{'method':<11} {'batch':>5} {'compile s':>9} {'prefill ms':>10} {'decode s':>9} " \
             f"{'tokens/s':>10} {'ms/step':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['method']:<11} {r['batch']:>5} {r['compile_s']:>9.2f} {r['prefill_ms']:>10.1f} "
              f"{r['decode_s']:>9.3f} {r['tokens_per_s']:>10.1f} {r['ms_per_step']:>8.2f}")


if __name__ == "__main__":
    app.run(main)
