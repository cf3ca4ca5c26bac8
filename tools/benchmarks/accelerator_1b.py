"""A 1B-parameter Llama on one accelerator: forward, train steps, generation vs transformers.

    python tools/benchmarks/accelerator_1b.py --tokenizer=DIR:source=Llama3 --out=results.json

The shape of Llama-3.2-1B (16 layers, hidden 2048, 32 heads / 8 KV heads, vocab 128,256,
tied embeddings) with random weights, bf16 compute. Sections (each timed after a warm-up
call; the compile time is reported apart):

- `forward`: tokens/s and achieved TFLOP/s of a forward pass (model FLOPs, the PaLM
  convention of `training.cost`), and the fraction of the device's dense bf16 peak;
- `sft`: one train step of full fine-tuning (fp32 master weights, AdamW, bf16 compute),
  the step the trainer compiles (`training.step.make_train_step` over the model side's
  forward and the `sft` loss), step time and MFU;
- `alm`: the same with a frozen teacher (the same model) and `sft + alm_unconstrained`
  on synthetic chunk ids, the self-distillation step of tokenizer transfer;
- `generate`: greedy decoding (`evaluation.generate.Generator`) at batch 1 and 32, and
  transformers' `generate()` (PyTorch, the same weights, bf16, its default cache) on the
  same prompts, tokens/s and the ratio.

Each finished section is written to `--out` at once, so a run cut short keeps its rows.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from tokenkit import losses as losses_lib
from tokenkit.batch import Batch, ChunkIds, SideBatch
from tokenkit.byteify import load_byteify_tokenizer
from tokenkit.evaluation import ensemble
from tokenkit.evaluation.generate import Generator
from tokenkit.evaluation.model import EvalModel
from tokenkit.models import ModelConfig, RopeConfig, init_params, save_pretrained
from tokenkit.models.side import ModelSide
from tokenkit.training import cost as cost_lib
from tokenkit.training import setup as setup_lib
from tokenkit.training import step as step_lib
from tokenkit.losses import aggregation as agg

FLAGS = flags.FLAGS
flags.DEFINE_string("tokenizer", None, "Spec of a Llama 3 tokenizer (128k vocabulary).", required=True)
flags.DEFINE_string("out", "accelerator_1b.json", "Where the results go (JSON).")
flags.DEFINE_list("sections", ["forward", "sft", "alm", "generate"], "What to run.")
flags.DEFINE_integer("batch", 4, "Rows per forward / train step.")
flags.DEFINE_integer("seq_len", 2048, "Tokens per row.")
flags.DEFINE_list("gen_batch", ["1", "32"], "Generation batch sizes.")
flags.DEFINE_integer("prompt_len", 128, "Prompt tokens per generation row.")
flags.DEFINE_integer("new_tokens", 256, "Tokens generated per row.")
flags.DEFINE_string("remat", "dots", "Remat policy of the train steps.")
flags.DEFINE_string("attention", "cudnn", "Attention of the train steps (`einsum` materialises "
                    "the [L, B, H, T, T] scores its backward keeps: 34 GB at 4 x 2048).")
flags.DEFINE_integer("repeats", 5, "Timed calls per measurement (the median is kept).")
flags.DEFINE_bool("tiny", False, "A 2-layer model of the same vocabulary (to check the script on a CPU).")

LLAMA_1B = ModelConfig(
    "llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16,
    num_heads=32, num_kv_heads=8, head_dim=64, max_position_embeddings=131072,
    rms_norm_eps=1e-5, tie_word_embeddings=True, rope=RopeConfig(500000.0),
)


def timed(fn, *args, repeats: int) -> tuple[float, float]:
    """(seconds of the first call, median seconds of `repeats` later calls)."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return first, float(np.median(times))


def save(results: dict) -> None:
    Path(FLAGS.out).write_text(json.dumps(results, indent=2) + "\n")


