"""Token-level ensembles: several models step through one text in lockstep.

Models that share a tokenizer (each possibly transferred to it, with its own family's
special tokens) predict the same next token at every step, so their next-token
distributions can be combined token by token. Their vocabularies are put on one index
space, the *unified vocabulary*:

- if all tokenizers have identical vocabularies, it is simply that vocabulary;
- otherwise it is the sorted set of regular (non-special) byte-level token strings that
  every tokenizer has, plus one *end* entry standing for each family's end-of-turn token
  (Qwen2's `<|im_end|>`, Llama3's `<|eot_id|>`, ...), as the upstream did.

Each member's logits are gathered onto the unified vocabulary and combined by a
`combine_strategy`:

- `mean_prob`: the log of the mean of the members' probabilities (computed as a
  logsumexp of log-probabilities, so a model ensembled with itself gives exactly its own
  log-probabilities);
- `mean_logits`: the mean of the members' raw logits.

This module holds the pure parts (vocabulary, combination, scoring of aligned
continuations) and the Gin-configurable ensemble definition (`ensemble_models`); the
lm-eval backend (`tokenkit.evaluation.lm`) and the generator use them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from tokenkit.byteify import ByteifyTokenizer

Array = jax.Array

COMBINE_STRATEGIES: tuple[str, ...] = ("mean_prob", "mean_logits")

# Keys an ensemble member definition may have (Gin dicts in gin/ensembles/).
MEMBER_KEYS: tuple[str, ...] = (
    "pretrained", "tokenizer", "add_bos", "expand_model", "expand_tokenizer", "name",
)


def check_combine_strategy(strategy: str) -> None:
    if strategy not in COMBINE_STRATEGIES:
        raise ValueError(
            f"Unknown combine_strategy {strategy!r}; valid strategies: "
            f"{', '.join(COMBINE_STRATEGIES)}"
        )


@dataclasses.dataclass(frozen=True, eq=False)
class UnifiedVocabulary:
    """The shared index space of an ensemble's members.

    Attributes:
      member_ids: one int32 array `[size]` per member: the member's id of each unified token.
      stop_ids: unified indices that end a generated reply.
      is_identity: every member's id is the unified index (identical vocabularies).
      size: the number of unified entries.
    """

    member_ids: tuple[np.ndarray, ...]
    stop_ids: tuple[int, ...]
    is_identity: bool

    @property
    def size(self) -> int:
        return len(self.member_ids[0])

    @functools.cached_property
    def fingerprint(self) -> str:
        """A digest of the contents (compiled functions are cached by it)."""
        digest = hashlib.sha256(repr((self.stop_ids, self.is_identity)).encode())
        for ids in self.member_ids:
            digest.update(np.ascontiguousarray(ids, np.int32).tobytes())
            digest.update(b"|")
        return digest.hexdigest()

    @classmethod
    def build(
        cls, tokenizers: Sequence[ByteifyTokenizer], stop_ids: Sequence[Sequence[int]]
    ) -> UnifiedVocabulary:
        """The unified vocabulary of `tokenizers`; `stop_ids[i]` are member i's ids that
        end a reply (used as they are when the vocabularies are identical)."""
        if not tokenizers:
            raise ValueError("An ensemble needs at least one member.")
        vocabs = [t.get_vocab() for t in tokenizers]
        first = tokenizers[0]
        if all(v == vocabs[0] and len(t) == len(first) for v, t in zip(vocabs, tokenizers)):
            ids = np.arange(len(first), dtype=np.int32)
            stops = sorted(set().union(*[set(s) for s in stop_ids]))
            return cls(tuple(ids for _ in tokenizers), tuple(stops), True)

        special: set[str] = set()
        for t in tokenizers:
            special.update(t.all_special_tokens)
        common = set(vocabs[0])
        for v in vocabs[1:]:
            common &= set(v)
        regular = sorted(common - special)
        dropped = [len(set(v) - special) - len(regular) for v in vocabs]
        logging.info(
            "Unified vocabulary: %d regular tokens shared by all %d members (plus an end "
            "entry); regular tokens left out per member: %s",
            len(regular), len(tokenizers), dropped,
        )
        member_ids = []
        for t in tokenizers:
            eot = t.family.first_token("eot") or t.family.first_token("eos")
            if eot is None:
                raise ValueError(
                    f"Tokenizer {t!r}: family {t.family.name} has neither an eot nor an eos "
                    "token, so an ensemble cannot tell when it ends a reply."
                )
            member_ids.append(np.asarray(t.convert_tokens_to_ids(regular + [eot]), np.int32))
        return cls(tuple(member_ids), (len(regular),), False)

    def inverse(self, member: int, vocab_size: int) -> np.ndarray:
        """int32 `[vocab_size]`: the unified index of each of member's ids, -1 if none."""
        inv = np.full((vocab_size,), -1, np.int32)
        inv[self.member_ids[member]] = np.arange(self.size, dtype=np.int32)
        return inv


