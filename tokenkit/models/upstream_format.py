"""The upstream tokenkit's own checkpoints: `tpu_*` configs and Flax msgpack parameters.

The upstream project (bminixhofer/tokenkit) trains with its own Flax models and writes
two kinds of checkpoint directories, both with a `config.json` whose `model_type` is
`tpu_llama`, `tpu_gemma2` or `tpu_gemma3`:

- exported models (its published `*-flax` models): `flax_model.msgpack`, or numbered
  `flax_model-0000N-of-0000M.msgpack` shards with `flax_model.msgpack.index.json`,
  holding the Flax parameter tree `{"model": {...}, "lm_head": {...}}`;
- training checkpoints: `params.msgpack` (+ `args.yaml`), the trainer's parameter tree
  `{"model": <model without embeddings>, "new_embeddings": [V, n, D], "hypernet": ...}`
  in which the embeddings are the output of an embedding hypernetwork applied to
  `new_embeddings` (n = 1 for tied models, 2 for input and output embeddings).

`config_from_upstream` maps a `tpu_*` config onto our architectures (tpu_llama -> llama,
or qwen3 when it has q/k norms; tpu_gemma2 -> gemma2; tpu_gemma3 -> gemma3), filling the
values the upstream's config classes assume when a key is absent and refusing, by name,
settings its models would run differently from ours. `load_params` reads the msgpack tree
into our parameter tree (Flax kernels are already `[in, out]`; heads are split out of the
flat projection dims and layers stacked) and places each parameter with its target
sharding. msgpack cannot be read by slices, so each host holds the whole file in memory
once while placing; each device still receives only its own shard.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, SingleDeviceSharding

from tokenkit.models import sharding as sharding_lib
from tokenkit.models.config import ModelConfig, UnsupportedConfigError, from_hf_dict
from tokenkit.models.hf_io import _Leaf, _get, _leaves, _norm_slices, _set
from tokenkit.progress import Progress

EXPORT_FILE = "flax_model.msgpack"
EXPORT_INDEX = "flax_model.msgpack.index.json"
TRAINING_FILE = "params.msgpack"
ARGS_FILE = "args.yaml"

# What the upstream's config classes assume for keys a config.json leaves out
# (transformers omits values equal to its base defaults, e.g. Gemma's tied embeddings).
_DEFAULTS: dict[str, dict[str, Any]] = {
    "tpu_llama": dict(
        hidden_act="silu", max_position_embeddings=2048, rms_norm_eps=1e-6,
        tie_word_embeddings=False, rope_theta=10_000.0, rope_scaling=None,
        attention_bias=False, mlp_bias=False, head_dim=None, add_qk_norm=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=None,
    ),
    "tpu_gemma2": dict(
        num_key_value_heads=16, head_dim=256, hidden_activation="gelu_pytorch_tanh",
        max_position_embeddings=8192, rms_norm_eps=1e-6, tie_word_embeddings=True,
        rope_theta=10_000.0, attention_bias=False, query_pre_attn_scalar=224,
        sliding_window=4096, final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
        bos_token_id=2, eos_token_id=1, pad_token_id=0,
    ),
    "tpu_gemma3": dict(
        num_key_value_heads=4, head_dim=256, hidden_activation="gelu_pytorch_tanh",
        max_position_embeddings=131_072, rms_norm_eps=1e-6, tie_word_embeddings=True,
        rope_theta=1_000_000.0, rope_scaling=None, rope_local_base_freq=10_000.0,
        attention_bias=False, query_pre_attn_scalar=256, sliding_window=4096,
        sliding_window_pattern=6, final_logit_softcapping=None,
        attn_logit_softcapping=None, bos_token_id=2, eos_token_id=1, pad_token_id=0,
    ),
}
UPSTREAM_MODEL_TYPES = tuple(_DEFAULTS)
# Largest change of an attention weight by the upstream's post-softmax capping that we
# accept as "uncapped" (see `config_from_upstream`).
_MAX_WEIGHT_CAP_EFFECT = 1e-3
_MIN_ATTN_CAP = (1.0 / (3.0 * _MAX_WEIGHT_CAP_EFFECT)) ** 0.5
_REQUIRED = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
)


def is_upstream_config(hf: Mapping[str, Any]) -> bool:
    """Whether a config.json dict is in the upstream's `tpu_*` family (supported or not)."""
    return str(hf.get("model_type", "")).startswith("tpu_")


