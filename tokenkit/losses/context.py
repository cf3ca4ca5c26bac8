"""What every loss reads: the batch, model outputs, tokenizer constants, loss parameters.

A loss is a pure function of one `LossContext` (a pytree, so it passes through `jit`,
`grad` and `scan` unchanged) and its static options. The context holds

- `batch`: the local micro-batch, a `tokenkit.batch.Batch`;
- `global_batch`: the batch of the whole optimizer step (all gradient-accumulation
  micro-batches; under SPMD `jit` data parallelism is already inside `batch`). Losses
  only read its loss masks and chunk ids, to compute their normalisers; `None` means the
  micro-batch is the whole step;
- `student` / `teacher`: `ModelOutputs` (logits with the padded vocabulary rows already
  masked by the model side, hidden states, per-layer q/k/v, output-embedding matrix),
  the teacher `None` for SFT;
- `student_constants` / `teacher_constants`: `TokenizerConstants` (space mask, which
  vocabulary rows are real, EOS id);
- `params`: trainable loss parameters by name (`projector_latents`, `projector_query`,
  `projector_s2t`, `projector_t2s`), each `{"kernel": [in, out], "bias": [out]}`;
- `mined_mapping`: `int32[Vs]`, student token id -> teacher token id (MinED only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tokenkit.batch import Batch
from tokenkit.logits import mask_padded_vocab

# Log-likelihood of an empty chunk, and the fill of masked attention scores: finite
# (unlike -inf, so `0 * fill` stays 0) and far below any real log-probability.
LARGE_NEGATIVE = float(-0.7 * np.finfo(np.float32).max)

SPACE_MASK_MODES = ("space", "tab", "newline", "special")
DEFAULT_SPACE_MASK_MODE = "space+tab+newline+special"
# First character of a token, in the GPT-2 byte-level spelling, for each mode.
_SPACE_MASK_CHARS = {"space": "\u0120", "newline": "\u010a", "tab": "\u0109"}


@struct.dataclass
class ModelOutputs:
    """One model's outputs on its side of the batch.

    logits: `[B, L, V]` float32, padded vocabulary rows at `tokenkit.logits.MASKED_LOGIT`
      (`models.side.ModelSide.forward` masks them), so softmaxes need no mask.
    hidden_states: `(embeddings, layer_1, ..., layer_N)`, each `[B, L, D]`.
    attentions: per layer, the projected queries/keys/values, either one `[B, L, *]`
      array or a tuple of them (concatenated on the last axis).
    output_embeddings: `[V, D]`, the unembedding matrix (logits = hidden @ E.T).
    """

    logits: jax.Array
    hidden_states: tuple[jax.Array, ...] | None = None
    attentions: tuple[Any, ...] | None = None
    output_embeddings: jax.Array | None = None


@struct.dataclass
class TokenizerConstants:
    """Per-tokenizer arrays over the (padded) vocabulary.

    space_mask: `bool[V]`, tokens that start with a token-ending byte (`build_space_mask`).
    vocab_mask: `bool[V]`, True for real tokens, False for rows added by padding the
      embedding matrix to a multiple; for losses that form logits of their own
      (`masked_logits`).
    eos_token_id: used by `alm_mode=eos_as_space`.
    """

    space_mask: jax.Array
    vocab_mask: jax.Array
    eos_token_id: int = struct.field(pytree_node=False, default=-1)


@struct.dataclass
class LossContext:
    """Everything a loss may read; see the module docstring for each field."""

    batch: Batch
    student: ModelOutputs
    student_constants: TokenizerConstants
    teacher: ModelOutputs | None = None
    teacher_constants: TokenizerConstants | None = None
    global_batch: Batch | None = None
    params: Mapping[str, Any] = struct.field(default_factory=dict)
    mined_mapping: jax.Array | None = None

    @property
    def step_batch(self) -> Batch:
        """The batch normalisers are computed from (the global one when given)."""
        return self.batch if self.global_batch is None else self.global_batch

    def require_teacher(self, loss_name: str) -> tuple[ModelOutputs, TokenizerConstants]:
        if self.teacher is None or self.teacher_constants is None:
            raise ValueError(
                f"Loss {loss_name!r} needs the teacher's outputs and tokenizer constants; "
                "the context has none (only 'sft' runs without a teacher)."
            )
        return self.teacher, self.teacher_constants

    def frozen_teacher(self, loss_name: str) -> tuple[ModelOutputs, TokenizerConstants]:
        """The teacher's outputs behind a stop-gradient (it is never trained), and constants."""
        teacher, constants = self.require_teacher(loss_name)
        return jax.tree.map(jax.lax.stop_gradient, teacher), constants

    def require_param(self, name: str, loss_name: str) -> Mapping[str, jax.Array]:
        if name not in self.params:
            raise ValueError(
                f"Loss {loss_name!r} needs the parameter {name!r} in context.params "
                f"(have: {sorted(self.params)}); create it with the loss's init_params."
            )
        return self.params[name]


