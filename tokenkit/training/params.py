"""Splitting a parameter tree into trainable and frozen parts, and back.

Trees are nested dicts (Flax's convention). A mask is a tree of the same structure with
bools, or a function of the `/`-joined path. Splitting by mask keeps the optimizer and
its state to the trainable part only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from tokenkit.training.optim import path_string

Tree = Mapping[str, Any]


def mask_from_rules(
    params: Tree, rules: Sequence[tuple[str, bool]], default: bool | None = None
) -> Any:
    """A bool tree from `(regex, value)` rules matched in order on each `/`-path.

    Raises if a parameter matches no rule and there is no default, naming it.
    """
    compiled = [(re.compile(p), v) for p, v in rules]
    flat = traverse_util.flatten_dict(params)
    out = {}
    for path in flat:
        name = path_string(path)
        value = next((v for rx, v in compiled if rx.fullmatch(name)), default)
        if value is None:
            raise ValueError(
                f"Parameter {name!r} matches none of the rules "
                f"{[p for p, _ in rules]} and there is no default."
            )
        out[path] = value
    return traverse_util.unflatten_dict(out)


def partition(params: Tree, mask: Tree | Callable[[str], bool]) -> tuple[dict, dict]:
    """Splits `params` into `(selected, rest)` nested dicts by a bool tree or predicate."""
    flat = traverse_util.flatten_dict(params)
    if callable(mask):
        flat_mask = {k: bool(mask(path_string(k))) for k in flat}
    else:
        flat_mask = traverse_util.flatten_dict(mask)
        missing = set(flat) ^ set(flat_mask)
        if missing:
            names = sorted(path_string(k) for k in missing)[:5]
            raise ValueError(f"Mask and parameters differ in structure at {names}.")
    selected = {k: v for k, v in flat.items() if flat_mask[k]}
    rest = {k: v for k, v in flat.items() if not flat_mask[k]}
    return _unflatten(selected), _unflatten(rest)


def merge(*trees: Tree) -> dict:
    """Union of disjoint nested dicts (the inverse of `partition`)."""
    flat: dict = {}
    for tree in trees:
        for k, v in traverse_util.flatten_dict(tree).items():
            if k in flat:
                raise ValueError(f"Parameter {path_string(k)!r} is in more than one tree.")
            flat[k] = v
    return _unflatten(flat)


def _unflatten(flat: dict) -> dict:
    return traverse_util.unflatten_dict(flat) if flat else {}


def count(tree: Tree) -> int:
    """Number of scalars in a tree."""
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(tree)))
