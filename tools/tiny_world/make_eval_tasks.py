r"""Builds the data files of the local lm-eval tasks in `data/eval_tasks/tiny_world/`.

    python -m tools.tiny_world.make_eval_tasks                 # into data/eval_tasks/tiny_world
    python -m tools.tiny_world.make_eval_tasks --out_dir=/tmp/t

Both tasks are drawn from the chat records of the corpus' *test* split (prompts the
training split never saw), in file order, so the same corpus gives the same files:

- `mc.jsonl` (task `tiny_world_mc`, multiple choice scored by log-likelihood): the
  first `--mc_per_task` records of every chat task; the choices are the answer and
  three wrong but plausible answers from `chat_tasks.distractors`, shuffled, with the
  answer's index as `label`. Each record's draws come from its own seeded generator.
- `gen.jsonl` (task `tiny_world_gen`, generation scored by exact match): the first
  `--gen_per_task` records of the arithmetic and string-copying tasks.

Rerunning gives identical bytes; `SHA256SUMS` lists the files
(`cd data/eval_tasks/tiny_world && sha256sum -c SHA256SUMS`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

from absl import app, flags, logging

from tools.tiny_world import chat_tasks
from tools.tiny_world.checksums import write_checksums
from tools.tiny_world.facts import DEFAULT_SEED, FactTable, load_fact_table
from tools.tiny_world.paths import CORPUS_DIR, DATA_DIR

EVAL_TASKS_DIR = DATA_DIR / "eval_tasks" / "tiny_world"
GEN_TASKS: tuple[str, ...] = ("add", "sub", "mul", "copy", "reverse")
NUM_CHOICES = 4

FLAGS = flags.FLAGS


def _define_flags() -> None:
    # Defined only when run as a program, so importing this module adds no flags.
    flags.DEFINE_string("out_dir", str(EVAL_TASKS_DIR), "Writes mc.jsonl and gen.jsonl here.")
    flags.DEFINE_string("corpus_dir", str(CORPUS_DIR), "Reads test.jsonl and facts.json here.")
    flags.DEFINE_integer("mc_per_task", 20, "Multiple-choice questions per chat task.")
    flags.DEFINE_integer("gen_per_task", 40, "Generation questions per task in GEN_TASKS.")
    flags.DEFINE_integer("seed", DEFAULT_SEED, "Seed of the distractors and choice order.")


def chat_records(path: Path) -> list[dict]:
    """The chat-task records of a corpus split, in file order."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if "task" in record:
                records.append(record)
    return records


def first_per_task(records: Iterable[dict], tasks: Sequence[str], count: int) -> list[dict]:
    """The first `count` records of each task in `tasks`, in file order.

    Raises:
      ValueError: a task has fewer than `count` records.
    """
    taken: dict[str, int] = {task: 0 for task in tasks}
    out = []
    for record in records:
        task = record["task"]
        if task in taken and taken[task] < count:
            taken[task] += 1
            out.append(record)
    short = {task: n for task, n in taken.items() if n < count}
    if short:
        raise ValueError(f"Not enough test records for {short} (wanted {count} per task)")
    return out


def _question(record: dict) -> str:
    return record["messages"][0]["content"]


def multiple_choice_docs(records: Sequence[dict], facts: FactTable, seed: int) -> list[dict]:
    """One multiple-choice doc per record: answer + distractors, shuffled."""
    docs = []
    for index, record in enumerate(records):
        rng = random.Random(f"tiny-world-eval-mc:{seed}:{index}")
        choices = [record["answer"]] + chat_tasks.distractors(
            record, rng, n=NUM_CHOICES - 1, facts=facts
        )
        rng.shuffle(choices)
        docs.append({
            "id": index,
            "task": record["task"],
            "lang": record["lang"],
            "question": _question(record),
            "choices": choices,
            "label": choices.index(record["answer"]),
        })
    return docs


def generation_docs(records: Sequence[dict]) -> list[dict]:
    return [
        {"id": index, "task": r["task"], "lang": r["lang"], "question": _question(r),
         "answer": r["answer"]}
        for index, r in enumerate(records)
    ]


def write_jsonl(path: Path, docs: Sequence[dict]) -> Path:
    text = "".join(json.dumps(d, ensure_ascii=False, sort_keys=True) + "\n" for d in docs)
    path.write_text(text, encoding="utf-8", newline="\n")
    return path


def build(out_dir: Path, corpus_dir: Path, mc_per_task: int, gen_per_task: int,
          seed: int) -> list[Path]:
    """Writes mc.jsonl, gen.jsonl and SHA256SUMS into `out_dir`; returns the data files."""
    records = chat_records(corpus_dir / "test.jsonl")
    facts = load_fact_table(corpus_dir / "facts.json")
    out_dir.mkdir(parents=True, exist_ok=True)
    mc = multiple_choice_docs(first_per_task(records, chat_tasks.TASKS, mc_per_task), facts, seed)
    gen = generation_docs(first_per_task(records, GEN_TASKS, gen_per_task))
    files = [write_jsonl(out_dir / "mc.jsonl", mc), write_jsonl(out_dir / "gen.jsonl", gen)]
    write_checksums(out_dir, files)
    logging.info("Wrote %d multiple-choice and %d generation docs to %s", len(mc), len(gen),
                 out_dir)
    return files


def main(argv: Sequence[str]) -> None:
    del argv
    build(Path(FLAGS.out_dir), Path(FLAGS.corpus_dir), FLAGS.mc_per_task, FLAGS.gen_per_task,
          FLAGS.seed)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