def parse_space_mask_mode(mode: str) -> frozenset[str]:
    """`"space+tab+newline+special"` -> its parts, rejecting unknown ones."""
    parts = frozenset(p for p in mode.split("+") if p)
    unknown = sorted(parts - set(SPACE_MASK_MODES))
    if unknown or not parts:
        raise ValueError(
            f"Invalid space_mask_mode {mode!r} (unknown parts {unknown}); use a "
            f"'+'-combination of {list(SPACE_MASK_MODES)}."
        )
    return parts


def build_space_mask(
    tokens: Sequence[str],
    special_token_ids: Sequence[int] = (),
    *,
    space_mask_mode: str = DEFAULT_SPACE_MASK_MODE,
    padded_size: int | None = None,
) -> np.ndarray:
    """Which tokens begin with a byte that never occurs inside a token pair boundary.

    `tokens` are token strings in the GPT-2 byte-level spelling (index = token id).
    Modes: `space` (starts with `Ġ`), `newline` (`Ċ`), `tab` (`ĉ`), `special` (the given
    special token ids). Rows beyond `len(tokens)` up to `padded_size` are False.
    (The upstream names tab and newline the other way round; with the default, which
    includes both, the masks are identical.)
    """
    parts = parse_space_mask_mode(space_mask_mode)
    size = len(tokens) if padded_size is None else padded_size
    if size < len(tokens):
        raise ValueError(f"padded_size {padded_size} is smaller than the vocabulary ({len(tokens)}).")
    starts = tuple(_SPACE_MASK_CHARS[p] for p in sorted(parts) if p in _SPACE_MASK_CHARS)
    mask = np.zeros(size, dtype=bool)
    for i, token in enumerate(tokens):
        if token and token.startswith(starts):
            mask[i] = True
    if "special" in parts:
        for i in special_token_ids:
            if not 0 <= i < len(tokens):
                raise ValueError(f"Special token id {i} is outside the vocabulary [0, {len(tokens)}).")
            mask[i] = True
    return mask


def masked_logits(logits: jax.Array, vocab_mask: jax.Array) -> jax.Array:
    """fp32 logits a loss formed itself, padded vocabulary rows masked (as the model
    side masks the models' own logits)."""
    return mask_padded_vocab(logits, vocab_mask)


def safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """`numerator / denominator`, 0 where the denominator is 0 (an empty batch)."""
    denominator = jnp.asarray(denominator, jnp.float32)
    return jnp.where(denominator > 0, numerator / jnp.where(denominator > 0, denominator, 1.0), 0.0)


def check_choice(name: str, value: Any, valid: Sequence[Any]) -> None:
    """Raises ValueError naming the option, its bad value and the valid values."""
    if value not in valid:
        raise ValueError(f"Invalid {name}={value!r}; valid values: {list(valid)}.")
