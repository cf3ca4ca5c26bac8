"""Byte-level BPE tokenizers in the style of Llama 3 and Qwen2, trained with HF `tokenizers`.

The trainer is deterministic for a fixed input order: its alphabet is sorted, token ids
follow merge order, and ties between equally frequent pairs break by pair ids.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from absl import logging
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers import processors, trainers

from tools.tiny_world.tokenizer_specs import TokenizerSpec, fit_to_size


def _empty_tokenizer(spec: TokenizerSpec) -> Tokenizer:
    # Llama 3 looks whole pre-tokens up in the vocabulary before merging
    # (`ignore_merges`); Qwen2 always merges. Qwen2 also normalises to NFC.
    tokenizer = Tokenizer(models.BPE(ignore_merges=spec.family == "Llama3"))
    if spec.family == "Qwen2":
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(spec.pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def force_tokens(tokenizer: Tokenizer, tokens: Sequence[str]) -> tuple[Tokenizer, list[str]]:
    """Makes each of `tokens` (byte-level spelling) a single token by appending merges.

    A missing token is first split by the current model into pieces p1..pk; the merges
    (p1, p2), (p1p2, p3), ... are appended at the lowest priority, so they only join what
    the existing merges have left and change nothing else about earlier merges.
    Returns the new tokenizer and the tokens added to the vocabulary.
    """
    state = json.loads(tokenizer.to_str())
    model = state["model"]
    vocab: dict[str, int] = model["vocab"]
    merges: list[list[str]] = model["merges"]
    added: list[str] = []
    for token in tokens:
        if token in vocab:
            continue
        current = models.BPE(vocab=dict(vocab), merges=[tuple(m) for m in merges])
        pieces = [t.value for t in current.tokenize(token)]
        joined = pieces[0]
        for piece in pieces[1:]:
            merges.append([joined, piece])
            joined += piece
            if joined not in vocab:
                vocab[joined] = len(vocab)
                added.append(joined)
        logging.info("forced %r into the vocabulary from pieces %s", token, pieces)
    forced = Tokenizer.from_str(json.dumps(state, ensure_ascii=False))
    for token in tokens:
        pieces = [t.value for t in forced.model.tokenize(token)]
        if pieces != [token]:
            raise RuntimeError(f"forcing {token!r} failed: it still splits into {pieces}")
    return forced, added


def train_bpe(spec: TokenizerSpec, texts: Sequence[str]) -> Tokenizer:
    """Trains the byte-level BPE of `spec` on `texts` and completes it like the family.

    Regular tokens come first (the 256 byte tokens, then merges), the template tokens are
    forced in, and the special tokens follow at the end, as in the real families; the
    total is exactly `spec.vocab_size`.
    """
    if spec.kind != "byte-level BPE":
        raise ValueError(f"{spec.name} is a {spec.kind} tokenizer, not byte-level BPE")
    def train(size: int) -> tuple[Tokenizer, int]:
        tokenizer = _empty_tokenizer(spec)
        trainer = trainers.BpeTrainer(
            vocab_size=size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
        tokenizer, added = force_tokens(tokenizer, spec.template_tokens)
        logging.info("%s: trained %d tokens, forced %d more (%s)", spec.name,
                     tokenizer.get_vocab_size() - len(added), len(added), added)
        return tokenizer, tokenizer.get_vocab_size()

    tokenizer = fit_to_size(spec.vocab_size - len(spec.special_tokens), train, spec.name)
    tokenizer.add_special_tokens(list(spec.special_tokens))
    byte_level = processors.ByteLevel(trim_offsets=False)
    if spec.add_bos:
        bos_id = tokenizer.token_to_id(spec.bos_token)
        template = processors.TemplateProcessing(
            single=f"{spec.bos_token} $A",
            pair=f"{spec.bos_token} $A {spec.bos_token} $B:1",
            special_tokens=[(spec.bos_token, bos_id)],
        )
        tokenizer.post_processor = processors.Sequence([byte_level, template])
    else:
        tokenizer.post_processor = byte_level
    return tokenizer
