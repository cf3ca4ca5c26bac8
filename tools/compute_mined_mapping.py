"""The MinED mapping of a tokenizer pair: each student token -> nearest teacher token.

    python tools/compute_mined_mapping.py \
      --gin_param="compute_mined_mapping.teacher='data/tokenizers/llama3_bpe:source=Llama3'" \
      --gin_param="compute_mined_mapping.student='data/tokenizers/gemma2_sp:source=Gemma2'" \
      --gin_param="compute_mined_mapping.output_dir='data/tokenizer_pairs/llama3_bpe__gemma2_sp'"

Writes `mined_mapping.npy` (`int32[student vocab]`, teacher ids) and
`mined_distances.json` (`{student token: edit distance}`) for the MinED baseline. Edit
distances come from a numpy dynamic program (`tokenizer_info.edit_distances`), searched
length bucket by length bucket, nearest lengths first.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import gin
import numpy as np

from tokenkit import entry, tokenizer_info
from tokenkit.byteify import load_byteify_tokenizer


@gin.configurable
def compute_mined_mapping(
    workdir: Path | None = None,
    *,
    teacher: str = gin.REQUIRED,
    student: str = gin.REQUIRED,
    output_dir: str | None = None,
) -> Path:
    """Writes the mapping and distances into `output_dir` (default: the workdir)."""
    out = Path(output_dir) if output_dir is not None else workdir
    if out is None:
        raise ValueError("Set compute_mined_mapping.output_dir or pass --workdir")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    mapping, distances = tokenizer_info.mined_mapping(load_byteify_tokenizer(teacher), load_byteify_tokenizer(student))
    np.save(out / tokenizer_info.MINED_MAPPING_FILE, mapping)
    (out / tokenizer_info.MINED_DISTANCES_FILE).write_text(json.dumps(distances, indent=1, ensure_ascii=False))
    exact = sum(d == 0 for d in distances.values())
    summary = (
        f"{out}: {len(mapping)} student ids mapped in {time.perf_counter() - started:.1f}s; "
        f"{exact} of {len(distances)} student tokens exist in the teacher vocabulary, "
        f"mean distance of the others {np.mean([d for d in distances.values() if d] or [0]):.2f}"
    )
    print(summary)
    return out


if __name__ == "__main__":
    entry.run(compute_mined_mapping)
