"""LoRA adapters on the attention and MLP projections, merging, and trainable masks.

LoRA parameters live in their own variable collection, "lora", whose tree mirrors the
projections it adapts (stacked over layers like the params):

    lora["layers"]["attention"]["query"] = {"a": [L, in, r], "b": [L, r, out]}

`Transformer(config, lora_alpha=alpha).apply({"params": p, "lora": l}, ...)` adds
`alpha / r * (x a) b` inside each adapted projection (the low-rank path, never the full
update). `a` is random (std 1/r, as the upstream) and `b` zero, so an untrained adapter
changes nothing; that is the Hu et al. orientation (input side random, output side zero).
`merge_lora` folds adapters into the kernels for export.

Fused HF projections (GPT-2's `c_attn`, Phi-3's `qkv_proj` and `gate_up_proj`) are
separate projections in our tree (`hf_io` splits them on load and fuses them on save), so
the targets are the same names for every architecture: `query`, `key` and `value` each
get their own adapter, which on the fused kernel is one adapter of rank 3r whose factors
are block-structured (each block of output columns sees only its own rank-r pair). This
keeps per-projection control (e.g. adapting only `query` and `value`) and merges into
exactly the tensors that are exported. GPT-2's MLP has no `gate`: the default target list
adapts the projections a model has; naming `gate` explicitly for GPT-2 is an error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import gin
import jax
import jax.numpy as jnp
from absl import logging
from flax import traverse_util

from tokenkit.models.config import ModelConfig

# target name -> path of the projection below params["layers"]
LORA_TARGETS: dict[str, tuple[str, str]] = {
    "query": ("attention", "query"),
    "key": ("attention", "key"),
    "value": ("attention", "value"),
    "out": ("attention", "out"),
    "gate": ("mlp", "gate"),
    "up": ("mlp", "up"),
    "down": ("mlp", "down"),
}
TRAIN_MODES = ("full", "lora", "embeddings")
EMBEDDING_PATHS = (("embedder", "embedding"), ("lm_head", "kernel"))


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Rank, scaling numerator and adapted projections (names of LORA_TARGETS)."""

    rank: int = 64
    alpha: float = 64.0
    targets: tuple[str, ...] = tuple(LORA_TARGETS)

    def __post_init__(self) -> None:
        bad = [t for t in self.targets if t not in LORA_TARGETS]
        if bad:
            raise ValueError(
                f"Unknown LoRA target(s) {bad} (valid: {', '.join(LORA_TARGETS)})."
            )
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be positive, got {self.rank}.")
        object.__setattr__(self, "targets", tuple(self.targets))


def _io_sizes(config: ModelConfig, target: str) -> tuple[int, int]:
    c = config
    d, f = c.hidden_size, c.intermediate_size
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    return {
        "query": (d, q), "key": (d, kv), "value": (d, kv), "out": (q, d),
        "gate": (d, f), "up": (d, f), "down": (f, d),
    }[target]


def model_targets(config: ModelConfig) -> tuple[str, ...]:
    """The LoRA targets `config`'s model has (GPT-2's ungated MLP has no `gate`)."""
    return tuple(t for t in LORA_TARGETS if t != "gate" or config.gated_mlp)


def _targets_for(config: ModelConfig, lora: LoraConfig) -> tuple[str, ...]:
    available = model_targets(config)
    absent = [t for t in lora.targets if t not in available]
    if absent and lora.targets != tuple(LORA_TARGETS):
        raise ValueError(
            f"LoRA target(s) {absent} do not exist in {config.architecture} "
            f"(its targets: {', '.join(available)})."
        )
    if absent:
        logging.info(
            "LoRA: %s has no %s projection; adapting %s.", config.architecture, absent, available
        )
    return tuple(t for t in lora.targets if t in available)


