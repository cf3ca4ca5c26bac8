"""Token counts and tokenization-bias matrices of a tokenizer pair.

    python tools/compute_tokenizer_info.py \
      --gin_param="compute_tokenizer_info.teacher='data/tokenizers/llama3_bpe:source=Llama3'" \
      --gin_param="compute_tokenizer_info.student='data/tokenizers/gemma2_sp:source=Gemma2'" \
      --gin_param="compute_tokenizer_info.output_dir='data/tokenizer_pairs/llama3_bpe__gemma2_sp'"

Counts each tokenizer's tokens over the corpus (`teacher_counts.json`,
`student_counts.json`), turns them into unigram probabilities, and writes the two bias
matrices (`bias1_matrix.npz`, `bias2_matrix.npz`) that the `unbiased` chunking reads
(see `tokenkit.tokenizer_info`). Existing count files are reused.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import gin
import numpy as np
from absl import logging
from scipy import sparse

from tokenkit import entry, tokenizer_info
from tokenkit.byteify import load_byteify_tokenizer
from tokenkit.data import sources


@gin.configurable
def compute_tokenizer_info(
    workdir: Path | None = None,
    *,
    teacher: str = gin.REQUIRED,
    student: str = gin.REQUIRED,
    output_dir: str | None = None,
    corpus_paths: Sequence[str] = ("data/corpus/train.jsonl",),
    source_kind: str = "jsonl",
    max_records: int | None = None,
    additive_smoothing: float = 1e-9,
) -> Path:
    """Writes counts and bias matrices into `output_dir` (default: the workdir).

    Args:
      teacher, student: tokenizer specs (`PATH:source=FAMILY[...]`).
      corpus_paths, source_kind: the corpus, as for `tokenkit.data.sources.make_source`
        (relative paths are taken from the repository root when not found here).
      max_records: count over the first this many records only.
      additive_smoothing: added to every count, times the total count.
    """
    out = Path(output_dir) if output_dir is not None else workdir
    if out is None:
        raise ValueError("Set compute_tokenizer_info.output_dir or pass --workdir")
    out.mkdir(parents=True, exist_ok=True)
    tokenizers = {"teacher": load_byteify_tokenizer(teacher), "student": load_byteify_tokenizer(student)}
    paths = [p if Path(p).exists() else str(entry.REPO_ROOT / p) for p in corpus_paths]
    source = sources.make_source(source_kind, paths=paths)
    records = len(source) if max_records is None else min(max_records, len(source))
    logging.info("Corpus: %s (%d of %d records)", ", ".join(paths), records, len(source))

    started = time.perf_counter()
    probs = {}
    for side, tokenizer in tokenizers.items():
        path = out / tokenizer_info.COUNTS_FILES[side]
        if path.is_file():
            logging.info("Reusing %s", path)
            counts = tokenizer_info.load_counts(path, len(tokenizer))
        else:
            texts = (text for i in range(records) for text in tokenizer_info.record_texts(source[i]))
            counts = tokenizer_info.count_tokens(texts, tokenizer)
            tokenizer_info.save_counts(path, counts)
        logging.info("%s: %d tokens counted, %d distinct", side, counts.sum(), np.count_nonzero(counts))
        probs[side] = tokenizer_info.unigram_probabilities(counts, additive_smoothing=additive_smoothing)
    counted = time.perf_counter() - started

    bias1, bias2 = tokenizer_info.bias_matrices(
        tokenizers["teacher"], tokenizers["student"], probs["teacher"], probs["student"]
    )
    for name, matrix in zip(tokenizer_info.BIAS_FILES, (bias1, bias2)):
        sparse.save_npz(out / name, matrix)
    elapsed = time.perf_counter() - started
    summary = (
        f"{out}: counts in {counted:.1f}s, bias matrices in {elapsed - counted:.1f}s; "
        f"{bias1.nnz} pairs, nonzero biases: bias1 {np.count_nonzero(bias1.data)}, "
        f"bias2 {np.count_nonzero(bias2.data)}"
    )
    logging.info("%s", summary)
    print(summary)
    return out


if __name__ == "__main__":
    entry.run(compute_tokenizer_info)
