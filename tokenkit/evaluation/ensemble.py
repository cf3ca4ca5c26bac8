"""Token-level ensembles: several models step through one text in lockstep.

Models that share a tokenizer (each possibly transferred to it, with its own family's
special tokens) predict the same next token at every step, so their next-token
distributions can be combined token by token. Their vocabularies are put on one index
space, the *unified vocabulary*:

- if all tokenizers have identical vocabularies, it is simply that vocabulary;
- otherwise it is the sorted set of regular (non-special) byte-level token strings that
  every tokenizer has, plus one *end* entry standing for each family's end-of-turn token
  (Qwen2's `<|im_end|>`, Llama3's `<|eot_id|>`, ...), as the upstream did.

Models with *different* tokenizers ensemble through a *pivot* (the upstream's
`baseline_mined_mapping_paths`): the first member's regular tokens (plus the end entry)
are the unified vocabulary, and every other member reads each of them as the token a
MinED mapping names (`tokenizer_info.mined_mapping` with the member's tokenizer as
teacher and the pivot's as student: the member token of least edit distance). Each
member reads a prompt in its own tokenization; from there on every step's token is the
pivot's, fed to each member as its mapped token, and the members' distributions are
combined on the pivot's tokens. Scoring a continuation is the probability that lockstep
decoding produces the pivot's tokenization of it. A member's mapped token need not spell
the pivot token's bytes (it is the nearest the member has), which is the approximation
this kind of ensemble makes.

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

from pathlib import Path

import gin
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from tokenkit import tokenizer_info
from tokenkit.byteify import ByteifyTokenizer
from tokenkit.logits import target_logprobs

Array = jax.Array

COMBINE_STRATEGIES: tuple[str, ...] = ("mean_prob", "mean_logits")

# Keys an ensemble member definition may have (Gin dicts in gin/ensembles/).
MEMBER_KEYS: tuple[str, ...] = (
    "pretrained", "tokenizer", "add_bos", "expand_model", "expand_tokenizer", "name",
    "mined_mapping",
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
      pivot: the entries are the first member's tokens, the others' ids come from MinED
        mappings (several unified entries may name one member id).
      size: the number of unified entries.
    """

    member_ids: tuple[np.ndarray, ...]
    stop_ids: tuple[int, ...]
    is_identity: bool
    pivot: bool = False

    @property
    def size(self) -> int:
        return len(self.member_ids[0])

    @functools.cached_property
    def fingerprint(self) -> str:
        """A digest of the contents (compiled functions are cached by it)."""
        digest = hashlib.sha256(repr((self.stop_ids, self.is_identity, self.pivot)).encode())
        for ids in self.member_ids:
            digest.update(np.ascontiguousarray(ids, np.int32).tobytes())
            digest.update(b"|")
        return digest.hexdigest()

    @classmethod
    def build(
        cls,
        tokenizers: Sequence[ByteifyTokenizer],
        stop_ids: Sequence[Sequence[int]],
        mined_mappings: Sequence[np.ndarray | None] | None = None,
    ) -> UnifiedVocabulary:
        """The unified vocabulary of `tokenizers`; `stop_ids[i]` are member i's ids that
        end a reply (used as they are when the vocabularies are identical). With
        `mined_mappings` (None for the pivot, first; a mapping for every other member)
        it is the pivot's (see `build_pivot`)."""
        if not tokenizers:
            raise ValueError("An ensemble needs at least one member.")
        if mined_mappings is not None and any(m is not None for m in mined_mappings):
            return cls.build_pivot(tokenizers, mined_mappings)
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
        member_ids = [
            np.asarray(t.convert_tokens_to_ids(regular) + [_end_id(t)], np.int32) for t in tokenizers
        ]
        return cls(tuple(member_ids), (len(regular),), False)

    @classmethod
    def build_pivot(
        cls, tokenizers: Sequence[ByteifyTokenizer], mined_mappings: Sequence[np.ndarray | None]
    ) -> UnifiedVocabulary:
        """The first tokenizer's (the pivot's) regular tokens plus the end entry; member
        i > 0 reads pivot id p as `mined_mappings[i][p]`.

        Raises:
          ValueError: the pivot has a mapping or another member lacks one; a mapping does
            not cover the pivot's ids or names ids its member does not have.
        """
        if len(mined_mappings) != len(tokenizers):
            raise ValueError(
                f"{len(mined_mappings)} MinED mappings for {len(tokenizers)} ensemble members.")
        if mined_mappings[0] is not None or any(m is None for m in mined_mappings[1:]):
            given = ["mapping" if m is not None else "none" for m in mined_mappings]
            raise ValueError(
                "An ensemble through a pivot vocabulary lists the pivot first, without a "
                f"mined_mapping, and every other member with one; got {given}."
            )
        pivot = tokenizers[0]
        special = set(pivot.all_special_tokens)
        vocab = pivot.get_vocab()
        regular = sorted(t for t in vocab if t not in special)
        pivot_ids = np.asarray([vocab[t] for t in regular], np.int64)
        member_ids = [np.append(pivot_ids, _end_id(pivot)).astype(np.int32)]
        for i, (t, mapping) in enumerate(zip(tokenizers[1:], mined_mappings[1:]), start=1):
            mapping = np.asarray(mapping)
            if len(mapping) <= pivot_ids.max():
                raise ValueError(
                    f"The MinED mapping of member {i} ({t!r}) has {len(mapping)} entries; the "
                    f"pivot {pivot!r} has ids up to {pivot_ids.max()} (was it computed with the "
                    "pivot's tokenizer as student?)."
                )
            ids = mapping[pivot_ids]
            if ids.min() < 0 or ids.max() >= len(t):
                raise ValueError(
                    f"The MinED mapping of member {i} names ids outside its tokenizer {t!r} "
                    f"(size {len(t)}): was it computed with this member's tokenizer as teacher?"
                )
            special_ids = set(t.all_special_ids)
            to_special = sum(int(x) in special_ids for x in np.unique(ids))
            logging.info(
                "Pivot vocabulary: member %d reads %d pivot tokens as %d distinct tokens of its "
                "own (%d of them special tokens).", i, len(ids), len(np.unique(ids)), to_special,
            )
            member_ids.append(np.append(ids, _end_id(t)).astype(np.int32))
        return cls(tuple(member_ids), (len(regular),), False, pivot=True)

    def inverse(self, member: int, vocab_size: int) -> np.ndarray:
        """int32 `[vocab_size]`: the unified index of each of member's ids, -1 if none
        (for a pivot vocabulary's other members, one of the entries mapped to the id)."""
        inv = np.full((vocab_size,), -1, np.int32)
        inv[self.member_ids[member]] = np.arange(self.size, dtype=np.int32)
        return inv


