"""Model families: special tokens, chat-template slots, and how their tokens are spelled.

A family describes what a tokenizer of, say, Llama 3 or Gemma 2 looks like around the
text: which special tokens it has, and which tokens fill the abstract *slots* of a chat
template (`bos`, `start_header`, `eot`, ...). Prompts are written once with slot markers
(`<|<bos>|><|<start_header>|><|<user_name>|><|<end_header>|>Hi<|<eot>|>`) and
`tokenkit.prompts.encode_prompt` replaces each marker by the family's tokens. Alignment
matches slot runs of two families with each other; FVT copies special-token embeddings
slot by slot.

Slot values are written in the byte-level spelling (`Ċ` for a newline, see
`tokenkit.constants`), like every token string handed out by `tokenkit.byteify`.

Families are immutable values. The spelling a given tokenizer needs (its family's, or
the identity for byte-converted and pre-byteified tokenizers) is chosen per tokenizer by
`tokenkit.byteify`, never written back into a shared family object.

To add a family, define one `Family(...)` below and list it in `_BUILTIN`; or, from user
code, call `register_family(Family(...))`.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
from collections.abc import Mapping

from tokenkit import constants

SLOTS: tuple[str, ...] = (
    "bos",
    "pad",
    "start_header",
    "end_header",
    "eos",
    "eot",
    "system_name",
    "user_name",
    "assistant_name",
)
"""Template slots, most important first (FVT lets earlier slots win where two slots
of one family share a token, e.g. Qwen3's bos and pad are both `<|endoftext|>`)."""


def slot_marker(slot: str) -> str:
    """The marker standing for `slot` in a prompt, e.g. `<|<bos>|>`."""
    if slot not in SLOTS:
        raise ValueError(f"Unknown slot {slot!r}; valid slots: {', '.join(SLOTS)}")
    return f"<|<{slot}>|>"


SLOT_MARKERS: tuple[str, ...] = tuple(slot_marker(s) for s in SLOTS)

SENTENCEPIECE_SPACE = "▁"
_BYTE_FALLBACK_PIECE = re.compile(r"<0x([0-9A-F]{2})>")


def byte_fallback_value(token: str) -> int | None:
    """The byte of a SentencePiece byte-fallback piece `<0xNN>`, else None."""
    match = _BYTE_FALLBACK_PIECE.fullmatch(token)
    return int(match.group(1), 16) if match else None


class Spelling(enum.Enum):
    """How a tokenizer's own token strings map to the byte-level spelling.

    BYTE_LEVEL: vocabulary pieces already are byte-level strings (byte-level BPE, and
      tokenizers converted or saved by tokenkit); the spelling is the identity.
    SENTENCEPIECE: pieces are text with `▁` for a space, plus `<0xNN>` byte-fallback
      pieces that stand for a single byte.
    """

    BYTE_LEVEL = "byte_level"
    SENTENCEPIECE = "sentencepiece"

    def spell(self, piece: str) -> str:
        """Byte-level spelling of a vocabulary piece of a tokenizer of this kind."""
        if self is Spelling.BYTE_LEVEL:
            return piece
        byte = byte_fallback_value(piece)
        if byte is not None:
            return constants.BYTE_CHARS[byte]
        return constants.bytes_to_chars(piece.replace(SENTENCEPIECE_SPACE, " ").encode("utf-8"))

    def spell_added(self, content: str) -> str:
        """Byte-level spelling of an added token, whose string is the raw text it matches.

        For SentencePiece, added pieces follow the same `▁` convention as the model's
        pieces (Gemma lists whitespace pieces such as `▁▁` as added tokens).
        """
        if self is Spelling.SENTENCEPIECE:
            return self.spell(content)
        return constants.bytes_to_chars(content.encode("utf-8"))

    def precedence(self, piece: str) -> int:
        """Higher wins where two pieces of one tokenizer spell the same bytes.

        A SentencePiece byte-fallback piece loses against a real piece for the same
        byte (`<0x0A>` vs a `\\n` piece): the tokenizer produces the real piece for that
        text, so the spelling must map back to it.
        """
        if self is Spelling.SENTENCEPIECE and byte_fallback_value(piece) is not None:
            return 0
        return 1


SlotValue = tuple[str, ...] | None


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family. Slot values are tuples of byte-level token strings or None
    (the family has nothing in that slot, e.g. Qwen2 has no bos)."""

    name: str
    special_tokens: tuple[str, ...]
    bos: SlotValue
    pad: SlotValue
    start_header: SlotValue
    end_header: SlotValue
    eos: SlotValue
    eot: SlotValue
    system_name: SlotValue
    user_name: SlotValue
    assistant_name: SlotValue
    spelling: Spelling = Spelling.BYTE_LEVEL

    def __post_init__(self) -> None:
        if not self.name or ":" in self.name or "=" in self.name:
            raise ValueError(f"Family name {self.name!r} must be non-empty without ':' or '='")
        # Lists are accepted for convenience; store tuples so the value stays immutable.
        object.__setattr__(self, "special_tokens", tuple(self.special_tokens))
        for slot in SLOTS:
            value = getattr(self, slot)
            if value is None:
                continue
            value = (value,) if isinstance(value, str) else tuple(value)
            if not value or not all(isinstance(t, str) and t for t in value):
                raise ValueError(
                    f"Family {self.name}: slot {slot!r} must be None or a non-empty sequence "
                    f"of non-empty token strings, got {value!r}"
                )
            for token in value:
                if not constants.is_byte_level(token):
                    raise ValueError(
                        f"Family {self.name}: slot {slot!r} token {token!r} is not in the "
                        "byte-level spelling (write 'Ċ' for a newline, 'Ġ' for a space)"
                    )
            object.__setattr__(self, slot, value)

    def slot(self, slot: str) -> SlotValue:
        """The tokens filling `slot`, or None."""
        if slot not in SLOTS:
            raise ValueError(f"Unknown slot {slot!r}; valid slots: {', '.join(SLOTS)}")
        return getattr(self, slot)

    @property
    def replacements(self) -> Mapping[str, SlotValue]:
        """Slot marker -> tokens (or None), in slot order; read-only."""
        return types.MappingProxyType({slot_marker(s): getattr(self, s) for s in SLOTS})

    @property
    def template_tokens(self) -> tuple[str, ...]:
        """Every token some slot uses, sorted; each must be in a tokenizer's vocabulary."""
        return tuple(sorted({t for s in SLOTS for t in (getattr(self, s) or ())}))

    def first_token(self, slot: str) -> str | None:
        """The first token of `slot` (what a tokenizer's `<slot>_token` is), or None."""
        value = self.slot(slot)
        return value[0] if value else None


_CHATML = dict(
    start_header=("<|im_start|>",),
    end_header=("Ċ",),
    eot=("<|im_end|>", "Ċ"),
    system_name=("system",),
    user_name=("user",),
    assistant_name=("assistant",),
)

QWEN2 = Family(
    name="Qwen2",
    special_tokens=("<|im_start|>", "<|im_end|>", "<|endoftext|>"),
    bos=None,
    pad=("<|endoftext|>",),
    eos=("<|endoftext|>",),
    **_CHATML,
)

# Qwen3 models need no bos, but accept one; giving them `<|endoftext|>` as bos makes
# them align with families that have a bos. This is the only difference to Qwen2.
QWEN3 = dataclasses.replace(QWEN2, name="Qwen3", bos=("<|endoftext|>",))

LLAMA3 = Family(
    name="Llama3",
    special_tokens=(
        "<|begin_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
        "<|end_of_text|>",
    ),
    bos=("<|begin_of_text|>",),
    pad=("<|end_of_text|>",),
    start_header=("<|start_header_id|>",),
    end_header=("<|end_header_id|>", "ĊĊ"),
    # Chat models stop at <|eot_id|>, so it serves as eos too.
    eos=("<|eot_id|>",),
    eot=("<|eot_id|>",),
    system_name=("system",),
    user_name=("user",),
    assistant_name=("assistant",),
)

GEMMA2 = Family(
    name="Gemma2",
    special_tokens=("<bos>", "<start_of_turn>", "<end_of_turn>", "<eos>", "<pad>"),
    bos=("<bos>",),
    pad=("<pad>",),
    start_header=("<start_of_turn>",),
    end_header=("Ċ",),
    eos=("<eos>",),
    eot=("<end_of_turn>", "Ċ"),
    # Gemma has no system role; its template folds the system prompt into a user turn.
    system_name=("user",),
    user_name=("user",),
    assistant_name=("model",),
    spelling=Spelling.SENTENCEPIECE,
)

GEMMA3 = dataclasses.replace(GEMMA2, name="Gemma3")

PHI3 = Family(
    name="Phi3",
    special_tokens=("<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"),
    bos=None,
    pad=("<|endoftext|>",),
    # The role token itself opens a turn, so there is no separate header start.
    start_header=None,
    end_header=("Ċ",),
    eos=("<|endoftext|>",),
    eot=("<|end|>", "Ċ"),
    system_name=("<|user|>",),
    user_name=("<|user|>",),
    assistant_name=("<|assistant|>",),
)

GPT2 = Family(
    name="GPT2",
    special_tokens=("<|endoftext|>",),
    bos=None,
    pad=("<|endoftext|>",),
    start_header=None,
    end_header=None,
    eos=("<|endoftext|>",),
    eot=("<|endoftext|>",),
    system_name=None,
    user_name=None,
    assistant_name=None,
)

# Base-model families with bos/eos only: their chat templates are not supported.
_BOS_EOS_ONLY = dict(
    special_tokens=("<s>", "</s>", "<unk>"),
    bos=("<s>",),
    pad=("</s>",),
    start_header=None,
    end_header=None,
    eos=("</s>",),
    eot=("</s>",),
    system_name=None,
    user_name=None,
    assistant_name=None,
)

TINYLLAMA = Family(name="TinyLlama", spelling=Spelling.SENTENCEPIECE, **_BOS_EOS_ONLY)

# The Mistral tokenizers this family targets (Tekken) are byte-level BPE.
MISTRAL = Family(name="Mistral", **_BOS_EOS_ONLY)

_BUILTIN = (QWEN2, QWEN3, LLAMA3, GEMMA2, GEMMA3, PHI3, GPT2, TINYLLAMA, MISTRAL)

_REGISTRY: dict[str, Family] = {f.name: f for f in _BUILTIN}


def family_names() -> tuple[str, ...]:
    """Names of all known families, in registration order."""
    return tuple(_REGISTRY)


def get_family(name: str) -> Family:
    """The family called `name` (case-sensitive, as in tokenizer specs)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        hint = ""
        folded = {n.lower(): n for n in _REGISTRY}
        if name.lower() in folded:
            hint = f" (did you mean {folded[name.lower()]!r}?)"
        raise ValueError(
            f"Unknown model family {name!r}{hint}; known families: {', '.join(_REGISTRY)}"
        ) from None


def register_family(family: Family) -> Family:
    """Makes `family` known to `get_family` and tokenizer specs.

    Registering the identical family twice is a no-op; a different family under a
    taken name is refused, so a spec's meaning cannot change behind a user's back.
    """
    existing = _REGISTRY.get(family.name)
    if existing is not None and existing != family:
        raise ValueError(
            f"A different family named {family.name!r} is already registered; "
            "pick another name"
        )
    _REGISTRY[family.name] = family
    return family
