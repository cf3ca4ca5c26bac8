"""Logical axis names -> mesh shardings, and the ("data", "model") device mesh.

Every parameter carries logical axis names (see `transformer.py`); a rule table maps each
name to mesh axes, MaxText style: tensor parallelism over "model" (vocab, heads, mlp), data
parallelism over "data" (batch), and with `fsdp=True` the embed dimension is sharded over
"data" as well (parameters and optimizer state split across data-parallel replicas).

A dimension that does not divide evenly by its mesh axes is replicated instead (logged once
per parameter), e.g. 2 KV heads on a model axis of 4.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import gin
import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tokenkit.models.config import ModelConfig

MESH_AXES = ("data", "model")

Rules = tuple[tuple[str, Any], ...]

_BASE_RULES: Rules = (
    ("batch", "data"),
    ("activation_batch", "data"),
    ("activation_length", None),
    ("activation_embed", None),
    ("vocab", "model"),
    ("heads", "model"),
    ("kv_heads", "model"),
    ("mlp", "model"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    ("positions", None),  # GPT-2's learned position table (small; replicated)
    ("cache_length", None),
    ("lora_rank", None),
)

# Logical axes of the KV cache arrays.
CACHE_AXES = ("layers", "batch", "kv_heads", "cache_length", "head_dim")


def _rules(fsdp: bool, overrides: Sequence[tuple[str, Any]]) -> Rules:
    rules = dict(_BASE_RULES)
    rules["embed"] = "data" if fsdp else None
    for name, axes in overrides:
        rules[name] = axes
    return tuple(rules.items())


@gin.configurable
def logical_axis_rules(fsdp: bool = False, overrides: Sequence[tuple[str, Any]] = ()) -> Rules:
    """The rule table: tensor parallel over "model", data parallel over "data".

    Args:
      fsdp: also shard the embed dimension of parameters over "data".
      overrides: (logical name, mesh axes) pairs that take precedence over the defaults.
    """
    return _rules(fsdp, overrides)


DEFAULT_RULES: Rules = _rules(False, ())
FSDP_RULES: Rules = _rules(True, ())


def make_mesh(
    n_data_parallel: int = 1,
    n_model_parallel: int = -1,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A ("data", "model") mesh with Auto axis types (classic propagation of shardings).

    One of the two sizes may be -1: it takes all remaining devices. The product must equal
    the number of devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if n_data_parallel == -1 and n_model_parallel == -1:
        raise ValueError("At most one of n_data_parallel and n_model_parallel may be -1.")
    if n_data_parallel == -1:
        if n % n_model_parallel:
            raise ValueError(
                f"n_model_parallel={n_model_parallel} does not divide the {n} devices."
            )
        n_data_parallel = n // n_model_parallel
    if n_model_parallel == -1:
        if n % n_data_parallel:
            raise ValueError(f"n_data_parallel={n_data_parallel} does not divide the {n} devices.")
        n_model_parallel = n // n_data_parallel
    if n_data_parallel < 1 or n_model_parallel < 1 or n_data_parallel * n_model_parallel != n:
        raise ValueError(
            f"n_data_parallel x n_model_parallel = {n_data_parallel} x {n_model_parallel} must "
            f"equal the number of devices ({n})."
        )
    return jax.make_mesh(
        (n_data_parallel, n_model_parallel),
        MESH_AXES,
        axis_types=(jax.sharding.AxisType.Auto,) * 2,
        devices=devices,
    )


def _mesh_axes_of(rule_value: Any) -> tuple[str, ...]:
    if rule_value is None:
        return ()
    if isinstance(rule_value, str):
        return (rule_value,)
    return tuple(rule_value)


def logical_to_spec(
    logical: Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh,
    rules: Rules,
    *,
    name: str = "",
    strict: bool = False,
) -> PartitionSpec:
    """Mesh PartitionSpec for one array from its logical axis names.

    A mesh axis is used at most once per array (first dimension wins). A dimension whose
    size is not divisible by its mesh axes is replicated (or, with `strict`, an error).
    """
    table = dict(rules)
    used: set[str] = set()
    out: list[Any] = []
    for dim, (axis_name, size) in enumerate(zip(logical, shape)):
        if axis_name is None:
            out.append(None)
            continue
        if axis_name not in table:
            raise ValueError(
                f"Logical axis {axis_name!r} of {name or 'an array'} has no rule "
                f"(rules cover: {', '.join(table)})."
            )
        axes = tuple(a for a in _mesh_axes_of(table[axis_name]) if a not in used)
        for a in axes:
            if a not in mesh.shape:
                raise ValueError(f"Rule for {axis_name!r} names mesh axis {a!r}; mesh has {tuple(mesh.shape)}.")
        n = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
        if n > 1 and size % n:
            if strict:
                raise ValueError(
                    f"Dimension {dim} ({axis_name}) of {name or 'an array'} has size {size}, "
                    f"not divisible by mesh axes {axes} of size {n}."
                )
            logging.warning(
                "Replicating dim %d (%s, size %d) of %s: not divisible by mesh axes %s (%d).",
                dim, axis_name, size, name or "an array", axes, n,
            )
            out.append(None)
            continue
        used.update(axes)
        out.append(axes[0] if len(axes) == 1 else (axes if axes else None))
    return PartitionSpec(*out)


def param_logical_axes(config: ModelConfig, params: Mapping[str, Any] | None = None) -> dict:
    """Tree of logical-name PartitionSpecs matching the model's parameter tree.

    `params` (arrays or shape structs) adds the optional `expand_embedder` table when present.
    """
    from tokenkit.models.transformer import Transformer, abstract_params

    specs = nn.get_partition_spec(abstract_params(Transformer(config)))
    specs = dict(specs)
    if params is not None and "expand_embedder" in params:
        specs["expand_embedder"] = {"embedding": PartitionSpec("vocab", "embed")}
    return specs


def _param_shapes(config: ModelConfig, params: Mapping[str, Any] | None) -> dict:
    from tokenkit.models.transformer import Transformer, abstract_params

    shapes = nn.unbox(abstract_params(Transformer(config)))
    shapes = jax.tree.map(lambda x: tuple(x.shape), shapes)
    if params is not None and "expand_embedder" in params:
        shapes["expand_embedder"] = {
            "embedding": tuple(np.shape(params["expand_embedder"]["embedding"]))
        }
    return shapes


def _path_name(path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def param_specs(
    config: ModelConfig,
    mesh: Mesh,
    rules: Rules | None = None,
    params: Mapping[str, Any] | None = None,
) -> dict:
    """Tree of mesh PartitionSpecs for the parameters of `config`."""
    rules = DEFAULT_RULES if rules is None else rules
    logical = param_logical_axes(config, params)
    shapes = _param_shapes(config, params)
    return jax.tree_util.tree_map_with_path(
        lambda path, spec, shape: logical_to_spec(
            tuple(spec), shape, mesh, rules, name=_path_name(path)
        ),
        logical,
        shapes,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def param_shardings(
    config: ModelConfig,
    mesh: Mesh,
    rules: Rules | None = None,
    params: Mapping[str, Any] | None = None,
) -> dict:
    """Tree of NamedShardings for the parameters of `config` (pass `params` for extra tables)."""
    specs = param_specs(config, mesh, rules, params)
    return jax.tree.map(
        lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )


def batch_shardings(mesh: Mesh, batch: Any, rules: Rules | None = None) -> Any:
    """NamedShardings splitting the leading (batch) dimension of every leaf over "data".

    A batch size not divisible by the data-parallel size is an error.
    """
    rules = DEFAULT_RULES if rules is None else rules

    def one(path, x):
        shape = np.shape(x)
        logical = ("batch",) + (None,) * (len(shape) - 1) if shape else ()
        spec = logical_to_spec(logical, shape, mesh, rules, name=_path_name(path), strict=True)
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(one, batch)


def cache_shardings(mesh: Mesh, cache: Any, rules: Rules | None = None) -> Any:
    """NamedShardings for a `KVCache` (batch over "data", KV heads over "model")."""
    from tokenkit.models.transformer import KVCache

    rules = DEFAULT_RULES if rules is None else rules
    kv = logical_to_spec(CACHE_AXES, cache.key.shape, mesh, rules, name="cache")
    lengths = logical_to_spec(("batch",), cache.lengths.shape, mesh, rules, name="cache/lengths")
    return KVCache(
        key=NamedSharding(mesh, kv), value=NamedSharding(mesh, kv), lengths=NamedSharding(mesh, lengths)
    )


@contextlib.contextmanager
def sharding_context(mesh: Mesh, rules: Rules | None = None) -> Iterator[None]:
    """Mesh and rules for tracing: turns the model's activation constraints (batch over
    "data") on. Place inputs with `shard` before calling jitted functions inside it."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES if rules is None else rules):
        yield


def shard(tree: Any, shardings: Any) -> Any:
    """Places every leaf of `tree` with the matching sharding."""
    return jax.tree.map(lambda x, s: jax.device_put(x, s), tree, shardings)
