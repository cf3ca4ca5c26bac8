"""Per-chunk quantities from integer chunk ids, by segment reductions.

A row's chunk ids (`int32[B, L]`, `-1` = in no chunk) name which chunk each token
belongs to. Everything the losses need per chunk is a reduction over the tokens that
share an id, so it is one `segment_sum` / `segment_max` over the flattened batch with
`num_segments = B * C`: linear in the length, where the dense alternative (a
`[B, L, C]` 0/1 matrix and a matmul) is quadratic.

`C` (`num_chunk_slots`) is `min(Lt, Ls)`, the most chunks a row pair can have, rounded
up to a multiple of the largest chunk-group size so groups tile the slots.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from tokenkit.batch import Batch


def num_chunk_slots(length_teacher: int, length_student: int, group_sizes: Sequence[int] = (1,)) -> int:
    """Static number of chunk slots per row: `min(Lt, Ls)`, padded to tile `group_sizes`."""
    multiple = math.lcm(*group_sizes) if group_sizes else 1
    shortest = min(length_teacher, length_student)
    return -(-shortest // multiple) * multiple


def mask_chunk_ids(chunk_ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Chunk ids with the tokens outside `mask` (loss mask 0) moved to no chunk (-1)."""
    return jnp.where(mask.astype(bool), chunk_ids, -1).astype(jnp.int32)


def loss_chunk_ids(batch: Batch, chunking: str, needed_by: str) -> tuple[jax.Array, jax.Array]:
    """(teacher, student) chunk ids of `chunking`, tokens outside each side's loss mask at -1."""
    chunks = batch.chunking(chunking, needed_by)
    return (
        mask_chunk_ids(chunks.teacher, batch.side("teacher").loss_mask),
        mask_chunk_ids(chunks.student, batch.student.loss_mask),
    )


def _flat_segments(chunk_ids: jax.Array, num_chunks: int) -> jax.Array:
    """Row-offset segment ids; -1 (and anything out of range) to a dropped id B*C."""
    batch = chunk_ids.shape[0]
    valid = (chunk_ids >= 0) & (chunk_ids < num_chunks)
    offsets = jnp.arange(batch, dtype=jnp.int32)[:, None] * num_chunks
    return jnp.where(valid, chunk_ids + offsets, batch * num_chunks).reshape(-1)


def chunk_sum(values: jax.Array, chunk_ids: jax.Array, num_chunks: int) -> jax.Array:
    """`[B, C(, ...)]`: per chunk, the sum of `values` (`[B, L(, ...)]`) over its tokens."""
    batch = chunk_ids.shape[0]
    flat = values.reshape((-1,) + values.shape[2:])
    summed = jax.ops.segment_sum(flat, _flat_segments(chunk_ids, num_chunks), batch * num_chunks)
    return summed.reshape((batch, num_chunks) + values.shape[2:])


def chunk_token_counts(chunk_ids: jax.Array, num_chunks: int) -> jax.Array:
    """`float32[B, C]`: how many tokens each chunk has."""
    return chunk_sum(jnp.ones(chunk_ids.shape, jnp.float32), chunk_ids, num_chunks)


def chunk_max(values: jax.Array, chunk_ids: jax.Array, num_chunks: int, empty: int | float) -> jax.Array:
    """`[B, C]`: per chunk, the max of `values` (`[B, L]`) over its tokens; `empty` if none."""
    batch = chunk_ids.shape[0]
    flat_ids = _flat_segments(chunk_ids, num_chunks)
    result = jax.ops.segment_max(values.reshape(-1), flat_ids, batch * num_chunks)
    counts = jax.ops.segment_sum(jnp.ones(flat_ids.shape, jnp.int32), flat_ids, batch * num_chunks)
    return jnp.where(counts > 0, result, empty).reshape(batch, num_chunks)


def chunk_last_positions(chunk_ids: jax.Array, num_chunks: int) -> jax.Array:
    """`int32[B, C]`: position of each chunk's last token; 0 for an empty chunk.

    (Chunks are contiguous, so the last token is the largest position; 0 for empty
    chunks matches the dense formulation's argmax over an all-False column.)
    """
    batch, length = chunk_ids.shape
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    return chunk_max(positions, chunk_ids, num_chunks, empty=0)


def gather_positions(values: jax.Array, positions: jax.Array) -> jax.Array:
    """`values[b, positions[b, c]]` for `values` `[B, L(, D)]` -> `[B, C(, D)]`."""
    if values.ndim == 2:
        return jnp.take_along_axis(values, positions, axis=1)
    return jnp.take_along_axis(values, positions[..., None], axis=1)


def merged_chunk_ids(boundary_after: jax.Array) -> jax.Array:
    """Relabel chunks so that a new merged chunk starts after each `boundary_after` chunk.

    `boundary_after: bool[B, C]`; merged id of chunk c = number of boundaries before c
    (an exclusive cumulative sum), so merged ids stay in `[0, C)`.
    """
    boundary = boundary_after.astype(jnp.int32)
    return jnp.cumsum(boundary, axis=-1) - boundary


def group_sum(values: jax.Array, size: int) -> jax.Array:
    """`[B, C]` -> `[B, C/size]`: sums over consecutive groups of `size` chunk slots."""
    batch, num = values.shape
    return values.reshape(batch, num // size, size).sum(-1)


def last_nonempty_in_group(values: jax.Array, counts: jax.Array, size: int) -> jax.Array:
    """`[B, C/size]`: per group of `size` slots, `values` at the last slot with a count > 0.

    Marks the slots after the group's second-to-last non-empty slot up to its last one;
    `values` must be 0 at empty slots, so the marked sum is the last non-empty value.
    """
    batch, num = values.shape
    nonempty = (counts > 0).reshape(batch, num // size, size)
    from_last = jnp.cumsum(nonempty[..., ::-1], axis=-1)[..., ::-1] == 1
    return (values.reshape(batch, num // size, size) * from_last).sum(-1)
