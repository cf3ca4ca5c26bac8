"""Speed and memory of the ALM + SFT losses: segment sums over chunk ids vs dense matrices.

    python tools/benchmarks/losses.py                          # both suites of the brief
    python tools/benchmarks/losses.py --suites=bytes --lengths=2048,4096 --runs=5

Times the forward + backward (gradient w.r.t. the student logits) of
`alm_unconstrained` with `alm_mode=merge_by_space_prob+append_space` plus `sft`, ours
(`tokenkit.losses`) against the dense-matrix formulation of the tests
(`tests/losses/dense_reference.py`: `[B, L, C]` alignment matrices, matmuls, a
`[B, C, C]` merging matrix), each under `jax.jit`. Prints one row per (suite, length):
median seconds of `--runs` runs after compilation and XLA's temporary memory
(`compile().memory_analysis().temp_size_in_bytes`), for both, and the ratios.

Suites: `bytes`, a byte-level student (vocabulary 512, chunks of 1-6 student bytes per
teacher token); `subword`, a subword student (vocabulary 32k, chunks of 1-2 tokens per
side). Teacher and student rows have the same length L, the teacher the same vocabulary
size, batch 4. The dense form builds its alignment matrices from the chunk ids inside the
step (upstream receives them as boolean inputs, which then count as arguments instead).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.losses import dense_reference  # noqa: E402
from tests.losses.support import as_batch  # noqa: E402
from tokenkit.losses import AlmOptions, LossContext, ModelOutputs, TokenizerConstants  # noqa: E402
from tokenkit.losses.alm import alm_loss  # noqa: E402
from tokenkit.losses.sft import sft_loss  # noqa: E402

SUITES = {
    # name: (vocabulary, default lengths, student tokens per chunk, teacher tokens per chunk)
    "bytes": (512, (2048, 4096, 8192), (1, 6), (1, 2)),
    "subword": (32_000, (512, 1024, 2048), (1, 2), (1, 2)),
}

FLAGS = flags.FLAGS
flags.DEFINE_list("suites", list(SUITES), f"Suites to run ({', '.join(SUITES)}).")
flags.DEFINE_list("lengths", [], "Override the suites' lengths (comma-separated).")
flags.DEFINE_integer("batch", 4, "Rows per batch.")
flags.DEFINE_integer("runs", 3, "Timed runs per measurement (median reported).")
flags.DEFINE_bool("dense", True, "Also run the dense formulation.")
flags.DEFINE_integer("seed", 0, "Random seed.")

OPTIONS = AlmOptions(alm_mode="merge_by_space_prob+append_space")


def synthetic_batch(rng, batch: int, length: int, vocab: int, student_span, teacher_span) -> dict:
    """Chunk ids with realistic chunk sizes, up to `length` tokens per side; padding after."""
    out = {f"{k}_{s}": np.zeros((batch, length), dt) for s in ("teacher", "student")
           for k, dt in (("input_ids", np.int32), ("attention_mask", bool), ("loss_mask", bool))}
    for side in ("teacher", "student"):
        out[f"chunks_{side}_unconstrained"] = np.full((batch, length), -1, np.int32)
    for b in range(batch):
        n_chunks = 0
        pos = {"teacher": 0, "student": 0}
        while True:
            sizes = {"teacher": int(rng.integers(teacher_span[0], teacher_span[1] + 1)),
                     "student": int(rng.integers(student_span[0], student_span[1] + 1))}
            if any(pos[s] + sizes[s] > length for s in sizes):
                break
            for side, size in sizes.items():
                out[f"chunks_{side}_unconstrained"][b, pos[side] : pos[side] + size] = n_chunks
                pos[side] += size
            n_chunks += 1
        for side in ("teacher", "student"):
            n = pos[side]
            out[f"input_ids_{side}"][b, :n] = rng.integers(0, vocab, size=n)
            out[f"attention_mask_{side}"][b, :n] = True
            out[f"loss_mask_{side}"][b, :n] = True
    return out


def constants(rng, vocab: int) -> TokenizerConstants:
    return TokenizerConstants(jnp.asarray(rng.random(vocab) < 0.3), jnp.ones(vocab, bool), vocab - 1)


def measure(fn, args, runs: int) -> tuple[float, int]:
    """(median seconds per call after compilation, XLA temp bytes)."""
    compiled = jax.jit(fn).lower(*args).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times), temp


def run_one(suite: str, length: int) -> dict:
    vocab, _, student_span, teacher_span = SUITES[suite]
    rng = np.random.default_rng(FLAGS.seed)
    batch = {k: jnp.asarray(v) for k, v in synthetic_batch(
        rng, FLAGS.batch, length, vocab, student_span, teacher_span).items()}
    s_const, t_const = constants(rng, vocab), constants(rng, vocab)
    s_logits = jnp.asarray(rng.normal(size=(FLAGS.batch, length, vocab)), jnp.float32)
    t_logits = jnp.asarray(rng.normal(size=(FLAGS.batch, length, vocab)), jnp.float32)

    def ours(s, t, batch):
        ctx = LossContext(as_batch(batch), ModelOutputs(s), s_const, ModelOutputs(t), t_const)
        return alm_loss(ctx, "unconstrained", OPTIONS)[0] + sft_loss(ctx)[0]

    def dense(s, t, batch):
        alm, _ = dense_reference.alm_dense(
            batch, s, t, chunking="unconstrained",
            student_vocab_mask=s_const.vocab_mask, teacher_vocab_mask=t_const.vocab_mask,
            student_space_mask=s_const.space_mask, teacher_space_mask=t_const.space_mask,
            student_eos=s_const.eos_token_id, teacher_eos=t_const.eos_token_id,
            alm_mode=OPTIONS.alm_mode,
        )
        return alm + dense_reference.sft_dense(batch, s, s_const.vocab_mask)

    args = (s_logits, t_logits, batch)
    row = {"suite": suite, "length": length}
    row["ours_s"], row["ours_temp"] = measure(jax.value_and_grad(ours), args, FLAGS.runs)
    if FLAGS.dense:
        row["dense_s"], row["dense_temp"] = measure(jax.value_and_grad(dense), args, FLAGS.runs)
        ours_value, dense_value = jax.jit(ours)(*args), jax.jit(dense)(*args)
        row["rel_diff"] = float(abs(ours_value - dense_value) / abs(dense_value))
    return row


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


def main(argv):
    del argv
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, batch {FLAGS.batch}, "
          f"median of {FLAGS.runs} runs after compile; forward+backward of alm_unconstrained "
          f"({OPTIONS.alm_mode}) + sft")
    header = f"{'suite':8} {'L':>5} | {'ours s':>8} {'ours temp':>10} | {'dense s':>8} {'dense temp':>10} | {'speedup':>7} {'mem ratio':>9} | {'rel diff':>8}"
    print(header)
    print("-" * len(header))
    for suite in FLAGS.suites:
        if suite not in SUITES:
            raise app.UsageError(f"Unknown suite {suite!r}; valid: {list(SUITES)}.")
        lengths = [int(x) for x in FLAGS.lengths] or SUITES[suite][1]
        for length in lengths:
            r = run_one(suite, length)
            line = f"{suite:8} {length:>5} | {r['ours_s']:>8.3f} {_gib(r['ours_temp']):>10} |"
            if "dense_s" in r:
                line += (f" {r['dense_s']:>8.3f} {_gib(r['dense_temp']):>10} |"
                         f" {r['dense_s'] / r['ours_s']:>6.1f}x {r['dense_temp'] / max(r['ours_temp'], 1):>8.1f}x |"
                         f" {r['rel_diff']:>8.1e}")
            print(line, flush=True)


if __name__ == "__main__":
    app.run(main)