def gather_unified(logits: Array, member_ids: np.ndarray, is_identity: bool) -> Array:
    """A member's logits `[..., V]` on the unified vocabulary `[..., U]`."""
    if is_identity:
        return logits[..., : len(member_ids)]
    return jnp.take(logits, jnp.asarray(member_ids), axis=-1)


def combine_logits(logits: Sequence[Array], strategy: str) -> Array:
    """Combines the members' unified logits `[..., U]` into one set of scores whose
    softmax is the ensemble's distribution (log-probabilities for `mean_prob`)."""
    check_combine_strategy(strategy)
    if strategy == "mean_logits":
        return sum(logits[1:], logits[0]) / len(logits)
    logprobs = jnp.stack([jax.nn.log_softmax(x, axis=-1) for x in logits])
    return jax.nn.logsumexp(logprobs, axis=0) - jnp.log(float(len(logits)))


def score_aligned(
    member_logits: Sequence[Array],
    positions: Sequence[Array],
    labels: Array,
    label_mask: Array,
    vocabulary: UnifiedVocabulary,
    strategy: str,
) -> tuple[Array, Array]:
    """Log-likelihoods of continuations under the combined distribution.

    Args:
      member_logits: per member, float32 logits `[B, T_i, V_i]`.
      positions: per member, int32 `[B, K]`: the position whose logits predict the k-th
        scored token (its index minus one).
      labels: int32 `[B, K]`, the scored tokens as unified indices.
      label_mask: bool `[B, K]`, which of the K entries are real.
      vocabulary: the unified vocabulary.
      strategy: one of `COMBINE_STRATEGIES`.

    Returns:
      (sum of log-probabilities `[B]`, whether every scored token is the combined argmax `[B]`).
    """
    unified = []
    for i, (logits, pos) in enumerate(zip(member_logits, positions)):
        picked = jnp.take_along_axis(logits, pos[:, :, None], axis=1)
        unified.append(gather_unified(picked, vocabulary.member_ids[i], vocabulary.is_identity))
    logprobs = jax.nn.log_softmax(combine_logits(unified, strategy), axis=-1)
    token_lp = jnp.take_along_axis(logprobs, labels[:, :, None], axis=-1)[..., 0]
    greedy = jnp.argmax(logprobs, axis=-1) == labels
    total = jnp.sum(jnp.where(label_mask, token_lp, 0.0), axis=-1)
    all_greedy = jnp.all(greedy | ~label_mask, axis=-1)
    return total, all_greedy


@dataclasses.dataclass(frozen=True)
class MemberSpec:
    """One ensemble member as written in `gin/ensembles/*.gin`."""

    pretrained: str
    tokenizer: str
    add_bos: bool = True
    expand_model: str | None = None
    expand_tokenizer: str | None = None
    name: str | None = None

    @classmethod
    def from_dict(cls, index: int, entry: Mapping[str, Any]) -> MemberSpec:
        if isinstance(entry, MemberSpec):
            return entry
        if not isinstance(entry, Mapping):
            raise TypeError(
                f"Ensemble member {index} must be a dict with keys {', '.join(MEMBER_KEYS)}; "
                f"got {entry!r}"
            )
        unknown = sorted(set(entry) - set(MEMBER_KEYS))
        if unknown:
            raise ValueError(
                f"Ensemble member {index} has unknown key(s) {unknown}; valid keys: "
                f"{', '.join(MEMBER_KEYS)}"
            )
        missing = [k for k in ("pretrained", "tokenizer") if k not in entry]
        if missing:
            raise ValueError(f"Ensemble member {index} lacks required key(s) {missing}")
        return cls(**entry)


@gin.configurable
def ensemble_models(
    models: Sequence[Mapping[str, Any]] = gin.REQUIRED,
    combine_strategy: str = "mean_prob",
) -> tuple[list[MemberSpec], str]:
    """The ensemble a Gin file defines (upstream `configs/models/*.yaml`).

    Args:
      models: one dict per member: `pretrained` (checkpoint dir or hub id), `tokenizer`
        (spec), optional `add_bos` (default True), `expand_model` / `expand_tokenizer`
        (byte-level members with input-id expansion), `name` (for logs).
      combine_strategy: one of `COMBINE_STRATEGIES`.
    """
    check_combine_strategy(combine_strategy)
    specs = [MemberSpec.from_dict(i, m) for i, m in enumerate(models)]
    if not specs:
        raise ValueError("ensemble_models.models is empty; an ensemble needs members.")
    return specs, combine_strategy
