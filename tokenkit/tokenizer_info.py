"""Tokenizer-pair data: token counts, tokenization-bias matrices, the MinED mapping.

*Token counts* of each tokenizer over a corpus give unigram probabilities.

*Bias matrices* say, for a teacher token `t` and a student token `s` where one's string
ends with the other's (a place where both tokenizations can end a chunk at the same
byte), how likely it is that the next tokens would have cut the text differently. For a
pretoken `x`, its *cover dict* lists every way the tokenizer can tokenize `x` followed by
more text: each valid tokenization whose last token reaches past the end of `x`, keyed by
the overhang. An overhang one tokenizer can produce and the other cannot is a source of
bias: `bias1[t, s]` sums the teacher unigram probabilities of the last tokens of such
teacher-only continuations, `bias2[t, s]` the student's. The `unbiased` chunking
(`tokenkit.align`) cuts only where both are small. Tokens that are only whitespace get
bias 1 (expensive to enumerate, and nearly always biased).

*MinED* maps each student token to the teacher token with minimum edit distance (the
identical token where there is one), for the MinED distillation baseline.

Files of a pair directory (the upstream's names, so its outputs load too):
`teacher_counts.json`, `student_counts.json` (`{id: count}`), `bias1_matrix.npz`,
`bias2_matrix.npz` (scipy sparse, `[teacher vocab, student vocab]`), `mined_mapping.npy`
(`int32[student vocab]`), `mined_distances.json` (`{student token: distance}`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging
from scipy import sparse

from tokenkit import constants
from tokenkit.progress import Progress

COUNTS_FILES = {"teacher": "teacher_counts.json", "student": "student_counts.json"}
BIAS_FILES = ("bias1_matrix.npz", "bias2_matrix.npz")
MINED_MAPPING_FILE = "mined_mapping.npy"
MINED_DISTANCES_FILE = "mined_distances.json"


# -------------------------------------------------------------------- counts


def record_texts(record: Mapping[str, Any]) -> list[str]:
    """The texts of a corpus record: its `text`, or the content of each message."""
    if record.get("text") is not None:
        return [record["text"]]
    return [message["content"] for message in record.get("messages") or ()]


def count_tokens(
    texts: Iterable[str], tokenizer: Any, *, total: int | None = None, batch_size: int = 256
) -> np.ndarray:
    """`int64[len(tokenizer)]`: how often each id occurs in `texts` (no special tokens added)."""
    counts = np.zeros(len(tokenizer), np.int64)
    progress = Progress(total, f"counting tokens ({tokenizer!r})", unit="texts")
    batch: list[str] = []

    def flush() -> None:
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            counts[:] += np.bincount(np.asarray(ids, np.int64), minlength=len(counts))[: len(counts)]
        progress.update(len(batch))
        batch.clear()

    for text in texts:
        batch.append(text)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    progress.close()
    return counts


def save_counts(path: str | Path, counts: np.ndarray) -> None:
    """Writes `{id: count}` for the ids that occur (the upstream's JSON layout)."""
    nonzero = np.flatnonzero(counts)
    Path(path).write_text(json.dumps({str(int(i)): int(counts[i]) for i in nonzero}, indent=1))


def load_counts(path: str | Path, vocab_size: int) -> np.ndarray:
    """Reads `save_counts`' JSON back into `int64[vocab_size]`."""
    counts = np.zeros(vocab_size, np.int64)
    for key, value in json.loads(Path(path).read_text()).items():
        token_id = int(key)
        if not 0 <= token_id < vocab_size:
            raise ValueError(f"{path}: token id {token_id} is outside the vocabulary (size {vocab_size})")
        counts[token_id] = value
    return counts


def unigram_probabilities(
    counts: np.ndarray, *, additive_smoothing: float = 1e-9, special_ids: Sequence[int] = ()
) -> np.ndarray:
    """`float64[V]`: `(count + additive_smoothing * total) / normalizer`.

    `special_ids` first get the largest count (special tokens are frequent in use but
    absent from raw text); the bias computation uses none, as upstream does.
    """
    counts = np.asarray(counts, np.float64).copy()
    if len(special_ids):
        counts[np.asarray(special_ids, np.int64)] = counts.max(initial=0.0)
    probs = counts + additive_smoothing * counts.sum()
    total = probs.sum()
    if total <= 0:
        raise ValueError("All token counts are zero: count tokens over a non-empty corpus first")
    return probs / total


# -------------------------------------------------------------------- bias


def candidate_pairs(tokenizer_teacher: Any, tokenizer_student: Any) -> list[tuple[str, str]]:
    """Pairs `(teacher token, student token)` where one string ends with the other.

    Found through suffix look-ups (each token's suffixes against the other vocabulary),
    linear in the vocabularies' total length; sorted by (teacher id, student id).
    """
    teacher, student = tokenizer_teacher.get_vocab(), tokenizer_student.get_vocab()
    pairs = set()
    for token in teacher:
        for start in range(len(token)):
            if token[start:] in student:
                pairs.add((token, token[start:]))
    for token in student:
        for start in range(len(token)):
            if token[start:] in teacher:
                pairs.add((token[start:], token))
    return sorted(pairs, key=lambda p: (teacher[p[0]], student[p[1]]))


def is_whitespace_only(token: str) -> bool:
    """Whether a byte-level token decodes to whitespace only (or nothing)."""
    return not constants.chars_to_bytes(token).decode("utf-8", errors="replace").strip()


class CoverSets:
    """Cover dicts of pretokens under one tokenizer (memoized tokenizations).

    Args:
      tokenizer: a `ByteifyTokenizer`; `backend_tokenize` (the model alone, on one
        pretoken) decides which tokenizations are valid.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._prefixes: dict[str, list[str]] = {}
        vocab = tokenizer.get_vocab()
        for token in sorted(vocab, key=vocab.__getitem__):  # id order: runs are reproducible
            for end in range(1, len(token) + 1):
                self._prefixes.setdefault(token[:end], []).append(token)
        self._tokenized: dict[str, list[str] | None] = {}
        self._covers: dict[str, dict[str, list[int]]] = {}

    def tokenize(self, text: str) -> list[str] | None:
        """`backend_tokenize(text)`, or None where `text` is not valid UTF-8."""
        if text not in self._tokenized:
            try:
                self._tokenized[text] = self.tokenizer.backend_tokenize(text)
            except UnicodeDecodeError:
                self._tokenized[text] = None
        return self._tokenized[text]

    def cover_dict(self, pretoken: str) -> dict[str, list[int]]:
        """Overhang past `pretoken` -> ids of a valid tokenization producing it.

        A tokenization counts when the tokenizer itself would produce it for its text:
        the tokenization of a prefix of `pretoken` followed by one token that starts
        with the rest of `pretoken` and goes past its end.
        """
        if pretoken in self._covers:
            return self._covers[pretoken]
        cover: dict[str, list[int]] = {}
        for cut in range(len(pretoken) - 1, -1, -1):
            head = self.tokenize(pretoken[:cut])
            if head is None:
                continue
            for last in self._prefixes.get(pretoken[cut:], ()):
                tokens = head + [last]
                text = "".join(tokens)
                if len(text) > len(pretoken) and self.tokenize(text) == tokens:
                    cover[text[len(pretoken) :]] = self.tokenizer.convert_tokens_to_ids(tokens)
        self._covers[pretoken] = cover
        return cover


def pair_bias(
    token_teacher: str,
    token_student: str,
    covers_teacher: CoverSets,
    covers_student: CoverSets,
    probs_teacher: np.ndarray,
    probs_student: np.ndarray,
) -> tuple[float, float]:
    """`(bias1, bias2)` of one pair: probability mass of one-sided continuations."""
    cover_teacher = covers_teacher.cover_dict(token_teacher)
    cover_student = covers_student.cover_dict(token_student)
    # fsum: exactly rounded, so the result does not depend on the order of the terms.
    bias1 = math.fsum(float(probs_teacher[ids[-1]]) for key, ids in cover_teacher.items() if key not in cover_student)
    bias2 = math.fsum(float(probs_student[ids[-1]]) for key, ids in cover_student.items() if key not in cover_teacher)
    return bias1, bias2


def bias_matrices(
    tokenizer_teacher: Any,
    tokenizer_student: Any,
    probs_teacher: np.ndarray,
    probs_student: np.ndarray,
) -> tuple[sparse.coo_matrix, sparse.coo_matrix]:
    """The two bias matrices over all candidate pairs (`[teacher vocab, student vocab]`)."""
    pairs = candidate_pairs(tokenizer_teacher, tokenizer_student)
    logging.info("%d candidate pairs", len(pairs))
    covers_teacher, covers_student = CoverSets(tokenizer_teacher), CoverSets(tokenizer_student)
    biases = np.zeros((len(pairs), 2))
    for k, (token_teacher, token_student) in enumerate(Progress.wrap(pairs, "pair biases", unit="pairs")):
        if is_whitespace_only(token_teacher) or is_whitespace_only(token_student):
            biases[k] = 1.0
        else:
            biases[k] = pair_bias(token_teacher, token_student, covers_teacher, covers_student, probs_teacher, probs_student)
    rows = np.asarray(tokenizer_teacher.convert_tokens_to_ids([p[0] for p in pairs]), np.int64)
    cols = np.asarray(tokenizer_student.convert_tokens_to_ids([p[1] for p in pairs]), np.int64)
    shape = (len(tokenizer_teacher), len(tokenizer_student))
    return (
        sparse.coo_matrix((biases[:, 0], (rows, cols)), shape=shape),
        sparse.coo_matrix((biases[:, 1], (rows, cols)), shape=shape),
    )


# -------------------------------------------------------------------- MinED


def edit_distances(source: str, candidates: np.ndarray) -> np.ndarray:
    """Levenshtein distances from `source` to each row of `candidates` (`[N, n]` code
    points, all of length n), by the dynamic program vectorized over candidates.

    Each row of the program takes the best of substitution and deletion, then closes
    over insertions with a running minimum (`min_k (d_k + j - k)`).
    """
    count, width = candidates.shape
    offsets = np.arange(width + 1)
    previous = np.broadcast_to(offsets, (count, width + 1)).astype(np.int32)
    for i, char in enumerate(source, start=1):
        substitute = previous[:, :-1] + (candidates != ord(char))
        delete = previous[:, 1:] + 1
        best = np.concatenate([np.full((count, 1), i, np.int32), np.minimum(substitute, delete)], axis=1)
        previous = np.minimum.accumulate(best - offsets, axis=1) + offsets
    return previous[:, width]


def mined_mapping(tokenizer_teacher: Any, tokenizer_student: Any) -> tuple[np.ndarray, dict[str, int]]:
    """Each student id -> the teacher id with minimum edit distance between their strings.

    A student token in the teacher vocabulary maps to it (distance 0). Ties go to the
    first teacher token in the upstream's scan order: by length then id, scanned from the
    short end for student tokens shorter than the median teacher token and from the long
    end otherwise. Student ids sharing a string share its mapping.

    Returns:
      `(int32[len(tokenizer_student)], {student token: distance})`.
    """
    teacher, student = tokenizer_teacher.get_vocab(), tokenizer_student.get_vocab()
    scan = sorted(teacher, key=lambda t: (len(t), teacher[t]))
    median_length = len(scan[len(scan) // 2])
    by_length: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for length in sorted({len(t) for t in scan}):
        tokens = [t for t in scan if len(t) == length]
        codes = np.array([[ord(c) for c in t] for t in tokens], np.int32).reshape(len(tokens), length)
        by_length[length] = (np.array([teacher[t] for t in tokens], np.int64), codes)
    rank = {teacher[t]: k for k, t in enumerate(scan)}

    best_of: dict[str, tuple[int, int]] = {}
    missing = [t for t in student if t not in teacher]
    for token in Progress.wrap(missing, "MinED mapping", unit="tokens"):
        best, winners = None, []
        for delta in _deltas(max(by_length, default=0)):
            if best is not None and abs(delta) > best:
                break
            if len(token) + delta not in by_length:
                continue
            ids, codes = by_length[len(token) + delta]
            distances = edit_distances(token, codes)
            low = int(distances.min())
            if best is None or low < best:
                best, winners = low, []
            if low == best:
                winners.extend(ids[distances == low].tolist())
        forward = len(token) < median_length
        chosen = min(winners, key=lambda i: rank[i] if forward else -rank[i])
        best_of[token] = (chosen, best)
    for token in student:
        if token in teacher:
            best_of[token] = (teacher[token], 0)

    mapping = np.zeros(len(tokenizer_student), np.int32)
    for student_id in range(len(tokenizer_student)):
        try:
            spelled = tokenizer_student.convert_ids_to_tokens(student_id)
        except IndexError:  # a hole in the id range: never produced
            continue
        mapping[student_id] = best_of[spelled][0]
    return mapping, {token: best_of[token][1] for token in student}


def limit_mined_mapping(
    mapping: np.ndarray, distances: Mapping[str, int], tokenizer_student: Any, max_distance: int
) -> np.ndarray:
    """`mapping` with -1 (no teacher counterpart) for student ids whose token lies more
    than `max_distance` edits from its teacher token; the count is logged.

    `distances` is `mined_mapping`'s second result (`{student token: distance}`); an id
    whose token it lacks is an error, since the mapping then belongs to another pair.
    """
    limited = np.array(mapping, np.int32, copy=True)
    missing = []
    for student_id in range(len(limited)):
        try:
            spelled = tokenizer_student.convert_ids_to_tokens(student_id)
        except IndexError:  # a hole in the id range: never produced
            continue
        if spelled not in distances:
            missing.append(spelled)
        elif distances[spelled] > max_distance:
            limited[student_id] = -1
    if missing:
        raise ValueError(
            f"{len(missing)} student tokens have no MinED distance (first: {missing[:3]}); "
            "the mapping was computed for another tokenizer pair."
        )
    logging.info("MinED: %d of %d student ids lie more than %d edits from any teacher token "
                 "and get no mapped probability", int((limited < 0).sum()), len(limited), max_distance)
    return limited


def _deltas(limit: int) -> Iterable[int]:
    """0, 1, -1, 2, -2, ... up to +-limit: length differences, nearest first."""
    yield 0
    for d in range(1, limit + 1):
        yield d
        yield -d


# -------------------------------------------------------------------- files


@dataclasses.dataclass
class TokenizerPairData:
    """What a pair directory holds (each part None where its file is absent)."""

    bias1: sparse.csr_matrix | None = None
    bias2: sparse.csr_matrix | None = None
    teacher_counts: np.ndarray | None = None
    student_counts: np.ndarray | None = None
    mined_mapping: np.ndarray | None = None
    mined_distances: dict[str, int] | None = None

    @property
    def bias_matrices(self) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
        """`(bias1, bias2)` for `align.Aligner`; error if the directory has none."""
        if self.bias1 is None or self.bias2 is None:
            raise FileNotFoundError(
                f"No bias matrices ({', '.join(BIAS_FILES)}) in this pair directory; make them "
                "with tools/compute_tokenizer_info.py"
            )
        return self.bias1, self.bias2


def load_pair_data(directory: str | Path, tokenizer_teacher: Any = None, tokenizer_student: Any = None) -> TokenizerPairData:
    """Reads a pair directory; counts need the tokenizers (for the vocabulary sizes)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"Tokenizer-pair directory {directory} does not exist")
    data = TokenizerPairData()
    paths = [directory / name for name in BIAS_FILES]
    if all(p.is_file() for p in paths):
        data.bias1, data.bias2 = (sparse.load_npz(p).tocsr() for p in paths)
        for tokenizer, axis in ((tokenizer_teacher, 0), (tokenizer_student, 1)):
            if tokenizer is not None and data.bias1.shape[axis] != len(tokenizer):
                logging.warning(
                    "%s: bias matrices have %d %s ids, the tokenizer %d (ids past the matrix "
                    "count as unbiased)",
                    directory, data.bias1.shape[axis], "teacher" if axis == 0 else "student", len(tokenizer),
                )
    for side, tokenizer in (("teacher", tokenizer_teacher), ("student", tokenizer_student)):
        path = directory / COUNTS_FILES[side]
        if path.is_file() and tokenizer is not None:
            setattr(data, f"{side}_counts", load_counts(path, len(tokenizer)))
    if (directory / MINED_MAPPING_FILE).is_file():
        data.mined_mapping = np.load(directory / MINED_MAPPING_FILE)
    if (directory / MINED_DISTANCES_FILE).is_file():
        data.mined_distances = json.loads((directory / MINED_DISTANCES_FILE).read_text())
    return data
