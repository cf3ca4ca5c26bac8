"""data/real/chat/ (the teacher's own chat data, tools/real_chats.py) and its prompt set.

The prompt set and the committed files are checked without the model; the teacher
answering its 30 held-out questions as recorded needs the real assets (marker `real`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter

import pytest

from tests.conftest import DATA_DIR
from tokenkit.evaluation import agreement
from tools import real_chats as rc
from tools import real_text as rt

CHAT = DATA_DIR / "real" / "chat"
FILES = ("train.jsonl", "validation.jsonl", "test.jsonl", "questions.jsonl", "SOURCES.json")


@pytest.fixture(scope="module")
def prompt_set() -> list[rc.Prompt]:
    return rc.build_prompts()


def _records(split: str) -> list[dict]:
    return [json.loads(line) for line in (CHAT / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def test_prompt_set_is_fixed(prompt_set):
    assert prompt_set == rc.build_prompts()
    assert len(prompt_set) == 557
    assert Counter(p.kind for p in prompt_set) == {
        "capital": 45, "define": 60, "arithmetic": 60, "rewrite": 40, "summarize": 40,
        "module": len(rt.PYDOC_MODULES), "translate": 48, "list": 40, "opposite": 30,
        "explain": 40, "tip": 24, "legs": 20}
    assert len({p.id for p in prompt_set}) == len(prompt_set)
    by_id = {p.id: p for p in prompt_set}
    assert by_id["capital-000"].text == "What is the capital of Germany?"
    assert by_id["module-014"].text == "In one line, what is the Python module copy for?"
    assert by_id["module-014"].document == "pydoc/copy"
    # Every split has prompts of most kinds.
    for split in rt.SPLITS:
        assert len({p.kind for p in prompt_set if p.split == split}) >= 8, split


def test_prompts_quoting_documents_keep_their_split(prompt_set):
    sources = json.loads((DATA_DIR / "real" / "SOURCES.json").read_text(encoding="utf-8"))
    split_of_document = {d["id"]: d["split"] for d in sources["documents"]}
    quoted = [p for p in prompt_set if p.document is not None]
    assert {p.kind for p in quoted} == {"rewrite", "summarize", "module"}
    for p in quoted:
        assert p.split == split_of_document[p.document] == rt.split_of(p.document)
    texts = {r["text"] for s in rt.SPLITS for r in map(json.loads, (DATA_DIR / "real" / f"{s}.jsonl").open())}
    for p in quoted:
        if p.kind == "summarize":
            assert p.text.split(": ", 1)[1] in texts
    for p in prompt_set:
        if p.document is None:
            bucket = int(hashlib.sha256(p.text.encode()).hexdigest(), 16) % 20
            assert p.split == ("train" if bucket < 14 else "validation" if bucket < 17 else "test")


def test_held_out_questions_are_in_no_prompt(prompt_set):
    assert len(rc.QUESTIONS) == len(set(rc.QUESTIONS)) == 30
    texts = {" ".join(p.text.lower().split()) for p in prompt_set}
    assert not texts & {q.lower() for q in rc.QUESTIONS}
    leak = dataclasses.replace(prompt_set[0], text=rc.QUESTIONS[3].upper())
    with pytest.raises(ValueError, match="is a held-out question"):
        rc.check_prompts([leak])
    with pytest.raises(ValueError, match="are the same"):
        rc.check_prompts([prompt_set[0], dataclasses.replace(prompt_set[0], id="x-000")])


def test_first_sentences_are_whole_sentences():
    records = [{"text": "Return the value. More.", "source": "a"},
               {"text": "lower case start is dropped here.", "source": "b"},
               {"text": "Code like f(x) is dropped as well, whatever it says.", "source": "c"},
               {"text": "Return the value. Again.", "source": "d"}]
    assert rc.first_sentences(records, min_chars=10) == [{"text": "Return the value.", "source": "a"}]


def test_committed_files_checksums_and_size():
    listed = dict(reversed(line.split("  ")) for line in (CHAT / "SHA256SUMS").read_text().splitlines())
    assert sorted(listed) == sorted(FILES)
    for name, digest in listed.items():
        assert hashlib.sha256((CHAT / name).read_bytes()).hexdigest() == digest, name
    assert sum(p.stat().st_size for p in CHAT.iterdir()) <= 1_500_000


def test_committed_records_are_the_prompt_set_answered(prompt_set):
    sources = json.loads((CHAT / "SOURCES.json").read_text(encoding="utf-8"))
    assert sources["settings"]["system"] == agreement.SYSTEM_MESSAGE
    assert sources["settings"]["max_new_tokens"] == agreement.ChatSettings().max_new_tokens
    by_id = {p.id: p for p in prompt_set}
    seen = set()
    for split in rt.SPLITS:
        records = _records(split)
        assert sources["splits"][split]["records"] == len(records)
        assert Counter(r["source"].split("/")[1] for r in records) == sources["splits"][split]["by_kind"]
        for r in records:
            p = by_id[r["id"]]
            assert p.split == split and r["source"] == f"real_chats/{p.kind}"
            assert r["document"] == p.document
            system, user, assistant = r["messages"]
            assert system == {"role": "system", "content": agreement.SYSTEM_MESSAGE}
            assert user == {"role": "user", "content": p.text}
            assert assistant["role"] == "assistant" and assistant["content"].strip()
            seen.add(p.id)
    left_out = {x["id"] for x in sources["left_out"]}
    assert not seen & left_out and seen | left_out == set(by_id)
    assert len(left_out) < 0.2 * len(by_id)
    assert sources["prompts"] == len(prompt_set)


def test_committed_questions():
    questions = agreement.load_questions(CHAT / "questions.jsonl")
    assert [q["question"] for q in questions] == list(rc.QUESTIONS)
    assert all(q["teacher_answer"].strip() for q in questions)
    assert questions[0]["teacher_answer"] == "The capital of France is Paris."
    assert agreement.load_questions() == questions  # the library's default file


@pytest.mark.real
@pytest.mark.slow
def test_teacher_answers_its_questions_as_recorded(real_assets):
    from tokenkit.evaluation.model import load_eval_model

    teacher = load_eval_model(str(real_assets.smollm2_dir), real_assets.smollm2_tokenizer_spec)
    report = agreement.answer_agreement(teacher, show_progress=False)
    assert (report.exact, report.first_sentence, report.n) == (30, 30, 30), report.table()
