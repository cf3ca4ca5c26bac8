"""What the three tiny-world tokenizers are: family, kind, size, special tokens, template.

Each spec mirrors a real model family closely enough that tokenkit's family handling
(special tokens, chat-template slots, byte spelling) meets the same situations it meets
with the real tokenizers, at a size that trains in seconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TypeVar

from absl import logging

T = TypeVar("T")

# Pre-tokenizer patterns of the real families. Llama 3 keeps runs of up to three digits
# together; Qwen2 splits digits one by one. Everything else is the GPT-4-style pattern.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Chat templates, written for this project. They render exactly like the families' own
# templates: Llama 3 and Gemma strip each message's surrounding whitespace, Qwen2 does
# not; Gemma calls the assistant "model" and has no system role.
LLAMA3_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first -%}{{ bos_token }}{%- endif -%}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{ message['content'] | trim }}{{ '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif -%}"
)
QWEN2_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
GEMMA2_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{ raise_exception('Gemma2 has no system role; put instructions in the first user turn') }}"
    "{%- endif -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('roles must alternate user, assistant, user, ... starting with user') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\\n' }}{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
    """One tiny-world tokenizer.

    Attributes:
      name: directory under `data/tokenizers/`.
      family: the model family whose conventions it follows (tokenkit family name).
      kind: `"byte-level BPE"` or `"SentencePiece unigram"`.
      vocab_size: size the trainer aims for, special tokens included; forcing the
        template tokens in may add a few (see `template_tokens`).
      special_tokens: the family's special tokens, in id order.
      bos_token, eos_token, pad_token, unk_token: as the family's instruct tokenizer
        sets them (None where it has none).
      add_bos: whether encoding prepends `bos_token`, like the family.
      chat_template: Jinja template rendering the family's chat format.
      template_tokens: tokens the chat template needs as single tokens, in the GPT-2
        byte-level spelling (`Ġ` space, `Ċ` newline).
      pattern: the pre-tokenizer split regex (byte-level BPE only).
    """

    name: str
    family: str
    kind: str
    vocab_size: int
    special_tokens: tuple[str, ...]
    bos_token: str | None
    eos_token: str
    pad_token: str | None
    unk_token: str | None
    add_bos: bool
    chat_template: str
    template_tokens: tuple[str, ...]
    pattern: str | None = None


LLAMA3 = TokenizerSpec(
    name="llama3_bpe",
    family="Llama3",
    kind="byte-level BPE",
    vocab_size=4096,
    special_tokens=("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                    "<|end_header_id|>", "<|eot_id|>"),
    bos_token="<|begin_of_text|>",
    eos_token="<|eot_id|>",
    pad_token=None,  # Llama 3 ships without one; tokenkit's family pads with <|end_of_text|>
    unk_token=None,
    add_bos=True,
    chat_template=LLAMA3_CHAT_TEMPLATE,
    template_tokens=("ĊĊ", "system", "user", "assistant"),
    pattern=LLAMA3_PATTERN,
)

QWEN2 = TokenizerSpec(
    name="qwen2_bpe",
    family="Qwen2",
    kind="byte-level BPE",
    vocab_size=3000,
    special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
    bos_token=None,
    eos_token="<|im_end|>",
    pad_token="<|endoftext|>",
    unk_token=None,
    add_bos=False,
    chat_template=QWEN2_CHAT_TEMPLATE,
    template_tokens=("Ċ", "system", "user", "assistant"),
    pattern=QWEN2_PATTERN,
)

GEMMA2 = TokenizerSpec(
    name="gemma2_sp",
    family="Gemma2",
    kind="SentencePiece unigram",
    vocab_size=4000,
    # <pad>=0, <eos>=1, <bos>=2, <unk>=3 like Gemma; the turn markers follow.
    special_tokens=("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
    bos_token="<bos>",
    eos_token="<eos>",
    pad_token="<pad>",
    unk_token="<unk>",
    add_bos=True,
    chat_template=GEMMA2_CHAT_TEMPLATE,
    template_tokens=("Ċ", "user", "model"),
)

SPECS: dict[str, TokenizerSpec] = {s.name: s for s in (LLAMA3, QWEN2, GEMMA2)}


def get_spec(name: str) -> TokenizerSpec:
    if name not in SPECS:
        raise ValueError(f"unknown tiny-world tokenizer {name!r}; valid: {', '.join(SPECS)}")
    return SPECS[name]


def fit_to_size(target: int, train: Callable[[int], tuple[T, int]], name: str) -> T:
    """Trains for an exact final vocabulary size despite tokens forced in afterwards.

    `train(size)` trains with `size` entries, forces the template tokens in and returns
    the result and its final size. When forcing added tokens, training is repeated with
    correspondingly fewer entries (usually once) until the final size is `target`.
    """
    size = target
    for _ in range(4):
        result, final = train(size)
        if final == target:
            return result
        size -= final - target
    logging.warning("%s: vocabulary has %d entries, not %d, after 4 attempts", name, final,
                    target)
    return result
