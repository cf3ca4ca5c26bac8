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
from collections.abc import Callable, Mapping, Sequence

from absl import logging

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

    def spell_pieces(self, pieces: Sequence[str]) -> list[str]:
        """`[self.spell(p) for p in pieces]`, fast for whole vocabularies.

        SentencePiece pieces other than byte-fallback ones are spelled in one string
        operation, joined by NUL: no piece contains NUL (checked), and no other
        character encodes to a 0 byte, so the spelled NUL (`Ā`) marks exactly the joins.
        """
        if self is Spelling.BYTE_LEVEL:
            return list(pieces)
        fallback = [byte_fallback_value(p) if p.startswith("<0x") else None for p in pieces]
        text_at = [i for i, byte in enumerate(fallback) if byte is None]
        joined = "\0".join(pieces[i] for i in text_at)
        if joined.count("\0") != max(len(text_at) - 1, 0):
            return [self.spell(p) for p in pieces]
        spelled = [constants.BYTE_CHARS[byte] if byte is not None else "" for byte in fallback]
        if text_at:
            parts = self.spell(joined).split(constants.BYTE_CHARS[0])
            for i, part in zip(text_at, parts, strict=True):
                spelled[i] = part
        return spelled

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


# ------------------------------------------------------- families from chat templates

ChatRenderer = Callable[[Sequence[Mapping[str, str]], bool], str]
"""`render(messages, add_generation_prompt) -> text`, e.g. a Hugging Face tokenizer's
`apply_chat_template(..., tokenize=False)`."""

Tokenize = Callable[[str], Sequence[str]]
"""`tokenize(text) -> byte-level token strings`, without added bos / eos."""

# Message contents that survive templates which trim or capitalise nothing, and that
# byte-level BPE and SentencePiece tokenizers split the same alone and in context.
_SENTINELS = {
    "system": "Alpha",
    "user": "Bravo",
    "assistant": "Charlie",
    "user_again": "Delta",
    "assistant_again": "Echo",
}


def _conversation(*keys: str) -> list[dict[str, str]]:
    return [{"role": k.removesuffix("_again"), "content": _SENTINELS[k]} for k in keys]


def _describe(slots: Mapping[str, SlotValue]) -> str:
    return ", ".join(f"{slot}={slots[slot]}" for slot in SLOTS)


