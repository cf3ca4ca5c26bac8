"""`ModelConfig`: one frozen description of every supported decoder-only LM, to and from HF.

The HF model families we read differ in a handful of switches (biases, q/k norms,
Gemma's sandwich norms and soft-capping, sliding windows, RoPE variants, GPT-2's
LayerNorm, learned positions and ungated MLP, Phi-3's LongRoPE and partial rotary
dimensions). `ModelConfig` spells those switches out, so one transformer core serves all
of them and the config is hashable (usable as a static jit argument or a Flax module
attribute). How fused HF tensors (GPT-2's `c_attn`, Phi-3's `qkv_proj`/`gate_up_proj`)
map onto our separate projections is a matter of checkpoint IO (`hf_io`), not of the
config.

`from_hf_dict` accepts both spellings of RoPE settings found on the hub: the older
`rope_theta` / `rope_scaling` (/ `rope_local_base_freq` for Gemma3) and transformers-5's
`rope_parameters` (flat, or nested per layer type for Gemma3). Settings we do not implement
are refused by name instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging

SUPPORTED_ARCHITECTURES = (
    "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "gpt2", "phi3",
)

# HF `model_type` -> our architecture name. "gemma3" (the multimodal wrapper) is read
# through its `text_config`; the vision tower is not part of a causal LM.
_MODEL_TYPES = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",
    "gemma3": "gemma3",
    "gpt2": "gpt2",
    "phi3": "phi3",
}

_HF_NAMES = {
    # architecture -> (model_type, causal LM class name)
    "llama": ("llama", "LlamaForCausalLM"),
    "mistral": ("mistral", "MistralForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
    "gemma2": ("gemma2", "Gemma2ForCausalLM"),
    "gemma3": ("gemma3_text", "Gemma3ForCausalLM"),
    "gpt2": ("gpt2", "GPT2LMHeadModel"),
    "phi3": ("phi3", "Phi3ForCausalLM"),
}

# RoPE types each architecture runs (transformers' Phi3 accepts only these two).
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
PHI3_ROPE_TYPES = ("default", "longrope")
ROPE_TYPES = ("default", "linear", "llama3", "longrope")
# Older Phi-3 spellings that transformers' Phi3Config reads as "longrope".
_PHI3_ROPE_ALIASES = {"su": "longrope", "yarn": "longrope"}
NORM_KINDS = ("rms", "layer")
POSITION_KINDS = ("rope", "learned")
SUPPORTED_ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
}
FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"

# Keys we either interpret or know to be irrelevant to the forward pass (bookkeeping,
# PyTorch runtime options). Anything else in a config.json is listed in one log line.
_KNOWN_KEYS = frozenset(
    {
        "architectures", "model_type", "transformers_version", "torch_dtype", "dtype",
        "use_cache", "initializer_range", "pretraining_tp", "_name_or_path",
        "output_hidden_states", "output_attentions", "return_dict", "id2label",
        "label2id", "problem_type", "chunk_size_feed_forward", "is_encoder_decoder",
        "tie_word_embeddings", "max_window_layers", "use_sliding_window",
        "_sliding_window_pattern", "cache_implementation", "final_logit_softcapping",
        "attn_logit_softcapping", "query_pre_attn_scalar", "sliding_window_pattern",
        "layer_types", "rope_parameters", "rope_scaling", "rope_theta",
        "rope_local_base_freq", "head_dim", "hidden_act", "hidden_activation",
        "attention_bias", "mlp_bias", "sliding_window", "attention_dropout",
        "use_bidirectional_attention", "partial_rotary_factor", "bos_token_id",
        "eos_token_id", "pad_token_id", "vocab_size", "hidden_size", "intermediate_size",
        "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "max_position_embeddings", "rms_norm_eps", "auto_map", "quantization_config",
        "tokenizer_class", "bos_token", "eos_token", "pad_token", "unk_token",
        # Phi-3
        "original_max_position_embeddings", "resid_pdrop", "embd_pdrop",
        # GPT-2
        "n_embd", "n_layer", "n_head", "n_inner", "n_positions", "n_ctx",
        "activation_function", "layer_norm_epsilon", "attn_pdrop", "scale_attn_weights",
        "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention",
        "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels",
        "summary_first_dropout", "task_specific_params",
    }
)


class UnsupportedConfigError(ValueError):
    """An HF config names an architecture or a setting this package does not implement."""


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding of one layer type.

    `kind` is `default` (plain RoPE), `linear` (positions divided by `factor`), `llama3`
    (Llama-3.1/3.2 frequency-dependent scaling with `low_freq_factor`,
    `high_freq_factor`, `original_max_position_embeddings`) or `longrope` (Phi-3's
    LongRoPE: frequencies divided by `short_factor`, or by `long_factor` for a sequence
    longer than `original_max_position_embeddings`; cos and sin times `attention_factor`).
    """

    theta: float = 10_000.0
    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int | None = None
    short_factor: tuple[float, ...] = ()
    long_factor: tuple[float, ...] = ()
    attention_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ROPE_TYPES:
            raise UnsupportedConfigError(
                f"RoPE type {self.kind!r} is not supported (supported: {', '.join(ROPE_TYPES)})."
            )
        object.__setattr__(self, "short_factor", tuple(float(x) for x in self.short_factor))
        object.__setattr__(self, "long_factor", tuple(float(x) for x in self.long_factor))
        if self.kind == "longrope":
            if not self.short_factor or len(self.short_factor) != len(self.long_factor):
                raise UnsupportedConfigError(
                    "longrope needs short_factor and long_factor of the same, non-zero length "
                    f"(got {len(self.short_factor)} and {len(self.long_factor)})."
                )
            if not self.original_max_position_embeddings:
                raise UnsupportedConfigError("longrope needs original_max_position_embeddings.")

    @property
    def varies_with_length(self) -> bool:
        """True when the frequencies depend on the sequence's length (LongRoPE)."""
        return self.kind == "longrope"

    def inv_freq(self, rotary_dim: int, *, long: bool = False) -> np.ndarray:
        """Inverse frequencies, float32 `[rotary_dim // 2]`, as transformers computes them.

        `long` selects LongRoPE's frequencies for sequences past
        `original_max_position_embeddings`; other kinds ignore it.
        """
        exponents = np.arange(0, rotary_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(
            rotary_dim
        )
        powers = (np.float32(self.theta) ** exponents).astype(np.float32)
        if self.kind == "longrope":
            factors = np.asarray(self.long_factor if long else self.short_factor, np.float32)
            if factors.shape != powers.shape:
                raise UnsupportedConfigError(
                    f"longrope factors have {factors.size} entries; the rotary dimension "
                    f"{rotary_dim} needs {powers.size}."
                )
            return (1.0 / (factors * powers)).astype(np.float32)
        inv = (1.0 / powers).astype(np.float32)
        if self.kind == "linear":
            inv = (inv / np.float32(self.factor)).astype(np.float32)
        elif self.kind == "llama3":
            inv = _llama3_scale(inv, self)
        return inv

    def to_hf(self) -> dict[str, Any]:
        """The transformers-5 `rope_parameters` dict of this RoPE."""
        out: dict[str, Any] = {"rope_type": self.kind, "rope_theta": self.theta}
        if self.kind in ("linear", "llama3", "longrope"):
            out["factor"] = self.factor
        if self.kind == "llama3":
            out["low_freq_factor"] = self.low_freq_factor
            out["high_freq_factor"] = self.high_freq_factor
        if self.kind in ("llama3", "longrope"):
            out["original_max_position_embeddings"] = self.original_max_position_embeddings
        if self.kind == "longrope":
            out["short_factor"] = list(self.short_factor)
            out["long_factor"] = list(self.long_factor)
            out["attention_factor"] = self.attention_factor
        return out


def _llama3_scale(inv_freq: np.ndarray, rope: RopeConfig) -> np.ndarray:
    """Llama 3.1 frequency scaling: long wavelengths divided by `factor`, a smooth ramp between."""
    old_len = float(rope.original_max_position_embeddings)
    low_wavelen = old_len / rope.low_freq_factor
    high_wavelen = old_len / rope.high_freq_factor
    inv = inv_freq.astype(np.float32)
    wavelen = (2 * math.pi / inv).astype(np.float32)
    scaled = np.where(wavelen > low_wavelen, inv / np.float32(rope.factor), inv).astype(np.float32)
    smooth = ((old_len / wavelen - rope.low_freq_factor) / (
        rope.high_freq_factor - rope.low_freq_factor
    )).astype(np.float32)
    smoothed = ((1 - smooth) * scaled / np.float32(rope.factor) + smooth * scaled).astype(np.float32)
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything the transformer core needs to know about one decoder-only LM.

    Built from an HF `config.json` by `from_hf_dict`; written back by `to_hf_dict`. Frozen
    and hashable. Use `dataclasses.replace(config, vocab_size=...)` to derive variants.
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    activation: str = "silu"  # silu | gelu_tanh | gelu
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    # Gemma: norms around both sublayers, `(1 + w)` norm weights, embeddings times sqrt(D).
    sandwich_norms: bool = False
    norm_offset: float = 0.0
    scale_embeddings: bool = False
    query_pre_attn_scalar: float | None = None
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    # One entry per layer: FULL_ATTENTION or SLIDING_ATTENTION.
    layer_types: tuple[str, ...] = ()
    sliding_window: int | None = None
    rope: RopeConfig = RopeConfig()
    # RoPE of sliding-window layers where it differs (Gemma3's local base); None = `rope`.
    rope_local: RopeConfig | None = None
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    # GPT-2: LayerNorm (mean-centred, with a bias) instead of RMSNorm, learned absolute
    # position embeddings instead of RoPE, and an ungated MLP (down(act(up(x)))).
    # `rms_norm_eps` is the epsilon of either norm.
    norm_kind: str = "rms"  # rms | layer
    position_kind: str = "rope"  # rope | learned
    gated_mlp: bool = True
    # Phi-3 (Phi-4-mini): RoPE rotates only the first `rotary_dim` dims of each head.
    partial_rotary_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedConfigError(
                f"Architecture {self.architecture!r} is not supported "
                f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})."
            )
        for field, value, valid in (
            ("norm_kind", self.norm_kind, NORM_KINDS),
            ("position_kind", self.position_kind, POSITION_KINDS),
        ):
            if value not in valid:
                raise UnsupportedConfigError(
                    f"{field}={value!r} is not supported (supported: {', '.join(valid)})."
                )
        rope_types = PHI3_ROPE_TYPES if self.architecture == "phi3" else SUPPORTED_ROPE_TYPES
        for rope in (self.rope, self.rope_local):
            if rope is not None and rope.kind not in rope_types:
                raise UnsupportedConfigError(
                    f"RoPE type {rope.kind!r} is not supported for {self.architecture} "
                    f"(supported: {', '.join(rope_types)})."
                )
        if self.partial_rotary_factor != 1.0 and self.architecture != "phi3":
            raise UnsupportedConfigError(
                f"partial_rotary_factor={self.partial_rotary_factor!r} is not supported for "
                f"{self.architecture} (only phi3 rotates part of each head)."
            )
        if not 0.0 < self.partial_rotary_factor <= 1.0 or self.rotary_dim % 2:
            raise UnsupportedConfigError(
                f"partial_rotary_factor={self.partial_rotary_factor!r} gives rotary dimension "
                f"{self.rotary_dim} of head_dim {self.head_dim}; it must be positive and even."
            )
        if self.rope.varies_with_length:
            self.rope.inv_freq(self.rotary_dim)  # factor lengths must fit the rotary dimension
        if self.activation not in ("silu", "gelu_tanh", "gelu"):
            raise UnsupportedConfigError(
                f"Activation {self.activation!r} is not supported (supported: silu, gelu_tanh, gelu)."
            )
        if not self.layer_types:
            object.__setattr__(self, "layer_types", (FULL_ATTENTION,) * self.num_layers)
        if len(self.layer_types) != self.num_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers."
            )
        bad = sorted({t for t in self.layer_types} - {FULL_ATTENTION, SLIDING_ATTENTION})
        if bad:
            raise UnsupportedConfigError(
                f"Layer type(s) {bad} not supported (supported: {FULL_ATTENTION}, {SLIDING_ATTENTION})."
            )
        if SLIDING_ATTENTION in self.layer_types and not self.sliding_window:
            raise ValueError("Sliding-attention layers need a positive `sliding_window`.")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}."
            )

    @property
    def rotary_dim(self) -> int:
        """Dimensions of each head that RoPE rotates (the rest pass through)."""
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def attention_scale(self) -> float:
        """Multiplier of q.k: 1/sqrt(head_dim), or 1/sqrt(query_pre_attn_scalar) (Gemma)."""
        base = self.query_pre_attn_scalar if self.query_pre_attn_scalar else self.head_dim
        return float(base) ** -0.5

    def layer_windows(self) -> np.ndarray:
        """int32 `[num_layers]`: the sliding window of each layer, 0 for global attention."""
        return np.asarray(
            [self.sliding_window if t == SLIDING_ATTENTION else 0 for t in self.layer_types],
            dtype=np.int32,
        )

    def layer_inv_freqs(self, *, long: bool = False) -> np.ndarray:
        """float32 `[num_layers, rotary_dim // 2]`: RoPE inverse frequencies of each layer
        (`long`: LongRoPE's set for sequences past its original length)."""
        local = self.rope_local or self.rope
        dim = self.rotary_dim
        full_f, local_f = self.rope.inv_freq(dim, long=long), local.inv_freq(dim, long=long)
        return np.stack(
            [local_f if t == SLIDING_ATTENTION else full_f for t in self.layer_types]
        ).astype(np.float32)

    def matmul_params_per_layer(self) -> int:
        """Weights of one layer's matrix products (q, k, v, out and the MLP)."""
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        return d * hd * (self.num_heads * 2 + self.num_kv_heads * 2) + (3 if self.gated_mlp else 2) * d * f

    def num_params(self) -> int:
        """Parameter count (embeddings included once when tied), as transformers counts it."""
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        norm = d * (2 if self.norm_kind == "layer" else 1)
        per_layer = self.matmul_params_per_layer() + norm * (4 if self.sandwich_norms else 2)
        if self.qkv_bias:
            per_layer += hd * (self.num_heads + 2 * self.num_kv_heads)
        if self.out_bias:
            per_layer += d
        if self.mlp_bias:
            per_layer += (2 if self.gated_mlp else 1) * f + d
        if self.qk_norm:
            per_layer += 2 * hd
        emb = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        if self.position_kind == "learned":
            emb += self.max_position_embeddings * d
        return self.num_layers * per_layer + emb + norm

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token: 2 x matmul parameters + attention scores and values."""
        matmul_params = self.num_layers * self.matmul_params_per_layer() + self.vocab_size * self.hidden_size
        attention = self.num_layers * 2 * 2 * self.num_heads * self.head_dim * seq_len
        return 2.0 * matmul_params + attention


def _rope_types(arch: str) -> tuple[str, ...]:
    return PHI3_ROPE_TYPES if arch == "phi3" else SUPPORTED_ROPE_TYPES


def _rope_kind(d: Mapping[str, Any], arch: str) -> str | None:
    """The RoPE type a rope dict names (Phi-3's old aliases resolved); refuses unsupported ones."""
    kind = d.get("rope_type", d.get("type"))
    if kind is None:
        return None
    if arch == "phi3":
        kind = _PHI3_ROPE_ALIASES.get(kind, kind)
    supported = _rope_types(arch)
    if kind not in supported:
        where = " for phi3" if arch == "phi3" else ""
        raise UnsupportedConfigError(
            f"RoPE scaling type {kind!r} is not supported (supported{where}: {', '.join(supported)})."
        )
    return kind


def _rope_from_dict(d: Mapping[str, Any], default_theta: float, max_pos: int, arch: str) -> RopeConfig:
    """One RopeConfig from an HF rope dict (either `rope_scaling` or `rope_parameters` style)."""
    kind = _rope_kind(d, arch) or "default"
    theta = float(d.get("rope_theta") or default_theta)
    if kind == "default":
        return RopeConfig(theta=theta)
    if kind == "linear":
        return RopeConfig(theta=theta, kind="linear", factor=float(d["factor"]))
    original = int(d.get("original_max_position_embeddings") or max_pos)
    if kind == "longrope":
        short, long = _longrope_factors(d)
        # transformers' defaults: the factor is the context extension, the attention
        # factor the LongRoPE paper's sqrt(1 + ln(factor) / ln(original length)).
        factor = float(d["factor"]) if d.get("factor") is not None else max_pos / original
        attention = d.get("attention_factor")
        if attention is None:
            attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
        return RopeConfig(
            theta=theta,
            kind="longrope",
            factor=factor,
            original_max_position_embeddings=original,
            short_factor=short,
            long_factor=long,
            attention_factor=float(attention),
        )
    return RopeConfig(
        theta=theta,
        kind="llama3",
        factor=float(d["factor"]),
        low_freq_factor=float(d.get("low_freq_factor", 1.0)),
        high_freq_factor=float(d.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=original,
    )


def _rope_source(hf: Mapping[str, Any], arch: str) -> dict[str, Any]:
    """The one rope dict of a single-RoPE architecture (`rope_scaling` wins over
    `rope_parameters` where both are present, as in transformers)."""
    source = dict(hf.get("rope_parameters") or {})
    if hf.get("rope_scaling"):
        source = {**source, **hf["rope_scaling"]}
    if FULL_ATTENTION in source or SLIDING_ATTENTION in source:
        raise UnsupportedConfigError(
            f"Per-layer-type rope_parameters are only supported for gemma3, not {arch!r}."
        )
    return source


def _read_ropes(hf: Mapping[str, Any], arch: str, max_pos: int) -> tuple[RopeConfig, RopeConfig | None]:
    """(rope of full-attention layers, rope of sliding layers or None)."""
    params = hf.get("rope_parameters")
    scaling = hf.get("rope_scaling")
    if arch != "gemma3":
        theta = float(hf.get("rope_theta") or 10_000.0)
        return _rope_from_dict(_rope_source(hf, arch), theta, max_pos, arch), None
    # Gemma3: global layers default to theta 1e6 (+ `rope_scaling`), local layers to 1e4.
    params = dict(params or {})
    if params and FULL_ATTENTION not in params and SLIDING_ATTENTION not in params:
        params = {FULL_ATTENTION: params}  # a flat dict describes the global layers
    full = dict(params.get(FULL_ATTENTION) or {})
    local = dict(params.get(SLIDING_ATTENTION) or {})
    if scaling:
        full.update(scaling)
    full.setdefault("rope_theta", hf.get("rope_theta") or 1_000_000.0)
    local.setdefault("rope_theta", hf.get("rope_local_base_freq") or 10_000.0)
    return (
        _rope_from_dict(full, 1_000_000.0, max_pos, arch),
        _rope_from_dict(local, 10_000.0, max_pos, arch),
    )


def _layer_types(hf: Mapping[str, Any], arch: str, n: int) -> tuple[tuple[str, ...], int | None]:
    window = hf.get("sliding_window")
    explicit = hf.get("layer_types")
    if arch in ("llama",):
        return (FULL_ATTENTION,) * n, None
    if arch in ("mistral", "phi3"):
        if explicit and any(t != FULL_ATTENTION for t in explicit):
            raise UnsupportedConfigError(
                f"{arch} configs with alternating `layer_types` are not supported "
                f"(transformers ignores them for {arch} as well); use a uniform sliding_window."
            )
        return ((SLIDING_ATTENTION if window else FULL_ATTENTION),) * n, window or None
    if arch in ("qwen2", "qwen3"):
        if not hf.get("use_sliding_window", False):
            window = None
        if explicit:
            types = tuple(explicit)
        else:
            start = int(hf.get("max_window_layers", 28))
            types = tuple(
                SLIDING_ATTENTION if window is not None and i >= start else FULL_ATTENTION
                for i in range(n)
            )
        return types, (window if SLIDING_ATTENTION in types else None)
    if explicit:
        types = tuple(explicit)
    else:
        pattern = 2 if arch == "gemma2" else int(hf.get("sliding_window_pattern", 6))
        types = tuple(
            SLIDING_ATTENTION if (i + 1) % pattern else FULL_ATTENTION for i in range(n)
        )
    return types, (window if SLIDING_ATTENTION in types else None)


def _refuse_unsupported_rope(hf: Mapping[str, Any], arch: str) -> None:
    """Names an unsupported RoPE type before transformers' own validation sees it."""
    if arch == "gpt2":
        return  # learned positions: RoPE settings are not read
    configs = [hf, *([hf["text_config"]] if isinstance(hf.get("text_config"), Mapping) else [])]
    for cfg in configs:
        dicts = [cfg.get("rope_scaling"), cfg.get("rope_parameters")]
        for d in list(dicts):
            if isinstance(d, Mapping):
                dicts.extend(v for v in d.values() if isinstance(v, Mapping))
        for d in dicts:
            if isinstance(d, Mapping) and _rope_kind(d, arch) == "longrope":
                short, _ = _longrope_factors(d)
                rotary = _raw_rotary_dim(cfg, d)
                if rotary is not None and len(short) != rotary // 2:
                    raise UnsupportedConfigError(
                        f"longrope factors have {len(short)} entries; the rotary dimension "
                        f"{rotary} needs {rotary // 2}."
                    )


def _raw_rotary_dim(cfg: Mapping[str, Any], rope: Mapping[str, Any]) -> int | None:
    """The rotary dimension a raw config.json implies, or None where it omits a size."""
    try:
        head_dim = int(cfg.get("head_dim") or int(cfg["hidden_size"]) // int(cfg["num_attention_heads"]))
    except (KeyError, TypeError, ValueError):
        return None
    partial = rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor"))
    return int(head_dim * (1.0 if partial is None else float(partial)))


def _longrope_factors(d: Mapping[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    missing = [k for k in ("short_factor", "long_factor") if not d.get(k)]
    if missing:
        raise UnsupportedConfigError(f"longrope RoPE without {' and '.join(missing)}.")
    return tuple(d["short_factor"]), tuple(d["long_factor"])


def _resolve_phi3_rope_aliases(hf: Mapping[str, Any]) -> dict[str, Any]:
    """Phi-3 configs spelling LongRoPE "su" or "yarn" with the name "longrope".

    transformers' Phi3Config runs both as LongRoPE but renames them only after filling in
    `original_max_position_embeddings`, so an old "su" config fails its own validation.
    """
    out = dict(hf)
    for key in ("rope_scaling", "rope_parameters"):
        d = out.get(key)
        if isinstance(d, Mapping):
            d = dict(d)
            for field in ("type", "rope_type"):
                if d.get(field) in _PHI3_ROPE_ALIASES:
                    d[field] = _PHI3_ROPE_ALIASES[d[field]]
            out[key] = d
    return out


def _with_transformers_defaults(hf: Mapping[str, Any]) -> dict[str, Any]:
    """The config as transformers' own config class completes it (defaults, RoPE spelling).

    A hub config.json omits every value equal to its class default (e.g. Gemma2's
    soft-capping of 30 and 50); going through the class gives exactly the values the
    PyTorch model would use.
    """
    from transformers import AutoConfig

    kwargs = {k: v for k, v in hf.items() if k not in ("model_type", "transformers_version")}
    return AutoConfig.for_model(hf["model_type"], **kwargs).to_dict()


def _activation(name: str) -> str:
    if name not in SUPPORTED_ACTIVATIONS:
        raise UnsupportedConfigError(
            f"Activation {name!r} is not supported (supported: {', '.join(SUPPORTED_ACTIVATIONS)})."
        )
    return SUPPORTED_ACTIVATIONS[name]


def _special_ids(hf: Mapping[str, Any]) -> dict[str, Any]:
    eos = hf.get("eos_token_id")
    if isinstance(eos, list):
        eos = tuple(int(e) for e in eos)
    return dict(bos_token_id=hf.get("bos_token_id"), eos_token_id=eos, pad_token_id=hf.get("pad_token_id"))


# GPT-2 options that change the forward pass and are refused when set to this value.
_GPT2_REFUSED = {
    "scale_attn_by_inverse_layer_idx": True,
    "reorder_and_upcast_attn": True,
    "add_cross_attention": True,
    "scale_attn_weights": False,
}


def _gpt2_from_hf(hf: Mapping[str, Any]) -> ModelConfig:
    """GPT-2 (`GPT2LMHeadModel`): LayerNorm, learned positions, ungated MLP, biases everywhere."""
    for key, refused in _GPT2_REFUSED.items():
        if bool(hf.get(key)) == refused:
            raise UnsupportedConfigError(
                f"GPT-2 with {key}={refused} is not supported (only {key}={not refused})."
            )
    hidden, heads = int(hf["n_embd"]), int(hf["n_head"])
    if hidden % heads:
        raise UnsupportedConfigError(f"GPT-2 n_embd={hidden} is not a multiple of n_head={heads}.")
    return ModelConfig(
        architecture="gpt2",
        vocab_size=int(hf["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(hf.get("n_inner") or 4 * hidden),
        num_layers=int(hf["n_layer"]),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        max_position_embeddings=int(hf["n_positions"]),
        rms_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        activation=_activation(hf.get("activation_function") or "gelu_new"),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
        qkv_bias=True,
        out_bias=True,
        mlp_bias=True,
        norm_kind="layer",
        position_kind="learned",
        gated_mlp=False,
        **_special_ids(hf),
    )


def from_hf_dict(hf: Mapping[str, Any]) -> ModelConfig:
    """Builds a ModelConfig from the contents of an HF `config.json`.

    Raises `UnsupportedConfigError` for architectures or settings we do not implement
    (listing the supported alternatives).
    """
    model_type = hf.get("model_type")
    if model_type == "tokenkit_expanded":  # a byte-level export with its expansion
        from tokenkit.models.hf_expansion import base_config

        return from_hf_dict(base_config(hf))
    if str(model_type).startswith("tpu_"):
        from tokenkit.models.upstream_format import config_from_upstream

        return config_from_upstream(hf)
    if model_type not in _MODEL_TYPES:
        archs = hf.get("architectures")
        raise UnsupportedConfigError(
            f"Model type {model_type!r} (architectures {archs}) is not supported; supported "
            f"model types: {', '.join(sorted(_MODEL_TYPES))}."
        )
    arch = _MODEL_TYPES[model_type]
    _refuse_unsupported_rope(hf, arch)
    if arch == "phi3":
        hf = _resolve_phi3_rope_aliases(hf)
    unknown = sorted(k for k in hf if k not in _KNOWN_KEYS and k != "text_config")
    if unknown:
        logging.info("HF config keys not used by tokenkit models: %s", unknown)
    hf = _with_transformers_defaults(hf)
    if model_type == "gemma3":
        outer_tie = hf.get("tie_word_embeddings")
        hf = {**hf["text_config"], "model_type": "gemma3_text"}
        if outer_tie is not None:
            hf["tie_word_embeddings"] = outer_tie

    if hf.get("use_bidirectional_attention"):
        raise UnsupportedConfigError(
            "use_bidirectional_attention=True is not supported (causal LMs only)."
        )
    if hf.get("attention_dropout"):
        logging.warning(
            "attention_dropout=%s in the HF config is ignored: tokenkit models have no dropout.",
            hf["attention_dropout"],
        )
    quant = hf.get("quantization_config")
    if quant:
        raise UnsupportedConfigError(
            f"Quantized checkpoints are not supported (quantization_config: {quant})."
        )
    if arch == "gpt2":
        return _gpt2_from_hf(hf)
    activation = _activation(hf.get("hidden_activation") or hf.get("hidden_act") or (
        "gelu_pytorch_tanh" if arch in ("gemma2", "gemma3") else "silu"
    ))

    n = int(hf["num_hidden_layers"])
    num_heads = int(hf["num_attention_heads"])
    hidden = int(hf["hidden_size"])
    head_dim = int(hf.get("head_dim") or hidden // num_heads)
    max_pos = int(hf.get("max_position_embeddings") or 2048)
    rope, rope_local = _read_ropes(hf, arch, max_pos)
    rope_dict = _rope_source(hf, arch) if arch != "gemma3" else {}
    partial = rope_dict.get("partial_rotary_factor")
    if partial is None:
        partial = hf.get("partial_rotary_factor")
    partial = 1.0 if partial is None else float(partial)
    if partial != 1.0 and arch != "phi3":
        raise UnsupportedConfigError(
            f"partial_rotary_factor={partial!r} is not supported for {arch} (only 1.0; "
            "phi3 supports partial rotary embeddings)."
        )
    types, window = _layer_types(hf, arch, n)
    gemma = arch in ("gemma2", "gemma3")
    attention_bias = bool(hf.get("attention_bias", False))

    if arch == "gemma3" and hf.get("attn_logit_softcapping"):
        # transformers' Gemma3 attention never passes it on; match the reference model.
        logging.warning(
            "attn_logit_softcapping=%s is not applied: transformers' Gemma3 ignores it too.",
            hf["attn_logit_softcapping"],
        )
    default_tie = gemma
    return ModelConfig(
        architecture=arch,
        vocab_size=int(hf["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(hf["intermediate_size"]),
        num_layers=n,
        num_heads=num_heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
        head_dim=head_dim,
        max_position_embeddings=max_pos,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        activation=activation,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", default_tie)),
        qkv_bias=True if arch == "qwen2" else attention_bias,
        out_bias=False if arch == "qwen2" else attention_bias,
        mlp_bias=bool(hf.get("mlp_bias", False)) if arch == "llama" else False,
        qk_norm=arch in ("qwen3", "gemma3"),
        sandwich_norms=gemma,
        norm_offset=1.0 if gemma else 0.0,
        scale_embeddings=gemma,
        query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar", 256)) if gemma else None,
        attn_logit_softcap=(
            float(hf["attn_logit_softcapping"])
            if arch == "gemma2" and hf.get("attn_logit_softcapping")
            else None
        ),
        final_logit_softcap=(
            float(hf["final_logit_softcapping"])
            if gemma and hf.get("final_logit_softcapping")
            else None
        ),
        layer_types=types,
        sliding_window=int(window) if window else None,
        rope=rope,
        rope_local=rope_local,
        partial_rotary_factor=partial,
        **_special_ids(hf),
    )


# Fields whose value an architecture's config.json cannot change: writing a config with
# another value would silently describe a different model.
_LLAMA_LIKE = dict(norm_kind="rms", position_kind="rope", gated_mlp=True)
_PLAIN = dict(
    qk_norm=False, sandwich_norms=False, norm_offset=0.0, scale_embeddings=False,
    query_pre_attn_scalar=None, attn_logit_softcap=None, final_logit_softcap=None, rope_local=None,
)
_FIXED_FIELDS: dict[str, dict[str, Any]] = {
    "gpt2": dict(
        _PLAIN, norm_kind="layer", position_kind="learned", gated_mlp=False, qkv_bias=True,
        out_bias=True, mlp_bias=True, layer_types_sliding=False,
    ),
    "phi3": dict(_PLAIN, **_LLAMA_LIKE, qkv_bias=False, out_bias=False, mlp_bias=False),
}


def _refuse_unwritable(config: ModelConfig) -> None:
    """Raises if `config` has a setting its architecture's config.json cannot express."""
    arch = config.architecture
    fixed = dict(_FIXED_FIELDS.get(arch, _LLAMA_LIKE))
    sliding_ok = fixed.pop("layer_types_sliding", True)
    problems = [
        f"{k}={getattr(config, k)!r} (must be {v!r})"
        for k, v in fixed.items()
        if getattr(config, k) != v
    ]
    if not sliding_ok and SLIDING_ATTENTION in config.layer_types:
        problems.append("sliding-window layers (it has none)")
    if arch in ("mistral", "phi3") and len(set(config.layer_types)) > 1:
        problems.append(f"layer_types={config.layer_types} (must be uniform)")
    if arch in ("gpt2", "phi3") and config.head_dim * config.num_heads != config.hidden_size:
        problems.append(f"head_dim={config.head_dim} (must be hidden_size / num_heads)")
    if arch == "gpt2" and config.num_kv_heads != config.num_heads:
        problems.append(f"num_kv_heads={config.num_kv_heads} (must equal num_heads)")
    if problems:
        raise UnsupportedConfigError(f"A {arch} config.json cannot express: {'; '.join(problems)}.")


def _gpt2_to_hf(config: ModelConfig) -> dict[str, Any]:
    return {
        "architectures": [_HF_NAMES["gpt2"][1]],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_embd": config.hidden_size,
        "n_layer": config.num_layers,
        "n_head": config.num_heads,
        "n_inner": config.intermediate_size,
        "n_positions": config.max_position_embeddings,
        "activation_function": {"silu": "silu", "gelu_tanh": "gelu_new", "gelu": "gelu"}[config.activation],
        "layer_norm_epsilon": config.rms_norm_eps,
        "tie_word_embeddings": config.tie_word_embeddings,
        **{key: not refused for key, refused in _GPT2_REFUSED.items()},
        "use_cache": True,
    }


def to_hf_dict(config: ModelConfig, *, dtype: str | None = None) -> dict[str, Any]:
    """The HF `config.json` contents for `config` (transformers' CausalLM class of the family).

    RoPE is written both as transformers-5 `rope_parameters` and as the older
    `rope_theta` / `rope_scaling` keys, so older readers do not fall back to default RoPE.
    Settings the family's config.json cannot express are refused by name.
    """
    arch = config.architecture
    _refuse_unwritable(config)
    ids = {
        "bos_token_id": config.bos_token_id,
        "eos_token_id": (
            list(config.eos_token_id) if isinstance(config.eos_token_id, tuple) else config.eos_token_id
        ),
        "pad_token_id": config.pad_token_id,
    }
    if arch == "gpt2":
        out = {**_gpt2_to_hf(config), **ids}
        if dtype is not None:
            out["dtype"] = dtype
            out["torch_dtype"] = dtype
        return out
    model_type, cls_name = _HF_NAMES[arch]
    act = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}[config.activation]
    out: dict[str, Any] = {
        "architectures": [cls_name],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        "tie_word_embeddings": config.tie_word_embeddings,
        **ids,
        "attention_dropout": 0.0,
        "use_cache": True,
    }
    if dtype is not None:
        out["dtype"] = dtype
        out["torch_dtype"] = dtype
    if arch in ("gemma2", "gemma3"):
        out["hidden_activation"] = act
        out["hidden_act"] = act
    else:
        out["hidden_act"] = act

    if arch == "qwen2":
        if config.out_bias or not config.qkv_bias:
            raise UnsupportedConfigError("qwen2 requires q/k/v biases and no output bias.")
    elif arch == "phi3":
        pass  # no biases (checked above)
    elif config.qkv_bias != config.out_bias:
        raise UnsupportedConfigError(
            f"{arch} has one `attention_bias` switch; qkv_bias={config.qkv_bias} and "
            f"out_bias={config.out_bias} cannot be written."
        )
    else:
        out["attention_bias"] = config.qkv_bias
    if arch == "llama":
        out["mlp_bias"] = config.mlp_bias

    windowed = SLIDING_ATTENTION in config.layer_types
    if arch in ("mistral", "phi3"):
        out["sliding_window"] = config.sliding_window if windowed else None
    elif arch in ("qwen2", "qwen3"):
        out["use_sliding_window"] = windowed
        out["sliding_window"] = config.sliding_window
        out["layer_types"] = list(config.layer_types)
        first = next((i for i, t in enumerate(config.layer_types) if t == SLIDING_ATTENTION), 0)
        out["max_window_layers"] = first if windowed else config.num_layers
    elif arch in ("gemma2", "gemma3"):
        out["sliding_window"] = config.sliding_window or 4096
        out["layer_types"] = list(config.layer_types)
        scalar = config.query_pre_attn_scalar
        # transformers' strict config classes type this field as int.
        out["query_pre_attn_scalar"] = int(scalar) if float(scalar).is_integer() else scalar
        out["attn_logit_softcapping"] = config.attn_logit_softcap
        out["final_logit_softcapping"] = config.final_logit_softcap

    if arch == "gemma3":
        local = config.rope_local or config.rope
        out["rope_parameters"] = {
            FULL_ATTENTION: config.rope.to_hf(),
            SLIDING_ATTENTION: local.to_hf(),
        }
        out["rope_theta"] = config.rope.theta
        out["rope_local_base_freq"] = local.theta
        if local.kind != "default":
            raise UnsupportedConfigError(
                f"Gemma3 local-layer RoPE of type {local.kind!r} cannot be written (only default)."
            )
        out["rope_scaling"] = (
            {k: v for k, v in config.rope.to_hf().items() if k != "rope_theta"}
            if config.rope.kind != "default"
            else None
        )
    else:
        if config.rope_local is not None and config.rope_local != config.rope:
            raise UnsupportedConfigError(f"{arch} has a single RoPE; rope_local cannot be written.")
        out["rope_parameters"] = config.rope.to_hf()
        out["rope_theta"] = config.rope.theta
        out["rope_scaling"] = (
            {k: v for k, v in config.rope.to_hf().items() if k != "rope_theta"}
            if config.rope.kind != "default"
            else None
        )
    if arch == "phi3":
        out["partial_rotary_factor"] = config.partial_rotary_factor
        out["rope_parameters"]["partial_rotary_factor"] = config.partial_rotary_factor
        if out["rope_scaling"]:
            out["rope_scaling"]["partial_rotary_factor"] = config.partial_rotary_factor
        if config.rope.kind == "longrope":
            # Phi3Config takes this top-level key over the one inside the rope dict.
            out["original_max_position_embeddings"] = config.rope.original_max_position_embeddings
    return out


def load_config(path: str | os.PathLike[str]) -> ModelConfig:
    """Reads `config.json` (or a directory containing it) into a ModelConfig."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    with open(path) as f:
        return from_hf_dict(json.load(f))
