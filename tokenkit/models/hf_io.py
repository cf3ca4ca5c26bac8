"""Hugging Face checkpoints (config.json + safetensors) in and out, without conversion.

Loading maps HF tensor names to our tree (stacking the per-layer tensors along a leading
layers axis) and places each parameter directly with its target sharding:
`jax.make_array_from_callback` asks for one device shard at a time and the callback reads
only that slice from the memory-mapped safetensors files (`safe_open(...).get_slice`), so
no device ever receives, and no host ever assembles, a full copy of a sharded tensor.

Saving writes what `transformers.AutoModelForCausalLM.from_pretrained` reads: config.json
for the family's CausalLM class and `model.safetensors` (or numbered shards with
`model.safetensors.index.json` above `max_shard_size`), plus the tokenizer if given.

Fused HF tensors are a layout matter handled here: GPT-2's `c_attn` (Conv1D, stored
`[in, out]`, columns q|k|v) and Phi-3's `qkv_proj` / `gate_up_proj` (rows q|k|v and
gate|up) are read as our separate projections, each device reading only its columns or
rows of the fused tensor, and are concatenated again on save.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, which safetensors needs)
import numpy as np
from absl import logging
from jax.sharding import Mesh, SingleDeviceSharding
from safetensors import safe_open
from safetensors.numpy import save_file

from tokenkit import gguf, hub
from tokenkit.models import hf_expansion
from tokenkit.models import sharding as sharding_lib
from tokenkit.models.config import ModelConfig, from_hf_dict, to_hf_dict
from tokenkit.progress import Progress

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"


# --------------------------------------------------------------------------------------
# Name mapping


@dataclasses.dataclass(frozen=True)
class _Leaf:
    """How one of our parameters relates to HF tensors.

    kind: "copy" (same layout), "linear" (ours `[*in, *out]`, HF `[prod(out), prod(in)]`,
    torch's nn.Linear), "conv" (HF `[prod(in), prod(out)]`, transformers' GPT-2 Conv1D),
    "bias" (ours `out_shape`, HF `[prod(out)]`). `layered` leaves stack `hf` formatted with
    each layer index along a leading axis. `offset`: where our block starts along the HF
    tensor's output dimension, for a part of a fused tensor (GPT-2's `c_attn`, Phi-3's
    `qkv_proj` and `gate_up_proj`).
    """

    path: tuple[str, ...]
    hf: str
    kind: str
    layered: bool
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()
    offset: int = 0


def _leaves(config: ModelConfig) -> list[_Leaf]:
    """Every parameter of `config`'s tree and the HF tensor (part) it is stored in."""
    if config.architecture == "gpt2":
        return _gpt2_leaves(config)
    c = config
    d, h, k, hd, f = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size
    layer = "model.layers.{i}."
    out = [_Leaf(("embedder", "embedding"), "model.embed_tokens.weight", "copy", False)]

    def lin(path, name, i_shape, o_shape, bias, offset=0):
        out.append(_Leaf(("layers",) + path + ("kernel",), layer + name + ".weight", "linear", True, i_shape, o_shape, offset))
        if bias:
            out.append(_Leaf(("layers",) + path + ("bias",), layer + name + ".bias", "bias", True, (), o_shape, offset))

    def norm(path, name):
        out.append(_Leaf(("layers",) + path + ("scale",), layer + name + ".weight", "copy", True))

    if c.architecture == "phi3":  # fused q|k|v rows
        lin(("attention", "query"), "self_attn.qkv_proj", (d,), (h, hd), c.qkv_bias)
        lin(("attention", "key"), "self_attn.qkv_proj", (d,), (k, hd), c.qkv_bias, h * hd)
        lin(("attention", "value"), "self_attn.qkv_proj", (d,), (k, hd), c.qkv_bias, (h + k) * hd)
    else:
        lin(("attention", "query"), "self_attn.q_proj", (d,), (h, hd), c.qkv_bias)
        lin(("attention", "key"), "self_attn.k_proj", (d,), (k, hd), c.qkv_bias)
        lin(("attention", "value"), "self_attn.v_proj", (d,), (k, hd), c.qkv_bias)
    lin(("attention", "out"), "self_attn.o_proj", (h, hd), (d,), c.out_bias)
    if c.qk_norm:
        norm(("attention", "query_norm"), "self_attn.q_norm")
        norm(("attention", "key_norm"), "self_attn.k_norm")
    if c.architecture == "phi3":  # fused gate|up rows
        lin(("mlp", "gate"), "mlp.gate_up_proj", (d,), (f,), c.mlp_bias)
        lin(("mlp", "up"), "mlp.gate_up_proj", (d,), (f,), c.mlp_bias, f)
    else:
        lin(("mlp", "gate"), "mlp.gate_proj", (d,), (f,), c.mlp_bias)
        lin(("mlp", "up"), "mlp.up_proj", (d,), (f,), c.mlp_bias)
    lin(("mlp", "down"), "mlp.down_proj", (f,), (d,), c.mlp_bias)
    norm(("attn_norm",), "input_layernorm")
    if c.sandwich_norms:
        norm(("post_attn_norm",), "post_attention_layernorm")
        norm(("mlp_norm",), "pre_feedforward_layernorm")
        norm(("post_mlp_norm",), "post_feedforward_layernorm")
    else:
        # In Llama-style blocks HF's "post_attention_layernorm" is the norm before the MLP.
        norm(("mlp_norm",), "post_attention_layernorm")
    out.append(_Leaf(("final_norm", "scale"), "model.norm.weight", "copy", False))
    if not c.tie_word_embeddings:
        out.append(_Leaf(("lm_head", "kernel"), "lm_head.weight", "linear", False, (d,), (c.vocab_size,)))
    return out


