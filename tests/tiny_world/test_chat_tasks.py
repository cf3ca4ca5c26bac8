"""The chat-task generator: deterministic, correct answers, usable distractors."""

import json
import random
import re
from decimal import ROUND_HALF_UP, Decimal, localcontext
from fractions import Fraction

import numpy as np
import pytest

from tools.tiny_world import chat_tasks
from tools.tiny_world.facts import FactTable, make_fact_table

FACTS = make_fact_table()
# Conversion factors written out independently of the generator's table.
FACTORS = {("km", "m"): Decimal(1000), ("m", "km"): Decimal("0.001"),
           ("m", "cm"): Decimal(100), ("cm", "m"): Decimal("0.01"),
           ("kg", "g"): Decimal(1000), ("g", "kg"): Decimal("0.001"),
           ("h", "min"): Decimal(60), ("min", "s"): Decimal(60),
           ("min", "h"): 1 / Decimal(60), ("s", "min"): 1 / Decimal(60)}
PLAIN_NUMBER = re.compile(r"-?(0|[1-9]\d*)(\.\d*[1-9])?")


def _dump(examples):
    return "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples).encode()


def _expected_answer(example) -> str:
    """The answer recomputed from the example's parameters without the generator."""
    task, p = example["task"], example["params"]
    if task == "add":
        return str(p["a"] + p["b"])
    if task == "sub":
        return str(p["a"] - p["b"])
    if task == "mul":
        return str(p["a"] * p["b"])
    if task == "copy":
        return p["text"]
    if task == "reverse":
        return "".join(reversed(p["text"]))
    if task in ("city_country", "city_population"):
        (row,) = [c for c in FACTS.cities if c.name == p["city"]]
        return row.country if task == "city_country" else str(row.population)
    if task == "table_lookup":
        (row,) = [r for r in p["rows"] if r[0] == p["city"]]
        return row[1] if p["column"] == "country" else str(row[2])
    value = Decimal(p["value"])
    if task == "convert_temperature":
        with localcontext() as ctx:
            ctx.prec = 50
            exact = value * 9 / 5 + 32 if p["from"] == "C" else (value - 32) * 5 / 9
            return str(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    with localcontext() as ctx:
        ctx.prec = 50
        converted = value * FACTORS[(p["from"], p["to"])]
    return format(converted.quantize(Decimal("0.000001")).normalize(), "f")


@pytest.fixture(scope="module")
def examples():
    return chat_tasks.generate_examples(600, random.Random(123), FACTS)


def test_task_list_is_complete_and_cycled(examples):
    assert len(chat_tasks.TASKS) == len(set(chat_tasks.TASKS)) == 12
    assert [e["task"] for e in examples[:12]] == list(chat_tasks.TASKS)
    assert {e["task"] for e in examples} == set(chat_tasks.TASKS)


def test_every_answer_is_correct(examples):
    for example in examples:
        assert example["answer"] == _expected_answer(example), example


def test_record_shape(examples):
    for example in examples:
        user, assistant = example["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert assistant["content"] == example["answer"]
        # Llama 3 and Gemma templates strip messages; nothing may depend on edge spaces.
        assert user["content"] == user["content"].strip()
        assert example["answer"] == example["answer"].strip() != ""
        assert example["lang"] in chat_tasks.LANGS
        assert set(example) == {"messages", "task", "answer", "lang", "params"}


def test_prompt_contains_the_question(examples):
    for example in examples:
        prompt, p = example["messages"][0]["content"], example["params"]
        needles = {
            "add": ["a", "b"], "sub": ["a", "b"], "mul": ["a", "b"], "copy": ["text"],
            "reverse": ["text"], "city_country": ["city"], "city_population": ["city"],
            "table_lookup": ["city"],
        }.get(example["task"], ["value"])
        for key in needles:
            assert str(p[key]) in prompt, (key, example)
        if example["task"] == "table_lookup":
            for city, country, population in p["rows"]:
                assert city in prompt and country in prompt and str(population) in prompt


def test_numbers_are_plain(examples):
    numeric = set(chat_tasks.TASKS) - {"copy", "reverse", "city_country", "table_lookup"}
    for example in examples:
        if example["task"] in numeric:
            assert PLAIN_NUMBER.fullmatch(example["answer"]), example


def test_table_rows_are_true_facts(examples):
    facts = {c.name: (c.country, c.population) for c in FACTS.cities}
    for example in examples:
        if example["task"] == "table_lookup":
            for city, country, population in example["params"]["rows"]:
                assert facts[city] == (country, population)


def test_prompts_are_multilingual_and_varied(examples):
    langs = {e["lang"] for e in examples}
    assert langs == set(chat_tasks.LANGS)
    english_add = {e["messages"][0]["content"].replace(str(e["params"]["a"]), "A")
                   .replace(str(e["params"]["b"]), "B")
                   for e in examples if e["task"] == "add" and e["lang"] == "en"}
    assert len(english_add) >= 3, english_add
    assert any(re.search(r"[\u4e00-\u9fff]", e["messages"][0]["content"]) for e in examples)
    assert any(re.search(r"[\u0400-\u04ff]", e["messages"][0]["content"]) for e in examples)


def test_same_seed_same_bytes_different_seed_different_bytes():
    first = _dump(chat_tasks.generate_examples(300, random.Random(5), FACTS))
    again = _dump(chat_tasks.generate_examples(300, random.Random(5), FACTS))
    other = _dump(chat_tasks.generate_examples(300, random.Random(6), FACTS))
    assert first == again
    assert first != other


def test_numpy_generator_is_accepted_and_deterministic():
    a = chat_tasks.generate_example("mul", np.random.default_rng(3), FACTS)
    b = chat_tasks.generate_example("mul", np.random.default_rng(3), FACTS)
    assert a == b
    assert a["answer"] == str(a["params"]["a"] * a["params"]["b"])


def test_language_can_be_chosen():
    for lang in chat_tasks.LANGS:
        example = chat_tasks.generate_example("city_country", random.Random(1), FACTS, lang)
        assert example["lang"] == lang


def test_seen_prompts_are_not_repeated_for_open_tasks():
    seen: set[str] = set()
    first = chat_tasks.generate_examples(240, random.Random(1), FACTS, seen)
    second = chat_tasks.generate_examples(240, random.Random(1), FACTS, seen)
    first_prompts = {e["messages"][0]["content"] for e in first}
    for example in second:
        if example["task"] not in chat_tasks.CLOSED_BOOK_TASKS:
            assert example["messages"][0]["content"] not in first_prompts


def test_unknown_task_and_language_are_named():
    with pytest.raises(ValueError, match=r"'divide'.*add, sub"):
        chat_tasks.generate_example("divide", random.Random(0))
    with pytest.raises(ValueError, match=r"'xx'.*en, de"):
        chat_tasks.generate_example("add", random.Random(0), lang="xx")
    with pytest.raises(TypeError, match="rng"):
        chat_tasks.generate_example("add", 42)


def test_distractors_are_distinct_wrong_and_deterministic(examples):
    for example in examples:
        options = chat_tasks.distractors(example, random.Random(9), n=3, facts=FACTS)
        assert len(options) == len(set(options)) == 3
        assert example["answer"] not in options
        assert options == chat_tasks.distractors(example, random.Random(9), n=3, facts=FACTS)


def test_distractors_are_plausible(examples):
    countries = set(FACTS.countries)
    for example in examples:
        options = chat_tasks.distractors(example, random.Random(4), n=3, facts=FACTS)
        task = example["task"]
        if task == "city_country" or (task == "table_lookup"
                                      and example["params"]["column"] == "country"):
            assert set(options) <= countries
        elif task in ("copy", "reverse"):
            # Small edits: none differs from the answer in length by more than one
            # character, except the unreversed / reversed string itself.
            for option in options:
                assert (abs(len(option) - len(example["answer"])) <= 1
                        or sorted(option) == sorted(example["answer"]))
        else:
            for option in options:
                assert PLAIN_NUMBER.fullmatch(option), (option, example)


def test_too_many_distractors_is_an_error():
    example = chat_tasks.generate_example("city_country", random.Random(0), FACTS)
    with pytest.raises(ValueError, match="distinct distractors"):
        chat_tasks.distractors(example, random.Random(0), n=len(FACTS.countries) + 5,
                               facts=FACTS)


@pytest.mark.parametrize("value, text", [
    (Fraction(1200), "1200"), (Fraction(5, 2), "2.5"), (Fraction(-1, 8), "-0.125"),
    (Fraction(0), "0"), (Fraction(7, 100), "0.07")])
def test_format_number(value, text):
    assert chat_tasks.format_number(value) == text


def test_format_number_rejects_repeating_decimals():
    with pytest.raises(ValueError, match="terminating"):
        chat_tasks.format_number(Fraction(1, 3))


@pytest.mark.parametrize("value, rounded", [
    (Fraction(5, 2), 3), (Fraction(-5, 2), -3), (Fraction(49, 10), 5), (Fraction(-41, 10), -4)])
def test_round_half_away_from_zero(value, rounded):
    assert chat_tasks.round_half_away(value) == rounded


def test_fact_table_round_trips_and_is_seeded():
    assert FactTable.from_json(FACTS.to_json()) == FACTS
    assert make_fact_table(7) == FACTS
    assert make_fact_table(8) != FACTS
    names = [c.name for c in FACTS.cities] + list(FACTS.countries)
    assert len({n.lower() for n in names}) == len(names)
