"""The GPT-2 byte-level alphabet and limits shared across the package.

Every tokenizer seen through `tokenkit.byteify` spells its tokens in the GPT-2 byte-level
alphabet: each of the 256 byte values is written as one printable character, so any byte
string has exactly one spelling and that spelling contains no whitespace or control
characters (space is `Ġ`, newline is `Ċ`). Two tokens from different tokenizers are the
same piece of text exactly when their spellings are equal.

The table is computed by the standard GPT-2 rule rather than pasted, so there is one
source of truth for it: bytes that are already printable Latin-1 characters spell
themselves; the remaining 68 bytes take the code points 256, 257, ... in byte order.
"""

from __future__ import annotations

import types
from collections.abc import Mapping

# Longest subword (in bytes) looked up when expanding byte-level input ids with the
# embeddings of a subword vocabulary (`models.expand`).
EXPAND_INPUT_IDS_MAX_LENGTH = 16

# Generous bound on characters per token: `prompts.encode_prompt` cuts text longer than
# this many characters per remaining token before tokenizing, so that encoding a huge
# document for a short context does not tokenize the whole document.
MAX_CHARS_PER_TOKEN = 16


def _printable_bytes() -> frozenset[int]:
    """Bytes whose Latin-1 character is visible and not whitespace: they spell themselves."""
    ranges = (
        range(ord("!"), ord("~") + 1),  # ASCII printables
        range(ord("¡"), ord("¬") + 1),  # Latin-1 before the soft hyphen
        range(ord("®"), ord("ÿ") + 1),  # Latin-1 after the soft hyphen
    )
    return frozenset(b for r in ranges for b in r)


def _byte_chars() -> tuple[str, ...]:
    printable = _printable_bytes()
    chars = []
    next_free = 256
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(next_free))
            next_free += 1
    return tuple(chars)


BYTE_CHARS: tuple[str, ...] = _byte_chars()
"""`BYTE_CHARS[b]` is the character spelling byte `b` (index = byte value)."""

BYTES_TO_CHARS: Mapping[int, str] = types.MappingProxyType(dict(enumerate(BYTE_CHARS)))
CHARS_TO_BYTES: Mapping[str, int] = types.MappingProxyType(
    {char: byte for byte, char in enumerate(BYTE_CHARS)}
)

# str.translate tables. Decoding maps every character outside the alphabet to U+0100,
# which is not Latin-1 encodable, so `chars_to_bytes` cannot silently accept a raw
# space or other non-alphabet character that happens to be below 256.
_ENCODE_TABLE = {byte: char for byte, char in enumerate(BYTE_CHARS)}
_DECODE_TABLE = {cp: 0x100 for cp in range(256)}
_DECODE_TABLE.update({ord(char): byte for byte, char in enumerate(BYTE_CHARS)})


def bytes_to_chars(data: bytes) -> str:
    """Spells a byte string in the byte-level alphabet (one character per byte)."""
    return data.decode("latin-1").translate(_ENCODE_TABLE)


def chars_to_bytes(spelling: str) -> bytes:
    """Reads a byte-level spelling back into bytes.

    Raises:
      ValueError: a character is not in the byte-level alphabet (e.g. a raw space or a
        SentencePiece `▁`); the message names it and its position.
    """
    try:
        return spelling.translate(_DECODE_TABLE).encode("latin-1")
    except UnicodeEncodeError as e:
        bad = spelling[e.start]
        raise ValueError(
            f"{bad!r} (U+{ord(bad):04X}) at position {e.start} of {spelling!r} is not in the "
            "byte-level alphabet (expected one of the 256 characters of "
            "tokenkit.constants.BYTE_CHARS, e.g. 'Ġ' for a space, 'Ċ' for a newline)"
        ) from None


def is_byte_level(spelling: str) -> bool:
    """Whether every character of `spelling` is in the byte-level alphabet."""
    return all(c in CHARS_TO_BYTES for c in spelling)