def handles(directory: Path, hf: Mapping[str, Any]) -> bool:
    """Whether `load_params` reads this directory: a `tpu_*` config, unless the directory
    holds safetensors and no msgpack (the upstream's PyTorch export, read as HF)."""
    if not is_upstream_config(hf):
        return False
    has_safetensors = any(directory.glob("*.safetensors"))
    return bool(weight_files(directory)) or not has_safetensors


# --------------------------------------------------------------------------------------
# Config


def _refuse(model_type: str, key: str, value: Any, why: str) -> None:
    raise UnsupportedConfigError(f"{model_type} config: {key}={value!r} is not supported ({why}).")


def config_from_upstream(hf: Mapping[str, Any]) -> ModelConfig:
    """A ModelConfig for the contents of an upstream `tpu_*` config.json.

    Raises `UnsupportedConfigError` for an unknown `tpu_*` type or a setting the
    upstream's models run differently from ours, naming the key.
    """
    model_type = hf.get("model_type")
    if model_type not in _DEFAULTS:
        raise UnsupportedConfigError(
            f"Upstream model type {model_type!r} is not supported; supported upstream model "
            f"types: {', '.join(UPSTREAM_MODEL_TYPES)}."
        )
    missing = [k for k in _REQUIRED if k not in hf]
    if missing:
        raise ValueError(f"{model_type} config.json lacks {missing}.")
    c = {**_DEFAULTS[model_type], **{k: v for k, v in hf.items()}}
    if c.get("skip_out_norm"):
        _refuse(model_type, "skip_out_norm", True, "a model without its final norm has no logits")
    if c.get("expand_input_ids"):
        _refuse(
            model_type, "expand_input_ids", True,
            "the input-id expansion of the upstream's PyTorch export; tokenkit's own "
            "expansion is set up at training time (models.expand)",
        )
    quant = c.get("quantization_config")
    if quant:
        _refuse(model_type, "quantization_config", quant, "quantized checkpoints")

    n = int(c["num_hidden_layers"])
    heads = int(c["num_attention_heads"])
    head_dim = int(c.get("head_dim") or int(c["hidden_size"]) // heads)
    out: dict[str, Any] = {
        k: c[k]
        for k in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "max_position_embeddings", "rms_norm_eps",
            "tie_word_embeddings", "attention_bias", "rope_theta", "bos_token_id",
            "eos_token_id", "pad_token_id",
        )
    }
    out["head_dim"] = head_dim
    out["num_key_value_heads"] = int(c.get("num_key_value_heads") or heads)

    if model_type == "tpu_llama":
        if c.get("mlp_bias"):
            # The upstream's Flax MLP has no bias parameters whatever the config says.
            logging.warning("tpu_llama config: mlp_bias=True is ignored, as the upstream's model does.")
        out["model_type"] = "qwen3" if c.get("add_qk_norm") else "llama"
        out["hidden_act"] = c["hidden_act"]
        out["mlp_bias"] = False
        scaling = c.get("rope_scaling")
        if scaling:
            out["rope_scaling"] = dict(scaling)
        return from_hf_dict(out)

    # Gemma: the upstream asserts these are equal and scales q.k by 1/sqrt(head_dim).
    scalar = c.get("query_pre_attn_scalar")
    if scalar != head_dim:
        _refuse(
            model_type, "query_pre_attn_scalar", scalar,
            f"the upstream's model requires it to equal head_dim={head_dim}",
        )
    cap = c.get("attn_logit_softcapping")
    if cap is not None:
        # The upstream's Flax Gemma applies `cap * tanh(w / cap)` to the attention
        # *weights* w in [0, 1] after the softmax (transformers caps the scores before
        # it). That changes a weight by at most 1 / (3 cap^2): 1.3e-4 at the usual 50,
        # so the model is loaded uncapped, which is what the upstream's amounts to.
        if 1.0 / (3.0 * float(cap) ** 2) > _MAX_WEIGHT_CAP_EFFECT:
            _refuse(
                model_type, "attn_logit_softcapping", cap,
                "the upstream's Flax models cap attention weights after the softmax; "
                f"below {_MIN_ATTN_CAP:.1f} that differs from no capping by more than "
                f"{_MAX_WEIGHT_CAP_EFFECT:g}",
            )
        logging.warning(
            "%s config: attn_logit_softcapping=%s is applied by the upstream after the "
            "softmax (a change below %.1e per attention weight); loading without it.",
            model_type, cap, 1.0 / (3.0 * float(cap) ** 2),
        )
    out["model_type"] = "gemma2" if model_type == "tpu_gemma2" else "gemma3_text"
    out["hidden_activation"] = c["hidden_activation"] or "gelu_pytorch_tanh"
    out["query_pre_attn_scalar"] = head_dim
    out["sliding_window"] = int(c["sliding_window"])
    out["final_logit_softcapping"] = c.get("final_logit_softcapping")
    out["attn_logit_softcapping"] = None
    if model_type == "tpu_gemma2":
        if c.get("rope_scaling"):
            logging.warning(
                "tpu_gemma2 config: rope_scaling=%s is ignored, as the upstream's model does.",
                c["rope_scaling"],
            )
        sliding = [i % 2 == 0 for i in range(n)]
    else:
        pattern = int(c["sliding_window_pattern"])
        sliding = [(i + 1) % pattern != 0 for i in range(n)]
        out["rope_local_base_freq"] = c["rope_local_base_freq"]
        if c.get("rope_scaling"):
            out["rope_scaling"] = dict(c["rope_scaling"])
    out["layer_types"] = [
        "sliding_attention" if s else "full_attention" for s in sliding
    ]
    return from_hf_dict(out)


