"""Tokenizer specs and `ByteifyTokenizer`: every tokenizer seen in one byte-level spelling.

Tokenizers spell their tokens differently: byte-level BPE writes ` Café` as `ĠCafÃ©`,
SentencePiece as `▁Café`, with `<0xNN>` pieces for bytes it has no piece for. Comparing
vocabularies or aligning tokenizations across tokenizers needs one spelling, so a
`ByteifyTokenizer` wraps a Hugging Face fast tokenizer and hands out every token in the
GPT-2 byte-level spelling (`tokenkit.constants`). Which ids a text is encoded into is
never changed by this: only the strings naming the ids are.

A tokenizer is named by a spec, `NAME:source=FAMILY[:target=FAMILY][:conversion=KIND]`:

- `NAME`: a local directory or a Hugging Face hub id (loaded with
  `transformers.AutoTokenizer.from_pretrained`).
- `source`: the family (`tokenkit.families`) the tokenizer comes from; it fixes how its
  pieces are spelled and which special tokens / template it has. `source=auto` reads
  the family from the tokenizer's own chat template and special tokens
  (`families.family_from_chat_template`).
- `target`: use another (named) family's special tokens and chat template instead
  (they are added to the vocabulary); regular text is tokenized exactly as before.
- `conversion`: `byte` makes a byte-level tokenizer whose pieces are the 256 bytes and
  the target family's template tokens, matched inside ordinary text too (the upstream
  tokenkit's byte tokenizer, which its published byte-level models were trained with);
  `pure_byte` makes one whose ordinary text is always one token per byte;
  `prebyteified` says the tokenizer's pieces already are byte-level strings
  (tokenizers saved by tokenkit after either byte conversion); `manual_add_prefix_space`
  prepends a space to every text that does not start with one.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers
from absl import logging
from tokenizers import decoders, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tokenkit import constants, families, gguf, hub
from tokenkit.families import Family, Spelling

SPEC_KEYS: tuple[str, ...] = ("source", "target", "conversion")
CONVERSIONS: tuple[str, ...] = ("byte", "pure_byte", "prebyteified", "manual_add_prefix_space")
BYTE_CONVERSIONS: frozenset[str] = frozenset({"byte", "pure_byte"})
"""Conversions that build a new byte-level tokenizer (saved ones reload as `prebyteified`)."""

AUTO = "auto"
"""`source=auto`: the family is read from the tokenizer's own files when it is loaded."""

SPECIAL_TOKENS_KEY = "tokenkit_special_tokens"
"""tokenizer_config.json key naming the special tokens of a `conversion=byte` tokenizer,
whose special tokens are plain pieces (so `source=auto` can tell them after a reload)."""

# Unicode normalizers rewrite text before tokenization (e.g. NFKC turns `ﬁ` into `fi`),
# so two tokenizers would no longer see the same bytes and alignments would break.
_UNICODE_NORMALIZERS = frozenset({"NFC", "NFD", "NFKC", "NFKD"})


# --------------------------------------------------------------------------- specs


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
    """A parsed `NAME:source=...[:target=...][:conversion=...]` spec.

    `str(spec)` writes the canonical form (keys in the order source, target,
    conversion), which `TokenizerSpec.parse` reads back to an equal spec.
    """

    name: str
    source: str
    target: str | None = None
    conversion: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("Tokenizer spec has an empty NAME (expected NAME:source=FAMILY)")
        if ":" in self.name:
            raise ValueError(f"Tokenizer NAME {self.name!r} must not contain ':'")
        if self.source != AUTO:
            families.get_family(self.source)
        if self.target == AUTO:
            raise ValueError(
                "target=auto is not supported: a family read from a tokenizer's own files "
                "describes that tokenizer, while a target family is one it does not have; "
                f"name the target family ({', '.join(families.family_names())}) or use "
                "source=auto without a target"
            )
        if self.target is not None:
            families.get_family(self.target)
        if self.conversion is not None and self.conversion not in CONVERSIONS:
            raise ValueError(
                f"Unknown conversion {self.conversion!r}; valid conversions: "
                f"{', '.join(CONVERSIONS)}"
            )

    @classmethod
    def parse(cls, spec: str) -> TokenizerSpec:
        """Parses a spec string; errors quote the spec and list what is valid."""
        if not isinstance(spec, str):
            raise TypeError(f"Tokenizer spec must be a string, got {type(spec).__name__}")
        name, *parts = spec.split(":")
        values: dict[str, str] = {}
        for part in parts:
            key, sep, value = part.partition("=")
            if not sep:
                raise ValueError(
                    f"Tokenizer spec {spec!r}: {part!r} is not of the form key=value "
                    f"(valid keys: {', '.join(SPEC_KEYS)})"
                )
            if key not in SPEC_KEYS:
                raise ValueError(
                    f"Tokenizer spec {spec!r}: unknown key {key!r}; valid keys: "
                    f"{', '.join(SPEC_KEYS)}"
                )
            if key in values:
                raise ValueError(f"Tokenizer spec {spec!r}: key {key!r} is given twice")
            if not value:
                raise ValueError(f"Tokenizer spec {spec!r}: key {key!r} has an empty value")
            values[key] = value
        if "source" not in values:
            raise ValueError(
                f"Tokenizer spec {spec!r} lacks the required key 'source' "
                f"(e.g. '{name or 'NAME'}:source=Llama3'); known families: "
                f"{', '.join(families.family_names())}, or '{AUTO}' to read it from the "
                "tokenizer's chat template"
            )
        try:
            return cls(name=name, **values)
        except ValueError as e:
            raise ValueError(f"Tokenizer spec {spec!r}: {e}") from None

    def __str__(self) -> str:
        parts = [self.name, f"source={self.source}"]
        if self.target is not None:
            parts.append(f"target={self.target}")
        if self.conversion is not None:
            parts.append(f"conversion={self.conversion}")
        return ":".join(parts)

    @property
    def is_auto(self) -> bool:
        """Whether the source family is read from the tokenizer (`source=auto`)."""
        return self.source == AUTO

    @property
    def source_family(self) -> Family:
        """The named source family (`source=auto` has none before loading)."""
        if self.is_auto:
            raise ValueError(
                f"Tokenizer spec {str(self)!r}: with source=auto the family is read from the "
                "tokenizer when it is loaded; use load_byteify_tokenizer(spec).family"
            )
        return families.get_family(self.source)

    @property
    def target_family(self) -> Family:
        """The family whose special tokens and template the tokenizer uses."""
        if self.target is not None:
            return families.get_family(self.target)
        return self.source_family


