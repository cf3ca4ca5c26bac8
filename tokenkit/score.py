"""`python -m tokenkit.score`: log-likelihood and bits per byte of each line of a text file.

    python -m tokenkit.score --model=DIR --tokenizer=DIR:source=Llama3 --text_file=lines.txt

`--model`, `--tokenizer` and `--text_file` are shorthands for the Gin parameters
`score.model`, `score.tokenizer` and `score.text_file`; every other option is a
`score.*` parameter (`--gin_param='score.batch_size=16'`, or a `--gin_file`).

Prints one JSON object per input line, in order, to stdout, or writes them to
`WORKDIR/scores.jsonl` when `--workdir` is given:

    {"loglik": -41.2, "n_tokens": 17, "n_bytes": 61, "bits_per_byte": 0.974}

`loglik` is the natural-log sum of the next-token log-probs of the line's tokens, the
first token (bos, when added) excluded; `n_tokens` how many were summed; `n_bytes` the
line's UTF-8 bytes (without its newline); `bits_per_byte = -loglik / ln 2 / n_bytes`
(null for an empty line). Lines longer than `score.max_length` tokens are scored in
sliding windows (`score.stride` new tokens per window) and counted in the log; a summary
(total bits per byte over all lines) goes to the log.

Options: `score.add_bos` (default: when the family has a bos), `score.expand_model` +
`score.expand_tokenizer` (byte-level models trained with input-id expansion: the
original model and its tokenizer spec), `score.max_length`, `score.stride`,
`score.batch_size`, `score.buckets`, `score.dtype`. The library behind it is
`tokenkit.evaluation.scoring`.

The text file and the workdir may be remote (`gs://...`, see `tokenkit.storage`). Run
as several processes (`tools/multiprocess.py`, a TPU slice), each process scores every
n-th line with the model on its own first device and process 0 writes all results, in
input order.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import gin
import jax
import numpy as np
from absl import logging

from tokenkit import entry, storage
from tokenkit.evaluation import scoring
from tokenkit.evaluation.model import load_eval_model

OUTPUT_FILE = "scores.jsonl"


def read_lines(path: storage.Location) -> list[str]:
    """The lines of a UTF-8 file (local or remote), split at `\\n` only (a `\\r` before
    it stays part of the line: every byte is scored as written); a final newline adds no
    line."""
    location = storage.path(path)
    if not location.is_file():
        raise FileNotFoundError(f"Text file {str(path)!r} does not exist.")
    text = location.read_bytes().decode("utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _gather_scores(mine: Sequence[scoring.TextScore], total: int) -> list[scoring.TextScore]:
    """Every process's scores of lines `process_index::process_count`, in line order
    (every process must call it)."""
    count = jax.process_count()
    if count == 1:
        return list(mine)
    from jax.experimental import multihost_utils

    width = -(-total // count)
    local = np.zeros((width, 4), np.float64)
    for k, s in enumerate(mine):
        local[k] = (s.loglik, s.n_tokens, s.n_bytes, s.n_windows)
    # As int32 words: JAX would round float64 to float32 on the way.
    words = np.asarray(multihost_utils.process_allgather(local.view(np.int32)))
    gathered = np.ascontiguousarray(words).view(np.float64).reshape(count, width, 4)
    out: list[scoring.TextScore | None] = [None] * total
    for process in range(count):
        for k, line in enumerate(range(process, total, count)):
            loglik, n_tokens, n_bytes, n_windows = gathered[process, k]
            out[line] = scoring.TextScore(float(loglik), int(n_tokens), int(n_bytes), int(n_windows))
    return out


@gin.configurable(denylist=["workdir"])
def score(
    workdir: storage.Location | None = None,
    *,
    model: str = gin.REQUIRED,
    tokenizer: str = gin.REQUIRED,
    text_file: str = gin.REQUIRED,
    add_bos: bool | None = None,
    expand_model: str | None = None,
    expand_tokenizer: str | None = None,
    max_length: int | None = None,
    stride: int | None = None,
    tokens_per_batch: int = scoring.DEFAULT_TOKENS_PER_BATCH,
    buckets: Sequence[int] | None = None,
    dtype: str = "float32",
) -> list[dict[str, Any]]:
    """Scores every line of `text_file` with `model`; returns the per-line dicts.

    Args:
      workdir: when given, results go to `workdir/scores.jsonl` instead of stdout.
      model: HF-format model directory or hub id.
      tokenizer: spec of the model's tokenizer.
      text_file: UTF-8 text, one item per line.
      add_bos: put the family's bos before each line (None: when the family has one).
      expand_model, expand_tokenizer: both or neither; see the module docstring.
      max_length, stride, tokens_per_batch, buckets: see `scoring.score_texts` (one
        compilation per batch shape; default buckets: `scoring.default_buckets`).
      dtype: compute and parameter dtype.
    """
    lines = read_lines(text_file)
    model_ = load_eval_model(
        model, tokenizer, dtype=dtype, param_dtype=dtype,
        expand_model=expand_model, expand_tokenizer=expand_tokenizer,
    )
    # Each process scores every process_count-th line; the results are gathered.
    mine = lines[jax.process_index()::jax.process_count()]
    scores = scoring.score_texts(
        model_,
        mine,
        add_bos=add_bos,
        max_length=max_length,
        stride=stride,
        tokens_per_batch=tokens_per_batch,
        buckets=buckets,
    )
    scores = _gather_scores(scores, len(lines))
    records = [s.as_dict() for s in scores]

    total_bytes = sum(s.n_bytes for s in scores)
    if total_bytes:
        logging.info(
            "%d lines, %d bytes, %d tokens scored: %.4f bits per byte.",
            len(scores), total_bytes, sum(s.n_tokens for s in scores),
            scoring.bits_per_byte(scores),
        )
    if entry.process_index() == 0:
        text = "".join(json.dumps(r) + "\n" for r in records)
        if workdir is not None:
            path = storage.write_text(storage.path(workdir) / OUTPUT_FILE, text)
            logging.info("Wrote %s.", path)
        else:
            sys.stdout.write(text)
            sys.stdout.flush()
    return records


def main(workdir: storage.Location | None) -> None:
    score(workdir)


SHORTHANDS = {
    "model": "score.model",
    "tokenizer": "score.tokenizer",
    "text_file": "score.text_file",
}

if __name__ == "__main__":
    entry.run(main, shorthands=SHORTHANDS, preemption_service=False)