def _gpt2_leaves(config: ModelConfig) -> list[_Leaf]:
    """GPT2LMHeadModel's tensors: Conv1D kernels `[in, out]`, fused q|k|v columns in `c_attn`."""
    c = config
    d, h, hd, f = c.hidden_size, c.num_heads, c.head_dim, c.intermediate_size
    layer = "transformer.h.{i}."
    out = [
        _Leaf(("embedder", "embedding"), "transformer.wte.weight", "copy", False),
        _Leaf(("position_embedder", "embedding"), "transformer.wpe.weight", "copy", False),
    ]

    def conv(path, name, i_shape, o_shape, offset=0):
        out.append(_Leaf(("layers",) + path + ("kernel",), layer + name + ".weight", "conv", True, i_shape, o_shape, offset))
        out.append(_Leaf(("layers",) + path + ("bias",), layer + name + ".bias", "bias", True, (), o_shape, offset))

    for n, name in enumerate(("query", "key", "value")):
        conv(("attention", name), "attn.c_attn", (d,), (h, hd), n * d)
    conv(("attention", "out"), "attn.c_proj", (h, hd), (d,))
    conv(("mlp", "up"), "mlp.c_fc", (d,), (f,))
    conv(("mlp", "down"), "mlp.c_proj", (f,), (d,))
    for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
        out.append(_Leaf(("layers", ours, "scale"), layer + theirs + ".weight", "copy", True))
        out.append(_Leaf(("layers", ours, "bias"), layer + theirs + ".bias", "copy", True))
    out.append(_Leaf(("final_norm", "scale"), "transformer.ln_f.weight", "copy", False))
    out.append(_Leaf(("final_norm", "bias"), "transformer.ln_f.bias", "copy", False))
    if not c.tie_word_embeddings:
        out.append(_Leaf(("lm_head", "kernel"), "lm_head.weight", "linear", False, (d,), (c.vocab_size,)))
    return out


def _leaf_shape(leaf: _Leaf, hf_shape: tuple[int, ...], n_layers: int) -> tuple[int, ...]:
    if leaf.kind in ("linear", "conv"):
        shape = leaf.in_shape + leaf.out_shape
    elif leaf.kind == "bias":
        shape = leaf.out_shape
    else:
        shape = tuple(hf_shape)
    return ((n_layers,) + shape) if leaf.layered else shape


def _norm_slices(index: tuple, shape: tuple[int, ...]) -> list[slice]:
    index = tuple(index) + (slice(None),) * (len(shape) - len(index))
    return [slice(*s.indices(n)) for s, n in zip(index, shape)]