# ------------------------------------------------------------------- HF loading

def load_hf_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """Loads a fast tokenizer from a local directory, a `.gguf` file or the hub
    (`org/name[@revision]`, see `tokenkit.hub`).

    Raises:
      FileNotFoundError: `name` is (or can only be) a local path and does not exist.
      TypeError: only a slow (Python) tokenizer is available.
    """
    name, revision = hub.split_revision(name)
    path = Path(name).expanduser()
    if gguf.is_gguf_path(path):  # a llama.cpp file: converted once into a cached HF directory
        path = gguf.tokenizer_dir(path)
    if not path.exists():
        if hub.looks_like_local_path(name):
            raise FileNotFoundError(
                f"Tokenizer path {name!r} does not exist (resolved to {path.resolve()})"
            )
        source = name
    else:
        source = str(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    except OSError as e:
        where = "local path" if path.exists() else "Hugging Face hub id"
        raise OSError(f"Could not load a tokenizer from {where} {name!r}: {e}") from e
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"Tokenizer {name!r} loaded as a slow tokenizer ({type(tokenizer).__name__}); "
            "tokenkit needs a fast tokenizer (a tokenizer.json)"
        )
    return tokenizer


def _component_types(state: Mapping[str, Any]) -> Iterator[str]:
    """Types of a normalizer / decoder and, recursively, of its Sequence members."""
    yield state["type"]
    for member in state.get("normalizers") or state.get("decoders") or ():
        yield from _component_types(member)


def _without_unicode_normalizer(
    tokenizer: PreTrainedTokenizerFast, name: str, *, owned: bool = False
) -> PreTrainedTokenizerFast:
    """Drops a plain NFC/NFD/NFKC/NFKD normalizer; refuses one in a Sequence.

    The caller's tokenizer is copied first unless it is `owned` (a tokenizer the caller
    has just loaded and hands over): copying a 150k-piece tokenizer costs seconds.
    """
    normalizer = tokenizer.backend_tokenizer.normalizer
    if normalizer is None:
        return tokenizer
    state = json.loads(normalizer.__getstate__())
    if state["type"] in _UNICODE_NORMALIZERS:
        logging.warning(
            "Tokenizer %s has a %s normalizer; removing it, because unicode normalization "
            "makes two tokenizers see different bytes for the same text. Texts that the "
            "normalizer would have changed now tokenize differently than with the "
            "original tokenizer.",
            name,
            state["type"],
        )
        if not owned:
            tokenizer = copy.deepcopy(tokenizer)
        tokenizer.backend_tokenizer.normalizer = None
        return tokenizer
    nested = sorted(set(_component_types(state)) & _UNICODE_NORMALIZERS)
    if nested:
        raise ValueError(
            f"Tokenizer {name} has a Sequence normalizer containing {', '.join(nested)}; "
            "unicode normalization inside a Sequence is not supported (it cannot be removed "
            "without changing the other steps). Use a tokenizer without it, or remove it "
            "from tokenizer.json yourself if that is acceptable."
        )
    return tokenizer