# --------------------------------------------------------------------------------------
# Locating and reading the msgpack files


def weight_files(directory: Path) -> list[Path]:
    """The msgpack files of an upstream checkpoint directory, export before training
    checkpoint; [] when it has none."""
    index = directory / EXPORT_INDEX
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        absent = [s for s in shards if not (directory / s).exists()]
        if absent:
            raise FileNotFoundError(f"{index} names shard(s) that are missing: {absent}.")
        return [directory / s for s in shards]
    for name in (EXPORT_FILE, TRAINING_FILE):
        if (directory / name).exists():
            return [directory / name]
    return []


def _restore(path: Path) -> dict:
    from flax import serialization

    data = path.read_bytes()
    if data.startswith(b"version https://git-lfs"):
        raise ValueError(f"{path} is a git-lfs pointer, not the parameters; fetch it with `git lfs pull`.")
    try:
        return serialization.msgpack_restore(data)
    except Exception as e:  # msgpack raises several unrelated types for a bad file
        raise ValueError(f"{path} is not a Flax msgpack parameter file: {e}") from e


def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, prefix + (str(key),)))
        else:
            out[prefix + (str(key),)] = value
    return out


def read_tree(directory: Path) -> dict:
    """The (unflattened) parameter tree of all msgpack files of a checkpoint directory."""
    files = weight_files(directory)
    if not files:
        found = sorted(p.name for p in directory.iterdir())
        raise FileNotFoundError(
            f"No {EXPORT_FILE}, {EXPORT_INDEX} or {TRAINING_FILE} in {directory} (found: {found})."
        )
    flat: dict[tuple[str, ...], Any] = {}
    for path in files:
        logging.info("Reading %s.", path)
        flat.update(_flatten(_restore(path)))
    tree: dict = {}
    for key, value in flat.items():
        _set(tree, key, value)
    return tree


# --------------------------------------------------------------------------------------
# Training checkpoints: embeddings from the hypernetwork


