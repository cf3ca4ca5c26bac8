"""Zero-shot tokenizer transfer: bits per byte of held-out text, FVT against OMP.

    python tools/benchmarks/zero_shot.py                          # the tiny world
    TOKENKIT_CACHE=/tmp/tk python tools/benchmarks/zero_shot.py --worlds=tiny,real

Each row moves one model to one target tokenizer with `models.transfer.transfer`, once
with `init="fvt"` and once with `init="omp"` (k = `--k`, options bound to
`omp.OmpOptions` as a Gin user would), and scores the same texts with
`evaluation.scoring.score_texts`: the base model with its own tokenizer, then each
transferred model. Columns: the tokens OMP pursued (`omp`) and those it left at FVT's
mean (`avg`), bits per byte of the three models, and the seconds OMP's initialisation
took (the whole `transfer` call) with that time per 1,000 pursued tokens.

Rows:
- tiny: the tiny-world teacher (`data/models/tiny_teacher`, Llama 3 tokenizer) to the
  tiny Gemma 2 and Qwen2 tokenizers and to bytes, on the `text` records of
  `data/corpus/test.jsonl`; no donor model exists for these targets, so OMP runs in
  its donor-free setting. One more row is the paper's setting: the tiny Qwen2-tokenizer
  model (`tiny_teacher_qwen2`) to the Llama 3 tokenizer with the tiny teacher, trained
  with that tokenizer, as the donor.
- real: SmolLM2-135M-Instruct (`tools.real_assets`) to the real Qwen2 and Llama 3
  tokenizers, on the paragraphs of `data/real/pydoc_eval.txt` (`--real_paragraphs`).
  Texts are scored without bos (SmolLM2 has none). Slow on a CPU: minutes per row.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import gin
import numpy as np
from absl import app, flags, logging

from tokenkit.byteify import ByteifyTokenizer, load_byteify_tokenizer
from tokenkit.evaluation.model import EvalModel
from tokenkit.evaluation.scoring import score_texts
from tokenkit.models import load_pretrained
from tokenkit.models.transfer import transfer

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "data" / "models"
TOKENIZERS = REPO / "data" / "tokenizers"

FLAGS = flags.FLAGS
if __name__ == "__main__":
    flags.DEFINE_list("worlds", ["tiny"], "tiny and/or real")
    flags.DEFINE_integer("k", 64, "OMP's sparsity (OmpOptions.k)")
    flags.DEFINE_integer("real_paragraphs", 12, "paragraphs of data/real/pydoc_eval.txt to score")


@dataclasses.dataclass(frozen=True)
class Row:
    """One transfer to measure."""

    world: str
    model: str
    tokenizer: str
    target: str
    texts: tuple[str, ...]
    add_bos: bool
    donor: str | None = None

    @property
    def label(self) -> str:
        target = Path(self.target.split(":")[0]).name + "".join(
            f":{p}" for p in self.target.split(":")[1:] if p.startswith("conversion")
        )
        donor = f" (donor {Path(self.donor).name})" if self.donor else ""
        return f"{Path(self.model).name} -> {target}{donor}"


def tiny_rows() -> list[Row]:
    records = [json.loads(line) for line in (REPO / "data" / "corpus" / "test.jsonl").open()]
    texts = tuple(r["text"] for r in records if "text" in r)
    teacher = str(MODELS / "tiny_teacher")
    source = f"{teacher}:source=Llama3"
    rows = [
        Row("tiny", teacher, source, target, texts, add_bos=True)
        for target in (
            f"{TOKENIZERS}/gemma2_sp:source=Gemma2",
            f"{TOKENIZERS}/qwen2_bpe:source=Qwen2",
            f"{source}:conversion=byte",
        )
    ]
    qwen_model = str(MODELS / "tiny_teacher_qwen2")
    rows.append(Row("tiny", qwen_model, f"{qwen_model}:source=Qwen2", source, texts,
                    add_bos=True, donor=teacher))
    return rows


def real_rows(paragraphs: int) -> list[Row]:
    if str(REPO) not in sys.path:  # run as a script: tools/ is not importable otherwise
        sys.path.insert(0, str(REPO))
    from tools import real_assets

    assets = real_assets.ensure()
    lines = (REPO / "data" / "real" / "pydoc_eval.txt").read_text(encoding="utf-8").splitlines()
    texts = tuple(line for line in lines if line.strip())[:paragraphs]
    model = str(assets.smollm2_dir)
    return [
        Row("real", model, assets.smollm2_tokenizer_spec, assets.tokenizer_spec(name), texts,
            add_bos=False)
        for name in ("qwen2", "llama3")
    ]


def bits_per_byte(config, params, tokenizer: ByteifyTokenizer, texts, add_bos: bool) -> float:
    model = EvalModel.build(config, params, tokenizer, add_bos=add_bos)
    scores = score_texts(model, list(texts), show_progress=False)
    return -sum(s.loglik for s in scores) / np.log(2) / sum(s.n_bytes for s in scores)


def measure(row: Row, k: int) -> dict:
    source = load_byteify_tokenizer(row.tokenizer)
    target = load_byteify_tokenizer(row.target)
    config, params = load_pretrained(row.model)
    out = {"row": row.label, "base": bits_per_byte(config, params, source, row.texts, row.add_bos)}
    fvt = transfer(config, params, source, target, init="fvt")
    out["fvt"] = bits_per_byte(fvt.config, fvt.params, target, row.texts, row.add_bos)
    del fvt
    gin.clear_config()
    gin.bind_parameter("OmpOptions.k", k)
    if row.donor:
        gin.bind_parameter("OmpOptions.donor_model", row.donor)
    start = time.perf_counter()
    omp = transfer(config, params, source, target, init="omp")
    out["omp_s"] = time.perf_counter() - start
    gin.clear_config()
    out["pursued"] = omp.stats.omp
    out["kept"] = omp.stats.averaged
    out["omp"] = bits_per_byte(omp.config, omp.params, target, row.texts, row.add_bos)
    return out


def format_row(r: dict) -> str:
    per_k = f"{1000 * r['omp_s'] / r['pursued']:.2f}" if r["pursued"] else "-"
    return (f"{r['row']:<52} {r['pursued']:>6} {r['kept']:>7} {r['base']:>7.4f} {r['fvt']:>7.4f} "
            f"{r['omp']:>7.4f} {r['omp_s']:>10.1f} {per_k:>9}")


def main(argv: Sequence[str]) -> None:
    del argv
    unknown = sorted(set(FLAGS.worlds) - {"tiny", "real"})
    if unknown:
        raise app.UsageError(f"Unknown worlds {unknown}; valid: tiny, real.")
    rows = []
    if "tiny" in FLAGS.worlds:
        rows += tiny_rows()
    if "real" in FLAGS.worlds:
        rows += real_rows(FLAGS.real_paragraphs)
    header = (f"{'model -> target':<52} {'omp':>6} {'avg':>7} {'base':>7} {'FVT':>7} {'OMP':>7} "
              f"{'OMP init s':>10} {'s/1k omp':>9}")
    results = []
    for row in rows:
        logging.info("Measuring %s", row.label)
        r = measure(row, FLAGS.k)
        results.append(r)
        print(format_row(r), flush=True)
    print()
    print(f"bits per byte (lower is better), k={FLAGS.k}")
    print(header)
    for r in results:
        print(format_row(r))


if __name__ == "__main__":
    app.run(main)
