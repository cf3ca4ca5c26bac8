"""Chat-template modes: texts and messages -> prompts with slot markers -> ids.

Prompts are written once, family-neutrally, with the slot markers of
`tokenkit.families` (`<|<bos>|>`, `<|<start_header>|>`, `<|<user_name>|>`, ...), and
`encode_prompt` fills in the tokens of each tokenizer's family. This is how a teacher
and a student with different chat templates see the same conversation, and how the
ids match what each family's own chat template would produce.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterator, Mapping, Sequence

from tokenkit import constants, families
from tokenkit.byteify import ByteifyTokenizer

_BOS, _EOS, _EOT = (families.slot_marker(s) for s in ("bos", "eos", "eot"))
_START, _END = families.slot_marker("start_header"), families.slot_marker("end_header")
_USER, _ASSISTANT = families.slot_marker("user_name"), families.slot_marker("assistant_name")

_MARKER_SLOTS = {families.slot_marker(s): s for s in families.SLOTS}

CHAT_TEMPLATE_MODES: tuple[str, ...] = (
    "surround_instruct",
    "direct_encode",
    "direct_encode_no_force_eos",
    "direct_encode_no_force_bos",
    "direct_encode_no_force_bos_no_force_eos",
)

ROLE_SLOTS: Mapping[str, str] = {
    "system": "system_name",
    "user": "user_name",
    "assistant": "assistant_name",
}


def preprocess_prompt(prompt: str, chat_template_mode: str) -> str:
    """Wraps a raw text in slot markers according to a chat-template mode.

    Modes:
      surround_instruct: the text is one user turn, followed by the header of an
        assistant turn (for generating an answer).
      direct_encode: the text as is, with bos before it and eos after it unless it
        already starts with bos / ends with eot or eos.
      direct_encode_no_force_eos, direct_encode_no_force_bos: only one of the two.
      direct_encode_no_force_bos_no_force_eos: the text unchanged.
    """
    if chat_template_mode not in CHAT_TEMPLATE_MODES:
        raise ValueError(
            f"Unknown chat template mode {chat_template_mode!r}; valid modes: "
            f"{', '.join(CHAT_TEMPLATE_MODES)}"
        )
    if chat_template_mode == "surround_instruct":
        return f"{_BOS}{_START}{_USER}{_END}{prompt}{_EOT}{_START}{_ASSISTANT}{_END}"
    force_bos = "no_force_bos" not in chat_template_mode
    force_eos = "no_force_eos" not in chat_template_mode
    if force_bos and not prompt.startswith(_BOS):
        prompt = _BOS + prompt
    if force_eos and not prompt.endswith((_EOT, _EOS)):
        prompt = prompt + _EOS
    return prompt


def preprocess_messages(
    messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = False
) -> str:
    """A conversation (`[{"role": ..., "content": ...}, ...]`) as a slot-marker prompt.

    Each message becomes `<start_header><role_name><end_header>content<eot>` after one
    leading bos; `add_generation_prompt` appends the header of an assistant turn.
    """
    parts = [_BOS]
    for index, message in enumerate(messages):
        try:
            role, content = message["role"], message["content"]
        except (KeyError, TypeError):
            raise ValueError(
                f"Message {index} must be a mapping with 'role' and 'content', got {message!r}"
            ) from None
        if role not in ROLE_SLOTS:
            raise ValueError(
                f"Message {index} has unknown role {role!r}; valid roles: {', '.join(ROLE_SLOTS)}"
            )
        role_marker = families.slot_marker(ROLE_SLOTS[role])
        parts.append(f"{_START}{role_marker}{_END}{content}{_EOT}")
    if add_generation_prompt:
        parts.append(f"{_START}{_ASSISTANT}{_END}")
    return "".join(parts)


class EncodedPrompt(tuple):
    """`(ids, regular_token_indices)`, unpacking as a pair, plus `truncated`.

    `regular_token_indices[k]` is -1 where token k came from a slot or a literal special
    token, else the running index of token k among the regular (text) tokens.
    `truncated` is True when `max_length` cut something off the prompt, so callers can
    count truncated examples.
    """

    truncated: bool

    def __new__(
        cls, ids: list[int], regular_token_indices: list[int], *, truncated: bool = False
    ) -> EncodedPrompt:
        self = super().__new__(cls, (ids, regular_token_indices))
        self.truncated = truncated
        return self

    @property
    def ids(self) -> list[int]:
        return self[0]

    @property
    def regular_token_indices(self) -> list[int]:
        return self[1]


# Per tokenizer: (the special-tokens mapping the pattern was built from, the pattern).
_SPLITTERS: weakref.WeakKeyDictionary[ByteifyTokenizer, tuple[Mapping[str, int], re.Pattern]] = (
    weakref.WeakKeyDictionary()
)


def _splitter(tokenizer: ByteifyTokenizer) -> re.Pattern:
    """Matches slot markers and literal special tokens, longest first."""
    specials = tokenizer.special_tokens_encoder
    cached = _SPLITTERS.get(tokenizer)
    if cached is not None and cached[0] is specials:
        return cached[1]
    markers = sorted(families.SLOT_MARKERS, key=len, reverse=True)
    literals = sorted(set(specials) - set(markers), key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(t) for t in markers + literals))
    _SPLITTERS[tokenizer] = (specials, pattern)
    return pattern


def _segments(prompt: str, pattern: re.Pattern) -> Iterator[tuple[str, str]]:
    """(kind, text) in order; kind is "text", "slot" or "special"."""
    position = 0
    for match in pattern.finditer(prompt):
        if match.start() > position:
            yield "text", prompt[position : match.start()]
        token = match.group()
        yield ("slot", _MARKER_SLOTS[token]) if token in _MARKER_SLOTS else ("special", token)
        position = match.end()
    if position < len(prompt):
        yield "text", prompt[position:]


def encode_prompt(
    prompt: str, tokenizer: ByteifyTokenizer, max_length: int | None = None
) -> EncodedPrompt:
    """Encodes a slot-marker prompt with `tokenizer`'s family filling the slots.

    Slot markers become the family's tokens (a slot the family lacks becomes nothing),
    special tokens written literally in the text (e.g. `<start_of_turn>`) become their
    ids, and the text between them is encoded without adding special tokens. With `max_length`, at most that
    many ids are returned; text far beyond the limit (more than
    `constants.MAX_CHARS_PER_TOKEN` characters per remaining token) is not tokenized.

    Returns:
      `EncodedPrompt`: unpacks as `(ids, regular_token_indices)`; `.truncated` says
      whether anything was cut.
    """
    if max_length is not None and max_length < 0:
        raise ValueError(f"max_length must be >= 0 or None, got {max_length}")
    family = tokenizer.family
    ids: list[int] = []
    regular: list[int] = []
    n_regular = 0
    truncated = False
    for kind, value in _segments(prompt, _splitter(tokenizer)):
        if max_length is not None and len(ids) >= max_length:
            if kind == "slot" and family.slot(value) is None:
                continue  # contributes no tokens, so nothing is lost
            truncated = True
            break
        if kind == "text":
            if max_length is not None:
                char_limit = constants.MAX_CHARS_PER_TOKEN * (max_length - len(ids))
                if len(value) > char_limit:
                    value = value[:char_limit]
                    truncated = True
            new = tokenizer.encode(value, add_special_tokens=False)
            ids.extend(new)
            regular.extend(range(n_regular, n_regular + len(new)))
            n_regular += len(new)
            if truncated:
                break  # the rest of the prompt lies beyond the cut text
        elif kind == "slot":
            tokens = family.slot(value) or ()
            ids.extend(tokenizer.convert_tokens_to_ids(tokens))
            regular.extend([-1] * len(tokens))
        else:
            ids.append(tokenizer.special_tokens_encoder[value])
            regular.append(-1)
    if max_length is not None and len(ids) > max_length:
        ids, regular = ids[:max_length], regular[:max_length]
        truncated = True
    return EncodedPrompt(ids, regular, truncated=truncated)
