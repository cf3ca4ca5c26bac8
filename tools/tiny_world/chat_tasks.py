"""Seeded generator of chat tasks whose answers can be checked exactly.

Each example is a two-message conversation (a user question, the assistant's answer) plus
the task name, the exact answer string and the parameters it was made from:

    {"messages": [{"role": "user", "content": "What is 12 + 7?"},
                  {"role": "assistant", "content": "19"}],
     "task": "add", "answer": "19", "lang": "en", "params": {"a": 12, "b": 7}}

The assistant's reply is exactly the answer, so an exact-match generation task can compare
a model's reply with `answer`, and a multiple-choice task can score `answer` against
`distractors(example, rng)`. Prompts come in several templates per task and in five
languages (English, German, French, Russian, Chinese). Numbers in answers are plain:
no thousands separators, `.` as the decimal point, no trailing zeros.

`city_country` and `city_population` are closed-book: they ask about the invented fact
table of `facts.py`, which a model can only know from the training split.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np
from absl import logging

from tokenkit.progress import Progress
from tools.tiny_world.facts import FactTable, default_fact_table

TASKS: tuple[str, ...] = (
    "add", "sub", "mul", "copy", "reverse", "city_country", "city_population",
    "table_lookup", "convert_length", "convert_mass", "convert_time", "convert_temperature",
)
CLOSED_BOOK_TASKS: frozenset[str] = frozenset({"city_country", "city_population"})
LANGS: tuple[str, ...] = ("en", "de", "fr", "ru", "zh")
LANG_WEIGHTS: tuple[float, ...] = (0.6, 0.1, 0.1, 0.1, 0.1)

Example = dict[str, Any]
Rng = random.Random | np.random.Generator

# ---------------------------------------------------------------------------------------
# Prompt templates. Placeholders are filled from the example's params (and, for unit
# conversions, the unit names of the prompt's language).

_TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "add": {
        "en": ("What is {a} + {b}?", "Compute {a} plus {b}.", "{a} + {b} = ?",
               "Add {a} and {b}. Reply with the number only."),
        "de": ("Was ist {a} + {b}?", "Berechne {a} plus {b}."),
        "fr": ("Combien font {a} + {b} ?", "Calcule {a} plus {b}."),
        "ru": ("Сколько будет {a} + {b}?", "Вычисли {a} плюс {b}."),
        "zh": ("{a} 加 {b} 等于多少？", "计算 {a} + {b}。"),
    },
    "sub": {
        "en": ("What is {a} - {b}?", "Subtract {b} from {a}.", "{a} − {b} = ?",
               "How much is {a} minus {b}?"),
        "de": ("Was ist {a} - {b}?", "Ziehe {b} von {a} ab."),
        "fr": ("Combien font {a} - {b} ?", "Soustrais {b} de {a}."),
        "ru": ("Сколько будет {a} - {b}?", "Вычти {b} из {a}."),
        "zh": ("{a} 减 {b} 等于多少？", "计算 {a} − {b}。"),
    },
    "mul": {
        "en": ("What is {a} × {b}?", "What is {a} * {b}?", "Multiply {a} by {b}.",
               "{a} times {b} equals?"),
        "de": ("Was ist {a} mal {b}?", "Multipliziere {a} mit {b}."),
        "fr": ("Combien font {a} × {b} ?", "Multiplie {a} par {b}."),
        "ru": ("Сколько будет {a} умножить на {b}?", "Умножь {a} на {b}."),
        "zh": ("{a} 乘以 {b} 等于多少？", "计算 {a} × {b}。"),
    },
    "copy": {
        "en": ('Repeat exactly: "{text}"', "Copy the text between the brackets: [{text}]",
               "Echo back, unchanged: `{text}`"),
        "de": ("Wiederhole genau: „{text}“",),
        "fr": ("Recopie exactement : « {text} »",),
        "ru": ("Повтори в точности: «{text}»",),
        "zh": ("请原样复制：「{text}」",),
    },
    "reverse": {
        "en": ('Reverse the string "{text}".', 'Write "{text}" backwards.',
               "Spell [{text}] in reverse order."),
        "de": ("Schreibe „{text}“ rückwärts.",),
        "fr": ("Écris « {text} » à l’envers.",),
        "ru": ("Напиши «{text}» задом наперёд.",),
        "zh": ("把「{text}」倒过来写。",),
    },
    "city_country": {
        "en": ("In which country is {city}?", "{city} is a city in which country?",
               "Which country does the city of {city} belong to?"),
        "de": ("In welchem Land liegt {city}?",),
        "fr": ("Dans quel pays se trouve {city} ?",),
        "ru": ("В какой стране находится город {city}?",),
        "zh": ("{city}位于哪个国家？",),
    },
    "city_population": {
        "en": ("What is the population of {city}?", "How many people live in {city}?",
               "Population of {city}?"),
        "de": ("Wie viele Einwohner hat {city}?",),
        "fr": ("Combien d’habitants compte {city} ?",),
        "ru": ("Какое население у города {city}?",),
        "zh": ("{city}有多少人口？",),
    },
    # Table lookups: "{table}" is the rendered table, the question depends on the column.
    "table_lookup/country": {
        "en": ("Here is a table:\n{table}\nUsing the table, in which country is {city}?",
               "{table}\n\nAccording to this table, which country is {city} in?"),
        "de": ("Hier ist eine Tabelle:\n{table}\nIn welchem Land liegt {city} laut Tabelle?",),
        "fr": ("Voici un tableau :\n{table}\nD’après le tableau, dans quel pays se trouve {city} ?",),
        "ru": ("Вот таблица:\n{table}\nПо таблице: в какой стране находится {city}?",),
        "zh": ("下面是一张表：\n{table}\n根据表格，{city}位于哪个国家？",),
    },
    "table_lookup/population": {
        "en": ("Here is a table:\n{table}\nUsing the table, what is the population of {city}?",
               "{table}\n\nAccording to this table, how many people live in {city}?"),
        "de": ("Hier ist eine Tabelle:\n{table}\nWie viele Einwohner hat {city} laut Tabelle?",),
        "fr": ("Voici un tableau :\n{table}\nD’après le tableau, combien d’habitants compte {city} ?",),
        "ru": ("Вот таблица:\n{table}\nПо таблице: какое население у города {city}?",),
        "zh": ("下面是一张表：\n{table}\n根据表格，{city}有多少人口？",),
    },
    # Unit conversions share templates; names are looked up in _UNIT_NAMES.
    "convert": {
        "en": ("Convert {value} {from_name} to {to_name}.",
               "How many {to_name} are {value} {from_name}?",
               "{value} {from_sym} = ? {to_sym}"),
        "de": ("Rechne {value} {from_name} in {to_name} um.",
               "Wie viele {to_name} sind {value} {from_name}?"),
        "fr": ("Convertis {value} {from_name} en {to_name}.",
               "Combien de {to_name} font {value} {from_name} ?"),
        "ru": ("Переведи {value} {from_sym} в {to_sym}.", "Сколько {to_sym} в {value} {from_sym}?"),
        "zh": ("把{value}{from_name}换算成{to_name}。", "{value}{from_name}等于多少{to_name}？"),
    },
    "convert_temperature": {
        "en": ("Convert {value} {from_sym} to {to_sym}, rounded to the nearest whole degree.",
               "What is {value} {from_name} in {to_name}? Round to a whole number."),
        "de": ("Rechne {value} {from_sym} in {to_sym} um (auf ganze Grad gerundet).",),
        "fr": ("Convertis {value} {from_sym} en {to_sym} (arrondi au degré près).",),
        "ru": ("Переведи {value} {from_sym} в {to_sym}, округлив до целого.",),
        "zh": ("把{value}{from_sym}换算成{to_sym}，四舍五入到整数。",),
    },
}

_TABLE_HEADERS: dict[str, tuple[str, str, str]] = {
    "en": ("City", "Country", "Population"),
    "de": ("Stadt", "Land", "Einwohner"),
    "fr": ("Ville", "Pays", "Population"),
    "ru": ("Город", "Страна", "Население"),
    "zh": ("城市", "国家", "人口"),
}

# Unit -> (symbol, name per language). Russian prompts use symbols (no case endings).
_UNIT_SYMBOLS = {"km": "km", "m": "m", "cm": "cm", "kg": "kg", "g": "g", "h": "h",
                 "min": "min", "s": "s", "C": "°C", "F": "°F"}
_UNIT_SYMBOLS_RU = {"km": "км", "m": "м", "cm": "см", "kg": "кг", "g": "г", "h": "ч",
                    "min": "мин", "s": "с", "C": "°C", "F": "°F"}
_UNIT_NAMES: dict[str, dict[str, str]] = {
    "en": {"km": "kilometres", "m": "metres", "cm": "centimetres", "kg": "kilograms",
           "g": "grams", "h": "hours", "min": "minutes", "s": "seconds",
           "C": "degrees Celsius", "F": "degrees Fahrenheit"},
    "de": {"km": "Kilometer", "m": "Meter", "cm": "Zentimeter", "kg": "Kilogramm",
           "g": "Gramm", "h": "Stunden", "min": "Minuten", "s": "Sekunden",
           "C": "Grad Celsius", "F": "Grad Fahrenheit"},
    "fr": {"km": "kilomètres", "m": "mètres", "cm": "centimètres", "kg": "kilogrammes",
           "g": "grammes", "h": "heures", "min": "minutes", "s": "secondes",
           "C": "degrés Celsius", "F": "degrés Fahrenheit"},
    "ru": {},  # symbols only
    "zh": {"km": "公里", "m": "米", "cm": "厘米", "kg": "千克", "g": "克", "h": "小时",
           "min": "分钟", "s": "秒", "C": "摄氏度", "F": "华氏度"},
}

# Conversion task -> (from, to, factor) where to = from * factor.
_CONVERSIONS: dict[str, tuple[tuple[str, str, Fraction], ...]] = {
    "convert_length": (("km", "m", Fraction(1000)), ("m", "km", Fraction(1, 1000)),
                       ("m", "cm", Fraction(100)), ("cm", "m", Fraction(1, 100))),
    "convert_mass": (("kg", "g", Fraction(1000)), ("g", "kg", Fraction(1, 1000))),
    "convert_time": (("h", "min", Fraction(60)), ("min", "h", Fraction(1, 60)),
                     ("min", "s", Fraction(60)), ("s", "min", Fraction(1, 60))),
}

# Syllables for strings to copy or reverse: Latin, Cyrillic and kana, one code point per
# character so that reversing is well defined.
_LATIN = ("ka", "lo", "mi", "zu", "ber", "tal", "quin", "dro", "vex", "sa", "pi", "nor")
_CYRILLIC = ("ка", "ло", "ми", "зу", "бер", "тал", "дро", "вен", "са", "пи")
_KANA = ("か", "き", "さ", "の", "ま", "る", "と", "ひ", "ゆ", "れ")
_ACCENTED = ("é", "ä", "ö", "ü", "ß", "ç", "ñ", "ø")
_EMOJI = ("🙂", "🚀", "🌍", "🍀", "🎲", "🔑")

# ---------------------------------------------------------------------------------------
# Helpers.


def _as_random(rng: Rng) -> random.Random:
    """A `random.Random` to draw from: `rng` itself, or one seeded from a numpy generator
    (which consumes one draw of it)."""
    if isinstance(rng, random.Random):
        return rng
    if isinstance(rng, np.random.Generator):
        return random.Random(int(rng.integers(0, 2**63 - 1)))
    raise TypeError(f"rng must be random.Random or numpy.random.Generator, got {type(rng)}")


def format_number(x: Fraction | int) -> str:
    """Formats a terminating decimal exactly: `1200`, `2.5`, `-0.125` (no exponent, no
    trailing zeros, no thousands separators)."""
    x = Fraction(x)
    sign = "-" if x < 0 else ""
    x = abs(x)
    places = 0
    while (x * 10**places).denominator != 1:
        places += 1
        if places > 12:
            raise ValueError(f"{x} is not a short terminating decimal")
    digits = str(int(x * 10**places)).rjust(places + 1, "0")
    if places:
        digits = f"{digits[:-places]}.{digits[-places:]}"
    return sign + digits


def round_half_away(x: Fraction) -> int:
    """Rounds to the nearest integer, halves away from zero (not Python's banker's rounding)."""
    magnitude = int(abs(x) + Fraction(1, 2))
    return magnitude if x >= 0 else -magnitude


def _syllable_string(rng: random.Random, pools: tuple[tuple[str, ...], ...],
                     min_len: int, max_len: int) -> str:
    pool = rng.choice(pools)
    target = rng.randint(min_len, max_len)
    text = ""
    while len(text) < target:
        text += rng.choice(pool)
    return text[:max_len]


def _copy_text(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.45:  # invented words
        words = [_syllable_string(rng, (_LATIN,), 2, 9) for _ in range(rng.randint(1, 4))]
        return " ".join(words)
    if kind < 0.65:  # codes with digits, case and punctuation
        alphabet = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
        parts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(2, 5)))
                 for _ in range(rng.randint(1, 3))]
        return rng.choice("-_.:/").join(parts)
    if kind < 0.85:  # other scripts and accents
        text = _syllable_string(rng, (_CYRILLIC, _KANA), 2, 8)
        return f"{text} {_syllable_string(rng, (_LATIN,), 2, 6)}{rng.choice(_ACCENTED)}"
    text = " ".join(_syllable_string(rng, (_LATIN,), 2, 7) for _ in range(rng.randint(1, 3)))
    return f"{text} {rng.choice(_EMOJI)}"


def _reverse_text(rng: random.Random) -> str:
    if rng.random() < 0.75:
        return _syllable_string(rng, (_LATIN,), 3, 12)
    return _syllable_string(rng, (_CYRILLIC, _KANA), 3, 8)


def _decimal_value(rng: random.Random, max_places: int, low: int, high: int) -> Fraction:
    """A value in [low, high] with up to `max_places` decimals, never exactly 1."""
    while True:
        places = rng.randint(0, max_places)
        value = Fraction(rng.randint(low * 10**places, high * 10**places), 10**places)
        if value > 0 and value != 1:
            return value


def _render_table(rng: random.Random, lang: str, rows: list[list[Any]]) -> str:
    city_h, country_h, pop_h = _TABLE_HEADERS[lang]
    if rng.random() < 0.5:  # Markdown
        lines = [f"| {city_h} | {country_h} | {pop_h} |", "|---|---|---|"]
        lines += [f"| {c} | {k} | {p} |" for c, k, p in rows]
    else:  # tab-separated
        lines = [f"{city_h}\t{country_h}\t{pop_h}"]
        lines += [f"{c}\t{k}\t{p}" for c, k, p in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Task makers: (rng, facts) -> (params, answer). Templates are chosen afterwards.


def _make_add(rng, facts):
    a, b = rng.randint(0, 999), rng.randint(0, 999)
    return {"a": a, "b": b}, str(a + b)


def _make_sub(rng, facts):
    a = rng.randint(0, 999)
    b = rng.randint(0, a)
    return {"a": a, "b": b}, str(a - b)


def _make_mul(rng, facts):
    a, b = rng.randint(2, 99), rng.randint(2, 12)
    if rng.random() < 0.5:
        a, b = b, a
    return {"a": a, "b": b}, str(a * b)


def _make_copy(rng, facts):
    text = _copy_text(rng)
    return {"text": text}, text


def _make_reverse(rng, facts):
    while True:
        text = _reverse_text(rng)
        if text != text[::-1]:  # palindromes would make "unchanged" a correct answer
            return {"text": text}, text[::-1]


def _make_city_country(rng, facts, city=None):
    city = facts.city(city) if city else rng.choice(facts.cities)
    return {"city": city.name}, city.country


def _make_city_population(rng, facts, city=None):
    city = facts.city(city) if city else rng.choice(facts.cities)
    return {"city": city.name}, str(city.population)


def _make_table_lookup(rng, facts):
    cities = rng.sample(facts.cities, rng.randint(3, 6))
    asked = rng.choice(cities)
    column = rng.choice(("country", "population"))
    rows = [[c.name, c.country, c.population] for c in cities]
    answer = asked.country if column == "country" else str(asked.population)
    return {"rows": rows, "city": asked.name, "column": column}, answer


def _make_conversion(task: str) -> Callable:
    def make(rng, facts):
        unit_from, unit_to, factor = rng.choice(_CONVERSIONS[task])
        if factor.denominator == 60:  # multiples of 15 give quarter results
            value = Fraction(15 * rng.randint(1, 40))
        elif factor.denominator > 1:  # integers give at most 3 decimals
            value = Fraction(rng.randint(2, 5000 if unit_from == "cm" else 20000))
        else:
            value = _decimal_value(rng, 2, 0, 60 if unit_from in ("h", "min") else 50)
        params = {"value": format_number(value), "from": unit_from, "to": unit_to}
        return params, format_number(value * factor)
    return make


def _convert_temperature(value: Fraction, unit_from: str) -> Fraction:
    if unit_from == "C":
        return value * Fraction(9, 5) + 32
    return (value - 32) * Fraction(5, 9)


def _make_convert_temperature(rng, facts):
    unit_from = rng.choice(("C", "F"))
    value = Fraction(rng.randint(-40, 110) if unit_from == "C" else rng.randint(-40, 230))
    unit_to = "F" if unit_from == "C" else "C"
    params = {"value": format_number(value), "from": unit_from, "to": unit_to}
    return params, str(round_half_away(_convert_temperature(value, unit_from)))


_MAKERS: dict[str, Callable] = {
    "add": _make_add, "sub": _make_sub, "mul": _make_mul, "copy": _make_copy,
    "reverse": _make_reverse, "city_country": _make_city_country,
    "city_population": _make_city_population, "table_lookup": _make_table_lookup,
    "convert_length": _make_conversion("convert_length"),
    "convert_mass": _make_conversion("convert_mass"),
    "convert_time": _make_conversion("convert_time"),
    "convert_temperature": _make_convert_temperature,
}
assert tuple(_MAKERS) == TASKS


def _check_task(task: str) -> None:
    if task not in _MAKERS:
        raise ValueError(f"unknown chat task {task!r}; valid tasks: {', '.join(TASKS)}")


def _prompt(rng: random.Random, task: str, lang: str, params: dict[str, Any]) -> str:
    if task == "table_lookup":
        templates = _TEMPLATES[f"table_lookup/{params['column']}"][lang]
        fields = {"city": params["city"], "table": _render_table(rng, lang, params["rows"])}
    elif task.startswith("convert_"):
        key = "convert_temperature" if task == "convert_temperature" else "convert"
        templates = _TEMPLATES[key][lang]
        symbols = _UNIT_SYMBOLS_RU if lang == "ru" else _UNIT_SYMBOLS
        names = _UNIT_NAMES[lang] or symbols
        fields = {"value": params["value"],
                  "from_sym": symbols[params["from"]], "to_sym": symbols[params["to"]],
                  "from_name": names[params["from"]], "to_name": names[params["to"]]}
    else:
        templates = _TEMPLATES[task][lang]
        fields = params
    return rng.choice(templates).format(**fields)


# ---------------------------------------------------------------------------------------
# Public API.


def generate_example(task: str, rng: Rng, facts: FactTable | None = None,
                     lang: str | None = None, city: str | None = None) -> Example:
    """One example of `task`, drawn from `rng`.

    Args:
      task: one of `TASKS`.
      rng: a `random.Random` (used directly) or a `numpy.random.Generator` (one draw of it
        seeds a `random.Random`).
      facts: the fact table for the lookup tasks; the default table if None.
      lang: prompt language, one of `LANGS`; drawn with `LANG_WEIGHTS` if None.
      city: for the closed-book tasks, the city to ask about; drawn if None.
    """
    _check_task(task)
    if lang is not None and lang not in LANGS:
        raise ValueError(f"unknown prompt language {lang!r}; valid: {', '.join(LANGS)}")
    if city is not None and task not in CLOSED_BOOK_TASKS:
        raise ValueError(f"city= only applies to the closed-book tasks "
                         f"{sorted(CLOSED_BOOK_TASKS)}, not {task!r}")
    rng = _as_random(rng)
    facts = facts or default_fact_table()
    if lang is None:
        lang = rng.choices(LANGS, weights=LANG_WEIGHTS)[0]
    if task in CLOSED_BOOK_TASKS:
        params, answer = _MAKERS[task](rng, facts, city)
    else:
        params, answer = _MAKERS[task](rng, facts)
    prompt = _prompt(rng, task, lang, params)
    return {
        "messages": [{"role": "user", "content": prompt},
                     {"role": "assistant", "content": answer}],
        "task": task,
        "answer": answer,
        "lang": lang,
        "params": params,
    }


def generate_examples(count: int, rng: Rng, facts: FactTable | None = None,
                      seen_prompts: set[str] | None = None, desc: str = "chat tasks"
                      ) -> list[Example]:
    """`count` examples cycling through `TASKS` in order.

    The closed-book tasks go through the cities in shuffled rounds, so that enough
    examples ask about every city. Prompts in `seen_prompts` (and prompts repeated within
    this call) are drawn again for every other task; the closed-book ones have too few
    possible questions not to repeat. The number of redraws is logged. `seen_prompts` is
    updated in place.
    """
    rng = _as_random(rng)
    facts = facts or default_fact_table()
    seen = seen_prompts if seen_prompts is not None else set()
    rounds: dict[str, list[str]] = {task: [] for task in CLOSED_BOOK_TASKS}
    examples: list[Example] = []
    redrawn = 0
    for i in Progress.wrap(range(count), desc=desc, unit="examples"):
        task = TASKS[i % len(TASKS)]
        city = None
        if task in CLOSED_BOOK_TASKS:
            if not rounds[task]:
                rounds[task] = rng.sample([c.name for c in facts.cities], len(facts.cities))
            city = rounds[task].pop()
        for _ in range(1000):
            example = generate_example(task, rng, facts, city=city)
            prompt = example["messages"][0]["content"]
            if task in CLOSED_BOOK_TASKS or prompt not in seen:
                break
            redrawn += 1
        else:
            raise RuntimeError(f"task {task!r}: 1000 draws in a row repeated earlier prompts; "
                               f"its prompt space is too small for {count} examples")
        seen.add(prompt)
        examples.append(example)
    logging.info("%s: %d examples, %d draws repeated an earlier prompt and were redrawn",
                 desc, len(examples), redrawn)
    return examples


def _near_misses(task: str, answer: int, params: dict[str, Any]) -> list[int]:
    """Arithmetic slips: the wrong operation, off by one or ten, swapped digits."""
    a, b = params["a"], params["b"]
    slips = {"add": [abs(a - b)], "sub": [a + b], "mul": [a * (b + 1), a * (b - 1), a + b]}
    candidates = [answer + d for d in (1, -1, 10, -10, 2, -2, 100, -100, 11, 9)]
    digits = str(answer)
    if len(digits) >= 2 and digits[-1] != digits[-2]:
        candidates.insert(2, int(digits[:-2] + digits[-1] + digits[-2]))
    candidates[1:1] = slips[task]
    return candidates


def _population_misses(answer: int, rows: list[list[Any]], facts: FactTable,
                       rng: random.Random) -> list[int]:
    """Populations of the other rows or cities, and the right one misremembered."""
    others = [r[2] for r in rows] + [c.population for c in rng.sample(facts.cities, 6)]
    return others[:4] + [answer * 10, answer // 10, answer + 1000, answer - 1000] + others[4:]


def _string_edits(rng: random.Random, answer: str, original: str) -> list[str]:
    """The unreversed (or reversed) string, then single-character slips."""
    out = [original, answer[::-1]]
    for _ in range(16):
        chars = list(answer)
        i = rng.randrange(len(chars))
        edit = rng.randrange(4)
        if edit == 0 and len(chars) > 1:
            del chars[i]
        elif edit == 1:
            chars.insert(i, chars[i])
        elif edit == 2 and i + 1 < len(chars):
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
        else:
            chars[i] = "e" if chars[i] == "a" else "a"
        out.append("".join(chars))
    return out


def _terminating(x: Fraction) -> str | None:
    try:
        return format_number(x)
    except ValueError:
        return None


def _conversion_misses(params: dict[str, Any], task: str) -> list[str]:
    """The wrong direction, the wrong power of ten, a wrong formula."""
    value = Fraction(params["value"])
    if task == "convert_temperature":
        correct = _convert_temperature(value, params["from"])
        wrong_formula = (value * Fraction(5, 9) + 32 if params["from"] == "C"
                         else (value - 32) * Fraction(9, 5))
        return [str(round_half_away(x)) for x in (
            wrong_formula, correct + 1, correct - 1, value, correct + 10, correct - 10)]
    factor = next(f for a, b, f in _CONVERSIONS[task] if (a, b) == (params["from"], params["to"]))
    wrong = (1 / factor, factor * 10, factor / 10, factor * 100, factor / 100, factor * 1000,
             factor / 1000, factor * Fraction(100, 60), factor * Fraction(60, 100))
    return [s for s in (_terminating(value * f) for f in wrong) if s is not None]


def distractors(example: Example, rng: Rng, n: int = 3,
                facts: FactTable | None = None) -> list[str]:
    """`n` distinct wrong but plausible answers for `example` (none equals its answer).

    Numbers are near misses (off by one or ten, swapped digits, the wrong operation or
    conversion factor); strings are small edits; countries and populations come from
    other cities of the fact table (and of the prompt's table first).
    """
    task = example["task"]
    _check_task(task)
    rng = _as_random(rng)
    facts = facts or default_fact_table()
    answer, params = example["answer"], example["params"]
    rows = params.get("rows", [])
    column = params.get("column")
    if task in ("add", "sub", "mul"):
        pool = [str(c) for c in _near_misses(task, int(answer), params) if c >= 0]
    elif task == "city_population" or column == "population":
        pool = [str(c) for c in _population_misses(int(answer), rows, facts, rng) if c > 0]
    elif task in ("copy", "reverse"):
        pool = _string_edits(rng, answer, params["text"])
    elif task == "city_country" or column == "country":
        pool = [r[1] for r in rows] + rng.sample(list(facts.countries), len(facts.countries))
    else:
        pool = _conversion_misses(params, task)
    seen = {answer}
    chosen: list[str] = []
    for candidate in pool:
        if candidate not in seen:
            seen.add(candidate)
            chosen.append(candidate)
    if len(chosen) < n:
        raise ValueError(f"task {task!r}: only {len(chosen)} distinct distractors for answer "
                         f"{answer!r}, {n} requested")
    # Pools list the most plausible candidates first; a random subset of the best 2n keeps
    # the kind of mistake from being predictable.
    return rng.sample(chosen[: 2 * n], n)
