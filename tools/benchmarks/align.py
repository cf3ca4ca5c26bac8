"""Speed and memory of the chunk-id alignment (`tokenkit.align`), printed as a table.

    python tools/benchmarks/align.py [--batch 16] [--lengths 512,2048] [--repeats 30]

Teacher `llama3_bpe` against student `gemma2_sp` (the tiny world), rows filled with
concatenated corpus texts, one process. Rows of the table:

- `reference loop`: `align.reference_chunk_ids`, the per-token Python loop (as upstream);
- `batch`: one `Aligner.chunk_ids` call (the compiled kernel) per batch;
- `per example`: one call per row (as the data pipeline calls it).

Columns: tokens/s (teacher + student tokens aligned per second, counted once per row
pair as the upstream's figures are: teacher tokens; the best of `--repeats` timed calls
after a warm-up, since the machine may be shared), speed-up over the reference loop,
bytes of output per sequence (int32 chunk ids against the upstream's dense bool matrices
of `L x L`), and peak memory per sequence during the call (allocations traced by
`tracemalloc`; per example: of one call). numba's own allocations are not traced: its
temporaries are a few arrays of the row's length. Printed last: the first call in this
process, which compiles the kernel or loads it from numba's disk cache.
"""

from __future__ import annotations

import argparse
import json
import time
import timeit
import tracemalloc

import numpy as np

from tokenkit import align, tokenizer_info
from tokenkit.byteify import load_byteify_tokenizer
from tokenkit.entry import REPO_ROOT

TEACHER = "data/tokenizers/llama3_bpe:source=Llama3"
STUDENT = "data/tokenizers/gemma2_sp:source=Gemma2"
PAIR_DIR = "data/tokenizer_pairs/llama3_bpe__gemma2_sp"


def corpus_text(max_chars: int) -> str:
    """Corpus texts (prose and chat contents) concatenated, at most `max_chars`."""
    pieces, size = [], 0
    with open(REPO_ROOT / "data/corpus/train.jsonl") as f:
        lines = f.readlines()
    # Prose records first (they are long), then the chats, so rows look like documents.
    records = sorted((json.loads(line) for line in lines), key=lambda r: "text" not in r)
    for record in records:
        for text in tokenizer_info.record_texts(record):
            pieces.append(text)
            size += len(text) + 2
            if size >= max_chars:
                return "\n\n".join(pieces)
    return "\n\n".join(pieces)


def make_batch(teacher, student, batch: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """`[batch, length]` ids of each side, every row a different stretch of the corpus."""
    text = corpus_text(batch * length * 8)
    step = max(1, (len(text) - length * 6) // batch)
    rows_a, rows_b = [], []
    for r in range(batch):
        chunk = text[r * step : r * step + length * 6]
        ids_a, ids_b = teacher.encode(chunk)[:length], student.encode(chunk)[:length]
        if len(ids_a) < length or len(ids_b) < length:
            raise ValueError(f"corpus too short to fill {length} tokens")
        rows_a.append(ids_a)
        rows_b.append(ids_b)
    return np.array(rows_a), np.array(rows_b)


def timed(fn, repeats: int, probe=None) -> tuple[float, int]:
    """(best seconds of `repeats` calls of `fn` after a warm-up call, peak traced bytes of
    one call of `probe`, default `fn`)."""
    fn()
    seconds = min(timeit.repeat(fn, repeat=repeats, number=1))
    tracemalloc.start()
    (probe or fn)()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lengths", default="512,2048")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--reference_rows", type=int, default=4, help="rows timed for the slow reference loop")
    args = parser.parse_args()

    teacher, student = load_byteify_tokenizer(str(REPO_ROOT / TEACHER)), load_byteify_tokenizer(str(REPO_ROOT / STUDENT))
    pair = tokenizer_info.load_pair_data(REPO_ROOT / PAIR_DIR, teacher, student)
    aligner = align.Aligner(teacher, student, bias_matrices=pair.bias_matrices, bias_threshold=1e-3)
    kinds_sets = (("unconstrained",), ("unconstrained", "space"), align.KINDS)

    header = f"{'length':>6} | {'method':<14} | {'chunkings':<28} | {'tokens/s':>10} | {'vs loop':>7} | {'output B/seq':>12} | {'upstream B/seq':>14} | {'peak B/seq':>10}"
    print(header)
    print("-" * len(header))
    first_call = None
    for length in (int(x) for x in args.lengths.split(",")):
        ids_a, ids_b = make_batch(teacher, student, args.batch, length)
        if first_call is None:
            start = time.perf_counter()
            aligner.chunk_ids(ids_a[:1], ids_b[:1], kinds=align.KINDS)
            first_call = time.perf_counter() - start
        rows = min(args.reference_rows, args.batch)
        ref_seconds, ref_peak = timed(
            lambda: align.reference_chunk_ids(ids_a[:rows], ids_b[:rows], teacher, student, kinds=("unconstrained",)), 1
        )
        ref_rate = rows * length / ref_seconds
        dense = 2 * length * length  # two bool [L, L] matrices per chunking
        print(
            f"{length:>6} | {'reference loop':<14} | {'unconstrained':<28} | {ref_rate:>10,.0f} | {1.0:>6.1f}x | "
            f"{dense:>12,} | {dense:>14,} | {ref_peak // rows:>10,}"
        )
        for kinds in kinds_sets:
            for per_example in (False, True):
                measure(aligner, kinds, per_example, ids_a, ids_b, length, ref_rate, dense, args)
    print(f"\nfirst call in this process (compile or disk-cache load): {first_call:.2f} s")


def measure(aligner, kinds, per_example, ids_a, ids_b, length, ref_rate, dense, args) -> None:
    """Times one configuration and prints its table row."""
    if per_example:
        method = "per example"
        fn = lambda: [aligner.chunk_ids(ids_a[r], ids_b[r], kinds=kinds) for r in range(len(ids_a))]  # noqa: E731
        probe = lambda: aligner.chunk_ids(ids_a[0], ids_b[0], kinds=kinds)  # noqa: E731
        in_flight = 1
    else:
        method = "batch"
        fn = probe = lambda: aligner.chunk_ids(ids_a, ids_b, kinds=kinds)  # noqa: E731
        in_flight = len(ids_a)
    seconds, peak = timed(fn, args.repeats, probe)
    rate = len(ids_a) * length / seconds
    output = len(kinds) * 2 * length * 4  # int32 ids, both sides
    print(
        f"{length:>6} | {method:<14} | {'+'.join(kinds):<28} | {rate:>10,.0f} | "
        f"{rate / ref_rate:>6.1f}x | {output:>12,} | {len(kinds) * dense:>14,} | {peak // in_flight:>10,}"
    )


if __name__ == "__main__":
    main()