def _bos_post_processor(
    current: processors.PostProcessor | None, bos: str | None, bos_id: int | None
) -> processors.PostProcessor | None:
    """A post-processor that prepends `bos` (if any) and otherwise only keeps the
    offset-trimming ByteLevel steps of `current`.

    Used where the family changes (target swap, pure-byte conversion): the original
    template would add the source family's bos, or ids that no longer exist.
    """
    steps: list[processors.PostProcessor] = []
    if current is not None:
        state = json.loads(current.__getstate__())
        members = state["processors"] if state["type"] == "Sequence" else [state]
        for member in members:
            if member["type"] == "ByteLevel":
                steps.append(
                    processors.ByteLevel(
                        trim_offsets=member.get("trim_offsets", True),
                        add_prefix_space=member.get("add_prefix_space", True),
                    )
                )
    if bos is not None:
        steps.append(
            processors.TemplateProcessing(
                single=f"{bos}:0 $A:0",
                pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                special_tokens=[(bos, bos_id)],
            )
        )
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else processors.Sequence(steps)


def _remap_post_processor(state: dict[str, Any], vocab: Mapping[str, int], missing: set[str]) -> None:
    """Points the token ids of a post-processor's JSON state (in place) at `vocab`.

    Tokens `vocab` lacks are collected in `missing` (their ids are left alone).
    """
    def id_of(token: str, old: int) -> int:
        if token not in vocab:
            missing.add(token)
            return old
        return vocab[token]

    kind = state["type"]
    if kind == "TemplateProcessing":
        for entry in state["special_tokens"].values():
            entry["ids"] = [id_of(t, i) for t, i in zip(entry["tokens"], entry["ids"])]
    elif kind in ("RobertaProcessing", "BertProcessing"):
        for key in ("sep", "cls"):
            token, old = state[key]
            state[key] = [token, id_of(token, old)]
    elif kind == "Sequence":
        for member in state["processors"]:
            _remap_post_processor(member, vocab, missing)


def _swap_family(
    tokenizer: PreTrainedTokenizerFast, source: Family, target: Family
) -> PreTrainedTokenizerFast:
    """Gives `tokenizer` (owned by the caller) `target`'s special tokens and bos rule."""
    added = tokenizer.add_tokens(list(target.special_tokens), special_tokens=True)
    logging.info(
        "Family %s -> %s: added %d of the %d special tokens of %s",
        source.name,
        target.name,
        added,
        len(target.special_tokens),
        target.name,
    )
    bos = target.first_token("bos")
    bos_id = tokenizer.convert_tokens_to_ids(bos) if bos is not None else None
    tokenizer.backend_tokenizer.post_processor = _bos_post_processor(
        tokenizer.backend_tokenizer.post_processor, bos, bos_id
    )
    if tokenizer.chat_template is not None:
        # The Jinja template renders the source family's format; keeping it would make
        # apply_chat_template silently disagree with the target's slots.
        logging.info("Family %s -> %s: dropping the source chat template", source.name, target.name)
        tokenizer.chat_template = None
    return tokenizer


def byte_level_pieces(family: Family) -> tuple[str, ...]:
    """The vocabulary of `conversion=byte` for `family`, in id order.

    The 256 bytes in byte order, then the family's template tokens that are not single
    bytes, sorted. Non-template special tokens (TinyLlama's `<unk>`) are not included:
    the upstream's byte tokenizers, and the models trained with them, lack them.
    """
    return constants.BYTE_CHARS + tuple(sorted(set(family.template_tokens) - set(constants.BYTE_CHARS)))


def _state_of(component: Any) -> dict[str, Any]:
    return json.loads(component.__getstate__())


