"""One decoder-only transformer core for Llama, Mistral, Qwen2, Qwen3, Gemma2, Gemma3,
GPT-2 and Phi-3.

The architectures differ only in switches of `ModelConfig` (norm kind, position kind,
gated or plain MLP, biases, ...); the per-layer differences (sliding window or global
attention, Gemma3's local/global RoPE bases) are data, passed to the layer stack as
scanned inputs. Fused HF tensors (GPT-2's `c_attn`, Phi-3's `qkv_proj` and
`gate_up_proj`) are split into the separate projections below when a checkpoint is read
and fused again when it is written (`hf_io`), so the parameter tree, LoRA targets and
shardings are the same for every architecture. The layers run under `nn.scan` with
stacked parameters (a leading "layers" axis), so compile time does not grow with depth;
`remat_policy` wraps each layer in `jax.checkpoint`.

Parameter tree (plain dict; logical axis names in brackets, see `sharding.py`):

    embedder/embedding              [V, D]          (vocab, embed)
    position_embedder/embedding     [P, D]          (positions, embed)   (GPT-2 only)
    layers/attn_norm/scale          [L, D]          (layers, norm)       (+ /bias: GPT-2)
    layers/attention/query/kernel   [L, D, H, hd]   (layers, embed, heads, head_dim)
    layers/attention/key/kernel     [L, D, K, hd]   (layers, embed, kv_heads, head_dim)
    layers/attention/value/kernel   [L, D, K, hd]
    layers/attention/out/kernel     [L, H, hd, D]   (layers, heads, head_dim, embed)
    layers/attention/{query,key}_norm/scale  [L, hd]   (qk_norm only)
    layers/post_attn_norm/scale, layers/post_mlp_norm/scale  (Gemma sandwich norms)
    layers/mlp_norm/scale           [L, D]
    layers/mlp/{gate,up}/kernel     [L, D, F]       (layers, embed, mlp)  (no gate: GPT-2)
    layers/mlp/down/kernel          [L, F, D]       (layers, mlp, embed)
    .../bias                        the kernel's output axes (where the config has biases)
    final_norm/scale                [D]             (norm)                (+ /bias: GPT-2)
    lm_head/kernel                  [D, V]          (embed, vocab)   (untied only)
    expand_embedder/embedding       [V', D]         optional, see below

Norm weights are stored as HF stores them; Gemma's `(1 + w)` is applied in the norm.
GPT-2's MLP is `down(act(up(x)))` (its `c_fc` is `up`, its `c_proj` is `down`).

Conventions of a forward pass:
- right padding with an attention mask; positions are `cumsum(mask) - 1`, so padded
  tokens attend to nothing real and real tokens never attend to padding; learned
  position embeddings (GPT-2) are looked up at these positions, clipped to the table
  (callers keep texts within `max_position_embeddings`);
- LongRoPE (Phi-3 128k): a row uses the long frequency factors when its length (real
  tokens, including those already in the cache) exceeds `original_max_position_embeddings`,
  else the short ones, for all its positions in the call; transformers decides the same
  per forward call from the padded width, so the two agree on unpadded rows and whenever
  every row and the padded width fall on the same side of the threshold. With a cache,
  as in transformers' forward with a cache, the keys and values already cached keep
  what the earlier calls computed: a row that crosses the threshold while decoding mixes
  the two factor sets. transformers' `generate` re-prefills a row at that point (its
  whole prefix with the long factors); callers wanting that must do the same;
- `output_hidden_states` returns `[L + 1, B, T, D]`, as HF's `output_hidden_states`: the
  embedding output, the output of layers 0..L-2, and the final-normed output of the last
  layer (HF replaces the last entry by the normed one; so do we);
- `output_qkv` returns each layer's query, key and value projections as the upstream
  tokenkit's models did for `alm_latents` with `qkv`: the linear projections of the
  normed input, before any q/k norm and RoPE, heads flattened: `[L, B, T, H * hd]`
  (queries) and `[L, B, T, K * hd]` (keys, values);
- a `KVCache` of fixed length holds, for each row, tokens at slots equal to their
  positions; `lengths[b]` counts the tokens of row b already in the cache. A call with a
  cache writes the real tokens of `input_ids` after them, so prompts of different lengths
  (right-padded) are prefilled together and then decoded one or more tokens per step;
- input-id expansion: when `expanded_input_ids` is given, the rows of
  `params["expand_embedder"]["embedding"]` they index are added to the token embeddings
  *before* Gemma's sqrt(D) scaling, so both tables are scaled alike (as the upstream did
  by embedding each id sequence through the scaled embed function and summing), and
  before GPT-2's position embeddings, which are added to every input (also to
  `inputs_embeds`, as in transformers).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokenkit.models.config import ModelConfig

Array = jax.Array

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
ATTENTION_IMPLS = ("einsum", "xla", "cudnn")
LAYER_LOOPS = ("scan", "unstacked")
_MASKED = float(np.finfo(np.float32).min)


@flax.struct.dataclass
class KVCache:
    """Keys/values of all layers for incremental decoding.

    `key`, `value`: `[L, B, K, S, hd]`; slot s of row b holds the token at position s
    (keys after RoPE). Heads come before slots so that attention reads each layer's
    keys and values without a transpose; the stacks travel through the layer scan as
    its carry and each layer writes its new tokens in place (one decode step then
    touches the cache about once, not once per copy of every layer's slice).
    `lengths`: int32 `[B]`, the number of tokens of each row already in the cache.
    """

    key: Array
    value: Array
    lengths: Array

    @property
    def max_length(self) -> int:
        return self.key.shape[3]


@flax.struct.dataclass
class TransformerOutput:
    """What a forward pass returns; fields not requested are None."""

    logits: Array | None
    hidden_states: Array | None  # [L + 1, B, T, D]
    cache: KVCache | None
    qkv: tuple[Array, Array, Array] | None = None  # ([L, B, T, H*hd], [L, B, T, K*hd] x 2)


def init_cache(
    config: ModelConfig, batch_size: int, max_length: int, dtype: Any = jnp.float32
) -> KVCache:
    """An empty cache for `batch_size` rows of up to `max_length` tokens."""
    shape = (config.num_layers, batch_size, config.num_kv_heads, max_length, config.head_dim)
    return KVCache(
        key=jnp.zeros(shape, dtype),
        value=jnp.zeros(shape, dtype),
        lengths=jnp.zeros((batch_size,), jnp.int32),
    )


def unstack_layers(tree: Any, num_layers: int) -> Any:
    """A params (or lora) tree with its stacked `layers` subtree (leading axis = layer)
    split into `layers_0`, ..., `layers_{num_layers - 1}`: the tree a Transformer with
    `layer_loop="unstacked"` reads. Other entries are kept as they are."""
    if "layers" not in tree:
        raise ValueError(f"The tree has no stacked `layers` entry (keys: {sorted(tree)}).")
    out = {key: value for key, value in tree.items() if key != "layers"}
    for i in range(num_layers):
        out[f"layers_{i}"] = jax.tree.map(lambda a, i=i: a[i], tree["layers"])
    return out


def _dtype(x: Any) -> Any:
    return jnp.dtype(x) if x is not None else None


class RMSNorm(nn.Module):
    """RMS norm in float32; the weight is `offset + scale` (offset 1 for Gemma)."""

    eps: float
    offset: float
    dtype: Any
    param_dtype: Any
    axis_name: str = "norm"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        init = nn.initializers.zeros if self.offset else nn.initializers.ones
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(init, (self.axis_name,)),
            (x.shape[-1],),
            self.param_dtype,
        )
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (y * (self.offset + scale.astype(jnp.float32))).astype(self.dtype)


class LayerNorm(nn.Module):
    """LayerNorm with weight and bias (GPT-2), computed in float32."""

    eps: float
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: Array) -> Array:
        d = x.shape[-1]
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (d,), self.param_dtype
        )
        bias = self.param(
            "bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (d,), self.param_dtype
        )
        x32 = x.astype(jnp.float32)
        centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
        y = centred * jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=-1, keepdims=True) + self.eps)
        return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


def _norm(config: ModelConfig, name: str, dtype: Any, param_dtype: Any) -> nn.Module:
    """The model's norm over the hidden dimension (RMSNorm, or GPT-2's LayerNorm)."""
    if config.norm_kind == "layer":
        return LayerNorm(config.rms_norm_eps, dtype, param_dtype, name=name)
    return RMSNorm(config.rms_norm_eps, config.norm_offset, dtype, param_dtype, name=name)


class Projection(nn.Module):
    """A linear map from the trailing `in_shape` dims of x to `out_shape` dims.

    If the "lora" collection holds `a` `[prod(in), r]` and `b` `[r, prod(out)]` for this
    module, `lora_alpha / r * (x a) b` is added: the low-rank path never materialises
    the full-size update.
    """

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    in_axes: tuple[str, ...]
    out_axes: tuple[str, ...]
    use_bias: bool
    dtype: Any
    param_dtype: Any
    init_std: float = 0.02
    lora_alpha: float | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(
                nn.initializers.normal(self.init_std), self.in_axes + self.out_axes
            ),
            self.in_shape + self.out_shape,
            self.param_dtype,
        )
        n_in = len(self.in_shape)
        x = x.astype(self.dtype)
        contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
        y = jax.lax.dot_general(x, kernel.astype(self.dtype), (contract, ((), ())))
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros, self.out_axes),
                self.out_shape,
                self.param_dtype,
            )
            y = y + bias.astype(self.dtype)
        if self.has_variable("lora", "a"):
            if self.lora_alpha is None:
                raise ValueError("LoRA parameters were given but the model has no lora_alpha.")
            a = self.get_variable("lora", "a")
            b = self.get_variable("lora", "b")
            flat = x.reshape(x.shape[: x.ndim - n_in] + (-1,))
            delta = (flat @ a.astype(self.dtype)) @ b.astype(self.dtype)
            scale = jnp.asarray(self.lora_alpha / a.shape[-1], self.dtype)
            y = y + (scale * delta).reshape(y.shape)
        return y


def _rope(x: Array, positions: Array, inv_freq: Array, scale: float = 1.0) -> Array:
    """Rotary embedding, rotate-half layout (HF's q/k weight order).

    x: `[B, T, N, hd]`; positions: `[B, T]`; inv_freq: `[r / 2]`, or `[B, r / 2]` per row.
    Only the first `r` dims of each head rotate (partial rotary); the rest pass through.
    `scale` multiplies cos and sin (LongRoPE's attention factor).
    """
    inv = inv_freq.astype(jnp.float32)
    inv = inv[None] if inv.ndim == 1 else inv
    angles = positions.astype(jnp.float32)[:, :, None] * inv[:, None, :]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    if scale != 1.0:
        cos, sin = cos * scale, sin * scale
    cos, sin = cos.astype(x.dtype), sin.astype(x.dtype)
    rot = angles.shape[-1]
    x_rot = x[..., :rot]
    half = rot // 2
    rotated = jnp.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)
    out = x_rot * cos + rotated * sin
    return out if rot == x.shape[-1] else jnp.concatenate([out, x[..., rot:]], axis=-1)


def attention_allowed(q_pos: Array, k_pos: Array, k_valid: Array, window: Array) -> Array:
    """bool `[B, T, S]`: query t may attend key s (causal, valid, inside the window if any)."""
    diff = q_pos[:, :, None] - k_pos[:, None, :]
    allowed = k_valid[:, None, :] & (diff >= 0)
    return allowed & ((window <= 0) | (diff < window))


# Queries per block of causal attention without a cache (see `_einsum_attention`).
CAUSAL_BLOCK = 128


def _einsum_attention(
    q: Array, k: Array, v: Array, allowed: Array, scale: float, softcap: float | None,
    causal: bool = False, heads_first: bool = False,
) -> Array:
    """Grouped-query attention with float32 scores and softmax. q: [B,T,H,hd], k/v:
    [B,S,K,hd], or [B,K,S,hd] with `heads_first` (the cache's layout).

    `causal`: query t attends no key after index t (a forward without a cache, whose
    positions grow with the index). On a CPU, long inputs then go in blocks of
    `CAUSAL_BLOCK` queries, each against the keys up to its end: the scores above the
    diagonal are never computed (about half of them) and each block's scores stay small
    enough to be cache-friendly, which on a CPU is most of attention's time. Accelerators
    keep one fused computation (or use attention_impl 'xla' / 'cudnn').
    """
    b, t, h, hd = q.shape
    if causal and t > CAUSAL_BLOCK and jax.default_backend() == "cpu":
        return _blocked_causal_attention(q, k, v, allowed, scale, softcap, heads_first)
    kv = k.shape[1] if heads_first else k.shape[2]
    kv_spec = "bksd" if heads_first else "bskd"
    q = q.reshape(b, t, kv, h // kv, hd)
    scores = jnp.einsum(f"btkgd,{kv_spec}->bkgts", q, k, preferred_element_type=jnp.float32) * scale
    if softcap:
        scores = jnp.tanh(scores / softcap) * softcap
    scores = jnp.where(allowed[:, None, None], scores, _MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum(f"bkgts,{kv_spec}->btkgd", probs, v)
    return out.reshape(b, t, h, hd)


def _blocked_causal_attention(
    q: Array, k: Array, v: Array, allowed: Array, scale: float, softcap: float | None,
    heads_first: bool,
) -> Array:
    """`_einsum_attention` for a long causal input on a CPU, in blocks of `CAUSAL_BLOCK`
    queries against the keys up to each block's end.

    Queries, keys and values are laid out once as `[B, K, G*T, hd]` / `[B, K, S, hd]`, so
    every block's two products are plain batched matrix products (XLA's CPU dot takes
    other layouts through slower paths: 1.5x on SmolLM2's shapes), and the softmax
    divides the block's output rather than its scores (one pass less over them).
    """
    b, t, h, hd = q.shape
    if not heads_first:
        k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
    kv = k.shape[1]
    g = h // kv
    qh = q.reshape(b, t, kv, g, hd).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, hd]
    outs = []
    for start in range(0, t, CAUSAL_BLOCK):
        end = min(start + CAUSAL_BLOCK, t)
        n = end - start
        qb = qh[:, :, :, start:end].reshape(b, kv, g * n, hd)
        scores = jnp.einsum("bkmd,bksd->bkms", qb, k[:, :, :end],
                            preferred_element_type=jnp.float32) * scale
        if softcap:
            scores = jnp.tanh(scores / softcap) * softcap
        scores = scores.reshape(b, kv, g, n, end)
        scores = jnp.where(allowed[:, None, None, start:end, :end], scores, _MASKED)
        weights = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
        total = jnp.sum(weights, axis=-1, keepdims=True)
        out = jnp.einsum("bkms,bksd->bkmd", weights.reshape(b, kv, g * n, end).astype(v.dtype),
                         v[:, :, :end])
        outs.append(out.reshape(b, kv, g, n, hd) / total.astype(out.dtype))
    out = jnp.concatenate(outs, axis=3)  # [B, K, G, T, hd]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd)


class Attention(nn.Module):
    config: ModelConfig
    dtype: Any
    param_dtype: Any
    lora_alpha: float | None
    attention_impl: str

    @nn.compact
    def __call__(self, x: Array, per_layer: dict, kv: dict, cache_kv) -> tuple:
        c = self.config
        d, h, k, hd = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
        proj = dict(
            dtype=self.dtype, param_dtype=self.param_dtype, lora_alpha=self.lora_alpha
        )
        q = Projection((d,), (h, hd), ("embed",), ("heads", "head_dim"), c.qkv_bias, name="query", **proj)(x)
        key = Projection((d,), (k, hd), ("embed",), ("kv_heads", "head_dim"), c.qkv_bias, name="key", **proj)(x)
        value = Projection((d,), (k, hd), ("embed",), ("kv_heads", "head_dim"), c.qkv_bias, name="value", **proj)(x)
        raw = tuple(t.reshape(t.shape[:2] + (-1,)) for t in (q, key, value))
        if c.qk_norm:
            norm = dict(eps=c.rms_norm_eps, offset=c.norm_offset, dtype=self.dtype,
                        param_dtype=self.param_dtype, axis_name="head_dim")
            q = RMSNorm(name="query_norm", **norm)(q)
            key = RMSNorm(name="key_norm", **norm)(key)
        if c.position_kind == "rope":
            inv_freq = per_layer["inv_freq"]
            if c.rope.varies_with_length:
                inv_freq = jnp.where(kv["use_long_rope"][:, None], per_layer["inv_freq_long"], inv_freq)
            q = _rope(q, kv["q_pos"], inv_freq, c.rope.attention_factor)
            key = _rope(key, kv["q_pos"], inv_freq, c.rope.attention_factor)

        if cache_kv is not None:
            # The whole stacks `[L, B, K, S, hd]` (the scan's carry): this layer's tokens
            # are scattered into them in place, then its slice is read back.
            cache_k, cache_v = cache_kv
            layer = per_layer["layer"]
            rows = jnp.arange(x.shape[0], dtype=jnp.int32)[:, None]
            where = (layer, rows, slice(None), kv["write_idx"])
            cache_k = cache_k.at[where].set(key.astype(cache_k.dtype), mode="drop")
            cache_v = cache_v.at[where].set(value.astype(cache_v.dtype), mode="drop")
            all_k = jax.lax.dynamic_index_in_dim(cache_k, layer, 0, keepdims=False).astype(self.dtype)
            all_v = jax.lax.dynamic_index_in_dim(cache_v, layer, 0, keepdims=False).astype(self.dtype)
            new_cache = (cache_k, cache_v)
        else:
            all_k, all_v = key, value
            new_cache = None

        allowed = attention_allowed(kv["q_pos"], kv["k_pos"], kv["k_valid"], per_layer["window"])
        if "segments" in kv:
            segments = kv["segments"]
            allowed &= (segments[:, None, :] == 0) | (segments[:, :, None] == segments[:, None, :])
        if self.attention_impl == "einsum":
            out = _einsum_attention(q, all_k, all_v, allowed, c.attention_scale,
                                    c.attn_logit_softcap, causal=cache_kv is None,
                                    heads_first=cache_kv is not None)
        else:
            if cache_kv is not None:
                all_k, all_v = jnp.swapaxes(all_k, 1, 2), jnp.swapaxes(all_v, 1, 2)
            if c.attn_logit_softcap:
                raise ValueError(
                    f"attention_impl={self.attention_impl!r} has no logit soft-capping, which "
                    f"{c.architecture} uses; use attention_impl='einsum'."
                )
            out = jax.nn.dot_product_attention(
                q, all_k, all_v, mask=allowed[:, None], scale=c.attention_scale,
                implementation=self.attention_impl,
            )
        y = Projection((h, hd), (d,), ("heads", "head_dim"), ("embed",), c.out_bias, name="out", **proj)(out)
        return y, new_cache, raw


class MLP(nn.Module):
    config: ModelConfig
    dtype: Any
    param_dtype: Any
    lora_alpha: float | None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.config
        proj = dict(
            dtype=self.dtype, param_dtype=self.param_dtype, lora_alpha=self.lora_alpha,
            use_bias=c.mlp_bias,
        )
        d, f = c.hidden_size, c.intermediate_size
        up = Projection((d,), (f,), ("embed",), ("mlp",), name="up", **proj)(x)
        if c.gated_mlp:
            gate = Projection((d,), (f,), ("embed",), ("mlp",), name="gate", **proj)(x)
            h = _activation(c.activation, gate) * up
        else:
            h = _activation(c.activation, up)
        return Projection((f,), (d,), ("mlp",), ("embed",), name="down", **proj)(h)


def _activation(name: str, x: Array) -> Array:
    if name == "silu":
        return jax.nn.silu(x)
    return jax.nn.gelu(x, approximate=name == "gelu_tanh")


class DecoderLayer(nn.Module):
    """One pre-norm block (plus Gemma's post-norms). Called under `nn.scan`; the carry is
    `(x, cache)`, the cache being None or all layers' `(keys, values)` stacks."""

    config: ModelConfig
    dtype: Any
    param_dtype: Any
    lora_alpha: float | None
    attention_impl: str
    output_hidden_states: bool
    output_qkv: bool = False

    @nn.compact
    def __call__(self, carry: tuple, per_layer: dict, shared: dict) -> tuple[tuple, tuple]:
        x, cache_kv = carry
        c = self.config
        norm = functools.partial(_norm, c, dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
        h = norm("attn_norm")(x)
        h, new_cache, qkv = Attention(
            c, self.dtype, self.param_dtype, self.lora_alpha, self.attention_impl, name="attention"
        )(h, per_layer, shared, cache_kv)
        if c.sandwich_norms:
            h = norm("post_attn_norm")(h)
        x = x + h
        h = norm("mlp_norm")(x)
        h = MLP(c, self.dtype, self.param_dtype, self.lora_alpha, name="mlp")(h)
        if c.sandwich_norms:
            h = norm("post_mlp_norm")(h)
        x = (x + h).astype(self.dtype)
        return (x, new_cache), (x if self.output_hidden_states else None,
                                qkv if self.output_qkv else None)


class Transformer(nn.Module):
    """Decoder-only causal LM. `apply({"params": p[, "lora": l]}, input_ids, attention_mask, ...)`.

    Attributes:
      config: the model's ModelConfig.
      dtype: compute dtype (activations, matmul inputs), e.g. bfloat16.
      param_dtype: dtype parameters are created in by `init` (loading keeps the given dtype).
      remat_policy: one of REMAT_POLICIES ("none", "full", "dots", "dots_no_batch").
      logits_dtype: dtype of the logits matmul output (float32 keeps full-precision logits
        with bf16 inputs); None means `dtype`.
      lora_alpha: LoRA scaling numerator, needed when a "lora" collection is given.
      attention_impl: "einsum" (default; supports soft-capping), or "xla" / "cudnn"
        through `jax.nn.dot_product_attention`.
      layer_loop: "scan" (default: one compiled layer, stacked parameters under
        `layers`), or "unstacked": the layers unrolled over per-layer parameters
        `layers_0`, `layers_1`, ... (`unstack_layers` makes them from the stacked tree).
        Decoding loops use it: under a scan every step copies each layer's weights out of
        the stack before its products (on a CPU a SmolLM2 step at batch 1 took 1.5x as
        long), while unstacked weights are read where they lie.
    """

    config: ModelConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat_policy: str = "none"
    logits_dtype: Any = jnp.float32
    lora_alpha: float | None = None
    attention_impl: str = "einsum"
    layer_loop: str = "scan"

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        *,
        expanded_input_ids: Array | None = None,
        inputs_embeds: Array | None = None,
        cache: KVCache | None = None,
        positions: Array | None = None,
        segment_ids: Array | None = None,
        output_hidden_states: bool = False,
        output_qkv: bool = False,
        return_logits: bool = True,
        logit_positions: Array | None = None,
    ) -> TransformerOutput:
        """Runs the model on `input_ids` `[B, T]` (right-padded; `attention_mask` 1 = real).

        `logit_positions` (int `[B, M]`) computes the logits only at these positions
        (`[B, M, V]`): scoring a continuation needs the vocabulary head, a fifth of a
        small model's work, only where a scored token is predicted.

        `inputs_embeds` (`[B, T, D]`, already scaled as the model would) replaces the
        embedding lookup. With `cache`, the real tokens are appended to each row's cache
        and the updated cache is returned. The cache must have room: a token past
        `max_length` cannot be stored (inside jit this cannot raise), and the returned
        `lengths` then exceed `max_length`, which callers should check.

        Packed rows (no cache): `positions` (int `[B, T]`, default `cumsum(mask) - 1`) and
        `segment_ids` (int `[B, T]`) put several sequences in one row. A token attends to
        earlier-positioned tokens of its own segment and of segment 0, a prefix every
        segment of the row shares: `[context, choice 1, choice 2]` with segments
        `[0.., 1.., 2..]` and each choice's positions following the context's runs the
        context once for both. Within a segment positions grow with the index and a
        segment comes after the prefix it reads.
        """
        c = self.config
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(
                f"remat_policy {self.remat_policy!r} unknown (valid: {', '.join(REMAT_POLICIES)})."
            )
        if self.layer_loop not in LAYER_LOOPS:
            raise ValueError(
                f"layer_loop {self.layer_loop!r} unknown (valid: {', '.join(LAYER_LOOPS)})."
            )
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(
                f"attention_impl {self.attention_impl!r} unknown (valid: {', '.join(ATTENTION_IMPLS)})."
            )
        b, t = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), jnp.int32)
        mask = attention_mask.astype(bool)
        steps = jnp.cumsum(mask.astype(jnp.int32), axis=1)
        if cache is not None and (positions is not None or segment_ids is not None):
            raise ValueError("positions and segment_ids pack rows of a forward without a cache; "
                             "a forward with a cache places tokens after each row's length.")
        if positions is not None:
            q_pos = positions.astype(jnp.int32)
            row_lengths = jnp.max(jnp.where(mask, q_pos + 1, 0), axis=1)
        elif cache is None:
            q_pos = steps - 1
            row_lengths = steps[:, -1]
        else:
            q_pos = cache.lengths[:, None] + steps - 1
            row_lengths = cache.lengths + steps[:, -1]

        embedding = _Table((c.vocab_size, c.hidden_size), ("vocab", "embed"), "embedding",
                           self.param_dtype, name="embedder")()
        if inputs_embeds is None:
            extra = None
            if expanded_input_ids is not None:
                if not self.has_variable("params", "expand_embedder"):
                    raise ValueError(
                        "expanded_input_ids were given but the params have no "
                        "expand_embedder/embedding table."
                    )
                extra = self.get_variable("params", "expand_embedder")["embedding"]
            x = embed_tokens(c, embedding, input_ids, extra, expanded_input_ids, self.dtype)
        else:
            x = inputs_embeds.astype(self.dtype)
        if c.position_kind == "learned":
            table = _Table((c.max_position_embeddings, c.hidden_size), ("positions", "embed"),
                           "embedding", self.param_dtype, name="position_embedder")()
            # Clipped: padding has position -1 in an empty row; texts stay within the table.
            where = jnp.clip(q_pos, 0, c.max_position_embeddings - 1)
            x = x + jnp.take(table, where, axis=0).astype(self.dtype)

        if cache is None:
            shared = {"q_pos": q_pos, "k_pos": q_pos, "k_valid": mask}
            if segment_ids is not None:
                shared["segments"] = segment_ids.astype(jnp.int32)
            cache_in = None
        else:
            slots = jnp.arange(cache.max_length, dtype=jnp.int32)[None, :]
            shared = {
                "q_pos": q_pos,
                "k_pos": jnp.broadcast_to(slots, (b, cache.max_length)),
                "k_valid": slots < row_lengths[:, None],
                # Padding tokens get an out-of-range slot: the scatter drops them.
                "write_idx": jnp.where(mask, q_pos, cache.max_length),
            }
            cache_in = (cache.key, cache.value)

        per_layer = {
            "inv_freq": jnp.asarray(c.layer_inv_freqs()),
            "window": jnp.asarray(c.layer_windows()),
        }
        if c.position_kind == "rope" and c.rope.varies_with_length:
            per_layer["inv_freq_long"] = jnp.asarray(c.layer_inv_freqs(long=True))
            shared["use_long_rope"] = row_lengths > c.rope.original_max_position_embeddings
        if cache_in is not None:
            per_layer["layer"] = jnp.arange(c.num_layers, dtype=jnp.int32)

        block = DecoderLayer
        policy = REMAT_POLICIES[self.remat_policy]
        if self.remat_policy != "none":
            block = nn.remat(block, policy=policy, prevent_cse=False)
        embedded = x
        layer_args = (c, self.dtype, self.param_dtype, self.lora_alpha, self.attention_impl,
                      output_hidden_states, output_qkv)
        if self.layer_loop == "scan":
            stack = nn.scan(
                block,
                variable_axes={"params": 0, "lora": 0},
                split_rngs={"params": True},
                in_axes=(0, nn.broadcast),
                length=c.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(*layer_args, name="layers")
            (x, new_kv), (layer_outputs, qkv) = stack((x, cache_in), per_layer, shared)
        else:
            carry, outs = (x, cache_in), []
            for i in range(c.num_layers):
                here = {key: value[i] for key, value in per_layer.items()}
                carry, out = block(*layer_args, name=f"layers_{i}")(carry, here, shared)
                outs.append(out)
            x, new_kv = carry
            layer_outputs, qkv = (
                None if outs[0][j] is None
                else jax.tree.map(lambda *a: jnp.stack(a), *[out[j] for out in outs])
                for j in range(2)
            )
        x = _norm(c, "final_norm", self.dtype, self.param_dtype)(x)

        hidden_states = None
        if output_hidden_states:
            hidden_states = jnp.concatenate(
                [embedded[None], layer_outputs[:-1], x[None]], axis=0
            )

        logits = None
        if return_logits:
            out_dtype = self.logits_dtype or self.dtype
            if c.tie_word_embeddings:
                w = embedding.T
            else:
                w = _Table((c.hidden_size, c.vocab_size), ("embed", "vocab"), "kernel",
                           self.param_dtype, name="lm_head")()
            head_in = x
            if logit_positions is not None:
                head_in = jnp.take_along_axis(x, logit_positions[..., None], axis=1)
            logits = jnp.einsum(
                "btd,dv->btv", head_in.astype(self.dtype), w.astype(self.dtype),
                preferred_element_type=out_dtype,
            ).astype(out_dtype)
            if c.final_logit_softcap:
                cap = c.final_logit_softcap
                logits = jnp.tanh(logits / cap) * cap

        new_cache = None
        if cache is not None:
            new_cache = KVCache(key=new_kv[0], value=new_kv[1], lengths=row_lengths)
        return TransformerOutput(logits=logits, hidden_states=hidden_states, cache=new_cache,
                                 qkv=qkv)



class _Table(nn.Module):
    """Holds one parameter matrix (embedding table or lm_head kernel) under its own name."""

    shape: tuple[int, ...]
    axes: tuple[str, ...]
    param_name: str
    param_dtype: Any

    @nn.compact
    def __call__(self) -> Array:
        return self.param(
            self.param_name,
            nn.with_logical_partitioning(nn.initializers.normal(0.02), self.axes),
            self.shape,
            self.param_dtype,
        )


def embed_tokens(
    config: ModelConfig,
    table: Array,
    input_ids: Array,
    extra_table: Array | None = None,
    extra_ids: Array | None = None,
    dtype: Any = jnp.float32,
) -> Array:
    """Input embeddings as the model computes them: rows of `table` (+ rows of
    `extra_table` at `extra_ids`, the input-id expansion), then Gemma's sqrt(D) scaling.
    GPT-2's position embeddings are not included: the model adds them to these."""
    x = jnp.take(table, input_ids, axis=0).astype(dtype)
    if extra_ids is not None:
        x = x + jnp.take(extra_table, extra_ids, axis=0).astype(dtype)
    if config.scale_embeddings:
        # Gemma rounds the scale to the compute dtype (sqrt(3072) is 55.5 in bf16).
        x = x * jnp.asarray(math.sqrt(config.hidden_size), dtype)
    return x


def make_transformer(
    config: ModelConfig,
    *,
    dtype: str = "float32",
    param_dtype: str = "float32",
    remat_policy: str = "none",
    logits_dtype: str | None = "float32",
    lora_alpha: float | None = None,
    attention_impl: str = "einsum",
) -> Transformer:
    """The Transformer module with the options users set from Gin (dtypes by name)."""
    return Transformer(
        config,
        dtype=_dtype(dtype),
        param_dtype=_dtype(param_dtype),
        remat_policy=remat_policy,
        logits_dtype=_dtype(logits_dtype),
        lora_alpha=lora_alpha,
        attention_impl=attention_impl,
    )


def _init_variables(model: Transformer, rng: Array) -> dict:
    ids = jnp.zeros((1, 1), jnp.int32)
    return model.init(rng, ids)


def abstract_params(model: Transformer) -> dict:
    """Shapes/dtypes of the parameters (boxed with logical axis names), without allocating."""
    return jax.eval_shape(functools.partial(_init_variables, model), jax.random.key(0))["params"]


def init_params(model: Transformer, rng: Array | int) -> dict:
    """Randomly initialised parameters (plain arrays) as HF initialises them: N(0, 0.02)
    for matrices, zeros for biases, ones for norm weights (zeros for Gemma's `1 + w`).

    Drawn with numpy from the shapes of `abstract_params`: compiling Flax's own init
    (one threefry program per parameter) costs seconds even for a tiny model.
    """
    if isinstance(rng, int):
        seed = rng
    else:
        seed = int(jax.random.randint(rng, (), 0, np.iinfo(np.int32).max))
    gen = np.random.default_rng(seed)
    shapes = nn.unbox(abstract_params(model))
    norm_fill = 0.0 if model.config.norm_offset else 1.0

    def draw(path, leaf) -> Array:
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "scale":
            value = np.full(leaf.shape, norm_fill, np.float32)
        elif name == "bias":
            value = np.zeros(leaf.shape, np.float32)
        else:
            value = gen.normal(0.0, 0.02, size=leaf.shape).astype(np.float32)
        return jnp.asarray(value, dtype=leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)
