"""Answers like the teacher: prompts, first sentences, counting, generation on tiny models."""

from __future__ import annotations

import json

import pytest

from tokenkit import families, prompts
from tokenkit.evaluation import agreement

QUESTIONS = ["What is 12 + 7?", "Hi", "Wie viele Einwohner hat Fograd?"]
# Buckets that fit the tiny models' 128 positions.
SETTINGS = agreement.ChatSettings(max_new_tokens=8, lengths=(64, 128), tokens_per_batch=128)


def test_chat_prompt_is_system_user_and_assistant_header():
    prompt = agreement.chat_prompt("What is 2 plus 2?")
    assert prompt == prompts.preprocess_messages(
        [{"role": "system", "content": agreement.SYSTEM_MESSAGE},
         {"role": "user", "content": "What is 2 plus 2?"}], add_generation_prompt=True)
    assert prompt.endswith(families.slot_marker("assistant_name") + families.slot_marker("end_header"))
    assert families.slot_marker("system_name") not in agreement.chat_prompt("Hi", system=None)
    assert agreement.conversation("Hi", None) == [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize("text, first", [
    ("The capital of France is Paris.", "The capital of France is Paris."),
    ("  Paris.  It is large. ", "Paris."),
    ("Version 3.11 is out. Yes!", "Version 3.11 is out."),
    ("Really? Yes.", "Really?"),
    ("A list:\n1. one\n2. two", "A list:"),
    ("no end at all", "no end at all"),
    ("two  spaces\tinside. x", "two spaces inside."),
    ("", ""),
])
def test_first_sentence(text, first):
    assert agreement.first_sentence(text) == first


def test_compare_counts_exact_and_first_sentence():
    questions = [{"question": f"q{i}", "teacher_answer": a} for i, a in enumerate(
        ["Paris.", "The answer is 4. Because 2 + 2 = 4.", "Blue.", "Seven days."])]
    replies = [" Paris.\n", "The answer is 4. Two and two.", "Green.", "Seven  days."]
    report = agreement.compare(questions, replies, ["eos"] * 4)
    assert (report.n, report.exact, report.first_sentence) == (4, 1, 3)
    assert [a["exact"] for a in report.answers] == [True, False, False, False]
    assert [a["first_sentence"] for a in report.answers] == [True, True, False, True]
    assert report.as_dict()["answers"][2]["student"] == "Green."
    assert "exact 1/4, first sentence 3/4" in report.table()
    with pytest.raises(ValueError, match="4 questions but 3 replies"):
        agreement.compare(questions, replies[:3])


def test_load_questions(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question": "a?", "teacher_answer": "b."}) + "\n\n", encoding="utf-8")
    assert agreement.load_questions(path) == [{"question": "a?", "teacher_answer": "b."}]
    path.write_text(json.dumps({"question": "a?"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"q.jsonl:1: record lacks \['teacher_answer'\]"):
        agreement.load_questions(path)


def test_a_model_answers_like_itself_and_another_does_not(llama_model, qwen_models):
    replies = agreement.generate_replies(llama_model, QUESTIONS, SETTINGS, show_progress=False)
    assert all(len(r.token_ids) <= SETTINGS.max_new_tokens for r in replies)
    questions = [{"question": q, "teacher_answer": r.text} for q, r in zip(QUESTIONS, replies)]
    same = agreement.answer_agreement(llama_model, questions, SETTINGS, show_progress=False)
    assert (same.exact, same.first_sentence, same.n) == (3, 3, 3)
    other = agreement.answer_agreement(qwen_models[1], questions, SETTINGS, show_progress=False)
    assert other.exact < 3
    assert [a["student"] for a in other.answers] == [
        r.text for r in agreement.generate_replies(qwen_models[1], QUESTIONS, SETTINGS,
                                                   show_progress=False)]


def test_replies_follow_the_chat_template(llama_model):
    # The prompt the generator sees is the family's rendering of the conversation.
    ids = llama_model.encode(agreement.chat_prompt("Hi"))
    tokens = llama_model.tokenizer.convert_ids_to_tokens(ids)
    assert tokens[-len(llama_model.tokenizer.family.assistant_name) - 2:-2] == list(
        llama_model.tokenizer.family.assistant_name)
    assert tokens.count(llama_model.tokenizer.family.start_header[0]) == 3