def to_byte_level_tokenizer(
    tokenizer: PreTrainedTokenizerFast, family: Family, *, keep_chat_template: bool = False
) -> PreTrainedTokenizerFast:
    """The byte-level tokenizer of `conversion=byte` for `family` (a new object; the
    input is left unchanged).

    Its model is a `Unigram` over `byte_level_pieces(family)`, every piece scoring 0, fed
    one pretoken per text (`ByteLevel` without the splitting regex), with no added
    tokens. Template tokens are therefore found inside ordinary text as well (Llama 3's
    two newlines are the single token `ĊĊ`, Qwen2's `"user"` is `user`), and special tokens
    are plain pieces. Among segmentations with the same total score the Unigram lattice
    keeps, for every end position, the piece that starts earliest (the first one it
    tries); read back from the end of the text this is *the longest piece ending at
    each cut, from right to left*: Llama 3 spells three newlines as `Ċ`, `ĊĊ`.

    This reproduces the byte tokenizer of the upstream tokenkit exactly (ids, vocabulary
    order), which its byte-level models were trained with. The post-processor is the
    original tokenizer's with its ids moved to the new vocabulary (so a bos is added
    exactly when the original added one); where it names tokens the new vocabulary
    lacks (Phi-3's `<s>`, on which the upstream fails), `family`'s bos rule is used
    instead. With `keep_chat_template`, the Jinja template is kept: rendered text now
    tokenizes into the template's tokens, as `tokenkit.prompts.encode_prompt` does.
    """
    pieces = byte_level_pieces(family)
    vocab = {piece: i for i, piece in enumerate(pieces)}

    post_state = None
    current = tokenizer.backend_tokenizer.post_processor
    if current is not None:
        post_state = _state_of(current)
        missing: set[str] = set()
        _remap_post_processor(post_state, vocab, missing)
        if missing:
            bos = family.first_token("bos")
            logging.warning(
                "The post-processor of %s adds %s, which the byte-level vocabulary of %s "
                "lacks; using the bos rule of %s instead (%s).",
                getattr(tokenizer, "name_or_path", "the tokenizer"),
                ", ".join(sorted(missing)),
                family.name,
                family.name,
                f"prepend {bos}" if bos else "nothing prepended",
            )
            fallback = _bos_post_processor(current, bos, vocab.get(bos) if bos else None)
            post_state = None if fallback is None else _state_of(fallback)

    state = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": _state_of(
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        ),
        "post_processor": post_state,
        "decoder": _state_of(decoders.ByteLevel()),
        "model": _state_of(models.Unigram([(piece, 0.0) for piece in pieces])),
    }
    backend = tokenizers.Tokenizer.from_str(json.dumps(state))
    # Special tokens are given to the wrapper only as attributes (by ByteifyTokenizer):
    # passed to the constructor they would become added tokens.
    converted = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=tokenizer.model_max_length,
        padding_side="right",
    )
    if keep_chat_template:
        converted.chat_template = tokenizer.chat_template
    # Saved into tokenizer_config.json; the backend stays as the upstream's.
    converted.init_kwargs[SPECIAL_TOKENS_KEY] = [t for t in family.special_tokens if t in vocab]
    return converted


def to_pure_byte_tokenizer(
    tokenizer: PreTrainedTokenizerFast, family: Family
) -> PreTrainedTokenizerFast:
    """The tokenizer of `conversion=pure_byte` for `family` (a new object).

    Ids 0..255 are the bytes 0..255 (spelled in the byte-level alphabet); then, sorted,
    the family's template and special tokens. Regular text tokenizes to one token per
    byte (a BPE model without merges); special tokens are matched whole; the multi-byte
    template tokens (`user`, `ĊĊ`, ...) exist as ids for prompts but are never produced
    from text. The family's bos is prepended when special tokens are requested.

    The result has no Jinja chat template: rendered text would spell the template words
    byte by byte, while `tokenkit.prompts.encode_prompt` uses their whole ids.
    """
    byte_tokens = list(constants.BYTE_CHARS)
    extra = sorted((set(family.template_tokens) | set(family.special_tokens)) - set(byte_tokens))
    vocab = {token: i for i, token in enumerate(byte_tokens + extra)}

    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(
        [tokenizers.AddedToken(t, special=True, normalized=False) for t in family.special_tokens]
    )
    bos = family.first_token("bos")
    backend.post_processor = _bos_post_processor(None, bos, vocab.get(bos) if bos else None)

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=family.first_token("eos"),
        pad_token=family.first_token("pad"),
        model_max_length=tokenizer.model_max_length,
        padding_side="right",
    )


# ---------------------------------------------------------------- the tokenizer


def _leading_count(text: str, symbol: str) -> int:
    return len(text) - len(text.lstrip(symbol))


def _match_leading(text: str, symbol: str, count: int) -> str:
    """Makes `text` start with exactly `count` `symbol`s, unless it starts with none.

    Normalizers and pre-tokenizers add or drop a leading space marker (`▁`, ` `, `Ġ`)
    on their own (e.g. SentencePiece's dummy prefix); a pretoken must keep exactly the
    spaces it came with.
    """
    have = _leading_count(text, symbol)
    if have == 0 or have == count:
        return text
    return symbol * count + text[have:]


def _offset_pairs(n: int) -> Iterator[tuple[int, int]]:
    """(start_cut, end_cut) pairs with increasing total cut, end cuts tried first."""
    for total in range(n + 1):
        for end_cut in range(total + 1):
            yield total - end_cut, end_cut