def _group(shape: tuple[int, ...], slices: list[slice]) -> tuple[slice, tuple[int, ...], tuple]:
    """For dims `shape` flattened into one HF dim: the flat range covering `slices` (taking
    the first dim's range and the other dims whole), the unflattened block shape, and the
    slices that cut the block down to the request."""
    rest = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    first = slices[0]
    block = (first.stop - first.start,) + tuple(shape[1:])
    return (
        slice(first.start * rest, first.stop * rest),
        block,
        (slice(None),) + tuple(slices[1:]),
    )


def _shifted(s: slice, offset: int) -> slice:
    return slice(s.start + offset, s.stop + offset)


def _read_one(leaf: _Leaf, tensor_slice: Any, slices: list[slice]) -> np.ndarray:
    """The block `slices` of our (per-layer) layout, read from one HF tensor slice handle."""
    if leaf.kind == "copy":
        return np.asarray(tensor_slice[tuple(slices)])
    if leaf.kind == "bias":
        flat, block, post = _group(leaf.out_shape, slices)
        return np.asarray(tensor_slice[_shifted(flat, leaf.offset)]).reshape(block)[post]
    n_in = len(leaf.in_shape)
    in_flat, in_block, in_post = _group(leaf.in_shape, slices[:n_in])
    out_flat, out_block, out_post = _group(leaf.out_shape, slices[n_in:])
    out_flat = _shifted(out_flat, leaf.offset)
    if leaf.kind == "conv":  # [in, out]: already our order
        raw = np.asarray(tensor_slice[in_flat, out_flat])
        return raw.reshape(in_block + out_block)[in_post + out_post]
    raw = np.asarray(tensor_slice[out_flat, in_flat])  # [out, in]
    raw = raw.reshape(out_block + in_block)
    n_out = len(leaf.out_shape)
    perm = tuple(range(n_out, n_out + n_in)) + tuple(range(n_out))
    return raw.transpose(perm)[in_post + out_post]


def _to_hf(leaf: _Leaf, value: np.ndarray) -> np.ndarray:
    """Our per-layer array in HF layout (its part of the HF tensor, for fused ones)."""
    if leaf.kind == "copy":
        return value
    if leaf.kind == "bias":
        return value.reshape(-1)
    n_in = len(leaf.in_shape)
    flat_in = int(np.prod(value.shape[:n_in]))
    if leaf.kind == "conv":
        return np.ascontiguousarray(value.reshape(flat_in, -1))
    return np.ascontiguousarray(value.reshape(flat_in, -1).T)


def _fuse(parts: list[tuple[_Leaf, np.ndarray]]) -> np.ndarray:
    """One HF tensor from the HF-layout parts of the leaves stored in it (offset order)."""
    if len(parts) == 1:
        return parts[0][1]
    leaf = parts[0][0]
    axis = 1 if leaf.kind == "conv" else 0  # the output dimension
    ordered = sorted(parts, key=lambda p: p[0].offset)
    return np.ascontiguousarray(np.concatenate([value for _, value in ordered], axis=axis))


def _by_hf_name(leaves: list[_Leaf]) -> dict[str, list[_Leaf]]:
    """HF tensor name template -> the leaves stored in it (several for fused tensors)."""
    grouped: dict[str, list[_Leaf]] = {}
    for leaf in leaves:
        grouped.setdefault(leaf.hf, []).append(leaf)
    return grouped


# --------------------------------------------------------------------------------------
# Locating and opening a checkpoint


def resolve_checkpoint_dir(path_or_hub_id: str | os.PathLike[str], revision: str | None = None) -> Path:
    """A local directory for `path_or_hub_id`, downloading config and safetensors from the hub.

    A `.gguf` file is converted once into a cached HF directory (`tokenkit.gguf.model_dir`),
    whose path is returned. A path that looks local (absolute, starting with `.`/`~`, or
    not of the `org/name` form) and does not exist is an error; it is never sent to the hub.
    """
    text = os.fspath(path_or_hub_id)
    text, pinned = hub.split_revision(text)
    if pinned is not None:
        if revision is not None and revision != pinned:
            raise ValueError(f"{path_or_hub_id!r} names revision {pinned!r} but revision={revision!r} was given.")
        revision = pinned
    local = Path(text).expanduser()
    if local.is_dir():
        return local
    if gguf.is_gguf_path(local):
        return gguf.model_dir(local)
    if local.exists():
        raise NotADirectoryError(
            f"Checkpoint path {text!r} is a file; expected a directory or a {gguf.GGUF_SUFFIX} file."
        )
    if hub.looks_like_local_path(text):
        raise FileNotFoundError(f"Checkpoint directory {text!r} does not exist.")
    from huggingface_hub import snapshot_download

    logging.info("Downloading %s from the Hugging Face hub.", text)
    try:
        return Path(
            # msgpack: the upstream tokenkit's Flax checkpoints (models.upstream_format).
            snapshot_download(text, revision=revision,
                              allow_patterns=["*.json", "*.safetensors", "*.msgpack"])
        )
    except Exception as e:  # hub errors come in many types; all mean "not found".
        raise FileNotFoundError(
            f"{text!r} is not a local directory and could not be fetched from the hub: {e}"
        ) from e