def _common_prefix_length(a: Sequence[str], b: Sequence[str], limit: int) -> int:
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def family_from_chat_template(
    name: str,
    *,
    render: ChatRenderer,
    tokenize: Tokenize,
    special_tokens: Mapping[str, str],
    bos: str | None,
    eos: str | None,
    pad: str | None,
    spelling: Spelling,
    source: str = "the tokenizer",
) -> Family:
    """Reads a family off a tokenizer's own chat template (`source=auto` specs).

    The template is rendered with sentinel messages (system, user, assistant; with and
    without `add_generation_prompt`; and a five-message conversation), and the slots
    are read off the text around the sentinels, tokenized by the tokenizer itself:
    what follows the last message is `eot`; what then opens a user / an assistant
    message is `start_header` (their common leading tokens), the role name, and
    `end_header` (their common trailing tokens); what precedes the system message is
    `bos`, then the same header with the system role name. `eos` and `pad` are the
    tokenizer's own (`pad` falls back to `eos`). The slots must reproduce the
    template's rendering of every sentinel conversation token for token, so a family
    that is read at all encodes prompts exactly as the template does.

    Args:
      name: the family's name.
      render: renders a conversation (see `ChatRenderer`).
      tokenize: the tokenizer, giving byte-level token strings (see `Tokenize`).
      special_tokens: the tokenizer's special tokens, byte-level spelling -> raw text;
        slot tokens among them become the family's `special_tokens`.
      bos, eos, pad: the tokenizer's bos / eos / pad token (byte-level), or None. The
        bos is used only to tell a bos from a role token in templates without a
        header start (Phi-3 style); whether there is a bos is the template's business.
      spelling: how the tokenizer spells its pieces.
      source: how to name the tokenizer in errors.

    Raises:
      ValueError: the template cannot be read this way; the message names the problem.
    """

    def fail(problem: str) -> None:
        raise ValueError(
            f"Cannot read a model family from the chat template of {source}: {problem}. "
            "source=auto reads templates of the form [bos] (start_header role end_header "
            "content eot)* whose generation prompt is an assistant header; for others name "
            f"a family (source=...: {', '.join(family_names())})"
        )

    def rendered(messages: list[dict[str, str]], generation_prompt: bool) -> str:
        try:
            text = render(messages, generation_prompt)
        except Exception as e:  # noqa: BLE001 - any template error is reported as such
            roles = "/".join(m["role"] for m in messages)
            fail(f"rendering a {roles} conversation raised {type(e).__name__}: {e}")
        if not isinstance(text, str):
            fail(f"rendering gave a {type(text).__name__}, not text")
        return text

    def cut(text: str, messages: list[dict[str, str]]) -> list[str]:
        """The text before, between and after the messages' contents."""
        pieces, position = [], 0
        for message in messages:
            content, role = message["content"], message["role"]
            count = text.count(content)
            if count != 1:
                what = "drops" if count == 0 else f"repeats ({count} times)"
                fail(f"it {what} the content of a {role} message ({text!r})")
            at = text.index(content)
            if at < position:
                fail(f"it moves the content of a {role} message out of order ({text!r})")
            pieces.append(text[position:at])
            position = at + len(content)
        pieces.append(text[position:])
        return pieces

    three = _conversation("system", "user", "assistant")
    prompt = _conversation("system", "user")
    five = _conversation("system", "user", "assistant", "user_again", "assistant_again")
    before, system_to_user, user_to_assistant, after = cut(rendered(three, False), three)
    eot_text = after
    for between, role in ((system_to_user, "user"), (user_to_assistant, "assistant")):
        if not between.startswith(eot_text):
            fail(
                f"the text between a message and the next {role} message ({between!r}) does "
                f"not start with the text after the last message ({eot_text!r}); is a message "
                "folded into the next turn?"
            )
    user_header = system_to_user[len(eot_text):]
    assistant_header = user_to_assistant[len(eot_text):]
    generation = cut(rendered(prompt, True), prompt)[-1]
    if generation != eot_text + assistant_header:
        fail(
            f"add_generation_prompt renders {generation!r} after the last message, but an "
            f"assistant message is opened by {eot_text + assistant_header!r}"
        )

    eot = tuple(tokenize(eot_text))
    user = tuple(tokenize(user_header))
    assistant = tuple(tokenize(assistant_header))
    if user == assistant:
        fail(f"user and assistant messages are opened alike ({user_header!r})")
    shortest = min(len(user), len(assistant))
    start_n = _common_prefix_length(user, assistant, max(shortest - 1, 0))
    end_n = _common_prefix_length(user[::-1], assistant[::-1], max(shortest - start_n - 1, 0))
    start, end = user[:start_n], user[len(user) - end_n:]
    names = {
        "user": user[start_n:len(user) - end_n],
        "assistant": assistant[start_n:len(assistant) - end_n],
    }
    if not all(names.values()):
        fail(f"a role has no name between the headers {user_header!r} and {assistant_header!r}")

    head = tuple(tokenize(before))
    if start:
        at = next(
            (i for i in range(len(head) - len(start) + 1) if head[i:i + len(start)] == start), None
        )
        if at is None:
            fail(f"the system message is not opened by the header start {start} ({before!r})")
        bos_tokens, system_header = head[:at], head[at + len(start):]
    elif bos is not None and head[:1] == (bos,) and len(head) > 1 + end_n:
        bos_tokens, system_header = head[:1], head[1:]
    else:
        bos_tokens, system_header = (), head
    if system_header[len(system_header) - end_n:] != end or len(system_header) <= end_n:
        fail(f"the system message's header ({before!r}) does not end like the others ({end})")
    names["system"] = system_header[:len(system_header) - end_n]

    eos_tokens = (eos,) if eos is not None else None
    slots = dict(
        bos=bos_tokens or None,
        pad=(pad,) if pad is not None else eos_tokens,
        start_header=start or None,
        end_header=end or None,
        eos=eos_tokens,
        eot=eot or None,
        system_name=names["system"],
        user_name=names["user"],
        assistant_name=names["assistant"],
    )
    used = [t for slot in SLOTS for t in (slots[slot] or ())]
    family = Family(
        name=name,
        special_tokens=tuple(dict.fromkeys(special_tokens[t] for t in used if t in special_tokens)),
        spelling=spelling,
        **slots,
    )

    def expected(messages: list[dict[str, str]], generation_prompt: bool) -> list[str]:
        tokens = list(bos_tokens)
        for message in messages:
            role = message["role"]
            tokens += [*start, *names[role], *end, *tokenize(message["content"]), *eot]
        if generation_prompt:
            tokens += [*start, *names["assistant"], *end]
        return tokens

    padded = [{**m, "content": f" {m['content']}\n"} for m in three]
    if any(m["content"] not in rendered(padded, False) for m in padded):
        logging.warning(
            "The chat template of %s changes message contents (e.g. strips their spaces); "
            "tokenkit.prompts keeps contents as they are, so such texts encode differently "
            "than the template renders them.",
            source,
        )
    for messages, generation_prompt in ((three, False), (prompt, True), (five, False)):
        got = list(tokenize(rendered(messages, generation_prompt)))
        want = expected(messages, generation_prompt)
        if got != want:
            k = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            fail(
                f"the slots read off ({_describe(slots)}) do not reproduce its rendering of a "
                f"{len(messages)}-message conversation: from token {k} it gives "
                f"{got[k:k + 4]}, the slots {want[k:k + 4]}"
            )
    return family
