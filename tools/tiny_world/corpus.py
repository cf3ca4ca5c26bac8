"""Assembles the tiny-world corpus: prose and chat tasks in three JSONL splits.

Each split file (`train.jsonl`, `validation.jsonl`, `test.jsonl`) mixes both kinds of
record, so a training pipeline reads one source per split:

- prose: `{"text": ..., "lang": ..., "source": "prose/<file>"}`
- chat:  `{"messages": [...], "task": ..., "answer": ..., "lang": ..., "params": {...}}`

Prose records are spread evenly among the chat records (in their file order), so any
prefix of a split holds both kinds in proportion. `facts.json` is the fact table the
closed-book chat tasks ask about.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from absl import logging

from tools.tiny_world import chat_tasks
from tools.tiny_world.facts import DEFAULT_SEED, make_fact_table
from tools.tiny_world.prose_records import PROSE_DIR, SPLITS, read_prose

# Validation and test are drawn first, so the training split can avoid their prompts.
CHAT_COUNTS = {"validation": 1000, "test": 1000, "train": 10000}
FACTS_FILE = "facts.json"


def interleave(prose: list[Any], chat: list[Any]) -> list[Any]:
    """Merges two lists, spreading the first evenly through the second (stable)."""
    # Item i of a list of length n sits at (2i + 1) / 2n; compare by cross-multiplying.
    keyed = [((2 * i + 1) * len(chat), 0, i, p) for i, p in enumerate(prose)]
    keyed += [((2 * j + 1) * len(prose), 1, j, c) for j, c in enumerate(chat)]
    keyed.sort(key=lambda k: k[:3])
    return [k[3] for k in keyed]


def to_jsonl(records: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8", newline="\n") as f:
        return [json.loads(line) for line in f]


def build_splits(seed: int = DEFAULT_SEED, prose_dir: Path = PROSE_DIR
                 ) -> dict[str, list[dict[str, Any]]]:
    """The records of every split, in file order."""
    facts = make_fact_table(seed)
    prose = read_prose(prose_dir)
    seen_prompts: set[str] = set()
    chat = {}
    for split, count in CHAT_COUNTS.items():
        rng = random.Random(f"tiny-world-chat:{seed}:{split}")
        chat[split] = chat_tasks.generate_examples(
            count, rng, facts, seen_prompts, desc=f"chat tasks ({split})")
    splits = {}
    for split in SPLITS:
        split_prose = [r.to_json_dict() for r in prose if r.split == split]
        splits[split] = interleave(split_prose, chat[split])
        logging.info("%s: %d prose records, %d chat records", split, len(split_prose),
                     len(chat[split]))
    return splits


def build_corpus(out_dir: str | Path, seed: int = DEFAULT_SEED,
                 prose_dir: Path = PROSE_DIR) -> list[Path]:
    """Writes `facts.json` and the three split files into `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    facts_path = out_dir / FACTS_FILE
    facts_path.write_text(make_fact_table(seed).to_json(), encoding="utf-8", newline="\n")
    written.append(facts_path)
    for split, records in build_splits(seed, prose_dir).items():
        path = out_dir / f"{split}.jsonl"
        path.write_text(to_jsonl(records), encoding="utf-8", newline="\n")
        written.append(path)
        logging.info("wrote %s (%d records, %d bytes)", path, len(records),
                     path.stat().st_size)
    return written


def training_texts(records: Iterable[dict[str, Any]], max_chat_records: int | None = None
                   ) -> list[str]:
    """The texts a tokenizer is trained on: each prose text, and each message of the
    first `max_chat_records` chat records (all if None); order as in `records`."""
    texts = []
    chat_used = chat_skipped = 0
    for record in records:
        if "messages" in record:
            if max_chat_records is not None and chat_used >= max_chat_records:
                chat_skipped += 1
                continue
            chat_used += 1
            texts += [m["content"] for m in record["messages"]]
        else:
            texts.append(record["text"])
    logging.info("tokenizer training texts: %d (%d chat records used, %d left out by the "
                 "cap of %s)", len(texts), chat_used, chat_skipped, max_chat_records)
    return texts