class _Checkpoint:
    """Open safetensors files of one checkpoint and the tensor-name -> file map."""

    def __init__(self, directory: Path):
        index = directory / SAFE_INDEX
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
        elif (directory / SAFE_SINGLE).exists():
            with safe_open(directory / SAFE_SINGLE, framework="numpy") as f:
                weight_map = {k: SAFE_SINGLE for k in f.keys()}
        else:
            found = sorted(p.name for p in directory.iterdir())
            raise FileNotFoundError(
                f"No {SAFE_SINGLE} or {SAFE_INDEX} in {directory} (found: {found})."
            )
        self.weight_map: dict[str, str] = weight_map
        self._files: dict[str, Any] = {}
        self._directory = directory

    def slice(self, name: str) -> Any:
        fname = self.weight_map[name]
        if fname not in self._files:
            self._files[fname] = safe_open(self._directory / fname, framework="numpy")
        return self._files[fname].get_slice(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.slice(name).get_shape())

    def close(self) -> None:
        self._files.clear()


def _name_mapper(names: Mapping[str, Any], embedding: str) -> Callable[[str], str]:
    """Maps our HF-style names to the checkpoint's, found by where the `embedding` tensor is:
    multimodal Gemma3 checkpoints nest the text model (`language_model.model.*` in older,
    `model.language_model.*` in newer ones); GPT-2 checkpoints saved from `GPT2Model` (e.g.
    the original `gpt2` on the hub) lack the `transformer.` prefix."""
    if embedding in names:
        return lambda name: name
    if "language_model." + embedding in names:
        return lambda name: "language_model." + name
    if embedding.startswith("model.") and "model.language_model." + embedding[len("model."):] in names:
        return lambda name: (
            "model.language_model." + name[len("model."):] if name.startswith("model.") else name
        )
    if embedding.startswith("transformer.") and embedding[len("transformer."):] in names:
        return lambda name: name[len("transformer."):] if name.startswith("transformer.") else name
    raise KeyError(
        f"No embedding tensor ({embedding}) found in the checkpoint; first names: {sorted(names)[:8]}"
    )


# Non-parameter buffers some GPT-2 checkpoints store (the causal mask); transformers skips them.
_GPT2_BUFFERS = re.compile(r"(^|\.)attn\.(masked_)?bias$")


# --------------------------------------------------------------------------------------
# Loading


def load_pretrained(
    path_or_hub_id: str | os.PathLike[str],
    *,
    mesh: Mesh | None = None,
    rules: sharding_lib.Rules | None = None,
    dtype: Any = jnp.float32,
    revision: str | None = None,
) -> tuple[ModelConfig, dict]:
    """Reads an HF checkpoint into (ModelConfig, params).

    Args:
      path_or_hub_id: a local directory, a `.gguf` file (dequantized) or a hub id (`org/name`).
      mesh: place each parameter with its sharding on this mesh; None puts them on this
        process's first device.
      rules: logical axis rules (default: `sharding.DEFAULT_RULES`).
      dtype: parameter dtype (default float32); None keeps each tensor's stored dtype.
      revision: hub revision, for hub ids.
    """
    directory = resolve_checkpoint_dir(path_or_hub_id, revision)
    with open(directory / "config.json") as f:
        raw_config = json.load(f)
    config = from_hf_dict(raw_config)
    from tokenkit.models import upstream_format  # the upstream's msgpack checkpoints

    if upstream_format.handles(directory, raw_config):
        return config, upstream_format.load_params(directory, config, mesh=mesh, rules=rules, dtype=dtype)
    ckpt = _Checkpoint(directory)
    try:
        params = _load_params(config, ckpt, mesh, rules, dtype)
    finally:
        ckpt.close()
    return config, params


