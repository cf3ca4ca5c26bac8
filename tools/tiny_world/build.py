r"""Builds the tiny world: the corpus, then three tokenizers trained on its train split.

    python -m tools.tiny_world.build                  # everything, into data/
    python -m tools.tiny_world.build --what=corpus    # only data/corpus/
    python -m tools.tiny_world.build --out_dir=/tmp/tw

The same seed gives the same bytes: every file is written in a fixed order with `\n`
line endings, the trainers run single-threaded on a fixed input order, and each output
directory gets a `SHA256SUMS` file (`sha256sum -c SHA256SUMS` checks it). Every
tokenizer is verified before the build succeeds (see `checks.py`).
"""

from __future__ import annotations

import os
from pathlib import Path

# Single-threaded tokenizer training and encoding: parallel training is deterministic
# too, but one thread keeps the build predictable on a shared machine.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

from absl import app, flags, logging  # noqa: E402

from tools.tiny_world import bpe, checks, corpus, unigram  # noqa: E402
from tools.tiny_world.checksums import write_checksums  # noqa: E402
from tools.tiny_world.facts import DEFAULT_SEED  # noqa: E402
from tools.tiny_world.hf_dir import write_tokenizer_dir  # noqa: E402
from tools.tiny_world.paths import DATA_DIR  # noqa: E402
from tools.tiny_world.tokenizer_specs import SPECS, TokenizerSpec  # noqa: E402

# Tokenizers see every prose record of the train split and the messages of its first
# chat records: enough for the templates' words and for numbers, without letting the
# repetitive chat prompts crowd the prose languages out of the vocabulary.
MAX_CHAT_RECORDS_FOR_TOKENIZERS = 2000
WHAT = ("all", "corpus", "tokenizers")

FLAGS = flags.FLAGS


def _define_flags() -> None:
    # Defined only when run as a program, so importing this module (tests do) adds no
    # flags to another program's.
    flags.DEFINE_string("out_dir", str(DATA_DIR), "Writes corpus/ and tokenizers/ here.")
    flags.DEFINE_integer("seed", DEFAULT_SEED, "Seed of the fact table and the chat tasks.")
    flags.DEFINE_enum("what", "all", WHAT, "Which part to build; `tokenizers` reads the "
                      "corpus already in out_dir.")


def _load(directory: Path):
    # transformers is slow to import; only the tokenizer part of the build needs it.
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


def verify_tokenizer(directory: Path, spec: TokenizerSpec, validation: list[dict],
                     sentencepiece_texts: list[str] | None = None) -> None:
    """Loads the directory with transformers and runs every check; raises on failure."""
    tokenizer = _load(directory)
    if not tokenizer.is_fast:
        raise RuntimeError(f"{directory} did not load as a fast tokenizer")
    missing = checks.missing_template_tokens(tokenizer, spec)
    if missing:
        raise RuntimeError(f"{spec.name}: template tokens missing from the vocabulary: "
                           f"{missing}")
    runs = checks.template_runs_missing(tokenizer, spec)
    if runs:
        raise RuntimeError(f"{spec.name}: the rendered chat template does not tokenize "
                           f"into the family's runs {runs}")
    texts = corpus.training_texts(validation)
    failures = checks.round_trip_failures(tokenizer, texts, f"{spec.name} round trip")
    if failures:
        raise RuntimeError(f"{spec.name}: {len(failures)} of {len(texts)} validation texts do "
                           f"not round-trip, e.g. {failures[0][:200]!r}")
    if sentencepiece_texts is not None:
        model = (directory / "tokenizer.model").read_bytes()
        bad = checks.sentencepiece_mismatches(model, tokenizer, sentencepiece_texts,
                                              f"{spec.name} vs sentencepiece")
        if bad:
            text, expected, got = bad[0]
            raise RuntimeError(f"{spec.name}: fast ids differ from sentencepiece's on "
                               f"{len(bad)} of {len(sentencepiece_texts)} texts, e.g. "
                               f"{text[:100]!r}: {expected[:20]} vs {got[:20]}")
    logging.info("%s: verified (%d tokens, %d validation texts round-trip)", spec.name,
                 len(tokenizer), len(texts))


def build_tokenizers(corpus_dir: Path, out_dir: Path, seed: int) -> list[Path]:
    """Trains, writes and verifies the three tokenizers; returns the files written."""
    train = corpus.read_jsonl(corpus_dir / "train.jsonl")
    validation = corpus.read_jsonl(corpus_dir / "validation.jsonl")
    texts = corpus.training_texts(train, MAX_CHAT_RECORDS_FOR_TOKENIZERS)
    files = []
    for spec in SPECS.values():
        directory = out_dir / spec.name
        if spec.kind == "byte-level BPE":
            tokenizer = bpe.train_bpe(spec, texts)
            files += write_tokenizer_dir(directory, spec, tokenizer)
            verify_tokenizer(directory, spec, validation)
        else:
            model = unigram.build_model(spec, texts, seed)
            tokenizer = unigram.to_fast(model, spec)
            files += write_tokenizer_dir(directory, spec, tokenizer, model)
            # The fast twin must match sentencepiece on everything it was trained on,
            # on the validation split, and on edge cases.
            parity_texts = (texts + corpus.training_texts(validation)
                            + list(checks.SENTENCEPIECE_EDGE_CASES))
            verify_tokenizer(directory, spec, validation, parity_texts)
    return files


def build(out_dir: Path, seed: int = DEFAULT_SEED, what: str = "all") -> None:
    if what not in WHAT:
        raise ValueError(f"what must be one of {WHAT}, got {what!r}")
    corpus_dir = out_dir / "corpus"
    if what in ("all", "corpus"):
        files = corpus.build_corpus(corpus_dir, seed)
        write_checksums(corpus_dir, files)
    if what in ("all", "tokenizers"):
        tokenizers_dir = out_dir / "tokenizers"
        files = build_tokenizers(corpus_dir, tokenizers_dir, seed)
        write_checksums(tokenizers_dir, files)
    for sums in sorted(out_dir.glob("*/SHA256SUMS")):
        logging.info("%s:\n%s", sums, sums.read_text())


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    build(Path(FLAGS.out_dir), FLAGS.seed, FLAGS.what)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
