"""Forward-pass throughput of the tokenkit transformer: tokens/s and achieved FLOP/s.

    python tools/benchmarks/forward.py --size=tiny --batch=8 --seq_len=128
    python tools/benchmarks/forward.py --size=llama-1b --batch=8 --seq_len=2048   # on a GPU/TPU

Prints one table row per size: compile time, time per forward, tokens/s, achieved
TFLOP/s (GFLOP/s on CPU) and the fraction of the device's peak bf16 FLOP/s where the peak
is known. FLOPs count the matmuls (2 x parameters per token, including the logits) plus
the attention scores and values over the full square (4 x layers x heads x head_dim x T),
the PaLM convention for model FLOPs.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from tokenkit.models import ModelConfig, RopeConfig, Transformer, init_params

def _gpt2(vocab: int, d: int, layers: int, heads: int, positions: int) -> ModelConfig:
    """A GPT-2 shape (LayerNorm, learned positions, ungated GELU MLP, biases)."""
    return ModelConfig(
        "gpt2", vocab_size=vocab, hidden_size=d, intermediate_size=4 * d, num_layers=layers,
        num_heads=heads, num_kv_heads=heads, head_dim=d // heads, max_position_embeddings=positions,
        rms_norm_eps=1e-5, activation="gelu_tanh", tie_word_embeddings=True, qkv_bias=True,
        out_bias=True, mlp_bias=True, norm_kind="layer", position_kind="learned", gated_mlp=False,
    )


def _longrope(rotary_dim: int, original: int, max_positions: int) -> RopeConfig:
    """Phi-3-128k style LongRoPE (synthetic factors of the right length; speed only)."""
    n = rotary_dim // 2
    factor = max_positions / original
    return RopeConfig(
        10_000.0, "longrope", factor, original_max_position_embeddings=original,
        short_factor=(1.0,) * n, long_factor=tuple(np.linspace(1.0, 8.0, n)),
        attention_factor=float(np.sqrt(1 + np.log(factor) / np.log(original))),
    )


SIZES = {
    "tiny": ModelConfig(
        "llama", vocab_size=512, hidden_size=128, intermediate_size=384, num_layers=4,
        num_heads=4, num_kv_heads=2, head_dim=32,
    ),
    "small": ModelConfig(
        "llama", vocab_size=32000, hidden_size=512, intermediate_size=1536, num_layers=8,
        num_heads=8, num_kv_heads=4, head_dim=64, tie_word_embeddings=True,
    ),
    "gpt2-tiny": _gpt2(512, 128, 4, 4, 1024),
    "phi3-tiny": ModelConfig(
        "phi3", vocab_size=512, hidden_size=128, intermediate_size=384, num_layers=4,
        num_heads=4, num_kv_heads=4, head_dim=32, max_position_embeddings=131072,
        rope=_longrope(32, 4096, 131072),
    ),
    # The shapes of GPT-2 (124M) and Phi-3-mini-128k.
    "gpt2": _gpt2(50257, 768, 12, 12, 1024),
    "phi3-mini": ModelConfig(
        "phi3", vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_layers=32,
        num_heads=32, num_kv_heads=32, head_dim=96, max_position_embeddings=131072,
        rms_norm_eps=1e-5, rope=_longrope(96, 4096, 131072),
    ),
    # The shape of Llama-3.2-1B.
    "llama-1b": ModelConfig(
        "llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16,
        num_heads=32, num_kv_heads=8, head_dim=64, tie_word_embeddings=True,
        max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope=RopeConfig(500000.0, "llama3", 32.0, 1.0, 4.0, 8192),
    ),
}

# Dense bf16 peak FLOP/s by device kind (vendor datasheets; SXM parts for GPUs).
PEAK_BF16_FLOPS = {
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}

FLAGS = flags.FLAGS
flags.DEFINE_list("size", ["tiny"], f"Model sizes to run ({', '.join(SIZES)}).")
flags.DEFINE_integer("batch", 8, "Sequences per forward.")
flags.DEFINE_integer("seq_len", 128, "Tokens per sequence.")
flags.DEFINE_string("dtype", "bfloat16", "Compute dtype (parameters are float32).")
flags.DEFINE_string("remat_policy", "none", "Remat policy (no effect on a forward-only pass).")
flags.DEFINE_integer("steps", 10, "Timed forwards after one warm-up.")


def peak_flops(device: jax.Device) -> float | None:
    kind = device.device_kind
    for name, peak in PEAK_BF16_FLOPS.items():
        if kind.startswith(name):
            return peak
    return None


def bench(name: str, config: ModelConfig, batch: int, seq_len: int, dtype: str, steps: int,
          remat_policy: str) -> dict:
    model = Transformer(config, dtype=jnp.dtype(dtype), remat_policy=remat_policy)
    params = init_params(model, 0)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, config.vocab_size, (batch, seq_len)), jnp.int32)
    mask = jnp.ones((batch, seq_len), jnp.int32)
    forward = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m).logits)

    start = time.perf_counter()
    compiled = forward.lower(params, ids, mask).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(params, ids, mask))  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        out = compiled(params, ids, mask)
    jax.block_until_ready(out)
    step_s = (time.perf_counter() - start) / steps

    tokens = batch * seq_len
    flops = config.flops_per_token(seq_len) * tokens / step_s
    peak = peak_flops(jax.devices()[0])
    return {
        "size": name,
        "params": f"{config.num_params() / 1e6:,.1f}M",
        "batch x len": f"{batch}x{seq_len}",
        "dtype": dtype,
        "compile s": f"{compile_s:.1f}",
        "ms / fwd": f"{step_s * 1e3:.1f}",
        "tokens/s": f"{tokens / step_s:,.0f}",
        "achieved": f"{flops / 1e12:.2f} TFLOP/s" if peak else f"{flops / 1e9:.1f} GFLOP/s",
        "of peak": f"{flops / peak:.1%}" if peak else "n/a",
    }


def print_table(rows: list[dict]) -> None:
    cols = list(rows[0])
    widths = [max(len(c), *(len(r[c]) for r in rows)) for c in cols]
    print(" | ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(r[c].ljust(w) for c, w in zip(cols, widths)))


def main(argv) -> None:
    del argv
    unknown = [s for s in FLAGS.size if s not in SIZES]
    if unknown:
        raise app.UsageError(f"Unknown size(s) {unknown} (valid: {', '.join(SIZES)}).")
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.device_count()} x {device.platform}), jax {jax.__version__}")
    rows = [
        bench(s, SIZES[s], FLAGS.batch, FLAGS.seq_len, FLAGS.dtype, FLAGS.steps, FLAGS.remat_policy)
        for s in FLAGS.size
    ]
    print_table(rows)


if __name__ == "__main__":
    app.run(main)