def _load_params(config, ckpt: _Checkpoint, mesh, rules, dtype) -> dict:
    leaves = _leaves(config)
    rename = _name_mapper(ckpt.weight_map, leaves[0].hf)
    needed: set[str] = set()
    missing = []
    for template in _by_hf_name(leaves):
        layer_ids = range(config.num_layers) if "{i}" in template else [None]
        for i in layer_ids:
            name = rename(template.format(i=i))
            if name not in ckpt.weight_map:
                missing.append(name)
            needed.add(name)
    if missing:
        raise KeyError(
            f"{len(missing)} tensor(s) missing from the checkpoint for {config.architecture}: "
            f"{missing[:10]}{' ...' if len(missing) > 10 else ''}"
        )
    unused = sorted(set(ckpt.weight_map) - needed - set(hf_expansion.tensor_names()))
    if config.architecture == "gpt2":
        unused = [name for name in unused if not _GPT2_BUFFERS.search(name)]
    if unused:
        logging.warning(
            "%d checkpoint tensor(s) not used by the %s model (e.g. %s).",
            len(unused), config.architecture, unused[:5],
        )

    shardings = None
    if mesh is not None:
        shardings = sharding_lib.param_shardings(config, mesh, rules)
    target = None if dtype is None else np.dtype(jnp.dtype(dtype))

    params: dict = {}
    for leaf in Progress.wrap(leaves, desc="loading parameters", unit="tensors"):
        first = rename(leaf.hf.format(i=0))
        shape = _leaf_shape(leaf, ckpt.shape(first), config.num_layers)
        if shardings is not None:
            sharding = _get(shardings, leaf.path)
        else:
            sharding = SingleDeviceSharding(jax.local_devices()[0])
        stored = ckpt.slice(first).get_dtype()
        arr_dtype = target if target is not None else _np_dtype(stored)
        callback = _make_callback(leaf, ckpt, rename, shape, arr_dtype)
        _set(params, leaf.path, jax.make_array_from_callback(shape, sharding, callback))
    return params


_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64}


def _np_dtype(name: str) -> np.dtype:
    if name not in _ST_DTYPES:
        raise ValueError(f"Unsupported safetensors dtype {name!r} (supported: {', '.join(_ST_DTYPES)}).")
    return np.dtype(_ST_DTYPES[name])


def _make_callback(leaf: _Leaf, ckpt: _Checkpoint, rename: Callable[[str], str], shape, dtype) -> Callable:
    def callback(index: tuple) -> np.ndarray:
        slices = _norm_slices(index, shape)
        if not leaf.layered:
            return _read_one(leaf, ckpt.slice(rename(leaf.hf)), slices).astype(dtype)
        layers = range(slices[0].start, slices[0].stop, slices[0].step)
        blocks = [
            _read_one(leaf, ckpt.slice(rename(leaf.hf.format(i=i))), slices[1:]).astype(dtype)
            for i in layers
        ]
        return np.stack(blocks)

    return callback


