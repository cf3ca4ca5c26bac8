"""The embedding hypernetwork: embeddings for any tokenizer's tokens from a model's own.

Zero-shot tokenizer transfer (ZeTT, arXiv 2405.07883) learns a function from a token to
its embedding. A token of any new tokenizer is spelled by the model's own (base)
tokenizer as a short sequence of base tokens, its *decomposition* (`decompose_vocabulary`:
the same decomposition FVT averages, `models.fvt`); the hypernetwork reads the base
embeddings of those tokens (input and, for untied models, output: `num_embeddings`
matrices stacked as `[V, n, D]`) and predicts the new token's embeddings.

    pooled = masked mean of the decomposition's embeddings            (= FVT)
    x      = (embeddings - shift) * scale                              (the rescaler)
    y      = network(x)          transformer | linear | identity (y = 0)
    pred   = pooled + alpha / sqrt(D) * y / scale                      (residual)
           | y / scale + shift                                         (not residual)

The rescaler (`shift`, `scale`: the base embeddings' per-dimension mean, and what maps
their spread to that of a Xavier-initialised layer) is fixed when the network is
initialised from the base embeddings (`init_params`) and never trained. The network's
last layer starts at zero, so at step 0 every prediction *is* FVT's mean of the
decomposition (a test holds this); the non-residual `linear` network starts as the
identity map, which gives the same. Special tokens are never predicted: they copy the
base row of the same template slot (`copied`), as FVT does.

The module is sharded like the model: its kernels carry the logical axis names of the
transformer's (`embed`, `mlp`, `positions`, `norm`), so `models.sharding`'s rules place
them; the predicted matrix is constrained to rows over `vocab`. `TrainedHypernet` is a
network with its parameters and what it was trained on; it saves itself on its own
(`hypernet.json` + `hypernet.safetensors`) and predicts a whole vocabulary
(`predict_vocabulary`), which is what `models.transfer` (`init="hypernet"`) and
`python -m tokenkit.zett` (`zett.hypernet`) apply.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util

from tokenkit.byteify import ByteifyTokenizer
from tokenkit.models import fvt as fvt_lib
from tokenkit.progress import Progress

Array = jax.Array

ARCHITECTURES = ("transformer", "linear", "identity")
POOLINGS = ("first", "mean")
CONFIG_FILE = "hypernet.json"
PARAMS_FILE = "hypernet.safetensors"
FORMAT_VERSION = 1
# Parameters fixed at initialisation (never trained).
RESCALER = "rescaler"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class HypernetConfig:
    """The hypernetwork's architecture (the upstream's option names).

    architecture: `transformer` (attention over the decomposition), `linear` (one
      linear map of the pooled decomposition) or `identity` (FVT itself, no parameters
      but the rescaler).
    num_layers, num_heads: the transformer's depth and attention heads (the heads must
      divide its hidden size).
    use_attention: False leaves only the MLP of each layer (positions never interact).
    use_attention_mask: False lets the decomposition's padding positions be attended
      to, as the upstream's default configs do (the pooled residual always uses the mask).
    pooling: which output position predicts the token: `first` or the masked `mean`.
    residual: predict a correction to the pooled decomposition (`residual_pooling`:
      `mean`, FVT's init, or the `first` part), scaled by `residual_alpha / sqrt(D)`.
    shared: one network for the input and output embeddings of an untied model (the
      two concatenated), or a separate one for each.
    multiply_hidden_dim_by_num_embeddings: the shared network's width is `n * D`;
      False projects the `n * D` inputs to `D` first.
    hidden_expansion_factor: the MLP's width as a multiple of the network's.
    hidden_size: the network's width, when it should differ from the above (the inputs
      are projected to it; None: `n * D` or `D`). Not an upstream option: small models
      on small machines train a narrower network faster.
    initializer_range: std of the normal initialisation of kernels.
    layer_norm_eps: epsilon of the post-attention / post-MLP LayerNorms.
    """

    architecture: str = "transformer"
    num_layers: int = 3
    num_heads: int = 16
    use_attention: bool = True
    use_attention_mask: bool = True
    pooling: str = "first"
    residual: bool = True
    residual_alpha: float = 8.0
    residual_pooling: str = "mean"
    shared: bool = True
    multiply_hidden_dim_by_num_embeddings: bool = True
    hidden_expansion_factor: int = 2
    hidden_size: int | None = None
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        for name, value, valid in (
            ("architecture", self.architecture, ARCHITECTURES),
            ("pooling", self.pooling, POOLINGS),
            ("residual_pooling", self.residual_pooling, POOLINGS),
        ):
            if value not in valid:
                raise ValueError(f"Unknown hypernet {name} {value!r}; valid: {', '.join(valid)}.")
        if self.architecture == "transformer" and self.num_layers < 1:
            raise ValueError(f"A transformer hypernet needs num_layers >= 1, got {self.num_layers}.")
        if self.hidden_size is not None and self.hidden_size < 1:
            raise ValueError(f"hidden_size must be positive (or None), got {self.hidden_size}.")
        if self.num_heads < 1 or self.hidden_expansion_factor < 1:
            raise ValueError(
                f"num_heads ({self.num_heads}) and hidden_expansion_factor "
                f"({self.hidden_expansion_factor}) must be positive."
            )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> HypernetConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown hypernet settings {unknown}; known: {sorted(known)}.")
        return cls(**values)


# ----------------------------------------------------------------------------- module


def _dense(features: int, axes: tuple[str, str], std: float | None, name: str,
           dtype: Any, kernel_init: Any = None) -> nn.Dense:
    init = kernel_init if kernel_init is not None else nn.initializers.normal(std)
    return nn.Dense(
        features, dtype=dtype, param_dtype=jnp.float32, name=name,
        kernel_init=nn.with_logical_partitioning(init, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)),
    )


def _layer_norm(eps: float, name: str, dtype: Any) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=eps, dtype=dtype, param_dtype=jnp.float32, name=name,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
    )


def masked_mean(x: Array, mask: Array) -> Array:
    """Mean of `x [V, S, ...]` over the positions where `mask [V, S]` is True (zeros for
    a row with none)."""
    weights = mask.astype(jnp.float32)
    weights = weights / jnp.maximum(weights.sum(axis=1, keepdims=True), 1.0)
    return jnp.einsum("vs,vs...->v...", weights, x.astype(jnp.float32))


class _Layer(nn.Module):
    """Self-attention (optional) and an MLP, each followed by a residual LayerNorm."""

    config: HypernetConfig
    width: int
    dtype: Any

    @nn.compact
    def __call__(self, h: Array, bias: Array | None) -> Array:
        c = self.config
        std = c.initializer_range
        if c.use_attention:
            if self.width % c.num_heads:
                raise ValueError(
                    f"The hypernet's width {self.width} is not divisible by num_heads={c.num_heads}."
                )
            head_dim = self.width // c.num_heads
            split = lambda t: t.reshape(t.shape[:-1] + (c.num_heads, head_dim))  # noqa: E731
            q = split(_dense(self.width, ("embed", "mlp"), std, "query", self.dtype)(h))
            k = split(_dense(self.width, ("embed", "mlp"), std, "key", self.dtype)(h))
            v = split(_dense(self.width, ("embed", "mlp"), std, "value", self.dtype)(h))
            scores = jnp.einsum("vqhd,vkhd->vhqk", q, k).astype(jnp.float32) / math.sqrt(head_dim)
            if bias is not None:
                scores = scores + bias[:, None, None, :]
            weights = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
            attended = jnp.einsum("vhqk,vkhd->vqhd", weights, v).reshape(h.shape)
            out = _dense(self.width, ("mlp", "embed"), std, "out", self.dtype)(attended)
            h = _layer_norm(c.layer_norm_eps, "post_attention_norm", self.dtype)(h + out)
        up = _dense(self.width * c.hidden_expansion_factor, ("embed", "mlp"), std, "up", self.dtype)(h)
        down = _dense(self.width, ("mlp", "embed"), std, "down", self.dtype)(nn.gelu(up))
        return _layer_norm(c.layer_norm_eps, "post_mlp_norm", self.dtype)(h + down)


class _Network(nn.Module):
    """`[V, S, n*D]` rescaled decompositions -> `[V, out]` (the transformer or linear map)."""

    config: HypernetConfig
    width: int
    out_features: int
    max_parts: int
    dtype: Any

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> Array:
        c = self.config
        std = c.initializer_range
        # The last layer starts at zero (residual: the prediction starts as the pooled
        # decomposition) or, for a non-residual linear map, as the identity.
        last_init = nn.initializers.zeros
        if c.architecture == "linear":
            if not c.residual:
                if x.shape[-1] != self.out_features:
                    raise ValueError("A non-residual linear hypernet maps n*D to n*D.")
                last_init = lambda key, shape, dtype: jnp.eye(shape[0], shape[1], dtype=dtype)  # noqa: E731
            pooled = masked_mean(x, mask).astype(self.dtype)
            return _dense(self.out_features, ("embed", "mlp"), std, "output", self.dtype,
                          kernel_init=last_init)(pooled)
        h = x.astype(self.dtype)
        if h.shape[-1] != self.width:
            h = _dense(self.width, ("mlp", "embed"), std, "input", self.dtype)(h)
        positions = self.param(
            "positions",
            nn.with_logical_partitioning(nn.initializers.normal(std), ("positions", "embed")),
            (self.max_parts, self.width), jnp.float32,
        )
        if h.shape[1] > self.max_parts:
            raise ValueError(
                f"Decompositions of {h.shape[1]} parts; this hypernet was built for {self.max_parts}."
            )
        h = h + positions[None, : h.shape[1]].astype(self.dtype)
        bias = None
        if c.use_attention_mask:
            # A row with no parts attends to all positions (its output is replaced).
            visible = mask | ~mask.any(axis=1, keepdims=True)
            bias = jnp.where(visible, 0.0, -1e9).astype(jnp.float32)
        for i in range(c.num_layers):
            h = _Layer(c, self.width, self.dtype, name=f"layer_{i}")(h, bias)
        if c.pooling == "first":
            pooled = h[:, 0]
        else:
            pooled = masked_mean(h, mask).astype(self.dtype)
        if not c.residual:
            last_init = nn.initializers.normal(std)
        return _dense(self.out_features, ("embed", "mlp"), std, "output", self.dtype,
                      kernel_init=last_init)(pooled)


class Hypernet(nn.Module):
    """The hypernetwork (see the module docstring).

    Attributes:
      config: the architecture.
      hidden_size: the model's embedding width D.
      num_embeddings: 1 for a tied model, 2 (input, output) for an untied one.
      max_parts: the longest decomposition (the position table's size).
      dtype: compute dtype (parameters are float32).
    """

    config: HypernetConfig
    hidden_size: int
    num_embeddings: int
    max_parts: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, embeddings: Array, mask: Array) -> Array:
        """`[V, S, n, D]` decomposition embeddings, `bool [V, S]` real parts -> `[V, n, D]`
        float32 predictions."""
        c = self.config
        n, d = self.num_embeddings, self.hidden_size
        if embeddings.ndim != 4 or embeddings.shape[2:] != (n, d):
            raise ValueError(
                f"Hypernet inputs must be [V, S, {n}, {d}], got {tuple(embeddings.shape)}."
            )
        mask = mask.astype(bool)
        embeddings = nn.with_logical_constraint(embeddings, ("vocab", None, None, None))
        shift = self.param(RESCALER + "_shift", nn.with_logical_partitioning(
            nn.initializers.zeros, (None, "norm")), (n, d), jnp.float32)
        scale = self.param(RESCALER + "_scale", nn.with_logical_partitioning(
            nn.initializers.ones, (None, "norm")), (n, d), jnp.float32)
        pooled = masked_mean(embeddings, mask)
        base = pooled if c.residual_pooling == "mean" else embeddings[:, 0].astype(jnp.float32)
        if c.architecture == "identity":
            return base
        x = ((embeddings.astype(jnp.float32) - shift) * scale).astype(self.dtype)
        v, s = x.shape[:2]
        width = n * d if c.multiply_hidden_dim_by_num_embeddings else d
        width = c.hidden_size or width
        if c.shared:
            y = _Network(c, width, n * d, self.max_parts, self.dtype, name="network")(
                x.reshape(v, s, n * d), mask
            )
        else:
            # One network per embedding kind: parameters stacked on a leading axis.
            networks = nn.vmap(
                _Network, in_axes=(2, None), out_axes=1, variable_axes={"params": 0},
                split_rngs={"params": True}, metadata_params={nn.PARTITION_NAME: None},
            )
            y = networks(c, c.hidden_size or d, d, self.max_parts, self.dtype, name="networks")(x, mask)
        y = y.reshape(v, n, d).astype(jnp.float32)
        if c.residual:
            pred = base + (c.residual_alpha / math.sqrt(d)) * y / scale
        else:
            pred = y / scale + shift
        return nn.with_logical_constraint(pred, ("vocab", None, None))


def predict_rows(module: Hypernet, params: Any, model_params: Mapping[str, Any], tied: bool) -> dict:
    """`model_params` with each embedding row replaced by the hypernetwork's prediction
    from that row alone (a one-part decomposition: the distillation use, where the
    student's embeddings are the predictions; jittable). The rows keep their dtype."""
    inputs = model_params["embedder"]["embedding"]
    outputs = None if tied else model_params["lm_head"]["kernel"].T
    rows = stack_embeddings(inputs, outputs)
    pred = module.apply({"params": params}, rows[:, None], jnp.ones((rows.shape[0], 1), bool))
    out = {**model_params, "embedder": {**model_params["embedder"], "embedding": pred[:, 0].astype(inputs.dtype)}}
    if not tied:
        out["lm_head"] = {**model_params["lm_head"], "kernel": pred[:, 1].T.astype(outputs.dtype)}
    return out


# ----------------------------------------------------------------------- parameters


def stack_embeddings(inputs: Any, outputs: Any | None) -> Any:
    """`[V, n, D]` from the input matrix and, for untied models, the output one (HF rows)."""
    if outputs is None:
        return inputs[:, None, :]
    stack = jnp.stack if isinstance(inputs, jax.Array) else np.stack
    return stack([inputs, outputs], axis=1)


def rescaler(source_embeddings: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(shift, scale) `[n, D]`: the base rows' per-dimension mean, and the factor giving
    them the std `sqrt(2 / width)` (the spread of a Xavier-initialised layer)."""
    rows = np.asarray(source_embeddings, np.float64)
    shift = rows.mean(axis=0)
    scale = math.sqrt(2.0 / width) / (rows.std(axis=0) + 1e-8)
    return shift.astype(np.float32), scale.astype(np.float32)


def init_params(
    module: Hypernet, source_embeddings: Any, seed: int = 0, *, num_source_tokens: int | None = None
) -> dict:
    """Initial parameters, with the rescaler fitted to the base embeddings' real rows
    (`[:num_source_tokens]`; padding rows excluded)."""
    n, d, s = module.num_embeddings, module.hidden_size, module.max_parts
    dummy = jnp.zeros((1, s, n, d), jnp.float32)
    params = nn.unbox(module.init(jax.random.key(seed), dummy, jnp.ones((1, s), bool))["params"])
    rows = np.asarray(jax.device_get(source_embeddings), np.float32)[:num_source_tokens]
    width = n * d if module.config.multiply_hidden_dim_by_num_embeddings else d
    shift, scale = rescaler(rows, module.config.hidden_size or width)
    params = jax.tree.map(np.asarray, params)
    params[RESCALER + "_shift"], params[RESCALER + "_scale"] = shift, scale
    return params


def is_trainable(path: str) -> bool:
    """Whether the parameter at `/`-joined `path` trains (the rescaler is fixed)."""
    return not path.split("/")[-1].startswith(RESCALER)


def logical_axes(module: Hypernet) -> Any:
    """The logical axis names of each parameter (a tree of `PartitionSpec`s)."""
    n, d, s = module.num_embeddings, module.hidden_size, module.max_parts
    shapes = jax.eval_shape(
        lambda: module.init(jax.random.key(0), jnp.zeros((1, s, n, d)), jnp.ones((1, s), bool))
    )
    return nn.get_partition_spec(shapes)["params"]


def param_shardings(module: Hypernet, params: Any, mesh: Any, rules: Any) -> Any:
    """`NamedSharding`s of the parameters under the model's logical-axis rules."""
    from tokenkit.models.sharding import logical_to_spec  # noqa: PLC0415  (sharding imports models)

    specs = logical_axes(module)
    return jax.tree.map(
        lambda spec, x: jax.sharding.NamedSharding(
            mesh, logical_to_spec(tuple(spec), np.shape(x), mesh, rules, name="hypernet")
        ),
        specs, params, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec),
    )


# ------------------------------------------------------------------- decompositions


@dataclasses.dataclass(frozen=True)
class Decompositions:
    """Each token of a vocabulary spelled by the base tokenizer.

    Attributes:
      parts: int32 `[V, S]`, base token ids (0 past a row's end).
      mask: bool `[V, S]`, real parts.
      copied: bool `[V]`, rows that copy the base row `parts[:, 0]` instead of being
        predicted (special tokens, slot to slot).
      stats: how each row was made (`FvtStats`: special / exact / averaged / fallback).
      truncated: rows whose decomposition was longer than `S` (cut to its first parts).
    """

    parts: np.ndarray
    mask: np.ndarray
    copied: np.ndarray
    stats: fvt_lib.FvtStats
    truncated: int = 0

    def __len__(self) -> int:
        return int(self.parts.shape[0])

    def padded(self, rows: int) -> Decompositions:
        """The same with `rows` rows (extra rows empty: their prediction is the mean row)."""
        extra = rows - len(self)
        if extra < 0:
            raise ValueError(f"Cannot pad {len(self)} decompositions to {rows} rows.")
        pad = lambda x: np.pad(x, [(0, extra)] + [(0, 0)] * (x.ndim - 1))  # noqa: E731
        return dataclasses.replace(
            self, parts=pad(self.parts), mask=pad(self.mask), copied=pad(self.copied)
        )


def pack_parts(rows: Sequence[Sequence[int]], max_parts: int) -> tuple[np.ndarray, np.ndarray, int]:
    """`(parts [V, S], mask [V, S], how many rows were cut to S parts)`."""
    parts = np.zeros((len(rows), max_parts), np.int32)
    mask = np.zeros((len(rows), max_parts), bool)
    truncated = 0
    for i, row in enumerate(rows):
        if len(row) > max_parts:
            truncated += 1
            row = row[:max_parts]
        parts[i, : len(row)] = row
        mask[i, : len(row)] = True
    return parts, mask, truncated


def decompose_vocabulary(
    source: ByteifyTokenizer,
    target: ByteifyTokenizer,
    max_parts: int,
    *,
    slot_tokens: str = "special",
    show_progress: bool = True,
) -> Decompositions:
    """Decompositions of every token of `target` by `source`, as FVT makes them
    (`fvt.fvt_mapping`): special tokens copy their slot's source token, a token the
    source has is its own one-part decomposition, any other token is the source's
    tokenization of its bytes; a token the source cannot spell has none."""
    source_vocab = source.get_vocab()
    copies = fvt_lib.slot_copies(source.family, target.family, slot_tokens=slot_tokens)
    rows: list[list[int]] = []
    copied = np.zeros(len(target), bool)
    counts = dict(special=0, exact=0, averaged=0, fallback=0)
    progress = Progress(len(target), "decompositions", unit="tokens", enabled=show_progress)
    for i in range(len(target)):
        progress.update(1)
        try:
            token = target.convert_ids_to_tokens(i)
        except IndexError:  # an id the vocabulary skips
            token = None
        if token in copies:
            rows.append([source_vocab[copies[token]]])
            copied[i] = True
            counts["special"] += 1
        elif token is not None and token in source_vocab:
            rows.append([source_vocab[token]])
            counts["exact"] += 1
        else:
            parts = fvt_lib._decompose(source, token) if token else []
            rows.append(parts)
            counts["averaged" if parts else "fallback"] += 1
    progress.close()
    parts, mask, truncated = pack_parts(rows, max_parts)
    if truncated:
        logging.warning(
            "Hypernet: %d of %d tokens of %s decompose into more than %d parts; they read "
            "their first %d.", truncated, len(target), target.spec, max_parts, max_parts,
        )
    return Decompositions(parts, mask, copied, fvt_lib.FvtStats(**counts), truncated)


class PieceDecomposer:
    """Decomposes byte-level pieces by the base tokenizer, remembering each answer
    (sampled vocabularies share most of their pieces from batch to batch)."""

    def __init__(self, source: ByteifyTokenizer, max_cache: int = 1_000_000):
        self.source = source
        self.max_cache = max_cache
        self._cache: MutableMapping[str, list[int]] = {}
        self._vocab = source.get_vocab()

    def __call__(self, piece: str) -> list[int]:
        parts = self._cache.get(piece)
        if parts is None:
            exact = self._vocab.get(piece)
            parts = [exact] if exact is not None else fvt_lib._decompose(self.source, piece)
            if len(self._cache) >= self.max_cache:
                self._cache.clear()
            self._cache[piece] = parts
        return parts

    def __getstate__(self) -> dict:
        return {"source": self.source, "max_cache": self.max_cache}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["source"], state["max_cache"])


# ------------------------------------------------------------------------ predicting


def predict(
    module: Hypernet,
    params: Any,
    source_embeddings: Array,
    parts: Array,
    mask: Array,
    copied: Array,
) -> Array:
    """`[V, n, D]` embeddings of a decomposed vocabulary (jittable).

    `source_embeddings` is the base model's `[Vs, n, D]`; copied rows take the base row
    of their one part; rows without parts take the base rows' mean (the rescaler's shift).
    """
    embeddings = jnp.take(source_embeddings, parts, axis=0)
    pred = module.apply({"params": params}, embeddings, mask)
    copies = jnp.take(source_embeddings, parts[:, 0], axis=0).astype(jnp.float32)
    pred = jnp.where(copied[:, None, None], copies, pred)
    empty = ~mask.any(axis=1)
    return jnp.where(empty[:, None, None], params[RESCALER + "_shift"][None], pred)


@dataclasses.dataclass(frozen=True, eq=False)
class TrainedHypernet:
    """A hypernetwork, its parameters, and the base it reads.

    Attributes:
      config: the architecture.
      hidden_size, num_embeddings, max_parts: see `Hypernet`.
      params: the parameter tree (numpy or jax arrays).
      source_tokenizer: the spec of the base tokenizer whose decompositions it reads.
      source_vocab_size: that tokenizer's size (checked where the hypernet is applied).
      base_model: the model whose embeddings it was trained on (informational).
    """

    config: HypernetConfig
    hidden_size: int
    num_embeddings: int
    max_parts: int
    params: Any
    source_tokenizer: str
    source_vocab_size: int
    base_model: str | None = None

    def module(self, dtype: Any = jnp.float32) -> Hypernet:
        return Hypernet(self.config, self.hidden_size, self.num_embeddings, self.max_parts, dtype)

    def save(self, directory: str | Path) -> Path:
        """Writes `hypernet.json` and `hypernet.safetensors` into `directory`."""
        from safetensors.numpy import save_file  # noqa: PLC0415

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        flat = traverse_util.flatten_dict(jax.device_get(self.params), sep="/")
        tensors = {k: np.ascontiguousarray(np.asarray(x, np.float32)) for k, x in flat.items()}
        save_file(tensors, str(out / PARAMS_FILE))
        meta = {
            "format_version": FORMAT_VERSION,
            "config": self.config.as_dict(),
            "hidden_size": self.hidden_size,
            "num_embeddings": self.num_embeddings,
            "max_parts": self.max_parts,
            "source_tokenizer": self.source_tokenizer,
            "source_vocab_size": self.source_vocab_size,
            "base_model": self.base_model,
        }
        (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return out

    @classmethod
    def load(cls, directory: str | Path) -> TrainedHypernet:
        """Reads what `save` wrote."""
        from safetensors.numpy import load_file  # noqa: PLC0415

        directory = Path(directory)
        path = directory / CONFIG_FILE
        if not path.exists():
            raise FileNotFoundError(
                f"{directory} holds no {CONFIG_FILE}; export a hypernetwork with "
                "python -m tokenkit.train_zett_hn (it writes WORKDIR/hypernet)."
            )
        meta = json.loads(path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: format_version {meta.get('format_version')}; this is {FORMAT_VERSION}.")
        tree = traverse_util.unflatten_dict(load_file(str(directory / PARAMS_FILE)), sep="/")
        return cls(
            config=HypernetConfig.from_dict(meta["config"]),
            hidden_size=int(meta["hidden_size"]),
            num_embeddings=int(meta["num_embeddings"]),
            max_parts=int(meta["max_parts"]),
            params=tree,
            source_tokenizer=meta["source_tokenizer"],
            source_vocab_size=int(meta["source_vocab_size"]),
            base_model=meta.get("base_model"),
        )

    def predict_vocabulary(
        self,
        source_embeddings: np.ndarray,
        decompositions: Decompositions,
        *,
        chunk: int = 4096,
    ) -> np.ndarray:
        """`[V, n, D]` float32 on the host, predicted `chunk` rows at a time (bounded
        memory for large vocabularies on one device)."""
        if source_embeddings.shape[1:] != (self.num_embeddings, self.hidden_size):
            raise ValueError(
                f"The base embeddings are {tuple(source_embeddings.shape)}; this hypernet reads "
                f"[V, {self.num_embeddings}, {self.hidden_size}] (tied: 1, untied: 2 matrices)."
            )
        fn = _predictor(self.module())
        params = jax.tree.map(jnp.asarray, self.params)
        source = jnp.asarray(source_embeddings, jnp.float32)
        d = decompositions
        n = len(d)
        padded = d.padded(-(-n // chunk) * chunk) if n > chunk else d
        step = chunk if n > chunk else n
        out = [
            np.asarray(fn(params, source, padded.parts[s : s + step], padded.mask[s : s + step],
                          padded.copied[s : s + step]))
            for s in range(0, len(padded), step)
        ]
        return np.concatenate(out)[:n]


@functools.lru_cache(maxsize=8)
def _predictor(module: Hypernet) -> Any:
    """`predict` for `module`, jitted once per module (evaluations reuse the program)."""
    return jax.jit(functools.partial(predict, module))


def transfer_embeddings(
    hypernet: TrainedHypernet,
    source: ByteifyTokenizer,
    target: ByteifyTokenizer,
    inputs: np.ndarray,
    outputs: np.ndarray | None,
    *,
    slot_tokens: str = "special",
) -> fvt_lib.FvtResult:
    """`[len(target), D]` input (and output) embeddings predicted by `hypernet` from the
    base model's rows `inputs` / `outputs` (`[len(source), D]`, HF row layout); what
    `models.transfer.transfer(init="hypernet")` uses in place of FVT."""
    if len(source) != hypernet.source_vocab_size:
        raise ValueError(
            f"The hypernetwork reads decompositions by {hypernet.source_tokenizer} "
            f"({hypernet.source_vocab_size} tokens); the model's tokenizer {source.spec} has "
            f"{len(source)}. Apply it to the model it was trained on."
        )
    if (outputs is not None) != (hypernet.num_embeddings == 2):
        raise ValueError(
            f"The hypernetwork predicts {hypernet.num_embeddings} embedding matrices; the model "
            f"is {'untied' if outputs is not None else 'tied'} (train it on this model)."
        )
    decompositions = decompose_vocabulary(source, target, hypernet.max_parts, slot_tokens=slot_tokens)
    pred = hypernet.predict_vocabulary(stack_embeddings(np.asarray(inputs), outputs), decompositions)
    dtype = inputs.dtype if jnp.issubdtype(inputs.dtype, jnp.floating) else np.float32
    out = None if outputs is None else pred[:, 1].astype(dtype)
    return fvt_lib.FvtResult(pred[:, 0].astype(dtype), out, decompositions.stats)
