"""Realistic chunkings without tokenizers, for the loss tests.

A row is random text (words in the GPT-2 byte-level spelling, `Ġ` for a leading space,
`Ċ` newlines) cut into blocks by special-token runs. Each block is segmented into
tokens twice, by two different random segmenters (the teacher's and the student's;
the student may be byte-level). Chunks then follow the rules of the alignment:

- unconstrained: cut wherever both segmentations have a token boundary at the same
  byte offset; a special run (1-2 teacher tokens against 1-3 student tokens) is one
  chunk of its own;
- space: unions of unconstrained chunks, cut only before tokens that start with `Ġ`
  on both sides, or after a special run;
- unbiased: cut only where a (pseudo-random) bias of the pair of last tokens is below
  a threshold, or after a special run.

Special tokens only one side has (a BOS the other family lacks) are in no chunk (-1),
as are padding tokens. With some probability a prompt prefix (whole chunks) is loss-
masked on both sides. `make_batch` returns a batch dict with the keys of
ARCHITECTURE.md; `Row` keeps the token strings so tokenizer-based alignments can be
compared with these later.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

CHUNKINGS = ("unconstrained", "space", "unbiased")
_LETTERS = "abcdefghijklmnop"


@dataclasses.dataclass
class Row:
    """One aligned row pair before padding."""

    teacher_tokens: list[str]
    student_tokens: list[str]
    teacher_special: list[bool]
    student_special: list[bool]
    chunks_teacher: dict[str, list[int]]
    chunks_student: dict[str, list[int]]
    prompt_chunks: int  # chunks (unconstrained) whose tokens are loss-masked


def _random_text(rng: np.random.Generator, n_words: int) -> str:
    words = []
    for i in range(n_words):
        word = "".join(rng.choice(list(_LETTERS), size=int(rng.integers(1, 8))))
        if rng.random() < 0.08:
            word += "."
        lead = "" if i == 0 else ("\u010a" if rng.random() < 0.05 else "\u0120")
        words.append(lead + word)
    return "".join(words)


def _segment(rng: np.random.Generator, text: str, max_len: int, word_bias: float) -> list[int]:
    """Cut offsets (exclusive of 0 and len) of a random segmentation of `text`.

    With probability `word_bias` a token boundary is placed before each `Ġ`, so most
    tokens start with a space as real subword tokenizers' do.
    """
    cuts = []
    last = 0
    for pos in range(1, len(text)):
        if text[pos] in "\u0120\u010a" and rng.random() < word_bias:
            cuts.append(pos)
            last = pos
        elif pos - last >= max_len or rng.random() < 1.0 / max_len:
            cuts.append(pos)
            last = pos
    return cuts


def _pieces(text: str, cuts: list[int]) -> list[tuple[int, int]]:
    bounds = [0, *cuts, len(text)]
    return [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


def _bias(teacher_token: str, student_token: str) -> float:
    return (zlib.crc32(f"{teacher_token}|{student_token}".encode()) % 10_000) / 10_000


def make_row(
    rng: np.random.Generator,
    *,
    student_bytes: bool,
    n_blocks: int,
    bias_threshold: float,
    prompt_prob: float = 0.5,
) -> Row:
    """One row pair with its three chunkings (see the module docstring)."""
    t_tok, s_tok, t_sp, s_sp = [], [], [], []
    t_chunk: dict[str, list[int]] = {c: [] for c in CHUNKINGS}
    s_chunk: dict[str, list[int]] = {c: [] for c in CHUNKINGS}
    counters = {c: 0 for c in CHUNKINGS}
    # Unconstrained chunks as (teacher tokens, student tokens, is_special, starts_space).
    units: list[tuple[list[str], list[str], bool]] = []

    def one_sided(side_tokens, side_special, side_chunks, token):
        side_tokens.append(token)
        side_special.append(True)
        for c in CHUNKINGS:
            side_chunks[c].append(-1)

    # A BOS only one family has: real token, in no chunk.
    lead_one_sided = rng.random() < 0.4
    if lead_one_sided:
        if rng.random() < 0.5:
            one_sided(t_tok, t_sp, t_chunk, "<bos_t>")
        else:
            one_sided(s_tok, s_sp, s_chunk, "<bos_s>")
    for block in range(n_blocks):
        if block > 0 or rng.random() < 0.5:
            n_t, n_s = int(rng.integers(1, 3)), int(rng.integers(1, 4))
            units.append(([f"<sp_t{i}>" for i in range(n_t)], [f"<sp_s{i}>" for i in range(n_s)], True))
        text = _random_text(rng, int(rng.integers(3, 12)))
        t_cuts = _segment(rng, text, max_len=4, word_bias=0.85)
        s_cuts = list(range(1, len(text))) if student_bytes else _segment(rng, text, 3, 0.7)
        common = sorted(set(t_cuts) & set(s_cuts))
        bounds = [0, *common, len(text)]
        t_pieces = _pieces(text, t_cuts)
        s_pieces = _pieces(text, s_cuts)
        for a, b in zip(bounds[:-1], bounds[1:]):
            units.append(
                (
                    [text[x:y] for x, y in t_pieces if a <= x and y <= b],
                    [text[x:y] for x, y in s_pieces if a <= x and y <= b],
                    False,
                )
            )

    for u, (teacher_part, student_part, special) in enumerate(units):
        nxt = units[u + 1] if u + 1 < len(units) else None
        for c in CHUNKINGS:
            t_chunk[c] += [counters[c]] * len(teacher_part)
            s_chunk[c] += [counters[c]] * len(student_part)
        t_tok += teacher_part
        s_tok += student_part
        t_sp += [special] * len(teacher_part)
        s_sp += [special] * len(student_part)
        counters["unconstrained"] += 1
        next_space = nxt is not None and not nxt[2] and nxt[0][0][0] == "\u0120" and nxt[1][0][0] == "\u0120"
        if special or next_space:
            counters["space"] += 1
        if special or _bias(teacher_part[-1], student_part[-1]) < bias_threshold:
            counters["unbiased"] += 1
    n_units = len(units)
    prompt_chunks = int(rng.integers(1, max(2, n_units // 2))) if rng.random() < prompt_prob else 0
    return Row(t_tok, s_tok, t_sp, s_sp, t_chunk, s_chunk, prompt_chunks)


def _fit(row: Row, len_teacher: int, len_student: int) -> Row:
    """Drops trailing chunks until both sides fit their lengths (whole chunks only)."""
    uc_t = row.chunks_teacher["unconstrained"]
    uc_s = row.chunks_student["unconstrained"]

    def keep(chunk_ids: list[int], k: int) -> int:
        # Tokens are in text order, chunk ids increase: keep the prefix before chunk k
        # (a leading no-chunk token stays).
        return next((i for i, c in enumerate(chunk_ids) if c >= k), len(chunk_ids))

    for k in range(max(uc_t + uc_s + [-1]) + 1, -1, -1):
        keep_t, keep_s = keep(uc_t, k), keep(uc_s, k)
        if keep_t <= len_teacher and keep_s <= len_student:
            return Row(
                row.teacher_tokens[:keep_t],
                row.student_tokens[:keep_s],
                row.teacher_special[:keep_t],
                row.student_special[:keep_s],
                {c: v[:keep_t] for c, v in row.chunks_teacher.items()},
                {c: v[:keep_s] for c, v in row.chunks_student.items()},
                min(row.prompt_chunks, max(k - 1, 0)),
            )
    raise AssertionError(f"row does not fit even empty: {len_teacher=}, {len_student=}")


def make_batch(
    seed: int,
    batch_size: int,
    len_teacher: int,
    len_student: int,
    vocab_teacher: int,
    vocab_student: int,
    *,
    student_bytes: bool = False,
    bias_threshold: float = 0.5,
    prompt_prob: float = 0.5,
    min_padding: int = 0,
) -> tuple[dict[str, np.ndarray], list[Row]]:
    """A padded batch dict (keys of ARCHITECTURE.md) and its rows.

    Token ids: a stable per-string id in `[0, vocab - 8)`, special tokens in the last 8.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(batch_size):
        n_blocks = int(rng.integers(1, 4))
        row = make_row(
            rng,
            student_bytes=student_bytes,
            n_blocks=max(1, n_blocks * max(len_teacher, len_student) // 24),
            bias_threshold=bias_threshold,
            prompt_prob=prompt_prob,
        )
        budget_t = len_teacher - int(rng.integers(min_padding, min_padding + 4))
        budget_s = len_student - int(rng.integers(min_padding, min_padding + 4))
        rows.append(_fit(row, max(budget_t, 1), max(budget_s, 1)))

    def ids(tokens, special, vocab):
        out = []
        for tok, sp in zip(tokens, special):
            h = zlib.crc32(tok.encode())
            out.append(vocab - 8 + h % 8 if sp else h % (vocab - 8))
        return out

    batch: dict[str, np.ndarray] = {}
    for side, length, vocab in (("teacher", len_teacher, vocab_teacher), ("student", len_student, vocab_student)):
        input_ids = np.zeros((batch_size, length), np.int32)
        attention = np.zeros((batch_size, length), bool)
        loss_mask = np.zeros((batch_size, length), bool)
        chunk_arrays = {c: np.full((batch_size, length), -1, np.int32) for c in CHUNKINGS}
        for b, row in enumerate(rows):
            tokens = getattr(row, f"{side}_tokens")
            special = getattr(row, f"{side}_special")
            chunks = getattr(row, f"chunks_{side}")
            n = len(tokens)
            input_ids[b, :n] = ids(tokens, special, vocab)
            attention[b, :n] = True
            uc = np.asarray(chunks["unconstrained"], np.int64)
            in_prompt = np.zeros(n, bool)
            if row.prompt_chunks:
                # Everything before the first token of chunk `prompt_chunks`.
                first = np.nonzero(uc >= row.prompt_chunks)[0]
                in_prompt[: first[0] if len(first) else n] = True
            loss_mask[b, :n] = ~in_prompt
            for c in CHUNKINGS:
                chunk_arrays[c][b, :n] = chunks[c]
        batch[f"input_ids_{side}"] = input_ids
        batch[f"attention_mask_{side}"] = attention
        batch[f"loss_mask_{side}"] = loss_mask
        for c in CHUNKINGS:
            batch[f"chunks_{side}_{c}"] = chunk_arrays[c]
    return batch, rows