def _layer_norm(x: jax.Array, p: Mapping[str, Any], eps: float) -> jax.Array:
    # Flax's LayerNorm: variance as E[x^2] - E[x]^2.
    mean = x.mean(-1, keepdims=True)
    var = jnp.maximum((x * x).mean(-1, keepdims=True) - mean * mean, 0.0)
    return (x - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def _dense(x: jax.Array, p: Mapping[str, Any]) -> jax.Array:
    return x @ p["kernel"] + p["bias"]


_HYPERNET_EPS = 1e-12  # the upstream hypernetwork's LayerNorm epsilon (not a training option)


def _hypernet_fn(settings: Mapping[str, Any], hidden_size: int) -> Callable[[dict, jax.Array], jax.Array]:
    """The upstream's embedding hypernetwork for one token each (its sequence length is 1
    when it predicts embeddings), as a function `(params, [V, n, D]) -> [V, n, D]`."""
    residual = bool(settings.get("residual", True))
    alpha = float(settings.get("residual_alpha", 8.0))

    def fn(p: dict, emb: jax.Array) -> jax.Array:
        v, n, d = emb.shape
        x = emb * p["in_rescaler"]["w"].reshape(d) + p["in_rescaler"]["b"].reshape(d)
        h = x.reshape(v, n * d) + p["transformer"]["position_embeddings"]["embedding"][0]
        stack = p["transformer"]
        i = 0
        while f"layers_{i}" in stack:
            layer = stack[f"layers_{i}"]
            mlp = _dense(jax.nn.gelu(_dense(h, layer["mlp"]["intermediate"]), approximate=True), layer["mlp"]["output"])
            h = _layer_norm(h + mlp, layer["post_mlp_layernorm"], _HYPERNET_EPS)
            i += 1
        h = _dense(h, p["output_linear"]).reshape(v, n, d)
        pred = x + (alpha / math.sqrt(hidden_size)) * h if residual else h
        return pred * p["out_rescaler"]["w"].reshape(d) + p["out_rescaler"]["b"].reshape(d)

    return jax.jit(fn)


def _read_args(directory: Path) -> dict:
    path = directory / ARGS_FILE
    if not path.exists():
        return {}
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def predict_embeddings(
    new_embeddings: np.ndarray, hypernet: Mapping[str, Any], settings: Mapping[str, Any],
    *, chunk: int = 8192,
) -> np.ndarray:
    """The embeddings `[V, n, D]` the upstream's hypernetwork predicts from `new_embeddings`.

    Supports its `identity` architecture and its `transformer` architecture without
    attention (the settings of every upstream config); refuses the others by name.
    """
    arch = settings.get("architecture", "transformer")
    if arch == "identity":
        return np.asarray(new_embeddings)
    if arch != "transformer":
        raise UnsupportedConfigError(
            f"{ARGS_FILE}: hypernet.architecture={arch!r} is not supported (supported: identity, transformer)."
        )
    for key, ok in (("use_attention", False), ("shared", True), ("multiply_hidden_dim_by_num_embeddings", True)):
        if key in settings and bool(settings[key]) != ok:
            raise UnsupportedConfigError(
                f"{ARGS_FILE}: hypernet.{key}={settings[key]!r} is not supported (only {ok})."
            )
    # The upstream's init leaves rescaled copies beside "params"; its apply uses "params".
    params = jax.tree.map(jnp.asarray, dict(hypernet.get("params", hypernet)))
    fn = _hypernet_fn(settings, new_embeddings.shape[-1])
    parts = [
        np.asarray(fn(params, jnp.asarray(new_embeddings[s : s + chunk], jnp.float32)))
        for s in range(0, new_embeddings.shape[0], chunk)
    ]
    return np.concatenate(parts).astype(np.float32)


def _model_tree(tree: dict, directory: Path, config: ModelConfig) -> dict:
    """The Flax model tree of an export, or of a training checkpoint with its embeddings."""
    if "new_embeddings" not in tree and "model" in tree and "embed_tokens" in tree["model"]:
        return tree  # an export: {"model": ..., "lm_head": ...}
    if "model" not in tree:
        hint = " (a LoRA run saves only adapters; export it with the upstream first)" if "model_lora" in tree else ""
        raise KeyError(f"{directory}: the parameters have no 'model' subtree{hint}; top-level keys: {sorted(tree)}.")
    if "model_lora" in tree:
        raise UnsupportedConfigError(
            f"{directory}: 'model_lora' (LoRA adapters) in {TRAINING_FILE} are not supported; "
            "export the checkpoint with the upstream's scripts/export_checkpoint.py first."
        )
    model = dict(tree["model"])
    extra = sorted(k for k in model if k != "model" and k != "lm_head")
    if extra:
        logging.warning("%s: %s in %s are not model weights and are not loaded.", directory, extra, TRAINING_FILE)
    inner = dict(model.get("model", {}))
    if "embed_tokens" not in inner:
        if "new_embeddings" not in tree:
            raise KeyError(f"{directory}: neither model embeddings nor 'new_embeddings' in {TRAINING_FILE}.")
        settings = _read_args(directory).get("hypernet")
        if "hypernet" in tree and settings is None:
            raise FileNotFoundError(
                f"{directory}: {TRAINING_FILE} has a 'hypernet' but no {ARGS_FILE} gives its settings."
            )
        emb = np.asarray(tree["new_embeddings"], np.float32)
        if "hypernet" in tree:
            logging.info("Predicting %d embeddings with the checkpoint's hypernetwork.", emb.shape[0])
            emb = predict_embeddings(emb, tree["hypernet"], settings)
        n_emb = 1 if config.tie_word_embeddings else 2
        if emb.ndim != 3 or emb.shape[1] != n_emb:
            raise ValueError(
                f"{directory}: new_embeddings has shape {emb.shape}; expected [V, {n_emb}, D] "
                f"for tie_word_embeddings={config.tie_word_embeddings}."
            )
        inner["embed_tokens"] = {"embedding": emb[:, 0]}
        if not config.tie_word_embeddings:
            model["lm_head"] = {"kernel": np.ascontiguousarray(emb[:, -1].T)}
    return {"model": inner, **({"lm_head": model["lm_head"]} if "lm_head" in model else {})}


# --------------------------------------------------------------------------------------
# Placing


def _key(leaf: _Leaf, i: int | None) -> tuple[str, ...]:
    """The Flax tree path of one HF-named tensor (`...q_proj.weight` -> `...q_proj.kernel`)."""
    parts = leaf.hf.format(i=i).split(".")
    if leaf.kind == "linear":
        parts[-1] = "kernel"
    elif leaf.path == ("embedder", "embedding"):
        parts[-1] = "embedding"
    return tuple(parts)


def _ours(leaf: _Leaf, value: np.ndarray) -> np.ndarray:
    """One per-layer Flax array in our layout (Flax kernels are `[in, out]` like ours)."""
    if leaf.kind == "linear":
        return value.reshape(leaf.in_shape + leaf.out_shape)
    if leaf.kind == "bias":
        return value.reshape(leaf.out_shape)
    return value


def load_params(
    directory: Path,
    config: ModelConfig,
    *,
    mesh: Mesh | None = None,
    rules: sharding_lib.Rules | None = None,
    dtype: Any = jnp.float32,
) -> dict:
    """Our parameter tree from an upstream checkpoint directory, placed like `hf_io` does.

    Args:
      directory: holds `flax_model.msgpack` (or its shards) or `params.msgpack`.
      config: the directory's config (from `config_from_upstream`).
      mesh, rules: place each parameter with its sharding on `mesh`; None puts them on
        the first device.
      dtype: parameter dtype; None keeps the stored one.
    """
    tree = _model_tree(read_tree(directory), directory, config)
    flat = _flatten(tree)
    leaves = _leaves(config)
    wanted = {}
    for leaf in leaves:
        for i in range(config.num_layers) if leaf.layered else [None]:
            wanted[_key(leaf, i)] = leaf
    missing = [".".join(k) for k in wanted if k not in flat]
    if missing:
        raise KeyError(
            f"{len(missing)} parameter(s) missing from {directory} for {config.architecture}: "
            f"{missing[:10]}{' ...' if len(missing) > 10 else ''}"
        )
    unused = sorted(".".join(k) for k in flat if k not in wanted)
    if unused:
        logging.warning("%d parameter(s) in %s not used by the %s model (e.g. %s).",
                        len(unused), directory, config.architecture, unused[:5])

    shardings = sharding_lib.param_shardings(config, mesh, rules) if mesh is not None else None
    target = None if dtype is None else np.dtype(jnp.dtype(dtype))
    params: dict = {}
    for leaf in Progress.wrap(leaves, desc="placing parameters", unit="tensors"):
        layers = [
            _ours(leaf, np.asarray(flat[_key(leaf, i)]))
            for i in (range(config.num_layers) if leaf.layered else [None])
        ]
        shape = ((len(layers),) if leaf.layered else ()) + layers[0].shape
        arr_dtype = target if target is not None else layers[0].dtype
        sharding = _get(shardings, leaf.path) if shardings is not None else SingleDeviceSharding(jax.local_devices()[0])

        def callback(index: tuple, layers=layers, leaf=leaf, shape=shape, arr_dtype=arr_dtype) -> np.ndarray:
            s = _norm_slices(index, shape)
            if not leaf.layered:
                return np.asarray(layers[0][tuple(s)], dtype=arr_dtype)
            return np.stack([layers[i][tuple(s[1:])] for i in range(s[0].start, s[0].stop, s[0].step)]).astype(arr_dtype)

        _set(params, leaf.path, jax.make_array_from_callback(shape, sharding, callback))
    return params
