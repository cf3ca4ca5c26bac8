"""data/eval_tasks/real_docs/ (next-paragraph multiple choice, tools/real_eval_tasks.py)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from lm_eval.tasks import TaskManager

from tests.conftest import DATA_DIR
from tools import real_eval_tasks as ret

TASK_DIR = DATA_DIR / "eval_tasks" / "real_docs"


def _items() -> list[dict]:
    return [json.loads(line) for line in (TASK_DIR / "mc.jsonl").read_text(encoding="utf-8").splitlines()]


def test_rebuilds_identically(tmp_path):
    ret.build(tmp_path)
    for name in ("mc.jsonl", "SHA256SUMS"):
        assert (tmp_path / name).read_bytes() == (TASK_DIR / name).read_bytes(), name


def test_items_are_true_next_paragraphs_among_other_documents():
    docs = ret.documents(ret.TEST_FILE)
    owner = {p: d for d, paragraphs in docs.items() for p in paragraphs}
    items = _items()
    assert len(items) == ret.ITEMS
    assert max(Counter(i["document"] for i in items).values()) <= ret.MAX_PER_DOCUMENT
    assert set(Counter(i["label"] for i in items)) == {0, 1, 2, 3}
    for item in items:
        paragraphs = docs[item["document"]]
        assert item["context"] == paragraphs[item["paragraph"]]
        answer = item["choices"][item["label"]]
        assert answer == paragraphs[item["paragraph"] + 1]
        assert len(set(item["choices"])) == ret.NUM_CHOICES
        for k, choice in enumerate(item["choices"]):
            assert len(choice) <= ret.MAX_CHARS
            if k != item["label"]:
                assert owner[choice] != item["document"]
                assert len(answer) / 2 <= len(choice) <= 2 * len(answer)


def test_too_few_pairs_is_an_error():
    with pytest.raises(ValueError, match="Only 1 paragraph pairs"):
        ret.make_items({"a": ["x", "y"], "b": ["z"]}, items=2)


def test_lm_eval_loads_the_task():
    manager = TaskManager(include_path=str(DATA_DIR / "eval_tasks"))
    task = manager.load(["real_docs_mc"])["tasks"]["real_docs_mc"]
    docs = list(task.test_docs())
    assert len(docs) == ret.ITEMS
    doc = docs[0]
    assert task.doc_to_text(doc) == doc["context"]
    assert task.doc_to_choice(doc) == doc["choices"] and task.doc_to_target(doc) == doc["label"]
    assert task.config.target_delimiter == "\n\n"