def bench_forward(side: ModelSide, params, peak) -> dict:
    b, t = FLAGS.batch, FLAGS.seq_len
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 128000, (b, t)), jnp.int32)
    mask = jnp.ones_like(ids)
    forward = jax.jit(lambda p, x, m: side.forward(p, x, m).logits[:, -1].sum())
    first, best = timed(forward, params, ids, mask, repeats=FLAGS.repeats)
    flops = cost_lib.forward_flops_per_token(side.config, t) * b * t
    row = {"compile_s": first - best, "seconds": best, "tokens_per_s": b * t / best,
           "tflops": flops / best / 1e12}
    if peak:
        row["fraction_of_peak"] = flops / best / peak
    return row


def _batch(b: int, t_student: int, t_teacher: int | None, seed: int) -> Batch:
    rng = np.random.default_rng(seed)

    def side(t):
        ids = jnp.asarray(rng.integers(0, 128000, (b, t)), jnp.int32)
        ones = jnp.ones((b, t), bool)
        return SideBatch(ids, ones, ones)

    if t_teacher is None:
        return Batch(student=side(t_student))
    # Chunks of 1-4 student tokens against 1-2 teacher tokens, as in a subword transfer.
    chunks_t = np.zeros((b, t_teacher), np.int32)
    chunks_s = np.zeros((b, t_student), np.int32)
    for row in range(b):
        i = j = k = 0
        while i < t_teacher and j < t_student:
            n_t, n_s = rng.integers(1, 3), rng.integers(1, 5)
            chunks_t[row, i:i + n_t] = k
            chunks_s[row, j:j + n_s] = k
            i, j, k = i + n_t, j + n_s, k + 1
        chunks_t[row, i:] = -1
        chunks_s[row, j:] = -1
    return Batch(student=side(t_student), teacher=side(t_teacher),
                 chunks={"unconstrained": ChunkIds(jnp.asarray(chunks_t), jnp.asarray(chunks_s))})


def bench_train(side: ModelSide, params, loss_names, with_teacher: bool, peak) -> dict:
    b, t = FLAGS.batch, FLAGS.seq_len
    losses = tuple(losses_lib.get_losses(list(loss_names)))
    constants = setup_lib.loss_constants(side, losses_lib.space_mask_mode(losses))
    trainable = jax.tree.map(lambda x: x.astype(jnp.float32), params)
    frozen = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params) if with_teacher else {}
    tx = optax.adamw(1e-5)
    aggregation = agg.Aggregation()

    def loss_fn(train, froz, micro, batch):
        out = side.forward(train, micro.student.input_ids, micro.student.attention_mask)
        student = losses_lib.ModelOutputs(logits=out.logits)
        teacher = None
        if with_teacher:
            t_out = side.forward(froz, micro.teacher.input_ids, micro.teacher.attention_mask)
            teacher = jax.lax.stop_gradient(losses_lib.ModelOutputs(logits=t_out.logits))
        ctx = losses_lib.LossContext(batch=micro, global_batch=batch, student=student,
                                     student_constants=constants, teacher=teacher,
                                     teacher_constants=constants if with_teacher else None)
        values = [loss(ctx)[0] for loss in losses]
        return jnp.stack(values), {}

    step = step_lib.make_train_step(loss_fn, tx, aggregation, loss_names=tuple(loss_names),
                                    total_steps=10)
    state = step_lib.init_train_state(trainable, tx, jax.random.key(0), aggregation, len(losses))
    batch = _batch(b, t, t // 2 if with_teacher else None, 1)
    compiled = jax.jit(step, donate_argnums=(0,)).lower(state, batch, frozen).compile()
    cost = cost_lib.step_cost(compiled, student=side.config, student_shape=(b, t),
                              teacher=side.config if with_teacher else None,
                              teacher_shape=(b, t // 2) if with_teacher else None)

    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], batch, frozen)
        return metrics["loss"]

    first, best = timed(run, repeats=FLAGS.repeats)
    row = {"seconds_per_step": best, "tokens_per_s": cost.tokens / best,
           "model_tflop_per_step": cost.model_flops / 1e12,
           "temp_gib": (cost.temp_bytes or 0) / 2**30,
           "argument_gib": (cost.argument_bytes or 0) / 2**30}
    if peak:
        row["mfu"] = cost.mfu(best, peak, 1)
    return row


def bench_generate(side: ModelSide, params, tokenizer) -> list[dict]:
    import torch
    import transformers

    model = EvalModel.of(side, params)
    vocabulary = ensemble.UnifiedVocabulary((np.arange(len(tokenizer), dtype=np.int32),), (), True)
    rng = np.random.default_rng(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(tmp, side.config, jax.device_get(params))
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.bfloat16).cuda().eval()
        for b in (int(x) for x in FLAGS.gen_batch):
            length = 1 << int(np.ceil(np.log2(FLAGS.prompt_len + FLAGS.new_tokens)))
            generator = Generator(model, lengths=(length,), tokens_per_batch=b * length,
                                  vocabulary=vocabulary, show_progress=False)
            prompts = [rng.integers(0, 128000, FLAGS.prompt_len).tolist() for _ in range(b)]
            start = time.perf_counter()
            generator.generate(prompts, max_new_tokens=FLAGS.new_tokens)
            first = time.perf_counter() - start
            start = time.perf_counter()
            out = generator.generate(prompts, max_new_tokens=FLAGS.new_tokens)
            ours = time.perf_counter() - start
            assert all(len(r.token_ids) == FLAGS.new_tokens for r in out)
            ids = torch.tensor(prompts, device="cuda")
            kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=FLAGS.new_tokens,
                          min_new_tokens=FLAGS.new_tokens, do_sample=False, pad_token_id=0)
            with torch.no_grad():
                hf.generate(ids, **kwargs)  # warm-up
                torch.cuda.synchronize()
                start = time.perf_counter()
                hf.generate(ids, **kwargs)
                torch.cuda.synchronize()
                theirs = time.perf_counter() - start
            tokens = b * FLAGS.new_tokens
            rows.append({"batch": b, "compile_s": first - ours, "ours_tokens_per_s": tokens / ours,
                         "transformers_tokens_per_s": tokens / theirs, "ratio": theirs / ours})
            print(rows[-1], flush=True)
    return rows