class ByteifyTokenizer:
    """A Hugging Face fast tokenizer whose token strings are byte-level spellings.

    Encoding (`encode`, `__call__`, `tokenize`) runs the wrapped tokenizer unchanged
    (except for `manual_add_prefix_space`); the token *strings* going in and out
    (`tokenize`, `convert_*`, `get_vocab`, `backend_tokenize`) are byte-level. Where two
    ids spell the same bytes, `convert_tokens_to_ids` returns the one the tokenizer
    produces for that text (a real piece over a `<0xNN>` fallback piece; else the lower id).

    Attributes:
      tokenizer: the wrapped `PreTrainedTokenizerFast` (right padding).
      family: the `Family` whose special tokens and template slots apply (the target).
      model_kind_cls: the same object as `family` (the upstream name).
      spelling: how this tokenizer's pieces map to byte-level strings.
      spec: the `TokenizerSpec` it was loaded from, if any.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerFast,
        family: Family,
        *,
        spelling: Spelling | None = None,
        manual_add_prefix_space: bool = False,
        spec: TokenizerSpec | None = None,
    ) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError(
                f"ByteifyTokenizer needs a fast tokenizer, got {type(tokenizer).__name__}"
            )
        self.spec = spec
        name = str(spec) if spec is not None else getattr(tokenizer, "name_or_path", "?")
        self.tokenizer = _without_unicode_normalizer(tokenizer, name)
        self.family = family
        self.spelling = spelling if spelling is not None else family.spelling
        self.manual_add_prefix_space = manual_add_prefix_space
        self.tokenizer.padding_side = "right"
        self._build_vocab()
        self._check_family_tokens(name)
        for attribute, slot in (("pad_token", "pad"), ("bos_token", "bos"), ("eos_token", "eos")):
            token = family.first_token(slot)
            value = None if token is None else self.tokenizer.convert_ids_to_tokens(self._vocab[token])
            setattr(self.tokenizer, attribute, value)

    @property
    def model_kind_cls(self) -> Family:
        """The family, under the upstream's name."""
        return self.family

    # Input pipelines ship tokenizers to worker processes. Only the defining state
    # travels (read-only mapping views cannot be pickled); lookups are rebuilt there.
    _PICKLED = ("tokenizer", "family", "spelling", "manual_add_prefix_space", "spec")

    def __getstate__(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._PICKLED}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._build_vocab()

    # -- vocabulary ------------------------------------------------------------

    def _build_vocab(self) -> None:
        """Spells every id; picks which id each spelling converts back to.

        Written for 150k-256k vocabularies: the pieces in id order from the Rust
        tokenizer, the spelling of all pieces at once (`Spelling.spell_pieces`), one
        string test of the alphabet, and the reverse lookup built by `dict(zip(...))`
        (the precedence rule runs only where two ids spell the same bytes).
        """
        backend = self.tokenizer.backend_tokenizer
        added = dict(self.tokenizer.added_tokens_encoder)
        size = max(len(self.tokenizer), max(added.values(), default=-1) + 1)
        # Pieces in id order straight from the Rust tokenizer (faster than inverting
        # get_vocab()); added tokens shadow model pieces, as in get_vocab().
        raw: list[str | None] = [backend.id_to_token(i) for i in range(size)]
        ids = [i for i, piece in enumerate(raw) if piece is not None]
        # Added tokens are stored as the raw text they match, model pieces in the
        # tokenizer's own spelling.
        is_added = {i for piece, i in added.items() if raw[i] == piece}
        model_ids = [i for i in ids if i not in is_added] if is_added else ids
        inv: list[str | None] = [None] * size
        for i, spelled in zip(model_ids, self.spelling.spell_pieces([raw[i] for i in model_ids])):
            inv[i] = spelled
        for i in is_added:
            inv[i] = self.spelling.spell_added(raw[i])
        spellings = [inv[i] for i in ids]

        if not set("".join(spellings)) <= constants.CHARS_TO_BYTES.keys():
            bad = [(i, inv[i]) for i in ids if not constants.is_byte_level(inv[i])]
            examples = ", ".join(f"{t!r} (id {i})" for i, t in bad[:5])
            sentencepiece_families = [
                n for n in families.family_names()
                if families.get_family(n).spelling is Spelling.SENTENCEPIECE
            ]
            raise ValueError(
                f"{len(bad)} of {len(ids)} tokens are not byte-level strings under the "
                f"{self.spelling.value} spelling, e.g. {examples}. load_byteify_tokenizer reads "
                "the spelling from the tokenizer's decoder, else from the source family, and "
                "takes conversion=prebyteified to mean byte-level pieces; a SentencePiece "
                "tokenizer (pieces with '▁' or '<0xNN>') needs the SentencePiece spelling "
                "(the spelling of the families " + ", ".join(sentencepiece_families) + ")"
            )
        self._inv = inv
        # In id order, so that `get_vocab()` (and anything iterating it) is the same in
        # every process; the Hugging Face vocabulary's own order is not.
        self._vocab = dict(zip(spellings, ids))
        if len(self._vocab) < len(ids):
            # Two ids spell the same bytes: the higher precedence wins, then the lower
            # id. Later writes win, so write low precedence first and ids downwards.
            losers = {
                i for i in model_ids
                if raw[i].startswith("<0x") and self.spelling.precedence(raw[i]) == 0
            }
            order = [i for i in reversed(ids) if i in losers] + [
                i for i in reversed(ids) if i not in losers
            ]
            winner = {inv[i]: i for i in order}
            self._vocab = {s: i for s, i in zip(spellings, ids) if winner[s] == i}
        self._added_tokens_encoder = types.MappingProxyType(added)
        self._special_ids = {
            t: i for t in self.family.special_tokens
            if (i := backend.token_to_id(t)) is not None and raw[i] == t
        }
        # Special tokens are added tokens, except in a `conversion=byte` tokenizer, whose
        # family special tokens are plain pieces: a prompt's text is split at both.
        specials = {str(t): i for i, t in self.tokenizer.added_tokens_decoder.items() if t.special}
        specials.update((t, i) for t, i in self._special_ids.items() if t not in specials)
        self._special_tokens_encoder = types.MappingProxyType(specials)

    def _check_family_tokens(self, name: str) -> None:
        template = set(self.family.template_tokens)
        # Special tokens outside the template (TinyLlama's `<unk>`) may be absent: the
        # byte tokenizer of conversion=byte has only the template's.
        absent = [
            t for t in self.family.special_tokens if t in template and t not in self._special_ids
        ]
        if absent:
            raise ValueError(
                f"Tokenizer {name}: special tokens of {self.family.name} are not in the "
                f"vocabulary: {', '.join(repr(t) for t in absent)} (load_byteify_tokenizer "
                "adds them)"
            )
        missing = [t for t in self.family.template_tokens if t not in self._vocab]
        if missing:
            raise ValueError(
                f"Tokenizer {name}: tokens used by the {self.family.name} chat template are not "
                f"in its byte-level vocabulary: {', '.join(repr(t) for t in missing)}"
            )

    def get_vocab(self) -> dict[str, int]:
        """Byte-level spelling -> id (a copy)."""
        return dict(self._vocab)

    def __len__(self) -> int:
        return len(self._inv)

    def convert_ids_to_tokens(self, ids: int | Iterable[int]) -> str | list[str]:
        """Byte-level spelling(s) of id(s); accepts ints, numpy ints and arrays."""
        if isinstance(ids, (int, np.integer)):
            return self._spelling_of(int(ids))
        return [self._spelling_of(int(i)) for i in ids]

    def _spelling_of(self, i: int) -> str:
        token = self._inv[i] if 0 <= i < len(self._inv) else None
        if token is None:
            raise IndexError(f"Token id {i} is not in the vocabulary (size {len(self._inv)})")
        return token

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | list[int]:
        """Id(s) of byte-level spelling(s); KeyError naming an unknown token."""
        if isinstance(tokens, str):
            return self._id_of(tokens)
        return [self._id_of(t) for t in tokens]

    def _id_of(self, token: str) -> int:
        try:
            return self._vocab[token]
        except KeyError:
            raise KeyError(
                f"Token {token!r} is not in the byte-level vocabulary (tokens are byte-level "
                "strings: 'Ġ' for a space, 'Ċ' for a newline)"
            ) from None

    def add_tokens(self, tokens: str | Sequence[str], special_tokens: bool = False) -> int:
        """Adds tokens (raw text, as in Hugging Face) and returns how many were new."""
        added = self.tokenizer.add_tokens(tokens, special_tokens=special_tokens)
        self._build_vocab()
        return added

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> tuple[str, ...]:
        """Saves the wrapped tokenizer (after conversion) as a Hugging Face directory.

        Reload a byte-converted tokenizer with `conversion=prebyteified`.
        """
        return self.tokenizer.save_pretrained(save_directory, **kwargs)

    @property
    def added_tokens_encoder(self) -> Mapping[str, int]:
        """Added token text (as it appears in raw text) -> id; read-only."""
        return self._added_tokens_encoder

    @property
    def special_tokens_encoder(self) -> Mapping[str, int]:
        """The added tokens marked special and the family's special tokens (raw text ->
        id); read-only. A prompt's text is split at these; other added tokens (e.g. a
        `\\n` piece) are regular text."""
        return self._special_tokens_encoder

    @property
    def all_special_tokens(self) -> list[str]:
        """The family's special tokens, byte-level spelled."""
        return self.convert_ids_to_tokens(self.all_special_ids)

    @property
    def all_special_ids(self) -> list[int]:
        return list(self._special_ids.values())

    @property
    def pad_token_id(self) -> int | None:
        return self.tokenizer.pad_token_id

    @property
    def bos_token_id(self) -> int | None:
        return self.tokenizer.bos_token_id

    @property
    def eos_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    # -- encoding --------------------------------------------------------------

    def _with_prefix_space(self, value: Any) -> Any:
        if not self.manual_add_prefix_space:
            return value
        if isinstance(value, str):
            return value if value.startswith(" ") else " " + value
        if isinstance(value, (list, tuple)):
            return type(value)(self._with_prefix_space(v) for v in value)
        return value

    def __call__(
        self,
        text: Any = None,
        text_pair: Any = None,
        text_target: Any = None,
        text_pair_target: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Batch encoding as in Hugging Face (padding, truncation, tensors); right padding."""
        return self.tokenizer(
            self._with_prefix_space(text),
            self._with_prefix_space(text_pair),
            text_target=self._with_prefix_space(text_target),
            text_pair_target=self._with_prefix_space(text_pair_target),
            **kwargs,
        )

    def encode(
        self, text: str, text_pair: str | None = None, add_special_tokens: bool = True, **kwargs: Any
    ) -> list[int]:
        """Ids of `text` (bos etc. per the family when `add_special_tokens`)."""
        return self.tokenizer.encode(
            self._with_prefix_space(text),
            self._with_prefix_space(text_pair),
            add_special_tokens=add_special_tokens,
            **kwargs,
        )

    def decode(self, *args: Any, **kwargs: Any) -> str:
        """Text of ids, as the wrapped tokenizer decodes them."""
        return self.tokenizer.decode(*args, **kwargs)

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[str]:
        """Byte-level token strings of `text` (no bos unless asked for)."""
        return self.convert_ids_to_tokens(self.encode(text, add_special_tokens=add_special_tokens))

    def backend_tokenize(self, pretoken: str, unsafe: bool | str = False) -> list[str]:
        """Tokenizes one pretoken, given in byte-level spelling, with the model alone.

        Special tokens are not matched and nothing is added. The pretoken is decoded to
        text and run through the normalizer and pre-tokenizer, keeping exactly its number
        of leading spaces (whether the tokenizer marks them as ` `, `▁` or `Ġ`).

        Args:
          pretoken: byte-level string, e.g. `Ġhello`.
          unsafe: True feeds the spelling to the model directly (right only where the
            model's pieces are byte-level strings); "auto" does so when the
            pre-tokenizer is a plain ByteLevel one (byte-converted tokenizers).

        Raises:
          UnicodeDecodeError: the pretoken's bytes are not valid UTF-8 (safe mode).
        """
        if unsafe not in (True, False, "auto"):
            raise ValueError(f"unsafe must be True, False or 'auto', got {unsafe!r}")
        if not pretoken:
            return []
        backend = self.tokenizer.backend_tokenizer
        if unsafe is True or (
            unsafe == "auto" and isinstance(backend.pre_tokenizer, pre_tokenizers.ByteLevel)
        ):
            return self.convert_ids_to_tokens([t.id for t in backend.model.tokenize(pretoken)])

        text = constants.chars_to_bytes(pretoken).decode("utf-8")
        spaces = _leading_count(text, " ")
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        text = _match_leading(text, families.SENTENCEPIECE_SPACE, spaces)
        text = _match_leading(text, " ", spaces)
        if backend.pre_tokenizer is not None:
            text = "".join(piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(text))
        text = _match_leading(text, constants.BYTE_CHARS[ord(" ")], spaces)
        return self.convert_ids_to_tokens([t.id for t in backend.model.tokenize(text)])

    def backend_tokenize_with_byte_fallback(
        self, pretoken: str, unsafe: bool | str = False
    ) -> list[int]:
        """Ids of `backend_tokenize(pretoken)`, cutting undecodable bytes off the edges.

        A byte-level string may start or end inside a UTF-8 character (a token of
        another tokenizer). The fewest edge bytes that make the rest decodable are cut
        (the start is tried first) and encoded as single-byte tokens.
        """
        for start_cut, end_cut in _offset_pairs(len(pretoken)):
            end = len(pretoken) - end_cut
            try:
                middle = self.convert_tokens_to_ids(
                    self.backend_tokenize(pretoken[start_cut:end], unsafe)
                )
            except UnicodeDecodeError:
                continue
            return (
                self.convert_tokens_to_ids(list(pretoken[:start_cut]))
                + middle
                + self.convert_tokens_to_ids(list(pretoken[end:]))
            )
        raise AssertionError("unreachable: the empty middle always decodes")

    def __repr__(self) -> str:
        spec = str(self.spec) if self.spec is not None else self.tokenizer.name_or_path
        return f"ByteifyTokenizer({spec!r}, family={self.family.name}, size={len(self)})"


def _decoder_types(tokenizer: PreTrainedTokenizerFast) -> set[str]:
    decoder = tokenizer.backend_tokenizer.decoder
    return set(_component_types(_state_of(decoder))) if decoder is not None else set()


def detect_spelling(tokenizer: PreTrainedTokenizerFast) -> Spelling | None:
    """How a tokenizer spells its pieces, told by its decoder: byte-level (a ByteLevel
    decoder) or SentencePiece (Metaspace / ByteFallback); None if it cannot tell.

    The spelling belongs to the tokenizer, not to the model family: Phi-3's tokenizer
    is SentencePiece, Phi-4-mini's byte-level BPE, with the same chat template.
    """
    kinds = _decoder_types(tokenizer)
    if "ByteLevel" in kinds:
        return Spelling.BYTE_LEVEL
    if kinds & {"Metaspace", "ByteFallback"}:
        return Spelling.SENTENCEPIECE
    return None


def _spelling_for(tokenizer: PreTrainedTokenizerFast, spec: TokenizerSpec) -> Spelling:
    """The spelling of the loaded tokenizer's pieces (before any conversion)."""
    if spec.conversion == "prebyteified":
        return Spelling.BYTE_LEVEL
    detected = detect_spelling(tokenizer)
    if detected is not None:
        return detected
    if spec.is_auto:
        kinds = ", ".join(sorted(_decoder_types(tokenizer))) or "none"
        raise ValueError(
            f"Tokenizer {str(spec)!r}: cannot tell from its decoder ({kinds}) whether its "
            "pieces are byte-level (a ByteLevel decoder) or SentencePiece (Metaspace or "
            "ByteFallback); name a family instead of source=auto"
        )
    return spec.source_family.spelling


def read_family(
    tokenizer: PreTrainedTokenizerFast, spec: TokenizerSpec, spelling: Spelling
) -> Family:
    """The family of `spec` (with `source=auto`) read from the tokenizer's chat template
    and special tokens (`families.family_from_chat_template`). Its name is
    `auto(NAME)`, NAME being the spec's tokenizer name."""
    where = f"tokenizer {spec.name!r}"
    if not tokenizer.chat_template:
        raise ValueError(
            f"Cannot read a model family for {where}: it has no chat template "
            "(source=auto reads the family from it); name a family instead "
            f"(source=...: {', '.join(families.family_names())})"
        )
    added = tokenizer.added_tokens_encoder

    def spell(raw: str) -> str:
        return spelling.spell_added(raw) if raw in added else spelling.spell(raw)

    def tokenize(text: str) -> tuple[str, ...]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        return tuple(spell(t) for t in tokenizer.convert_ids_to_tokens(ids))

    def render(messages: Sequence[Mapping[str, str]], generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=generation_prompt, tokenize=False
        )

    def own(attribute: str) -> str | None:
        raw = getattr(tokenizer, attribute)
        return None if raw is None else spell(str(raw))

    marked = [str(t) for t in tokenizer.added_tokens_decoder.values() if t.special]
    marked += tokenizer.init_kwargs.get(SPECIAL_TOKENS_KEY) or []
    specials = {spelling.spell_added(t): t for t in marked}
    return families.family_from_chat_template(
        f"{AUTO}({spec.name.replace('=', '_')})",
        render=render,
        tokenize=tokenize,
        special_tokens=specials,
        bos=own("bos_token"),
        eos=own("eos_token"),
        pad=own("pad_token"),
        spelling=spelling,
        source=where,
    )


def load_byteify_tokenizer(spec: str | TokenizerSpec) -> ByteifyTokenizer:
    """Loads the tokenizer a spec names (see the module docstring for the grammar).

    Raises:
      ValueError: a malformed spec, an unknown family / key / conversion, a template
        token missing from the vocabulary, an unsupported normalizer, or (source=auto)
        a chat template the family cannot be read from.
      FileNotFoundError: NAME is a local path that does not exist.
    """
    if isinstance(spec, str):
        spec = TokenizerSpec.parse(spec)
    name = str(spec)
    tokenizer = load_hf_tokenizer(spec.name)
    spelling = _spelling_for(tokenizer, spec)
    if spec.is_auto:
        source = read_family(tokenizer, spec, spelling)
        logging.info("%s: read family %s", name, source)
    else:
        source = spec.source_family
        if spelling is not source.spelling:
            logging.info(
                "%s: pieces are spelled %s (by its decoder), unlike the %s family's usual %s",
                name, spelling.value, source.name, source.spelling.value,
            )
    target = families.get_family(spec.target) if spec.target is not None else source

    manual_add_prefix_space = False
    if spec.conversion in BYTE_CONVERSIONS:
        if spec.conversion == "byte":
            tokenizer = to_byte_level_tokenizer(tokenizer, target, keep_chat_template=target == source)
        else:
            tokenizer = to_pure_byte_tokenizer(tokenizer, target)
        spelling = Spelling.BYTE_LEVEL
    else:
        # Loaded here, so owned: dropping a normalizer needs no copy.
        tokenizer = _without_unicode_normalizer(tokenizer, name, owned=True)
        if target != source:
            tokenizer = _swap_family(tokenizer, source, target)
        elif spec.conversion != "prebyteified":
            # A saved converted tokenizer is taken as it is: adding tokens would give
            # it ids (or whole-token matches) the tokenizer it was saved from lacked.
            added = tokenizer.add_tokens(list(target.special_tokens), special_tokens=True)
            if added:
                logging.info("%s: added %d missing %s special tokens", spec, added, target.name)
        if spec.conversion == "manual_add_prefix_space":
            manual_add_prefix_space = True

    return ByteifyTokenizer(
        tokenizer,
        target,
        spelling=spelling,
        manual_add_prefix_space=manual_add_prefix_space,
        spec=spec,
    )