def _end_id(tokenizer: ByteifyTokenizer) -> int:
    """The id standing for the unified end entry: the family's eot (else eos) token."""
    eot = tokenizer.family.first_token("eot") or tokenizer.family.first_token("eos")
    if eot is None:
        raise ValueError(
            f"Tokenizer {tokenizer!r}: family {tokenizer.family.name} has neither an eot nor "
            "an eos token, so an ensemble cannot tell when it ends a reply."
        )
    return int(tokenizer.convert_tokens_to_ids(eot))


def load_mined_mapping(path: str | Path) -> np.ndarray:
    """A MinED mapping: `mined_mapping.npy` in a pair directory (as
    `tools/compute_mined_mapping.py` writes it), or that `.npy` file itself."""
    path = Path(path).expanduser()
    file = path / tokenizer_info.MINED_MAPPING_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"No MinED mapping at {str(path)!r} (expected a pair directory holding "
            f"{tokenizer_info.MINED_MAPPING_FILE}, or the file; make one with "
            "tools/compute_mined_mapping.py, the member's tokenizer as teacher and the "
            "pivot's as student)."
        )
    return np.load(file)


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


def aligned_logprobs(
    member_logits: Sequence[Array],
    labels: Array,
    vocabulary: UnifiedVocabulary,
    strategy: str,
) -> tuple[Array, Array]:
    """Per scored token, its log-probability under the combined distribution and whether
    it is the combined argmax (`[B, K]` each).

    Args:
      member_logits: per member, float32 logits `[B, K, V_i]` at the positions that
        predict the K scored tokens.
      labels: int32 `[B, K]`, the scored tokens as unified indices.
      vocabulary: the unified vocabulary.
      strategy: one of `COMBINE_STRATEGIES`.
    """
    check_combine_strategy(strategy)
    unified = [gather_unified(logits, vocabulary.member_ids[i], vocabulary.is_identity)
               for i, logits in enumerate(member_logits)]
    if strategy == "mean_logits":
        return target_logprobs(sum(unified[1:], unified[0]) / len(unified), labels)
    # mean_prob, as `combine_logits` computes it, without materialising the members'
    # log-softmaxes, their stack or the combination's: a head's logits are the largest
    # arrays of scoring, and each pass over them costs what the passes of the head do.
    picked = []
    total = None
    for logits in unified:
        logits = logits.astype(jnp.float32)
        lse = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
        picked.append(jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0] - lse[..., 0])
        probs = jnp.exp(logits - lse)
        total = probs if total is None else total + probs
    token_lp = jax.nn.logsumexp(jnp.stack(picked), axis=0) - jnp.log(float(len(unified)))
    return token_lp, jnp.argmax(total, axis=-1) == labels


@dataclasses.dataclass(frozen=True)
class MemberSpec:
    """One ensemble member as written in `gin/ensembles/*.gin`."""

    pretrained: str
    tokenizer: str
    add_bos: bool = True
    expand_model: str | None = None
    expand_tokenizer: str | None = None
    name: str | None = None
    mined_mapping: str | None = None

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
        (byte-level members with input-id expansion), `name` (for logs),
        `mined_mapping` (members with their own tokenizers: a pair directory or `.npy`
        file mapping the first member's, the pivot's, ids to this member's; see the
        module docstring).
      combine_strategy: one of `COMBINE_STRATEGIES`.
    """
    check_combine_strategy(combine_strategy)
    specs = [MemberSpec.from_dict(i, m) for i, m in enumerate(models)]
    if not specs:
        raise ValueError("ensemble_models.models is empty; an ensemble needs members.")
    mapped = [s.mined_mapping is not None for s in specs]
    if any(mapped) and (mapped[0] or not all(mapped[1:])):
        raise ValueError(
            "An ensemble through a pivot vocabulary lists the pivot first, without a "
            "mined_mapping, and every other member with one; members with a mined_mapping: "
            f"{[i for i, m in enumerate(mapped) if m]}."
        )
    return specs, combine_strategy
