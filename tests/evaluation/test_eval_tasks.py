"""The local lm-eval tasks: data files rebuild bit for bit; lm-eval loads them."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest
from lm_eval.tasks import TaskManager

from tools.tiny_world import chat_tasks, make_eval_tasks

TASKS_DIR = Path(__file__).resolve().parents[2] / "data" / "eval_tasks"
DATA_DIR = TASKS_DIR / "tiny_world"


def _read(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA_DIR / name).read_text(encoding="utf-8").splitlines()]


def test_data_files_rebuild_identically(tmp_path):
    make_eval_tasks.build(tmp_path, make_eval_tasks.CORPUS_DIR, mc_per_task=20, gen_per_task=40,
                          seed=make_eval_tasks.DEFAULT_SEED)
    for name in ("mc.jsonl", "gen.jsonl", "SHA256SUMS"):
        assert (tmp_path / name).read_bytes() == (DATA_DIR / name).read_bytes(), name


def test_multiple_choice_docs():
    docs = _read("mc.jsonl")
    assert len(docs) == 20 * len(chat_tasks.TASKS)
    assert collections.Counter(d["task"] for d in docs) == {t: 20 for t in chat_tasks.TASKS}
    test_answers = {
        r["messages"][0]["content"]: r["answer"]
        for r in make_eval_tasks.chat_records(make_eval_tasks.CORPUS_DIR / "test.jsonl")
    }
    for doc in docs:
        assert len(set(doc["choices"])) == 4
        assert doc["choices"][doc["label"]] == test_answers[doc["question"]]
    # The right answer is not always in the same place.
    assert set(collections.Counter(d["label"] for d in docs)) == {0, 1, 2, 3}


def test_generation_docs():
    docs = _read("gen.jsonl")
    assert collections.Counter(d["task"] for d in docs) == {
        t: 40 for t in make_eval_tasks.GEN_TASKS}
    assert all(d["answer"] and d["question"] for d in docs)


def test_too_few_records_is_an_error():
    with pytest.raises(ValueError, match="Not enough test records"):
        make_eval_tasks.first_per_task([{"task": "add"}], ("add",), 2)


def test_lm_eval_loads_the_tasks():
    manager = TaskManager(include_path=str(TASKS_DIR))
    assert {"tiny_world_mc", "tiny_world_gen"} <= set(manager.all_tasks)
    tasks = manager.load(["tiny_world_mc", "tiny_world_gen"])["tasks"]
    mc, gen = tasks["tiny_world_mc"], tasks["tiny_world_gen"]
    doc = next(iter(mc.test_docs()))
    assert mc.doc_to_text(doc) == doc["question"]
    assert mc.doc_to_choice(doc) == doc["choices"] and mc.doc_to_target(doc) == doc["label"]
    assert len(list(mc.test_docs())) == 240 and len(list(gen.test_docs())) == 200
    assert gen.config.generation_kwargs["until"] == ["\n"]

