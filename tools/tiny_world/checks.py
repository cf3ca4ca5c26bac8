"""Checks a built tiny-world tokenizer must pass; the build fails on the first that does not.

- lossless: `decode(encode(text)) == text` for every text, without special tokens;
- the chat template's tokens are single tokens in the byte-level spelling;
- a rendered conversation tokenizes into the family's header/turn token runs;
- the fast twin of the SentencePiece model gives exactly SentencePiece's ids.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import sentencepiece as spm

from tokenkit.constants import BYTE_CHARS, bytes_to_chars
from tokenkit.progress import Progress
from tools.tiny_world.tokenizer_specs import TokenizerSpec

_BYTE_PIECE = re.compile(r"<0x([0-9A-F]{2})>")

# A two-turn conversation and the token runs its rendering must contain, per family, in
# byte-level spelling (special tokens as they are).
CONVERSATION = [
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "5"},
    {"role": "user", "content": "And 4 + 4?"},
    {"role": "assistant", "content": "8"},
]
# Texts on which a converted SentencePiece model is most likely to part ways with
# SentencePiece: literal byte-piece names, runs of spaces and newlines, rare characters.
# (Special tokens written in the text, like "<bos>", are meant to differ: transformers
# reads them as the special token, SentencePiece as text, as with the real Gemma.)
SENTENCEPIECE_EDGE_CASES = (
    "<0x41>", "a<0x0A>b", "<0xZZ>", "<unk", "\n\n\n", "   ", "\t\t x", " leading",
    "trailing ", "x\u200dy", "\U0001f469\u200d\U0001f52c", "ﬁ ｆｕｌｌ ①", "\x00\x01",
    "taltaltal lotaltal", "1234567890", "e\u0301", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
)
TEMPLATE_RUNS = {
    "Llama3": [["<|begin_of_text|>", "<|start_header_id|>", "user", "<|end_header_id|>", "ĊĊ"],
               ["<|eot_id|>", "<|start_header_id|>", "assistant", "<|end_header_id|>", "ĊĊ"]],
    "Qwen2": [["<|im_start|>", "user", "Ċ"],
              ["<|im_end|>", "Ċ", "<|im_start|>", "assistant", "Ċ"]],
    "Gemma2": [["<bos>", "<start_of_turn>", "user", "Ċ"],
               ["<end_of_turn>", "Ċ", "<start_of_turn>", "model", "Ċ"]],
}


def byte_spelling(token: str, spec: TokenizerSpec) -> str:
    """A regular token's GPT-2 byte-level spelling (`Ġ` space, `Ċ` newline).

    Byte-level BPE tokens are spelt that way already; SentencePiece pieces have `▁` for
    space and `<0xNN>` for byte-fallback bytes.
    """
    if spec.kind == "byte-level BPE":
        return token
    match = _BYTE_PIECE.fullmatch(token)
    if match:
        return BYTE_CHARS[int(match.group(1), 16)]
    return bytes_to_chars(token.replace("▁", " ").encode("utf-8"))


def byte_vocab(tokenizer, spec: TokenizerSpec) -> dict[str, int]:
    """Byte-level spelling -> id for the regular tokens of a transformers tokenizer.

    Where a byte-fallback piece and a normal piece spell the same bytes, the normal
    piece wins (it is the one the tokenizer actually produces).
    """
    special = set(spec.special_tokens)
    spelled: dict[str, int] = {}
    for token, token_id in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        if token in special:
            continue
        spelling = byte_spelling(token, spec)
        if spelling not in spelled or not _BYTE_PIECE.fullmatch(token):
            spelled[spelling] = token_id
    return spelled


def missing_template_tokens(tokenizer, spec: TokenizerSpec) -> list[str]:
    vocab = byte_vocab(tokenizer, spec)
    return [t for t in spec.template_tokens if t not in vocab]


def spelled_tokens(tokenizer, spec: TokenizerSpec, ids: Sequence[int]) -> list[str]:
    special = set(spec.special_tokens)
    out = []
    for token in tokenizer.convert_ids_to_tokens(list(ids)):
        out.append(token if token in special else byte_spelling(token, spec))
    return out


def template_runs_missing(tokenizer, spec: TokenizerSpec) -> list[list[str]]:
    """The family's expected token runs that the rendered conversation lacks."""
    ids = tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=False)
    tokens = spelled_tokens(tokenizer, spec, ids)
    joined = "\x00".join(tokens)
    return [run for run in TEMPLATE_RUNS[spec.family] if "\x00".join(run) not in joined]


def round_trip_failures(tokenizer, texts: Iterable[str], desc: str) -> list[str]:
    """Texts that do not decode back to themselves (empty list when all do)."""
    texts = list(texts)
    failures = []
    for text in Progress.wrap(texts, desc=desc, unit="texts"):
        ids = tokenizer.encode(text, add_special_tokens=False)
        if tokenizer.decode(ids) != text:
            failures.append(text)
    return failures


def sentencepiece_mismatches(model_bytes: bytes, tokenizer, texts: Iterable[str],
                             desc: str) -> list[tuple[str, list[int], list[int]]]:
    """(text, sentencepiece ids, fast ids) for every text where the two disagree."""
    processor = spm.SentencePieceProcessor(model_proto=model_bytes)
    texts = list(texts)
    mismatches = []
    for text in Progress.wrap(texts, desc=desc, unit="texts"):
        expected = processor.encode(text)
        got = tokenizer.encode(text, add_special_tokens=False)
        if expected != got:
            mismatches.append((text, expected, got))
    return mismatches