def main(argv) -> None:
    del argv
    tokenizer = load_byteify_tokenizer(FLAGS.tokenizer)
    device = jax.devices()[0]
    peak = cost_lib.peak_flops(device.device_kind)
    global LLAMA_1B
    if FLAGS.tiny:
        LLAMA_1B = dataclasses.replace(LLAMA_1B, hidden_size=64, intermediate_size=128,
                                       num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                                       layer_types=())
    side = ModelSide.create(LLAMA_1B, tokenizer, dtype="bfloat16")
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), init_params(side.module, 0))
    results = {"device": device.device_kind, "jax": jax.__version__,
               "params": LLAMA_1B.num_params(), "batch": FLAGS.batch, "seq_len": FLAGS.seq_len,
               "peak_tflops": None if peak is None else peak / 1e12}
    print(results, flush=True)
    train_options = [(FLAGS.attention, FLAGS.remat), ("einsum", "full")]
    for section in FLAGS.sections:
        start = time.perf_counter()
        if section == "forward":
            plain = ModelSide.create(LLAMA_1B, tokenizer, dtype="bfloat16")
            results["forward"] = bench_forward(plain, params, peak)
        elif section in ("sft", "alm"):
            losses = ("sft",) if section == "sft" else ("sft", "alm_unconstrained")
            for attention, remat in train_options:  # the fallback materialises no scores
                train_side = ModelSide.create(LLAMA_1B, tokenizer, dtype="bfloat16",
                                              remat_policy=remat, attention_impl=attention)
                try:
                    row = bench_train(train_side, params, losses, section == "alm", peak)
                except Exception as e:  # noqa: BLE001  (record it, try the fallback)
                    results.setdefault("errors", []).append(f"{section} {attention}/{remat}: {e}"[:500])
                    print("failed:", results["errors"][-1], flush=True)
                    continue
                results[section] = {"attention": attention, "remat": remat, **row}
                train_options = [(attention, remat)]
                break
        elif section == "generate":
            plain = ModelSide.create(LLAMA_1B, tokenizer, dtype="bfloat16")
            results["generate"] = bench_generate(plain, params, tokenizer)
        else:
            raise ValueError(f"Unknown section {section!r}; valid: forward, sft, alm, generate.")
        results.setdefault("section_seconds", {})[section] = time.perf_counter() - start
        print(section, results.get(section), flush=True)
        save(results)


if __name__ == "__main__":
    app.run(main)