def init_lora(
    rng: jax.Array, config: ModelConfig, lora: LoraConfig, dtype: Any = jnp.float32
) -> dict:
    """Fresh adapters for `lora.targets`: `a` ~ N(0, 1/r^2), `b` = 0.

    The default targets (all names) adapt every projection the model has; a target named
    explicitly that the model lacks (`gate` on GPT-2) is an error.
    """
    tree: dict = {}
    targets = _targets_for(config, lora)
    keys = jax.random.split(rng, len(targets))
    for key, target in zip(keys, targets):
        n_in, n_out = _io_sizes(config, target)
        a = jax.random.normal(key, (config.num_layers, n_in, lora.rank), dtype) / lora.rank
        b = jnp.zeros((config.num_layers, lora.rank, n_out), dtype)
        group, name = LORA_TARGETS[target]
        tree.setdefault("layers", {}).setdefault(group, {})[name] = {"a": a, "b": b}
    return tree


def lora_logical_axes(lora_params: Mapping[str, Any]) -> Any:
    """Logical axes of adapter arrays: the layer axis, then replicated (adapters are small)."""
    return jax.tree.map(lambda _: ("layers", None, "lora_rank"), lora_params)


def merge_lora(params: Mapping[str, Any], lora_params: Mapping[str, Any], *, alpha: float) -> dict:
    """params with every adapter folded into its kernel: `W + alpha / r * reshape(a b)`."""
    flat = dict(traverse_util.flatten_dict(params))
    for path, adapter in traverse_util.flatten_dict(lora_params, is_leaf=lambda _, x: _is_adapter(x)).items():
        kernel_path = tuple(path) + ("kernel",)
        if kernel_path not in flat:
            raise KeyError(f"LoRA adapter at {'/'.join(path)} has no kernel in params.")
        kernel = flat[kernel_path]
        a, b = adapter["a"], adapter["b"]
        delta = jnp.einsum("lir,lro->lio", a.astype(jnp.float32), b.astype(jnp.float32))
        scale = alpha / a.shape[-1]
        flat[kernel_path] = (kernel.astype(jnp.float32) + scale * delta.reshape(kernel.shape)).astype(
            kernel.dtype
        )
    return traverse_util.unflatten_dict(flat)


def _is_adapter(x: Any) -> bool:
    return isinstance(x, Mapping) and set(x) == {"a", "b"}


def trainable_mask(
    variables: Mapping[str, Any], mode: str = "full", *, train_embeddings: bool = False
) -> dict:
    """Bool tree matching `variables` (`{"params": ..., "lora": ...}`) for optax masking.

    Modes:
      full: every parameter and adapter.
      lora: only the "lora" collection (which must be present); with `train_embeddings`
        also the input/output embeddings.
      embeddings: only `embedder/embedding` and `lm_head/kernel`.
    The input-id expansion table (`expand_embedder`) is frozen in every mode, as upstream.
    """
    if mode not in TRAIN_MODES:
        raise ValueError(f"Unknown train mode {mode!r} (valid: {', '.join(TRAIN_MODES)}).")
    if mode == "lora" and "lora" not in variables:
        raise ValueError("Train mode 'lora' needs a 'lora' collection in the variables.")
    unknown = sorted(set(variables) - {"params", "lora"})
    if unknown:
        raise ValueError(f"Unexpected variable collections {unknown} (expected params, lora).")

    def param_trainable(path: tuple[str, ...]) -> bool:
        if path[0] == "expand_embedder":
            return False
        is_embedding = path in EMBEDDING_PATHS
        if mode == "full":
            return True
        if mode == "embeddings":
            return is_embedding
        return is_embedding and train_embeddings

    out: dict = {}
    flat = traverse_util.flatten_dict(variables["params"])
    out["params"] = traverse_util.unflatten_dict({k: param_trainable(k) for k in flat})
    if "lora" in variables:
        out["lora"] = jax.tree.map(lambda _: mode in ("full", "lora"), variables["lora"])
    return out
