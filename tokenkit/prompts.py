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
_ROLE_NAME_SLOTS: Mapping[str, str] = {slot: role for role, slot in ROLE_SLOTS.items()}


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


# What part of a conversation a token belongs to (`EncodedPrompt.parts`).
PARTS: tuple[str, ...] = ("text", "header", "content", "end", "special")


class EncodedPrompt(tuple):
    """`(ids, regular_token_indices)`, unpacking as a pair, plus what each token is.

    `regular_token_indices[k]` is -1 where token k came from a slot or a literal special
    token, else the running index of token k among the regular (text) tokens.
    `truncated` is True when `max_length` cut something off the prompt, so callers can
    count truncated examples.

    Per token, read off the slot markers of the prompt:
      messages[k]: index of the conversation message token k belongs to (a message
        starts at its `<start_header>` marker, or at its role marker where a family has
        no header start), -1 outside any message (a leading bos, a plain text);
      parts[k]: `header` (the message's header: start, role name, end of header),
        `content` (the message's text), `end` (its end-of-turn / eos tokens),
        `text` (text outside any message), `special` (other slots and literal specials);
    and `message_roles[m]` is the role (`system`, `user`, `assistant`) of message m.
    """

    truncated: bool
    messages: list[int]
    parts: list[str]
    message_roles: list[str]

    def __new__(
        cls,
        ids: list[int],
        regular_token_indices: list[int],
        *,
        truncated: bool = False,
        messages: list[int] | None = None,
        parts: list[str] | None = None,
        message_roles: list[str] | None = None,
    ) -> EncodedPrompt:
        self = super().__new__(cls, (ids, regular_token_indices))
        self.truncated = truncated
        self.messages = [-1] * len(ids) if messages is None else messages
        self.parts = ["text"] * len(ids) if parts is None else parts
        self.message_roles = [] if message_roles is None else message_roles
        return self

    @property
    def ids(self) -> list[int]:
        return self[0]

    @property
    def regular_token_indices(self) -> list[int]:
        return self[1]

    def roles(self) -> list[str | None]:
        """The role of the message each token belongs to (None outside messages)."""
        return [self.message_roles[m] if m >= 0 else None for m in self.messages]

    def mask(self, *, roles: Sequence[str], parts: Sequence[str], message: int | None = None) -> list[bool]:
        """Which tokens belong to a message of one of `roles` and are one of `parts`
        (of message number `message` only, counted from the end if negative)."""
        bad = sorted(set(parts) - set(PARTS))
        if bad:
            raise ValueError(f"Unknown parts {bad}; valid: {', '.join(PARTS)}.")
        if message is not None and message < 0:
            message += len(self.message_roles)
        token_roles = self.roles()
        return [
            role in roles and part in parts and (message is None or m == message)
            for role, part, m in zip(token_roles, self.parts, self.messages)
        ]


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
    ids, and the text between them is encoded without adding special tokens. With
    `max_length`, at most that many ids are returned; text far beyond the limit (more
    than `constants.MAX_CHARS_PER_TOKEN` characters per remaining token) is not
    tokenized.

    This is the one place where a conversation becomes ids: the training data (loss
    masks of assistant turns), the in-run evaluation (which tokens are the answer) and
    the lm-eval backend all read the per-token structure it returns.

    Returns:
      `EncodedPrompt`: unpacks as `(ids, regular_token_indices)`; `.truncated` says
      whether anything was cut; `.messages`, `.parts`, `.message_roles` say which
      message and which part of it each token is.
    """
    if max_length is not None and max_length < 0:
        raise ValueError(f"max_length must be >= 0 or None, got {max_length}")
    family = tokenizer.family
    ids: list[int] = []
    regular: list[int] = []
    messages: list[int] = []
    parts: list[str] = []
    roles: list[str] = []
    n_regular = 0
    truncated = False
    message = -1  # the message being read, -1 before the first
    state = "text"  # what text read now is: text / header / content

    def add(new: Sequence[int], part: str, is_regular: bool) -> None:
        nonlocal n_regular
        ids.extend(new)
        messages.extend([message] * len(new))
        parts.extend([part] * len(new))
        if is_regular:
            regular.extend(range(n_regular, n_regular + len(new)))
            n_regular += len(new)
        else:
            regular.extend([-1] * len(new))

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
            add(tokenizer.encode(value, add_special_tokens=False), state, True)
            if truncated:
                break  # the rest of the prompt lies beyond the cut text
        elif kind == "slot":
            part = "special"
            if value == "start_header" or (value in _ROLE_NAME_SLOTS and state != "header"):
                message, state = message + 1, "header"
                roles.append(_ROLE_NAME_SLOTS.get(value, "user"))
                part = "header"
            elif value in _ROLE_NAME_SLOTS and state == "header":
                roles[message] = _ROLE_NAME_SLOTS[value]
                part = "header"
            elif value == "end_header" and state == "header":
                state, part = "content", "header"
            elif value in ("eot", "eos") and state == "content":
                state, part = "text", "end"
            elif value in ("eot", "eos") and message >= 0 and parts and parts[-1] == "end":
                part = "end"  # eos right after a message's eot
            add(tokenizer.convert_tokens_to_ids(family.slot(value) or ()), part, False)
        else:
            add([tokenizer.special_tokens_encoder[value]], "special", False)
    if max_length is not None and len(ids) > max_length:
        ids, regular = ids[:max_length], regular[:max_length]
        messages, parts = messages[:max_length], parts[:max_length]
        truncated = True
    return EncodedPrompt(
        ids, regular, truncated=truncated, messages=messages, parts=parts, message_roles=roles
    )


def encode_text(text: str, tokenizer: ByteifyTokenizer, *, bos: bool) -> list[int]:
    """Ids of a text (slot markers filled, literal special tokens kept) starting with the
    family's bos exactly when `bos` is set and the family has one: a leading bos is
    added, or removed, as needed, so a prompt written with `<|<bos>|>` obeys a model's
    `add_bos=False` too."""
    ids = list(encode_prompt(text, tokenizer).ids)
    bos_id = tokenizer.bos_token_id
    if bos_id is None:
        return ids
    starts = bool(ids) and ids[0] == bos_id
    if bos and not starts:
        return [bos_id] + ids
    if not bos and starts:
        return ids[1:]
    return ids
