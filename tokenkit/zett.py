"""`python -m tokenkit.zett`: zero-shot tokenizer transfer of a model by FVT (or by
orthogonal matching pursuit, `zett.init = 'omp'`, or by a trained embedding hypernetwork,
`zett.hypernet`).

    python -m tokenkit.zett --gin_file=gin/zett/tiny_llama3_to_gemma2.gin --workdir=out/zett
    python -m tokenkit.zett \
        --gin_param='zett.model="meta-llama/Llama-3.2-3B-Instruct"' \
        --gin_param='zett.tokenizer="meta-llama/Llama-3.2-3B-Instruct:source=Llama3"' \
        --gin_param='zett.target_tokenizer="google/gemma-2-2b-it:source=Gemma2"' \
        --workdir=out/llama3_to_gemma2

Loads an HF-format model, initialises embeddings for `target_tokenizer` (plus
`tokens_to_add`) with FVT (`tokenkit.models.fvt`), OMP (`tokenkit.models.omp`) or, with
`zett.hypernet = 'DIR'` (a directory written by `python -m tokenkit.train_zett_hn`,
`WORKDIR/hypernet`), the hypernetwork's predictions (`tokenkit.models.hypernet`),
replaces the vocabulary (padded to `pad_to_multiple_of`, `output_embeddings_mode`), and
writes an HF-format directory that `transformers.AutoModelForCausalLM` and
`tokenkit.models.load_pretrained` load: the model, the target tokenizer (with the added
tokens), `transfer_stats.json` (the init method and how each row was made; directories
written before it was named so hold `fvt_stats.json`, which `read_stats` also reads), and
`tokenizer_spec.txt` holding the spec to load the saved tokenizer with (the target spec
with NAME replaced by the directory; `conversion=byte` and `pure_byte` become
`conversion=prebyteified`, since the saved byte-level tokenizer's pieces already are
byte-level strings).

The output directory is `zett.output_dir` if set, else `--workdir`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gin
from absl import logging

from tokenkit import entry
from tokenkit.byteify import BYTE_CONVERSIONS, TokenizerSpec, load_byteify_tokenizer
from tokenkit.models import hf_io, load_config, load_pretrained, save_pretrained
from tokenkit.models import hypernet as hypernet_lib
from tokenkit.models import transfer as transfer_lib

SPEC_FILE = "tokenizer_spec.txt"
STATS_FILE = "transfer_stats.json"
LEGACY_STATS_FILE = "fvt_stats.json"  # the name before OMP and hypernetworks
# How each init method is named in what zett prints.
INIT_LABELS = {"fvt": "FVT", "omp": "OMP", "hypernet": "Hypernetwork"}


def read_stats(directory: str | Path) -> dict[str, Any]:
    """The transfer record `zett` wrote into `directory` (`transfer_stats.json`, or the
    older `fvt_stats.json`, whose init was always FVT)."""
    directory = Path(directory)
    path = directory / STATS_FILE
    if path.is_file():
        return json.loads(path.read_text())
    legacy = directory / LEGACY_STATS_FILE
    if legacy.is_file():
        return {"init": "fvt", **json.loads(legacy.read_text())}
    raise FileNotFoundError(f"{directory} holds neither {STATS_FILE} nor {LEGACY_STATS_FILE}.")


def saved_tokenizer_spec(spec: str | TokenizerSpec, directory: str | Path) -> str:
    """The spec that loads a tokenizer saved by `ByteifyTokenizer.save_pretrained` into
    `directory`, given the spec it was loaded from."""
    if isinstance(spec, str):
        spec = TokenizerSpec.parse(spec)
    conversion = "prebyteified" if spec.conversion in BYTE_CONVERSIONS else spec.conversion
    return str(dataclasses.replace(spec, name=str(directory), conversion=conversion))


@gin.configurable(denylist=["workdir"])
def zett(
    workdir: Path | None = None,
    *,
    model: str = gin.REQUIRED,
    tokenizer: str = gin.REQUIRED,
    target_tokenizer: str = gin.REQUIRED,
    output_dir: str | None = None,
    output_embeddings_mode: str = "preserve",
    pad_to_multiple_of: int = 64,
    seed: int = 0,
    init: str = "fvt",
    hypernet: str | None = None,
    allow_exact_match: bool = True,
    slot_tokens: str = "special",
    save_dtype: str | None = None,
    tokens_to_add: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Transfers `model` (with `tokenizer`) to `target_tokenizer`; returns a summary.

    Args:
      workdir: the output directory unless `output_dir` is set.
      model: HF-format model directory or hub id.
      tokenizer: spec of the tokenizer the model was trained with.
      target_tokenizer: spec of the new tokenizer.
      output_dir: where to write the transferred model (default: the workdir).
      output_embeddings_mode: "preserve" the model's tied-ness or "untie".
      pad_to_multiple_of: the new vocabulary is zero-padded to a multiple of this.
      seed: seed of FVT's random fallback rows.
      init: how the new embedding rows start (`transfer.INIT_METHODS`); `hypernet` when
        `hypernet` is set.
      hypernet: directory of a trained embedding hypernetwork (`TrainedHypernet.save`).
      allow_exact_match, slot_tokens: see `tokenkit.models.fvt.fvt_mapping`.
      save_dtype: dtype of the written tensors (e.g. "bfloat16"); None keeps the model's.
      tokens_to_add: tokens added to the target tokenizer (raw text, regular tokens;
        `models.transfer.add_tokens`); the saved tokenizer holds them.

    Returns:
      `{"output_dir", "tokenizer_spec", "init", "stats", "vocab_size"}`.
    """
    out = Path(output_dir) if output_dir else workdir
    if out is None:
        raise ValueError("zett needs an output directory: pass --workdir or set zett.output_dir.")
    transfer_lib.check_options(init, output_embeddings_mode, slot_tokens)
    trained = None
    if hypernet is not None:
        if init not in ("fvt", "hypernet"):
            raise ValueError(f"zett.hypernet is set and zett.init is {init!r}; use one of the two.")
        init, trained = "hypernet", hypernet_lib.TrainedHypernet.load(hypernet)
    elif init == "hypernet":
        raise ValueError("zett.init = 'hypernet' needs zett.hypernet = 'DIR' (a trained hypernetwork).")

    # Everything cheap is checked before the weights are read.
    source_tok = load_byteify_tokenizer(tokenizer)
    target_tok = load_byteify_tokenizer(target_tokenizer)
    if tokens_to_add:
        target_tok = transfer_lib.add_tokens(target_tok, tokens_to_add)
    config = load_config(hf_io.resolve_checkpoint_dir(model))
    if len(source_tok) > config.vocab_size:
        raise ValueError(
            f"Tokenizer {tokenizer} has {len(source_tok)} tokens but the model {model} only "
            f"{config.vocab_size} embedding rows; is it the model's tokenizer?"
        )

    config, params = load_pretrained(model, dtype=None)
    logging.info("Loaded %s (%s, vocab %d).", model, config.architecture, config.vocab_size)
    result = transfer_lib.transfer(
        config, params, source_tok, target_tok, init=init, hypernet=trained,
        output_embeddings_mode=output_embeddings_mode, pad_to_multiple_of=pad_to_multiple_of,
        seed=seed, allow_exact_match=allow_exact_match, slot_tokens=slot_tokens,
    )
    new_config = result.config
    save_pretrained(out, new_config, result.params, tokenizer=target_tok, dtype=save_dtype)
    spec = saved_tokenizer_spec(target_tok.spec or target_tokenizer, out.resolve())
    stats = result.stats.as_dict() if result.stats is not None else None
    summary = {
        "output_dir": str(out),
        "tokenizer_spec": spec,
        "init": init,
        "stats": stats,
        "vocab_size": new_config.vocab_size,
    }
    if entry.process_index() == 0:
        (out / SPEC_FILE).write_text(spec + "\n")
        record = {"source": str(source_tok.spec), "target": str(target_tok.spec), **summary}
        (out / STATS_FILE).write_text(json.dumps(record, indent=2) + "\n")
        added = f" (+{len(tokens_to_add)} added tokens)" if tokens_to_add else ""
        print(f"{INIT_LABELS[init]} {tokenizer} -> {target_tokenizer}{added}: {result.stats}")
        print(
            f"Wrote {out} (vocabulary {len(target_tok)} tokens, padded to {new_config.vocab_size}); "
            f"load its tokenizer with the spec {spec!r} (also in {SPEC_FILE})."
        )
    return summary


def main(workdir: Path | None) -> None:
    zett(workdir)


if __name__ == "__main__":
    entry.run(main)
