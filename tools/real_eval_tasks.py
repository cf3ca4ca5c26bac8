r"""Builds `data/eval_tasks/real_docs/mc.jsonl`: next-paragraph multiple choice over held-out
documentation (lm-eval task `real_docs_mc`).

    python -m tools.real_eval_tasks                    # into data/eval_tasks/real_docs
    python -m tools.real_eval_tasks --out_dir=/tmp/rd  # somewhere else, to compare

Each item is a paragraph of an English document of `data/real/test.jsonl` (a pydoc
page no training split has seen) and four candidates for the paragraph that follows it
in the same document: the true one and three paragraphs of *other* test documents, each
of 0.5x to 2x the true paragraph's length, so length alone gives little away. Only
pairs whose two paragraphs have at most `MAX_CHARS` characters are used (so a CPU
scores the task in minutes); pairs are taken in a content-hash order, at most
`MAX_PER_DOCUMENT` from one document, until there are `ITEMS`. Every draw comes from
one seeded generator, so the same `test.jsonl` gives the same bytes; `SHA256SUMS` lists
the file (`cd data/eval_tasks/real_docs && sha256sum -c SHA256SUMS`).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from absl import app, flags, logging

from tools.tiny_world.checksums import write_checksums
from tools.tiny_world.paths import DATA_DIR

OUT_DIR = DATA_DIR / "eval_tasks" / "real_docs"
TEST_FILE = DATA_DIR / "real" / "test.jsonl"
ITEMS = 250
MAX_CHARS = 400
MAX_PER_DOCUMENT = 20
NUM_CHOICES = 4
SEED = 12
LANG = "en"


def documents(path: Path, lang: str = LANG) -> dict[str, list[str]]:
    """The paragraphs of each document of one language, in file (document) order."""
    docs: dict[str, list[str]] = defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if record["lang"] == lang:
                docs[record["source"]].append(record["text"])
    return dict(docs)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_items(
    docs: dict[str, list[str]],
    *,
    items: int = ITEMS,
    max_chars: int = MAX_CHARS,
    max_per_document: int = MAX_PER_DOCUMENT,
    seed: int = SEED,
) -> list[dict]:
    """The multiple-choice items (see the module docstring).

    Raises:
      ValueError: fewer than `items` pairs qualify, or a pair has too few distractors.
    """
    pairs = [
        (doc, i) for doc, paragraphs in docs.items() for i in range(len(paragraphs) - 1)
        if len(paragraphs[i]) <= max_chars and len(paragraphs[i + 1]) <= max_chars
    ]
    pairs.sort(key=lambda p: _hash(docs[p[0]][p[1]] + "\n\n" + docs[p[0]][p[1] + 1]))
    per_document: dict[str, int] = defaultdict(int)
    chosen = []
    for doc, i in pairs:
        if per_document[doc] < max_per_document:
            per_document[doc] += 1
            chosen.append((doc, i))
        if len(chosen) == items:
            break
    if len(chosen) < items:
        raise ValueError(
            f"Only {len(chosen)} paragraph pairs of at most {max_chars} characters (at most "
            f"{max_per_document} per document) in {len(docs)} documents; asked for {items}."
        )
    pool = sorted(
        ((doc, p) for doc, paragraphs in docs.items() for p in paragraphs if len(p) <= max_chars),
        key=lambda dp: _hash(dp[1]),
    )
    rng = random.Random(seed)
    out = []
    for number, (doc, i) in enumerate(sorted(chosen)):
        context, answer = docs[doc][i], docs[doc][i + 1]
        candidates = [p for d, p in pool if d != doc and len(answer) / 2 <= len(p) <= 2 * len(answer)]
        if len(candidates) < NUM_CHOICES - 1:
            raise ValueError(f"{doc} paragraph {i + 1}: only {len(candidates)} distractors of "
                             f"0.5x-2x its length ({len(answer)} characters).")
        choices = rng.sample(candidates, NUM_CHOICES - 1)
        label = rng.randrange(NUM_CHOICES)
        choices.insert(label, answer)
        out.append({"id": number, "document": doc, "paragraph": i, "context": context,
                    "choices": choices, "label": label})
    return out


def build(out_dir: Path, test_file: Path = TEST_FILE, **kwargs) -> list[Path]:
    """Writes `mc.jsonl` and `SHA256SUMS` into `out_dir`; returns them."""
    items = make_items(documents(test_file), **kwargs)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "mc.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items),
                    encoding="utf-8", newline="\n")
    logging.info("%d items from %d documents -> %s", len(items),
                 len({r["document"] for r in items}), path)
    return [path, write_checksums(out_dir, [path])]


FLAGS = flags.FLAGS


def _define_flags() -> None:
    # Only when run as a program: importing this module (tests do) defines no flags.
    flags.DEFINE_string("out_dir", str(OUT_DIR), "Writes mc.jsonl and SHA256SUMS here.")
    flags.DEFINE_string("test_file", str(TEST_FILE), "The held-out paragraphs (data/real/test.jsonl).")


def main(argv: Sequence[str]) -> None:
    del argv
    for path in build(Path(FLAGS.out_dir), Path(FLAGS.test_file)):
        print(path)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