def _get(tree: Mapping, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _flat_paths(tree: Mapping, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _flat_paths(value, prefix + (key,))
        else:
            yield prefix + (key,)


# --------------------------------------------------------------------------------------
# Saving

_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string like "5GB" / "500MiB" (HF's convention: GB = 1e9)."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B)\s*", size.upper())
    if not match:
        raise ValueError(f"Size {size!r} not understood (examples: 5GB, 500MB, 2GiB, 1000000).")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def _host_array(x: Any) -> np.ndarray:
    """A full host copy of a (possibly multi-host sharded) array."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def _st_dtype_name(dt: np.dtype) -> str:
    return {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16",
            np.dtype(ml_dtypes.bfloat16): "bfloat16"}.get(np.dtype(dt), str(dt))


def save_pretrained(
    out_dir: str | os.PathLike[str],
    config: ModelConfig,
    params: Mapping[str, Any],
    tokenizer: Any | None = None,
    *,
    max_shard_size: int | str = "5GB",
    dtype: Any = None,
    extra_tensors: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Writes an HF checkpoint that `transformers.AutoModelForCausalLM` loads.

    Args:
      out_dir: directory to create or overwrite files in.
      config, params: the model.
      tokenizer: anything with `save_pretrained(dir)` (optional).
      max_shard_size: above this many bytes, tensors go to numbered shards plus an index.
      dtype: dtype of the written tensors (e.g. "bfloat16"); None keeps the params' dtype.
      extra_tensors: host arrays written as they are, under their names, into the last
        file (e.g. an input-id expansion, `models.hf_expansion`).

    Only process 0 writes; all processes must call it (multi-host arrays are gathered).
    Parameters outside the HF format (e.g. `expand_embedder`) are not written; they are
    listed in a warning.
    """
    out = Path(out_dir)
    leaves = _leaves(config)
    covered = {leaf.path for leaf in leaves}
    extra = [p for p in _flat_paths(params) if p not in covered]
    if extra:
        logging.warning(
            "%d parameter(s) have no place in the HF format and are not saved: %s",
            len(extra), ["/".join(p) for p in extra],
        )
    missing = [leaf.path for leaf in leaves if not _has(params, leaf.path)]
    if missing:
        hint = " (untied model without lm_head?)" if ("lm_head", "kernel") in missing else ""
        raise KeyError(f"Parameters missing for {config.architecture}{hint}: {missing}")
    target = None if dtype is None else np.dtype(jnp.dtype(dtype))
    limit = parse_size(max_shard_size)
    write = jax.process_index() == 0
    if write:
        out.mkdir(parents=True, exist_ok=True)

    # Plan the shards from shapes alone, then fetch and write one shard at a time: host
    # memory peaks at one shard plus one layer's tensor, whatever the model size.
    plan: list[list[tuple[str, list[_Leaf], int | None]]] = [[]]
    sizes = [0]
    stored_dtype = None
    for template, parts in _by_hf_name(leaves).items():
        per_tensor = 0
        for leaf in parts:
            array = _get(params, leaf.path)
            dt = target if target is not None else np.dtype(array.dtype)
            stored_dtype = stored_dtype or dt
            per_tensor += int(np.prod(array.shape[1:] if leaf.layered else array.shape)) * dt.itemsize
        layer_ids = range(config.num_layers) if parts[0].layered else [None]
        for i in layer_ids:
            if sizes[-1] and sizes[-1] + per_tensor > limit:
                plan.append([])
                sizes.append(0)
            plan[-1].append((template.format(i=i), parts, i))
            sizes[-1] += per_tensor

    if write:
        for old in list(out.glob("model*.safetensors")) + [out / SAFE_INDEX]:
            if old.exists():
                old.unlink()  # stale shards of an earlier save would confuse loaders
    names = (
        [SAFE_SINGLE]
        if len(plan) == 1
        else [f"model-{n:05d}-of-{len(plan):05d}.safetensors" for n in range(1, len(plan) + 1)]
    )
    progress = Progress(sum(len(p) for p in plan), "saving tensors", unit="tensors")
    weight_map = {}
    for fname, entries in zip(names, plan):
        tensors = {}
        for name, parts, i in entries:
            hf_parts = []
            for leaf in parts:
                array = _get(params, leaf.path)
                value = _host_array(array if i is None else array[i])
                if target is not None:
                    value = value.astype(target)
                hf_parts.append((leaf, _to_hf(leaf, value)))
            tensors[name] = np.ascontiguousarray(_fuse(hf_parts))
            weight_map[name] = fname
            progress.update(1)
        if fname == names[-1]:
            for name, value in (extra_tensors or {}).items():
                tensors[name] = np.ascontiguousarray(value)
                weight_map[name] = fname
                sizes[-1] += int(np.asarray(value).nbytes)
        if write:
            save_file(tensors, out / fname, metadata={"format": "pt"})
        del tensors
    progress.close()

    if write:
        hf_config = to_hf_dict(config, dtype=_st_dtype_name(stored_dtype))
        (out / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        if len(plan) > 1:
            index = {"metadata": {"total_size": int(sum(sizes))}, "weight_map": weight_map}
            (out / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out))
        logging.info("Saved %s checkpoint to %s (%d file(s)).", config.architecture, out, len(plan))
    return out


def _has(tree: Mapping, path: tuple[str, ...]) -> bool:
    for key in path:
        if not isinstance(tree, Mapping) or key not in tree:
            return False
        tree = tree[key]
    return True
